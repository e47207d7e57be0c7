"""`cabinet link explain URL`: what a link is and what became of it, without acting on it."""

from __future__ import annotations

import json

from tests.conftest import Browser, Cli, Env, Mailbox, RunningServer, Seed, any_link_in, link_in
from tests.signatures import forged


def explain(cli: Cli, url: str) -> dict:
    return json.loads(cli("link", "explain", url, "--json").output)


def tables(env: Env) -> list:
    return [env.sql(f"SELECT count(*) FROM {t}") for t in ("events", "outbox", "invitations", "clients")]


def test_an_invitation_link_before_and_after_it_is_used(
    cli: Cli, seed: Seed, server: RunningServer, browser: Browser, mailbox: Mailbox, env: Env
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[-1])
    before = tables(env)
    found = explain(cli, link)
    assert tables(env) == before  # reads only
    assert found["purpose"] == "invitation"
    assert found["issued_to"] == seed.accountant
    assert found["state"] == "pending" and found["current"] is True and found["link_expired"] is False
    assert found["used"] is None
    assert found["issued_at"] < found["expires_at"]
    assert found["detail"]["company"] == seed.company
    text = cli("link", "explain", link).output
    assert "Issued to:" in text and seed.accountant in text and "Used:" in text

    browser.sign_in(link, seed.accountant)
    assert browser.submit(link, link + "/accept").status_code == 303
    after = explain(cli, link)
    assert after["state"] == "accepted"
    assert after["used"]["kind"] == "invitation.accepted" and after["used"]["actor"] == seed.accountant
    assert after["detail"]["firm"] == seed.firm


def test_a_replaced_link_says_so(cli: Cli, seed: Seed, server: RunningServer, mailbox: Mailbox) -> None:
    cli("company", "send-link", seed.company)
    first = any_link_in(mailbox.wait(seed.admin)[-1])
    found = explain(cli, first)
    assert (found["purpose"], found["issued_to"], found["current"]) == ("company management", seed.admin, True)
    cli("company", "set-admin", seed.company, "--admin-email", "new-admin@roy.example", "--admin-name", "New Admin")
    # The manage link is tied to the address it was sent to: no longer current once the admin changed.
    after = explain(cli, first)
    assert after["current"] is False and after["issued_to"] == seed.admin
    assert after["state"] == "primary admin is new-admin@roy.example"
    assert any(e["kind"] == "company.primary_admin_changed" for e in after["events"])


def test_tampered_and_foreign_links_are_refused(cli: Cli, seed: Seed, server: RunningServer, mailbox: Mailbox) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[-1])
    tampered = forged(link)
    refused = cli("link", "explain", tampered, expect=1)
    assert "[link.invalid]" in refused.output
    assert "[link.invalid]" in cli("link", "explain", "https://example.com/somewhere/else", expect=1).output
    # A token signed for one purpose never explains as another.
    token = link.rsplit("/", 1)[1]
    assert "[link.invalid]" in cli("link", "explain", f"https://x.example/transfers/{token}", expect=1).output
