"""Forgot password: the same answer for every address, a single-use one-hour link, sessions end."""

from __future__ import annotations

import json
import re
from email.message import EmailMessage

from mailer.maildir import text_body
from tests.conftest import PASSWORD, Browser, Env, Mailbox, RunningServer, Seed
from tests.signatures import forged

RESET_LINK = re.compile(r"https?://\S+/password-reset/[A-Za-z0-9_\-.]+")
NEW_PASSWORD = "a brand new passphrase"


def reset_link(message: EmailMessage) -> str:
    match = RESET_LINK.search(text_body(message))
    assert match, text_body(message)
    return match.group(0)


def without_tokens(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html)


def signed_in(browser: Browser) -> bool:
    return 'name="password"' not in browser.get("/").text


def test_the_sign_in_page_offers_a_reset(browser: Browser) -> None:
    assert 'href="/password-reset"' in browser.get("/sign-in").text
    assert 'name="email"' in browser.get("/password-reset").text


def test_known_and_unknown_addresses_get_the_same_answer(
    seed: Seed, server: RunningServer, make_browser, mailbox: Mailbox
) -> None:
    known = make_browser().post("/password-reset", email=seed.accountant.upper())
    unknown = make_browser().post("/password-reset", email="nobody@tremblay.example")
    malformed = make_browser().post("/password-reset", email="not an address")
    assert known.status_code == unknown.status_code == malformed.status_code == 200
    assert without_tokens(known.text) == without_tokens(unknown.text) == without_tokens(malformed.text)
    assert len(mailbox.wait(seed.accountant, subject="Reset your Cabinet password")) == 1
    server.settle()
    assert mailbox.messages("nobody@tremblay.example") == []


def test_the_link_sets_a_password_once_and_ends_every_session(
    cli, seed: Seed, server: RunningServer, make_browser, mailbox: Mailbox, env: Env
) -> None:
    elsewhere = make_browser()
    assert elsewhere.sign_in("/", seed.accountant).status_code == 303 and signed_in(elsewhere)
    visitor = make_browser()
    visitor.post("/password-reset", email=seed.accountant)
    link = reset_link(mailbox.wait(seed.accountant, subject="Reset")[-1])
    form = visitor.get(link)
    assert form.status_code == 200 and seed.accountant in form.text
    before = env.sql("SELECT password_hash FROM users WHERE email = :e", e=seed.accountant)

    mismatch = visitor.submit(link, link, password=NEW_PASSWORD, confirm=NEW_PASSWORD + "x")
    assert mismatch.status_code == 400 and "not the same" in mismatch.text
    short = visitor.submit(link, link, password="short", confirm="short")
    assert short.status_code == 400 and "at least 10" in short.text
    assert env.sql("SELECT password_hash FROM users WHERE email = :e", e=seed.accountant) == before
    assert signed_in(elsewhere)

    done = visitor.submit(link, link, password=NEW_PASSWORD, confirm=NEW_PASSWORD)
    assert done.status_code == 200 and "password has been changed" in done.text
    assert not signed_in(elsewhere)
    assert env.sql("SELECT count(*) FROM web_sessions") == [(0,)]

    # Once only: the same link is spent, for reading and for acting.
    again = visitor.get(link)
    assert again.status_code == 404 and "already been used" in again.text
    replay = visitor.http.post(link, data={"csrf_token": visitor.csrf(), "password": "another passphrase!",
                                           "confirm": "another passphrase!"})
    assert replay.status_code == 404
    assert make_browser().sign_in("/", seed.accountant, PASSWORD).status_code == 401
    fresh = make_browser()
    assert fresh.sign_in("/", seed.accountant, NEW_PASSWORD).status_code == 303 and signed_in(fresh)
    explained = json.loads(cli("link", "explain", link, "--json").output)
    assert (explained["purpose"], explained["issued_to"], explained["current"]) == ("password reset", seed.accountant, False)
    assert explained["state"].startswith("used")
    assert explained["used"]["kind"] == "staff.password_reset"


def test_a_link_expires_after_an_hour_and_a_tampered_one_is_refused(
    seed: Seed, server: RunningServer, browser: Browser, mailbox: Mailbox
) -> None:
    browser.post("/password-reset", email=seed.accountant)
    link = reset_link(mailbox.wait(seed.accountant, subject="Reset")[-1])
    assert browser.get(forged(link)).status_code == 404
    server.clock.advance(minutes=61)
    assert browser.get(link).status_code == 410
    refused = browser.submit("/sign-in", link, password=NEW_PASSWORD, confirm=NEW_PASSWORD)
    assert refused.status_code == 410
    assert browser.sign_in("/", seed.accountant, PASSWORD).status_code == 303


def test_reset_emails_per_address_are_limited(
    seed: Seed, server: RunningServer, browser: Browser, mailbox: Mailbox
) -> None:
    for _ in range(5):
        assert browser.post("/password-reset", email=seed.accountant).status_code == 200
    server.settle()
    assert len(mailbox.messages(seed.accountant)) == 3
    server.clock.advance(minutes=61)
    browser.post("/password-reset", email=seed.accountant)
    assert len(mailbox.wait(seed.accountant, count=4)) == 4


def test_a_disabled_account_gets_no_link(cli, seed: Seed, server: RunningServer, browser: Browser,
                                         mailbox: Mailbox) -> None:
    browser.post("/password-reset", email=seed.accountant)
    link = reset_link(mailbox.wait(seed.accountant, subject="Reset")[-1])
    cli("staff", "disable", seed.accountant)
    assert browser.get(link).status_code == 404
    browser.post("/password-reset", email=seed.accountant)
    server.settle()
    assert len(mailbox.messages(seed.accountant)) == 1
