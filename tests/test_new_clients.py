"""Flows 3 and 4 over the real HTTP server and database: new clients, trials, setup, no subscription."""

from __future__ import annotations

import json

import pytest

from tests.conftest import (
    PASSWORD,
    Browser,
    Cli,
    Env,
    FakeClock,
    Mailbox,
    Seed,
    any_link_in,
    csrf_of,
    roster_of,
)


def products(cli: Cli) -> list[dict[str, str]]:
    return json.loads(cli("product", "list", "--json").output)


def test_the_catalogue_is_data(cli: Cli, seed: Seed) -> None:
    catalogue = products(cli)
    names = {p["name"] for p in catalogue}
    assert {"QuickBooks Online Simple Start", "QuickBooks Online Essentials", "QuickBooks Online Plus",
            "QuickBooks Online Advanced"} <= names
    assert {p["id"] for p in catalogue if p["kind"] == "payroll"} == {"payroll-core", "payroll-premium", "payroll-elite"}
    assert all({"id", "name", "kind"} <= p.keys() for p in catalogue)


def test_wholesale_with_payroll_and_make_me_the_primary_admin(server, cli: Cli, seed: Seed, mailbox: Mailbox, env: Env):
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Garage Lévesque",
        "--email", "marc@garage.example", "--billing", "wholesale", "--product", "qbo-plus",
        "--product", "payroll-core", "--primary-admin", seed.accountant)
    (client,) = roster_of(cli, seed.firm)
    assert client["billing"] == "wholesale" and client["status"] == "active"
    assert client["products"] == ["qbo-plus", "payroll-core"] and client["company"] == "Garage Lévesque"
    assert client["primary_admin"] == seed.accountant
    assert env.sql("SELECT admin_email, subscription FROM companies WHERE name = 'Garage Lévesque'") == [
        (seed.accountant, "wholesale")]
    server.settle(sweep=False)
    assert mailbox.messages("marc@garage.example") == []  # nobody to invite: the accountant is primary admin


def test_wholesale_without_make_me_invites_the_contact_to_be_primary_admin(server, cli, seed, mailbox, env):
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Garage Lévesque",
        "--email", "Marc@Garage.example", "--billing", "wholesale", "--product", "qbo-essentials")
    (client,) = roster_of(cli, seed.firm)
    assert client["status"] == "setup pending" and client["email"] == "marc@garage.example"
    (invite,) = mailbox.wait("marc@garage.example", subject="primary admin")
    # The contact's name is not known yet: the email greets them, not the company ("Hello Garage Lévesque,").
    assert invite.get_body(("plain",)).get_content().startswith("Hello,\n")
    assert str(invite["To"]) == "marc@garage.example"
    link = any_link_in(invite)
    visitor = Browser(env.base_url)
    page = visitor.get(link)
    assert "Become primary admin" in page.text
    assert roster_of(cli, seed.firm)[0]["status"] == "setup pending"  # opening changed nothing
    done = visitor.http.post(link, data={"csrf_token": csrf_of(page.text), "name": "Marc Lévesque"})
    assert done.status_code == 303
    assert roster_of(cli, seed.firm)[0]["status"] == "active"
    assert env.sql("SELECT admin_name FROM companies WHERE name = 'Garage Lévesque'") == [("Marc Lévesque",)]
    mailbox.wait(seed.accountant, subject="primary admin")
    assert visitor.http.post(link, data={"csrf_token": csrf_of(page.text), "name": "Again"}).status_code == 409


def test_payroll_on_direct_discount_is_refused_in_words(cli, seed, env):
    result = cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Paie Directe",
                 "--email", "p@d.example", "--billing", "direct", "--product", "qbo-plus",
                 "--product", "payroll-core", expect=1)
    assert "a client who needs payroll must be on the wholesale billing plan" in result.output
    assert roster_of(cli, seed.firm) == []
    assert env.sql("SELECT count(*) FROM companies WHERE name = 'Paie Directe'") == [(0,)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--billing", "wholesale"], "choose one QuickBooks product"),
        (["--billing", "wholesale", "--product", "qbo-plus", "--product", "qbo-advanced"], "choose one QuickBooks product"),
        (["--billing", "wholesale", "--product", "nope"], "unknown product"),
        (["--billing", "none", "--product", "qbo-plus"], "no subscription has no products"),
        (["--billing", "wholesale", "--product", "qbo-plus", "--email", "bad"], "not a valid email"),
    ],
)
def test_bad_client_input_is_refused_and_adds_nothing(cli, seed, env, args, message):
    result = cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Rejected Ltd",
                 "--email", "x@rejected.example", *args, expect=1)
    assert message in result.output
    assert roster_of(cli, seed.firm) == [] and env.sql("SELECT count(*) FROM outbox") == [(0,)]


def test_no_subscription_client_has_no_company_and_no_email(server, cli, seed, env):
    cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", "Anne Roy",
        "--email", "anne@roy.example", "--phone", "514 555 0100", "--billing", "none")
    (client,) = roster_of(cli, seed.firm)
    assert client["billing"] == "none" and client["company"] is None and client["kind"] == "individual"
    assert client["phone"] == "514 555 0100" and client["products"] == []
    assert env.sql("SELECT count(*) FROM outbox") == [(0,)]
    assert env.sql("SELECT count(*) FROM companies WHERE name = 'Anne Roy'") == [(0,)]


def test_a_client_lands_on_the_roster_once(cli, seed):
    cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", "Anne Roy", "--billing", "none")
    again = cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", "  anne  ROY ",
                "--billing", "none", expect=4)
    assert "already has a client named 'Anne Roy'" in again.output
    assert len(roster_of(cli, seed.firm)) == 1


def add_direct(cli: Cli, seed: Seed) -> None:
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Café Direct",
        "--email", "lea@cafe.example", "--billing", "direct", "--product", "qbo-simple-start",
        "--primary-admin", seed.accountant)


def test_direct_discount_reminds_at_7_and_1_days_then_lapses(server, cli, seed, mailbox, clock: FakeClock):
    add_direct(cli, seed)
    (client,) = roster_of(cli, seed.firm)
    assert client["status"] == "trial" and client["billing"] == "direct" and client["trial_ends_at"]
    (request,) = mailbox.wait("lea@cafe.example", subject="payment")
    assert "Add payment details" in request.get_body(("plain",)).get_content()
    assert request.get_body(("plain",)).get_content().startswith("Hello,\n")
    clock.advance(days=23, hours=1)
    (seven,) = mailbox.wait("lea@cafe.example", subject="7")
    clock.advance(days=6)
    mailbox.wait("lea@cafe.example", count=3)
    server.settle()
    assert len(mailbox.messages("lea@cafe.example")) == 3  # each reminder once
    clock.advance(days=1)
    mailbox.wait("lea@cafe.example", count=4)
    mailbox.wait(seed.accountant, subject="lapsed")
    assert roster_of(cli, seed.firm)[0]["status"] == "discount lapsed"
    server.settle()
    assert len(mailbox.messages("lea@cafe.example")) == 4


def test_payment_details_before_the_end_keep_the_discount(server, cli, seed, mailbox, clock, env):
    add_direct(cli, seed)
    link = any_link_in(mailbox.wait("lea@cafe.example", subject="payment")[0])
    client = Browser(env.base_url)
    page = client.get(link)
    assert "Name on the card" in page.text and env.sql("SELECT payment_details_at FROM companies WHERE name='Café Direct'") == [(None,)]
    saved = client.http.post(link, data={"csrf_token": csrf_of(page.text), "name_on_card": "Léa Café"})
    assert saved.status_code == 303
    assert roster_of(cli, seed.firm)[0]["status"] == "active"
    assert "on file" in client.get(link).text
    mailbox.wait(seed.accountant, subject="payment")
    clock.advance(days=31)
    server.settle()
    assert roster_of(cli, seed.firm)[0]["status"] == "active"
    assert not [m for m in mailbox.messages() if "lapsed" in str(m["Subject"]).lower()]
    # No card data is stored: only the fact and the name.
    columns = set(env.columns("companies"))  # SQLAlchemy's inspect(), on either database
    assert not {c for c in columns if "card" in c or "number" in c}


def test_add_client_page_for_signed_in_staff(server, browser: Browser, cli, seed, mailbox, env):
    assert browser.get("/clients/new").status_code == 303  # signed out: to the sign-in page
    browser.post("/sign-in", email=seed.accountant, password=PASSWORD, next="/clients/new")
    page = browser.get("/clients/new")
    for label in ("Business", "Individual", "Wholesale billing discount (billed to the firm)",
                  "Direct discount (billed to the client)", "No subscription", "Make me the primary admin",
                  "QuickBooks Online Plus", "QuickBooks Online Payroll Core"):
        assert label in page.text, label
    refused = browser.http.post("/clients/new", data={
        "csrf_token": csrf_of(page.text), "kind": "business", "name": "Paie Directe", "email": "p@d.example",
        "billing": "direct", "product": ["qbo-plus", "payroll-core"]})
    assert refused.status_code == 403 and "must be on the wholesale billing plan" in refused.text
    assert 'value="Paie Directe"' in refused.text  # what was typed is kept
    saved = browser.http.post("/clients/new", data={
        "csrf_token": csrf_of(page.text), "kind": "business", "name": "Garage Lévesque",
        "email": "marc@garage.example", "billing": "wholesale", "product": ["qbo-plus", "payroll-core"],
        "primary_admin": "me"})
    assert saved.status_code == 200 and "Garage Lévesque" in saved.text
    (client,) = roster_of(cli, seed.firm)
    assert client["primary_admin"] == seed.accountant and client["products"] == ["qbo-plus", "payroll-core"]


def test_only_a_member_of_the_firm_adds_to_its_roster(server, browser: Browser, cli, seed, env):
    browser.post("/sign-in", email=seed.accountant, password=PASSWORD, next="/clients/new")
    page = browser.get("/clients/new")
    other_firm = env.sql("SELECT id FROM firms WHERE name = :n", n=seed.other_firm)[0][0]
    forced = browser.http.post("/clients/new", data={
        "csrf_token": csrf_of(page.text), "firm_id": str(other_firm), "kind": "individual", "name": "Intrus",
        "billing": "none"})
    assert forced.status_code == 403 and "Only a member of" in forced.text
    assert roster_of(cli, seed.other_firm) == []
