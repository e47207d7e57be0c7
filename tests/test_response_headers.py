"""Every header a page answers with, name and value, as Cabinet has sent them: a link page to a new
browser, the same page signed in, and the error pages (the site's 404 and a forged link). Only the
values that change per response are masked: the date, the length, the browser id in the cookie."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Browser, Cli, Env, Mailbox, Seed, link_in

SECURED = [
    ("cache-control", "no-store"),
    ("content-security-policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
     "frame-ancestors 'none'; base-uri 'none'"),
    ("cross-origin-opener-policy", "same-origin"),
    ("referrer-policy", "same-origin"),
    ("server", "Cabinet"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
]
PAGE = sorted([*SECURED, ("content-type", "text/html; charset=utf-8"), ("content-length", "N"), ("date", "D")])
NEW_BROWSER_COOKIE = ("set-cookie", "cabinet_browser=SIGNED; HttpOnly; Path=/; SameSite=Lax")
# A browser cookie: what ``LinkSigner`` signs (payload.timestamp.signature, URL-safe base64).
_SIGNED = re.compile(r"(?<=cabinet_browser=)[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+(?=;)")


def header_set(response: httpx.Response) -> list[tuple[str, str]]:
    """Every header of ``response`` (repeated ones each), the per-response values masked."""
    masked = {"date": "D", "content-length": "N"}
    return sorted(
        (name, masked.get(name) or (_SIGNED.sub("SIGNED", value) if name == "set-cookie" else value))
        for name, value in ((n.decode().lower(), v.decode()) for n, v in response.headers.raw)
    )


def test_a_link_page_signed_out_signed_in_and_an_error_page_send_these_headers(
    server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env,
):
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    url = link_in(mailbox.wait(seed.accountant, subject="Invitation", count=1)[-1])
    link = httpx.URL(url).path
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        new_browser = client.get(link)  # a page with a form: the new browser gets its cookie
        again = client.get(link)  # the same browser: no new cookie
        missing = client.get("/no-such-page")
        forged = client.get("/invitations/forged")
    assert (new_browser.status_code, again.status_code, missing.status_code, forged.status_code) == (200, 200, 404, 404)
    assert header_set(new_browser) == sorted([*PAGE, NEW_BROWSER_COOKIE])
    assert header_set(again) == PAGE
    assert header_set(missing) == PAGE
    assert header_set(forged) == PAGE

    browser = Browser(env.base_url)
    try:
        browser.get(url)
        signed_in = browser.sign_in(url, seed.accountant)
        assert signed_in.status_code == 303
        page = browser.get(url)
    finally:
        browser.close()
    assert page.status_code == 200 and "/sign-out" in page.text  # signed in
    assert header_set(page) == PAGE
