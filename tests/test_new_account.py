"""An accountant invited at an address with no account creates one from the invitation, then accepts."""

from __future__ import annotations

import json
import re

from mailer.maildir import text_body
from tests.conftest import Browser, Cli, Env, Mailbox, RunningServer, Seed, link_in, roster_of

ACCOUNT_LINK = re.compile(r"https?://\S+/accounts/new/[A-Za-z0-9_\-.]+")
NEW = "luc@cote.example"
PASSWORD = "a long new passphrase"


def test_create_an_account_from_an_invitation_then_accept(
    cli: Cli, seed: Seed, server: RunningServer, browser: Browser, mailbox: Mailbox, env: Env
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", NEW)
    link = link_in(mailbox.wait(NEW, subject="Invitation")[-1])
    assert "Create your account" in browser.get(link).text
    offered = browser.submit(link, link + "/account")
    assert offered.status_code == 200 and "link to create your account" in offered.text
    message = mailbox.wait(NEW, subject="Create your Cabinet account")[-1]
    account_link = ACCOUNT_LINK.search(text_body(message)).group(0)

    form = browser.get(account_link)
    assert form.status_code == 200 and NEW in form.text
    fields = {"name": "Luc Côté", "firm": "Côté Fiscalité", "locale": "en"}
    mismatch = browser.submit(account_link, account_link, **fields, password=PASSWORD, confirm="something else")
    assert mismatch.status_code == 400 and "not the same" in mismatch.text
    taken = browser.submit(account_link, account_link, **{**fields, "firm": seed.firm}, password=PASSWORD,
                           confirm=PASSWORD)
    assert taken.status_code == 409 and "already uses Cabinet" in taken.text
    assert env.sql("SELECT count(*) FROM users WHERE email = :e", e=NEW) == [(0,)]

    created = browser.submit(account_link, account_link, **fields, password=PASSWORD, confirm=PASSWORD)
    assert created.status_code == 303 and created.headers["Location"].startswith("/invitations/")
    page = browser.get(created.headers["Location"])
    assert "Accept invitation" in page.text and "Create your account" not in page.text
    assert browser.submit(link, link + "/accept").status_code == 303
    assert [c["name"] for c in roster_of(cli, "Côté Fiscalité")] == [seed.company]
    staff = {u["email"]: u for u in json.loads(cli("staff", "list", "--json").output)}
    assert staff[NEW]["name"] == "Luc Côté" and staff[NEW]["firms"] == ["Côté Fiscalité"]

    # Once only: the account exists, so the link is spent.
    again = browser.get(account_link)
    assert again.status_code == 404 and "already been used" in again.text
    explained = json.loads(cli("link", "explain", account_link, "--json").output)
    assert explained["purpose"] == "account creation" and explained["issued_to"] == NEW


def test_an_address_with_an_account_is_not_offered_one(
    cli: Cli, seed: Seed, server: RunningServer, browser: Browser, mailbox: Mailbox
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[-1])
    assert "Create your account" not in browser.get(link).text
    # Asking anyway sends nothing.
    assert browser.submit(link, link + "/account").status_code == 200
    server.settle()
    assert len(mailbox.messages(seed.accountant)) == 1
