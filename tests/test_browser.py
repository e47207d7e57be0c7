"""The accept flow driven in headless Chromium (Debian's package, through Playwright)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD, Cli, Mailbox, Seed, link_in

pytest.importorskip("playwright.sync_api")  # every test here drives a browser

pytestmark = pytest.mark.browser


def test_accountant_accepts_in_a_real_browser(chromium, server, cli: Cli, seed: Seed, mailbox: Mailbox):
    cli("firm", "add", "Côté Fiscalité", "--email", "info@cote.example")
    cli(
        "staff", "add", "luc@multi.example", "--name", "Luc Côté", "--firm", seed.firm, "--firm", "Côté Fiscalité",
        "--password-stdin", input=PASSWORD + "\n",
    )
    cli("invitation", "send", "--company", seed.company, "--email", "luc@multi.example")
    link = link_in(mailbox.wait("luc@multi.example", subject="Invitation")[0])

    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    page.goto(link)
    page.get_by_label("Email").fill("luc@multi.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Côté Fiscalité").check()
    page.get_by_role("button", name="Accept invitation").click()
    page.wait_for_url(link)
    assert "accepted by Luc Côté" in page.content()
    context.close()

    roster = json.loads(cli("client", "list", "--firm", "Côté Fiscalité", "--json").output)
    assert [client["name"] for client in roster] == [seed.company]
    assert json.loads(cli("client", "list", "--firm", seed.firm, "--json").output) == []


def test_french_pages_in_a_real_browser(chromium, server, cli: Cli, seed: Seed, mailbox: Mailbox):
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    link = link_in(mailbox.wait(seed.accountant, subject="Invitation")[0])
    context = chromium.new_context(locale="fr-CA", extra_http_headers={"Accept-Language": "fr-CA,fr"})
    page = context.new_page()
    page.goto(link)
    page.get_by_label("Courriel").fill(seed.accountant)
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    # Signed in, the page follows Marie's own language (en): the button is in English.
    page.get_by_role("button", name="Accept invitation").click()
    page.wait_for_url(link)
    context.close()
    roster = json.loads(cli("client", "list", "--firm", seed.firm, "--json").output)
    assert len(roster) == 1


def test_add_client_page_in_a_real_browser(chromium, server, cli: Cli, seed: Seed):
    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    page.goto(server.env.base_url + "/clients/new")
    page.get_by_label("Email").fill(seed.accountant)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Business").check()
    page.locator("#name").fill("Garage Lévesque")  # its label ends with the required mark
    page.get_by_label("Email").fill("marc@garage.example")
    page.get_by_label("Wholesale billing discount (billed to the firm)").check()
    page.get_by_label("QuickBooks Online Plus").check()
    page.get_by_label("QuickBooks Online Payroll Core").check()
    page.get_by_label("Make me the primary admin").check()
    page.get_by_role("button", name="Save").click()
    page.get_by_text("is on Tremblay CPA's client list").wait_for()
    context.close()
    (client,) = json.loads(cli("client", "list", "--firm", seed.firm, "--json").output)
    assert client["name"] == "Garage Lévesque" and client["billing"] == "wholesale"
    assert client["products"] == ["qbo-plus", "payroll-core"] and client["primary_admin"] == seed.accountant


def test_allow_and_complete_transfer_in_a_real_browser(chromium, server, cli: Cli, seed: Seed, mailbox: Mailbox):
    from tests.conftest import Browser, accept_invitation, any_link_in

    accept_invitation(Browser(server.env.base_url), cli, mailbox, seed.company, seed.accountant)
    cli("company", "send-link", seed.company)
    manage = any_link_in(mailbox.wait(seed.admin, subject="Manage")[-1])

    admin = chromium.new_context(locale="en-US").new_page()
    admin.goto(manage)
    admin.get_by_label(seed.firm).check()
    admin.get_by_role("button", name="Allow transfer").click()
    admin.get_by_role("button", name="Revoke permission").wait_for()
    admin.context.close()

    complete = any_link_in(mailbox.wait(seed.accountant, subject="transfer")[-1])
    staff = chromium.new_context(locale="en-US").new_page()
    staff.goto(complete)
    staff.get_by_label("Email").fill(seed.accountant)
    staff.get_by_label("Password").fill(PASSWORD)
    staff.get_by_role("button", name="Sign in").click()
    staff.get_by_role("button", name="Complete transfer").click()
    staff.get_by_role("button", name="Yes, complete the transfer").click()  # the confirmation step
    staff.get_by_text("Completed by").wait_for()
    staff.context.close()
    (client,) = json.loads(cli("client", "list", "--firm", seed.firm, "--json").output)
    assert client["billing"] == "wholesale"
