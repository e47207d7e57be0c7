"""A client page's actions for its firm's staff — edit the contact, resend the setup or payment link,
withdraw an invitation the client's company sent — and the same through `cabinet client edit`,
`cabinet client resend-link`: the real HTTP server, the real Maildir, the real database."""

from __future__ import annotations

import os

import pytest

from tests.conftest import PASSWORD, Cli, Mailbox, Seed, any_link_in, csrf_of
from tests import test_workspace
from tests.test_workspace import add_staff, client_id, signed_in

quiet = test_workspace.quiet  # the fixture, found by pytest under this module's name for it


def add_business(cli: Cli, firm: str, name: str, email: str, billing: str = "wholesale") -> None:
    product = "qbo-plus" if billing == "wholesale" else "qbo-simple-start"
    cli("client", "add", "--firm", firm, "--kind", "business", "--name", name, "--email", email,
        "--billing", billing, "--product", product)


def test_staff_edit_the_contact_and_resend_the_setup_link_to_the_corrected_address(
    server, cli: Cli, seed: Seed, env, mailbox: Mailbox
) -> None:
    add_business(cli, seed.firm, "Garage Lévesque", "marc@garage.exmaple")  # a typo in the address
    first = any_link_in(mailbox.wait("marc@garage.exmaple", subject="primary admin")[-1])
    marie = signed_in(env, seed.accountant)
    url = f"/clients/{client_id(env, 'Garage Lévesque')}"
    page = marie.get(url).text
    assert "Resend the setup link" in page and "Resend the payment link" not in page

    # A bad address is refused beside the form, keeping what was typed; nothing changes.
    bad = marie.http.post(url + "/contact", data={"csrf_token": csrf_of(page), "email": "marc@", "phone": "1"})
    assert bad.status_code == 400 and "is not a valid email address" in bad.text and 'value="marc@"' in bad.text
    assert env.sql("SELECT email, phone FROM clients")[0] == ("marc@garage.exmaple", None)

    saved = marie.http.post(url + "/contact", data={
        "csrf_token": csrf_of(page), "email": " Marc@Garage.example ", "phone": " 514  555 0100 "})
    assert saved.status_code == 303 and saved.headers["Location"] == url + "?done=contact"
    after = marie.get(saved.headers["Location"]).text
    assert "Contact details saved." in after and "Contact details changed" in after
    assert env.sql("SELECT email, phone FROM clients")[0] == ("marc@garage.example", "514 555 0100")
    # Not yet primary admin: the company's admin and the setup invitation follow the corrected address.
    assert env.sql("SELECT admin_email FROM companies WHERE name = 'Garage Lévesque'")[0][0] == "marc@garage.example"

    resent = marie.http.post(url + "/resend", data={"csrf_token": csrf_of(after), "link": "setup"})
    assert resent.status_code == 303 and resent.headers["Location"] == url + "?done=setup"
    assert "Setup link emailed again." in marie.get(resent.headers["Location"]).text
    fresh = any_link_in(mailbox.wait("marc@garage.example", subject="primary admin")[-1])
    assert fresh != first
    assert marie.get(first).status_code == 404  # the earlier link no longer works
    assert marie.get(fresh).status_code == 200
    # The payment link is a direct-discount trial's only.
    refused = marie.http.post(url + "/resend", data={"csrf_token": csrf_of(after), "link": "payment"})
    assert refused.status_code == 409 and "has no payment link waiting" in refused.text
    events = [tuple(e) for e in env.sql("SELECT kind, actor, channel FROM events WHERE kind LIKE 'client.%' ORDER BY id")]
    assert events[1:] == [("client.contact_changed", seed.accountant, "link"),
                          ("client.setup_link_resent", seed.accountant, "link")]
    marie.close()


def test_resend_the_payment_link_of_a_trial_and_refuse_what_does_not_apply(
    server, cli: Cli, seed: Seed, env, mailbox: Mailbox
) -> None:
    add_business(cli, seed.firm, "Café Côté", "anne@cafe.example", billing="direct")
    cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", "Anne Roy", "--billing", "none")
    mailbox.wait("anne@cafe.example", count=2)
    marie = signed_in(env, seed.accountant)
    marie.http.post("/language", data={"csrf_token": marie.csrf(), "language": "fr", "next": "/"})
    cafe = f"/clients/{client_id(env, 'Café Côté')}"
    page = marie.get(cafe).text
    assert "Renvoyer le lien de paiement" in page and "Renvoyer le lien de configuration" in page
    done = marie.http.post(cafe + "/resend", data={"csrf_token": csrf_of(page), "link": "payment"})
    assert done.status_code == 303 and "Lien de paiement envoyé de nouveau" in marie.get(done.headers["Location"]).text
    assert len(mailbox.wait("anne@cafe.example", count=3)) == 3

    anne = f"/clients/{client_id(env, 'Anne Roy')}"
    page = marie.get(anne).text
    assert "/resend" not in page  # nothing to resend: no button
    refused = marie.http.post(anne + "/resend", data={"csrf_token": csrf_of(page), "link": "setup"})
    assert refused.status_code == 409 and "aucun lien de configuration en attente" in refused.text
    assert "client.no_setup_link" not in refused.text
    # Without the page's token, nothing is done.
    assert marie.http.post(cafe + "/resend", data={"link": "payment"}).status_code == 403
    assert len(mailbox.messages("anne@cafe.example")) == 3
    marie.close()


def test_another_firms_staff_cannot_act_on_a_client(server, cli: Cli, seed: Seed, env, mailbox: Mailbox) -> None:
    add_business(cli, seed.firm, "Garage Lévesque", "marc@garage.example")
    add_staff(cli, "pierre@gagnon.example", "Pierre Gagnon", seed.other_firm)
    pierre = signed_in(env, "pierre@gagnon.example")
    url = f"/clients/{client_id(env, 'Garage Lévesque')}"
    token = csrf_of(pierre.get("/profile").text)
    for action, fields in (("contact", {"email": "x@evil.example", "phone": ""}), ("resend", {"link": "setup"}),
                           ("withdraw", {"invitation_id": "1"})):
        answer = pierre.http.post(f"{url}/{action}", data={"csrf_token": token, **fields})
        assert answer.status_code == 404, (action, answer.status_code)
    assert env.sql("SELECT email FROM clients")[0][0] == "marc@garage.example"
    assert pierre.get("/sign-in").status_code == 200
    # Signed out: sent to sign in.
    signed_out = pierre.http.post("/sign-out", data={"csrf_token": token})
    assert signed_out.status_code == 303
    pierre.close()


def test_staff_withdraw_an_invitation_the_clients_company_sent(server, cli: Cli, seed: Seed, env, mailbox) -> None:
    add_business(cli, seed.firm, "Garage Lévesque", "marc@garage.example")
    cli("invitation", "send", "--company", "Garage Lévesque", "--email", "luc@cote.example")
    cli("invitation", "send", "--company", seed.company, "--email", "luc@cote.example")
    marie = signed_in(env, seed.accountant)
    url = f"/clients/{client_id(env, 'Garage Lévesque')}"
    page = marie.get(url).text
    assert "To luc@cote.example, until" in page
    ids = dict(env.sql("SELECT c.name, i.id FROM invitations i JOIN companies c ON c.id = i.company_id"))
    # Another company's invitation is not this client's.
    other = marie.http.post(url + "/withdraw", data={"csrf_token": csrf_of(page), "invitation_id": str(ids[seed.company])})
    assert other.status_code == 404 and "No invitation" in other.text
    done = marie.http.post(url + "/withdraw", data={"csrf_token": csrf_of(page),
                                                    "invitation_id": str(ids["Garage Lévesque"])})
    assert done.status_code == 303 and done.headers["Location"] == url + "?done=withdraw"
    after = marie.get(done.headers["Location"]).text
    assert "Invitation withdrawn." in after and "To luc@cote.example" not in after
    assert sorted(r[0] for r in env.sql("SELECT state FROM invitations")) == ["pending", "revoked"]
    assert [tuple(r) for r in env.sql("SELECT actor, channel FROM events WHERE kind = 'invitation.revoked'")] == [
        (seed.accountant, "link")]
    marie.close()


def test_the_cli_edits_a_contact_and_resends_a_link(server, cli: Cli, seed: Seed, env, mailbox: Mailbox) -> None:
    add_business(cli, seed.firm, "Garage Lévesque", "marc@garage.example")
    out = cli("client", "edit", "--firm", seed.firm, "--name", "garage lévesque", "--phone", "418 555 0199").output
    assert "email marc@garage.example, phone 418 555 0199" in out
    out = cli("client", "resend-link", "--firm", seed.firm, "--name", "Garage Lévesque").output
    assert "Setup link emailed again" in out
    assert len(mailbox.wait("marc@garage.example", count=2, subject="primary admin")) == 2
    assert [tuple(r) for r in env.sql("SELECT actor, channel FROM events WHERE kind = 'client.setup_link_resent'")] == [
        ("operator", "cli")]


def test_a_client_page_costs_the_same_statements_whatever_the_roster(quiet) -> None:
    """A client with a company, products, events, emails and a pending invitation: its page, the list,
    a search and Pending cost the same statements at 1 and at 301 clients."""
    from click.testing import CliRunner

    from daemon.cli import cli as cabinet_cli
    from tests.test_workspace import count_statements, firm_id, many_clients

    env = quiet.env
    runner = CliRunner()

    def run(*args: str) -> None:
        result = runner.invoke(cabinet_cli, ["--config", str(env.config_path), *args])
        assert result.exit_code == 0, result.output

    run("client", "add", "--firm", "Tremblay CPA", "--kind", "business", "--name", "Garage Lévesque", "--email",
        "marc@garage.example", "--billing", "direct", "--product", "qbo-simple-start")
    run("invitation", "send", "--company", "Garage Lévesque", "--email", "marie@tremblay.example")
    marie = signed_in(env, "marie@tremblay.example")
    url = f"/clients/{client_id(env, 'Garage Lévesque')}"
    pages = (url, "/clients", "/clients?q=garage", "/pending")
    small = [count_statements(quiet, marie, page) for page in pages]
    assert small == [count_statements(quiet, marie, page) for page in pages]  # nothing else ran meanwhile
    many_clients(quiet, firm_id(env, "Tremblay CPA"), 300)
    assert [count_statements(quiet, marie, page) for page in pages] == small
    marie.close()


# -- in Chromium ----------------------------------------------------------------------------------------

@pytest.mark.browser
def test_staff_edit_resend_and_withdraw_on_a_client_page_in_chromium(server, cli: Cli, seed: Seed, env, mailbox):
    playwright_sync = pytest.importorskip("playwright.sync_api")
    from tests.test_workspace import CHROMIUM, FLAGS

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}")
    add_business(cli, seed.firm, "Garage Lévesque", "marc@garage.exmaple")
    cli("invitation", "send", "--company", "Garage Lévesque", "--email", "luc@cote.example")
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = chromium.new_context(locale="en-US").new_page()
            page.goto(env.base_url + "/clients")
            page.get_by_label("Email").fill(seed.accountant)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(env.base_url + "/clients")
            page.get_by_role("link", name="Garage Lévesque").click()
            page.get_by_role("heading", name="Garage Lévesque").wait_for()

            page.get_by_label("Client's email").fill("marc@garage.example")
            page.get_by_label("Client's phone").fill("514 555 0100")
            page.get_by_role("button", name="Save contact details").click()
            page.get_by_text("Contact details saved.").wait_for()

            page.get_by_role("button", name="Resend the setup link").click()
            page.get_by_text("Setup link emailed again.").wait_for()
            mailbox.wait("marc@garage.example", subject="primary admin")

            page.get_by_role("button", name="Withdraw the invitation to luc@cote.example").click()
            page.get_by_text("Invitation withdrawn. Its link no longer works.").wait_for()
            assert "To luc@cote.example" not in page.content()
        finally:
            chromium.close()
    assert env.sql("SELECT email, phone FROM clients")[0] == ("marc@garage.example", "514 555 0100")
    assert [r[0] for r in env.sql("SELECT state FROM invitations")] == ["revoked"]
