"""The signed-out invitation page is kept by the link's row as the database gives it
(``daemon.web.invitations.show``): whatever the page shows, from the invitation's row or the rows it joins,
shows on the next request once changed, and what the clock decides (the invitation's status at its
expiry date) bounds how long a kept page is served, whatever its template shows."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import event

from daemon.app import build
from daemon.config import load_config
from tests.conftest import Cli, Env, FakeClock, Mailbox, RunningServer, Seed, csrf_of, link_in, write_config


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """Instances that read overrides from ``overrides/`` (none unless a test puts one there)."""
    (tmp_path / "overrides").mkdir()
    return write_config(tmp_path, '\n[templates]\ndir = "overrides"\n')


def _invite(cli: Cli, mailbox: Mailbox, seed: Seed) -> str:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    return link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1)[-1])


def _without_token(page: httpx.Response) -> str:
    return page.text.replace(csrf_of(page.text), "")


def test_a_kept_page_is_not_served_past_the_invitations_expiry(
        server: RunningServer, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env, clock: FakeClock):
    """A template that shows the invitation's status and no date: nothing on the page itself changes with
    the clock, but the status does, at the expiry date; the kept page must not outlive it."""
    (env.root / "overrides" / "web").mkdir()
    (env.root / "overrides" / "web" / "invitation.html").write_text(
        '{% extends "layout.html" %}{% block content %}<p>Status: {{ invitation.status }}</p>{% endblock %}\n')
    server.service.reload()
    link = _invite(cli, mailbox, seed)
    clock.freeze()  # after the email: the CLI queued it on the system clock
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        assert "Status: pending" in client.get(link).text
        assert "Status: pending" in client.get(link).text  # kept
        clock.advance(days=29, hours=23)
        assert "Status: pending" in client.get(link).text
        clock.advance(hours=2)  # past the 30 days an invitation is valid
        assert "Status: expired" in client.get(link).text


def test_what_the_page_shows_from_other_rows_shows_at_once(
        server: RunningServer, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env, clock: FakeClock):
    """The company's name, the invited accountant's time zone (the page's dates are in it), and the
    invitation's acceptance by the firm: each changed between two requests of the same second."""
    link = _invite(cli, mailbox, seed)
    clock.freeze()
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        client.get(link)  # its first opening recorded
        before = client.get(link)
        assert seed.company in before.text and _without_token(client.get(link)) == _without_token(before)
        env.write("UPDATE companies SET name = 'Boulangerie Roy et Fils' WHERE name = :name", name=seed.company)
        renamed = client.get(link)
        assert "Boulangerie Roy et Fils" in renamed.text
        cli("staff", "edit", seed.accountant, "--timezone", "Asia/Tokyo")
        zoned = client.get(link)
        assert "+0900" in zoned.text  # Tokyo time
        assert _without_token(zoned) != _without_token(renamed)
        user_id = env.sql("SELECT id FROM users WHERE email = :e", e=seed.accountant)[0][0]
        server.cabinet.roster.accept_invitation(link.rsplit("/", 1)[1], user_id, None)
        accepted = client.get(link).text
        assert "This invitation was accepted by Marie Tremblay" in accepted and "valid until" not in accepted


def test_a_page_that_shows_now_is_kept_for_its_minute_only(
        server: RunningServer, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env, clock: FakeClock):
    """A template that shows ``now`` (to the minute) is kept while the minute lasts, and not a moment past
    it: rendered at :50, it is rendered again 15 seconds later, in the next minute."""
    (env.root / "overrides" / "web").mkdir()
    (env.root / "overrides" / "web" / "invitation.html").write_text(
        '{% extends "layout.html" %}{% block content %}<p>Shown at {{ now|datetime }}</p>{% endblock %}\n')
    server.service.reload()
    assert server.service.pages.reads_clock("invitation.html")
    link = _invite(cli, mailbox, seed)
    clock.freeze()
    clock.advance(seconds=(50 - clock.now().second) % 60 - clock.now().microsecond / 1e6)  # hh:mm:50.000000
    renders: list[str] = []
    render = server.service.pages.render

    def counted(name: str, *args: object) -> str:
        renders.append(name)
        return render(name, *args)  # type: ignore[arg-type]

    server.service.pages.render = counted  # type: ignore[method-assign]  # the real render, counted
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        client.get(link)  # its first opening recorded
        first = client.get(link)
        clock.advance(seconds=9)
        assert _without_token(client.get(link)) == _without_token(first)  # hh:mm:59: kept
        count = len(renders)
        clock.advance(seconds=1)  # the next minute, to the microsecond
        later = client.get(link)
        assert len(renders) == count + 1 and _without_token(later) != _without_token(first)


def _opened(env: Env) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in env.sql(
        "SELECT actor, detail FROM events WHERE kind = 'link.opened' ORDER BY id")]


def test_a_link_known_opened_is_read_without_asking_again(
        server: RunningServer, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env, clock: FakeClock):
    """Once this process has recorded a link's first opening, its page's read leaves out the "opened
    already?" test (``link_opens.KnownOpenings``); the opening stays recorded once, and the page still
    shows what the database has (here a revoke made meanwhile)."""
    link = _invite(cli, mailbox, seed)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "invitations.nonce = " in statement:  # the link page's read (the link names id and nonce)
            statements.append(statement)

    engine = server.cabinet.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        with httpx.Client(base_url=env.base_url, timeout=60) as client:
            first = client.get(link)  # the first opening, written before the page is answered
            again = client.get(link)
            invitation_id = env.sql("SELECT id FROM invitations")[0][0]
            cli("invitation", "revoke", str(invitation_id))
            revoked = client.get(link).text
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert first.status_code == again.status_code == 200
    assert _without_token(again) == _without_token(first)
    assert "withdrew this invitation" in revoked
    assert ["EXISTS" in statement for statement in statements] == [True, False, False]
    assert _opened(env) == [(seed.accountant, f'{{"invitation_id": {invitation_id}, "purpose": "invitation", '
                                              f'"ref": {invitation_id}}}')]


def test_an_opening_recorded_by_another_instance_is_not_recorded_again(
        server: RunningServer, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env):
    """Another instance on the same database recorded the first opening: this one knows nothing of it,
    asks, finds it, and from then on knows; the event is there once."""
    link = _invite(cli, mailbox, seed)
    other = build(load_config(env.config_path))  # another instance's Cabinet, its own process state
    try:
        opening = other.link_opens.opening_of(urlsplit(link).path)
        assert opening is not None
        assert other.link_opens.record_openings([opening]) == [None]
    finally:
        other.close()
    assert len(_opened(env)) == 1
    invitation_id = env.sql("SELECT id FROM invitations")[0][0]
    known = server.cabinet.link_opens.known.ids
    assert invitation_id not in known
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        assert client.get(link).status_code == 200
        assert invitation_id in known  # read as recorded
        assert client.get(link).status_code == 200
    assert len(_opened(env)) == 1
