"""The signed-out invitation page is rendered once per everything it shows (``Pages.keep``):
each visitor still gets a CSRF token of their own, and any change to the invitation shows at once."""

from __future__ import annotations

import gc
import socket

import httpx

from tests.conftest import Cli, Env, FakeClock, Mailbox, Seed, csrf_of, link_in


def _invite(cli: Cli, mailbox: Mailbox, seed: Seed) -> str:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    return link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1)[-1])


def _language_switch(client: httpx.Client, token: str) -> int:
    """A POST only a page's own CSRF token, bound to this browser's cookie, gets through."""
    return client.post("/language", data={"csrf_token": token, "language": "fr", "next": "/"}).status_code


def test_two_visitors_of_one_page_never_see_each_others_token(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env):
    link = _invite(cli, mailbox, seed)
    with httpx.Client(base_url=env.base_url, timeout=60) as first, \
            httpx.Client(base_url=env.base_url, timeout=60) as second:
        pages = [first.get(link), second.get(link), first.get(link), second.get(link)]
        assert all(page.status_code == 200 for page in pages)
        tokens = [csrf_of(page.text) for page in pages]
        assert {tokens[0], tokens[2]}.isdisjoint({tokens[1], tokens[3]})  # never another browser's
        # The same page apart from the tokens: the second visitor was served the kept rendering.
        assert pages[1].text.replace(tokens[1], "") == pages[0].text.replace(tokens[0], "")
        for page, token in zip(pages, tokens):
            assert page.text.count(token) == page.text.count('name="csrf_token"')  # each form: this token
        assert _language_switch(second, tokens[0]) == 403  # the first browser's token is not the second's
        assert _language_switch(first, tokens[1]) == 403
        assert _language_switch(first, tokens[2]) == 303
        assert _language_switch(second, tokens[3]) == 303
        assert first.cookies["cabinet_browser"] != second.cookies["cabinet_browser"]


def test_a_change_to_the_invitation_shows_at_once(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env,
                                                   clock: FakeClock):
    link = _invite(cli, mailbox, seed)
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        before = client.get(link).text
        assert "valid until" in before and "withdrew" not in before
        assert client.get(link).text.replace(csrf_of(client.get(link).text), "").count("valid until") == 1
        invitation_id = env.sql("SELECT id FROM invitations")[0][0]
        cli("invitation", "revoke", str(invitation_id))
        after = client.get(link).text  # the same second, the same minute: only the state changed
        assert "withdrew this invitation" in after and "valid until" not in after


def test_the_deadline_text_follows_the_clock(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env,
                                              clock: FakeClock):
    link = _invite(cli, mailbox, seed)
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        first = client.get(link).text
        clock.advance(days=3)
        later = client.get(link).text
        assert first != later and "valid until" in later
        clock.advance(days=60)
        assert "expired" in client.get(link).text


def test_the_kept_page_outlives_the_minute_until_its_deadline_text_changes(
        server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env, clock: FakeClock):
    """The built-in page shows no ``now`` of its own (only "in 4 weeks", followed as it renders): a new
    minute does not render it again, a new deadline text does."""
    link = _invite(cli, mailbox, seed)
    clock.freeze()  # after the email: the CLI queued it on the system clock
    pages = server.service.pages
    assert not pages.reads_clock("invitation.html")
    renders: list[str] = []
    render = pages.render

    def counted(name: str, *args: object) -> str:
        renders.append(name)
        return render(name, *args)

    pages.render = counted  # type: ignore[method-assign]  # the real render, counted
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        first = client.get(link).text
        assert renders == ["invitation.html"]
        clock.advance(minutes=3)
        again = client.get(link).text
        assert renders == ["invitation.html"]  # served from the kept page
        assert again.replace(csrf_of(again), "") == first.replace(csrf_of(first), "")
        clock.advance(days=14)  # "in 4 weeks" becomes "in 2 weeks"
        later = client.get(link).text
        assert renders == ["invitation.html", "invitation.html"] and later != first


def test_a_kept_page_is_served_only_in_its_own_language(
        server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env, clock: FakeClock):
    """The language is part of the key a kept page is found by (looked up before the page's values are
    put together): a browser asking in French is not served the English page kept a moment before, and
    the English one is still kept for the next English visitor."""
    link = _invite(cli, mailbox, seed)
    clock.freeze()  # after the email: one minute, one deadline text for every GET
    pages = server.service.pages
    renders: list[str] = []
    render = pages.render

    def counted(name: str, locale: str, *args: object) -> str:
        renders.append(locale)
        return render(name, locale, *args)

    pages.render = counted  # type: ignore[method-assign]  # the real render, counted
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        english = client.get(link, headers={"Accept-Language": "en"}).text
        french = client.get(link, headers={"Accept-Language": "fr"}).text
        again = client.get(link, headers={"Accept-Language": "en"}).text
    assert "This invitation is valid until" in english
    assert "Cette invitation est valide jusqu" in french and "valid until" not in french
    assert renders == ["en", "fr"]  # the third served from the kept English page
    assert again.replace(csrf_of(again), "") == english.replace(csrf_of(english), "")


def test_a_new_browsers_link_page_leaves_no_garbage_cycles(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env):
    """A link page for a new browser (its id, token and cookie minted) frees what it made as soon as it
    is done, without the cyclic collector: each page used to leave its visitor, token and a closure in a
    cycle, and the collector ran every few hundred pages. (The server's background work may leave its
    own garbage meanwhile: only the page's is looked for.)"""
    link = _invite(cli, mailbox, seed)
    host, port = env.base_url.removeprefix("http://").split(":")
    request = f"GET {link} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    with socket.create_connection((host, int(port))) as conn:  # a raw client: none of its own garbage
        answers = conn.makefile("rb")

        def page() -> bytes:
            conn.sendall(request)
            length = 0
            while (line := answers.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            return answers.read(length)

        page(), page()  # the first opening noted (before its page is answered), the page kept
        gc.collect()
        gc.disable()
        try:
            bodies = [page() for _ in range(20)]
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds, kept to look at
            gc.collect()
            left = [o for o in gc.garbage if _made_by_a_page(o)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert all(b'name="csrf_token"' in body for body in bodies)
    assert left == []


def _made_by_a_page(thing: object) -> bool:
    module = getattr(thing, "__module__", None) if callable(thing) and not isinstance(thing, type) else None
    return (module or type(thing).__module__).startswith(("daemon.web", "aiohttp"))
