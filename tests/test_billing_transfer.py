"""Flow 2 over the real HTTP server and database: billing transfer within 48 hours."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import (
    PASSWORD,
    Browser,
    Cli,
    Env,
    FakeClock,
    Mailbox,
    Seed,
    accept_invitation,
    any_link_in,
    csrf_of,
    roster_of,
)


def transfers(cli: Cli) -> list[dict[str, object]]:
    return json.loads(cli("transfer", "list", "--json").output)


@pytest.fixture
def connected(server, browser: Browser, cli: Cli, seed: Seed, mailbox: Mailbox) -> Seed:
    accept_invitation(browser, cli, mailbox, seed.company, seed.accountant)
    return seed


def manage_link(cli: Cli, mailbox: Mailbox, seed: Seed, count: int = 1) -> str:
    cli("company", "send-link", seed.company)
    return any_link_in(mailbox.wait(seed.admin, subject="Manage", count=count)[-1])


def test_allow_then_complete_within_48_hours(connected: Seed, cli, mailbox, browser, env: Env):
    seed = connected
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    (allowed,) = mailbox.wait(seed.accountant, subject="transfer")
    text = allowed.get_body(("plain",)).get_content()
    (record,) = transfers(cli)
    assert record["state"] == "pending" and record["company"] == seed.company and record["firm"] == seed.firm
    assert "48" in text and "Complete transfer" in text
    # The primary admin by name, as the other emails name people: not a bare address.
    assert f"Julie Roy ({seed.admin}), primary admin of {seed.company}, allowed" in text
    link = any_link_in(allowed)
    before = env.sql("SELECT subscription FROM companies")
    assert browser.get(link).status_code == 200  # opening changes nothing
    assert env.sql("SELECT subscription FROM companies") == before == [("self-paid",)]

    done = browser.submit(link, link + "/complete")
    assert done.status_code == 303
    assert transfers(cli)[0]["state"] == "completed"
    assert [c["billing"] for c in roster_of(cli, seed.firm)] == ["wholesale"]
    assert env.sql("SELECT subscription FROM companies") == [("wholesale",)]
    (told,) = mailbox.wait(seed.admin, subject="wholesale")
    assert seed.firm in told.get_body(("plain",)).get_content()
    again = browser.post(link + "/complete")
    assert again.status_code == 409 and "Completed by" in again.text
    # Already on this firm's wholesale plan: allowing again is refused, in words.
    refused = cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm, expect=1)
    assert "already on this firm's wholesale billing plan" in refused.output


def test_deadline_is_shown_in_the_recipients_language_and_time_zone(server, browser, cli, seed, mailbox):
    cli(
        "staff", "add", "luc@tremblay.example", "--name", "Luc", "--firm", seed.firm, "--locale", "fr",
        "--timezone", "America/Montreal", "--password-stdin", input=PASSWORD + "\n",
    )
    accept_invitation(browser, cli, mailbox, seed.company, seed.accountant)
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    (french,) = mailbox.wait("luc@tremblay.example", subject="transfert")
    body = french.get_body(("plain",)).get_content()
    assert "Terminer le transfert" in body
    assert "HNE" in body or "heure" in body  # Eastern time, named in French
    (english,) = mailbox.wait(seed.accountant, subject="transfer")
    assert "UTC" in english.get_body(("plain",)).get_content()


def test_quickbooks_time_is_refused_in_words(server, browser, cli, mailbox, seed, env):
    cli("company", "add", "Chrono Inc", "--admin-email", "boss@chrono.example", "--quickbooks-time")
    accept_invitation(browser, cli, mailbox, "Chrono Inc", seed.accountant)
    refused = cli("transfer", "allow", "--company", "Chrono Inc", "--firm", seed.firm, expect=1)
    assert "QuickBooks Time is attached" in refused.output
    assert transfers(cli) == []
    cli("company", "send-link", "Chrono Inc")
    link = any_link_in(mailbox.wait("boss@chrono.example", subject="Manage")[-1])
    page = Browser(env.base_url).get(link)
    assert "QuickBooks Time is attached to this subscription" in page.text
    assert 'value="' in page.text and "disabled" in page.text
    firm_id = env.sql("SELECT id FROM firms WHERE name = :n", n=seed.firm)[0][0]
    admin = Browser(env.base_url)
    posted = admin.http.post(link + "/transfer", data={"csrf_token": csrf_of(admin.get(link).text), "firm_id": str(firm_id)})
    assert posted.status_code == 403 and "QuickBooks Time" in posted.text
    assert transfers(cli) == []


def test_only_a_connected_firm_and_only_the_primary_admin(connected: Seed, cli, mailbox, env):
    seed = connected
    refused = cli("transfer", "allow", "--company", seed.company, "--firm", seed.other_firm, expect=1)
    assert "not connected" in refused.output
    link = manage_link(cli, mailbox, seed)
    admin = Browser(env.base_url)
    page = admin.get(link)
    assert "Allow billing transfer to your accountant" in page.text and seed.firm in page.text
    assert seed.other_firm not in page.text  # only connected firms are offered
    cli("company", "set-admin", seed.company, "--admin-email", "new-owner@roy.example")
    stale = admin.get(link)
    assert stale.status_code == 403 and "no longer the primary admin" in stale.text
    firm_id = env.sql("SELECT id FROM firms WHERE name = :n", n=seed.firm)[0][0]
    posted = admin.http.post(link + "/transfer", data={"csrf_token": admin.csrf(), "firm_id": str(firm_id)})
    assert posted.status_code == 403
    assert transfers(cli) == []


def test_the_primary_admin_allows_on_the_manage_page(connected: Seed, cli, mailbox, env):
    seed = connected
    link = manage_link(cli, mailbox, seed)
    admin = Browser(env.base_url)
    page = admin.get(link)
    assert transfers(cli) == []
    firm_id = env.sql("SELECT id FROM firms WHERE name = :n", n=seed.firm)[0][0]
    posted = admin.http.post(link + "/transfer", data={"csrf_token": csrf_of(page.text), "firm_id": str(firm_id)})
    assert posted.status_code == 303
    assert [t["state"] for t in transfers(cli)] == ["pending"]
    shown = admin.get(link)
    assert "Revoke permission" in shown.text
    revoked = admin.http.post(link + "/revoke-transfer", data={"csrf_token": csrf_of(shown.text)})
    assert revoked.status_code == 303
    assert [t["state"] for t in transfers(cli)] == ["revoked"]
    (told,) = mailbox.wait(seed.accountant, subject="withdr")
    assert seed.company in told.get_body(("plain",)).get_content()
    assert f"given by Julie Roy ({seed.admin}) on" in told.get_body(("plain",)).get_content()


def test_reminder_12_hours_before_then_expiry_both_sides_told(connected: Seed, cli, mailbox, browser, clock: FakeClock, server):
    seed = connected
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    link = any_link_in(mailbox.wait(seed.accountant, subject="transfer")[-1])
    clock.advance(hours=35)
    server.settle()  # a scheduler pass: nothing is due yet
    assert len(mailbox.messages(seed.accountant)) == 3  # invitation, client added, transfer allowed
    clock.advance(hours=1, minutes=1)
    (reminder,) = mailbox.wait(seed.accountant, subject="Reminder")
    assert "Complete transfer" in reminder.get_body(("plain",)).get_content()
    server.settle()  # another pass: the reminder is not sent twice
    assert len([m for m in mailbox.messages(seed.accountant) if "Reminder" in str(m["Subject"])]) == 1
    clock.advance(hours=12)
    mailbox.wait(seed.accountant, subject="expired")
    mailbox.wait(seed.admin, subject="expired")
    assert transfers(cli)[0]["state"] == "expired"
    browser.sign_in(link, seed.accountant)  # 48 hours later the 12-hour session is long gone
    late = browser.post(link + "/complete")
    assert late.status_code == 409 and "48 hours" in late.text
    assert [c["billing"] for c in roster_of(cli, seed.firm)] == ["self-paid"]


def test_allowing_again_replaces_the_pending_permission(connected: Seed, cli, mailbox, browser, clock):
    seed = connected
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    first = any_link_in(mailbox.wait(seed.accountant, subject="transfer")[-1])
    time.sleep(1.1)
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    second = any_link_in(mailbox.wait(seed.accountant, subject="transfer", count=2)[-1])
    states = [(t["state"], t["expires_at"]) for t in transfers(cli)]
    assert [s for s, _ in states] == ["superseded", "pending"]
    assert states[1][1] > states[0][1]  # a fresh 48-hour window
    assert "newer transfer" in browser.get(first).text
    assert browser.post(first + "/complete").status_code == 409
    assert browser.post(second + "/complete").status_code == 303


def test_the_firm_declines_and_the_client_is_told(connected: Seed, cli, mailbox, browser):
    seed = connected
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    link = any_link_in(mailbox.wait(seed.accountant, subject="transfer")[-1])
    assert browser.submit(link, link + "/decline").status_code == 303
    assert transfers(cli)[0]["state"] == "declined"
    (told,) = mailbox.wait(seed.admin, subject="declined")
    assert seed.firm in told.get_body(("plain",)).get_content()


def test_only_a_member_of_that_firm_completes(connected: Seed, cli, mailbox, make_browser):
    seed = connected
    cli(
        "staff", "add", "outsider@gagnon.example", "--name", "Outsider", "--firm", seed.other_firm,
        "--password-stdin", input=PASSWORD + "\n",
    )
    cli("transfer", "allow", "--company", seed.company, "--firm", seed.firm)
    link = any_link_in(mailbox.wait(seed.accountant, subject="transfer")[-1])
    anonymous = make_browser()
    assert 'name="password"' in anonymous.get(link).text
    assert anonymous.post(link + "/complete").status_code == 303  # not signed in: back to the page
    outsider = make_browser()
    outsider.sign_in(link, "outsider@gagnon.example")
    assert "not a member" in outsider.get(link).text
    assert outsider.post(link + "/complete").status_code == 403
    assert transfers(cli)[0]["state"] == "pending"


def test_a_contact_not_yet_primary_admin_is_named_by_address(server, cli: Cli, seed: Seed, mailbox: Mailbox):
    """A client the firm added is connected to it; its contact has no name of their own until they become
    primary admin (the company's stands in): the staff's email names them by address, not 'Café Direct (…)'."""
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Café Direct", "--email",
        "lea@cafe.example", "--billing", "direct", "--product", "qbo-simple-start")
    cli("transfer", "allow", "--company", "Café Direct", "--firm", seed.firm)
    (allowed,) = mailbox.wait(seed.accountant, subject="transfer")
    text = allowed.get_body(("plain",)).get_content()
    assert "lea@cafe.example, primary admin of Café Direct, allowed" in text and "Café Direct (lea@" not in text
