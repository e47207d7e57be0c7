"""A client company's primary admin asks for a manage link from the start page, and the manage page
(current billing, connected firms, pending invitations withdrawn, what was done) — through the real
HTTP server and the real Maildir, then in headless Chromium."""

from __future__ import annotations


import pytest

from tests.conftest import Browser, Cli, Mailbox, Seed, any_link_in, csrf_of


def ask(browser: Browser, email: str) -> "object":
    return browser.submit("/manage", "/manage", email=email)


def test_the_start_page_offers_a_manage_link_and_answers_the_same_for_any_address(
    server, cli: Cli, seed: Seed, mailbox: Mailbox, make_browser
) -> None:
    visitor = make_browser()
    start = visitor.get("/").text
    assert 'href="/manage"' in start and "Manage my company" in start

    # The primary admin's address and a stranger's get the same redirect and the same page.
    for address in (" Julie@Roy.example ", "nobody@nowhere.example", "not an address"):
        response = ask(visitor, address)
        assert response.status_code == 303 and response.headers["Location"] == "/manage?sent=1", response.text
    sent = visitor.get("/manage?sent=1").text
    assert "If this address is the primary admin of a company on Cabinet" in sent

    # Only the primary admin gets an email, with a working manage link (the address was normalised).
    manage = any_link_in(mailbox.wait(seed.admin, subject="Manage")[-1])
    assert not mailbox.messages("nobody@nowhere.example")
    page = visitor.get(manage)
    assert page.status_code == 200 and seed.company in page.text
    assert "Billed to your company." in page.text  # the current billing
    events = server.env.sql("SELECT actor, channel FROM events WHERE kind = 'company.manage_link_sent'")
    assert [tuple(e) for e in events] == [(seed.admin, "link")]


def test_asking_for_manage_links_is_limited_per_address_and_per_network(
    server, cli: Cli, seed: Seed, mailbox: Mailbox, make_browser
) -> None:
    visitor = make_browser("fr-CA,fr")
    for _ in range(3):
        assert ask(visitor, seed.admin).status_code == 303
    refused = ask(visitor, seed.admin)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Trop de demandes de lien de gestion" in refused.text and "manage_link.wait" not in refused.text
    # A stranger's address is counted the same way: the limit tells nothing about who is an admin.
    for _ in range(3):
        assert ask(visitor, "nobody@nowhere.example").status_code == 303
    assert ask(visitor, "nobody@nowhere.example").status_code == 429
    # Per network: many addresses from one IP stop at the IP's share (20 requests; 6 counted so far, a
    # refused one is not counted).
    statuses = [ask(visitor, f"person{n}@example.org").status_code for n in range(15)]
    assert statuses == [303] * 14 + [429]
    assert len(mailbox.wait(seed.admin, count=3, subject="Manage")) == 3  # three emails, no fourth
    # No CSRF token, no request.
    forged = visitor.http.post("/manage", data={"email": seed.admin})
    assert forged.status_code == 403


def test_the_manage_page_withdraws_a_pending_invitation_and_says_so(
    server, cli: Cli, seed: Seed, mailbox: Mailbox, make_browser
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", "luc@cote.example")
    cli("company", "add", "Garage Roy", "--admin-email", "marc@garage.example", "--admin-name", "Marc Roy")
    cli("invitation", "send", "--company", "Garage Roy", "--email", "luc@cote.example")
    cli("company", "send-link", seed.company)
    manage = any_link_in(mailbox.wait(seed.admin, subject="Manage")[-1])
    admin = make_browser()
    page = admin.get(manage).text
    assert "Invitations waiting for an answer" in page and "luc@cote.example" in page
    ids = {row[1]: row[0] for row in server.env.sql(
        "SELECT i.id, c.name FROM invitations i JOIN companies c ON c.id = i.company_id")}

    # Another company's invitation is not this link's to withdraw.
    other = admin.submit(manage, manage + "/withdraw", invitation_id=str(ids["Garage Roy"]))
    assert other.status_code == 404
    assert admin.submit(manage, manage + "/withdraw", invitation_id="x").status_code == 400

    done = admin.submit(manage, manage + "/withdraw", invitation_id=str(ids[seed.company]))
    assert done.status_code == 303 and done.headers["Location"].endswith("?done=withdraw")
    after = admin.get(done.headers["Location"]).text
    assert "Invitation withdrawn. Its link no longer works." in after and "Withdraw the invitation" not in after
    # Until the client accepts its setup invitation, the company's name is not given as the admin's.
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Boutique Gagné", "--email",
        "anne@boutique.example", "--billing", "wholesale", "--product", "qbo-plus")
    cli("company", "send-link", "Boutique Gagné")
    boutique = admin.get(any_link_in(mailbox.wait("anne@boutique.example", subject="Manage")[-1])).text
    assert "Primary admin: anne@boutique.example" in boutique and "Primary admin: Boutique" not in boutique
    states = dict(server.env.sql("SELECT company_id, state FROM invitations"))
    assert sorted(states.values()) == ["pending", "revoked"]
    # Withdrawing it again says it is no longer pending, and changes nothing.
    again = admin.submit(manage, manage + "/withdraw", invitation_id=str(ids[seed.company]))
    assert again.status_code == 409, again.status_code
    actor = server.env.sql("SELECT actor, channel FROM events WHERE kind = 'invitation.revoked'")
    assert [tuple(a) for a in actor] == [(seed.admin, "link")]


# -- in Chromium ----------------------------------------------------------------------------------------


@pytest.mark.browser
def test_a_client_admin_gets_a_manage_link_from_the_start_page_and_withdraws_an_invitation(
    chromium, server, cli: Cli, seed: Seed, mailbox: Mailbox, env
) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", "luc@cote.example")
    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    page.goto(env.base_url + "/")
    page.get_by_role("link", name="Manage my company").click()
    page.get_by_label("Email").fill(seed.admin)
    page.get_by_role("button", name="Email me a manage link").click()
    page.get_by_text("If this address is the primary admin of a company").first.wait_for()

    page.goto(any_link_in(mailbox.wait(seed.admin, subject="Manage")[-1]))
    page.get_by_role("heading", name=seed.company).wait_for()
    assert "Billed to your company." in page.content()
    page.get_by_role("button", name="Withdraw the invitation to luc@cote.example").click()
    page.get_by_text("Invitation withdrawn. Its link no longer works.").wait_for()
    assert "luc@cote.example" not in page.content()
    context.close()
    assert [tuple(r) for r in env.sql("SELECT state FROM invitations")] == [("revoked",)]


@pytest.mark.browser
def test_a_client_admin_asks_for_a_manage_link_in_french(chromium, server, cli: Cli, seed: Seed, env) -> None:
    context = chromium.new_context(locale="fr-CA", extra_http_headers={"Accept-Language": "fr-CA,fr"})
    page = context.new_page()
    page.goto(env.base_url + "/")
    page.get_by_role("link", name="Gérer mon entreprise").click()
    page.get_by_label("Courriel").fill(seed.admin)
    page.get_by_role("button", name="M'envoyer un lien de gestion par courriel").click()
    page.get_by_text("Si cette adresse est celle de l'Administrateur principal").first.wait_for()
    context.close()


def test_an_expired_or_broken_manage_link_offers_to_email_a_fresh_one(
    server, cli: Cli, seed: Seed, mailbox: Mailbox, make_browser, clock
) -> None:
    """A manage link lasts 24 hours: past that (or cut off when copied) its page says so in the reader's
    language and leads to the page that emails a new one, instead of "Something went wrong" and a way home."""
    cli("company", "send-link", seed.company)
    manage = any_link_in(mailbox.wait(seed.admin, subject="Manage")[-1])
    admin = make_browser("fr-CA,fr")
    clock.advance(hours=23)
    page = admin.get(manage).text  # opened an hour before the link's end, its buttons pressed after it
    clock.advance(hours=2)
    expired = admin.get(manage)
    assert expired.status_code == 410
    assert "Ce lien a expiré." in expired.text and 'href="/manage"' in expired.text
    assert "Un lien de gestion fonctionne pendant 24 heures." in expired.text
    assert "Une erreur s'est produite" not in expired.text
    # Its buttons, pressed after the 24 hours, say the same and change nothing.
    pressed = admin.http.post(manage + "/invite", data={"csrf_token": csrf_of(page), "email": "luc@cote.example"})
    assert pressed.status_code == 410 and 'href="/manage"' in pressed.text
    assert server.env.sql("SELECT count(*) FROM invitations") == [(0,)]
    broken = admin.get(manage[:-6])
    assert broken.status_code == 404 and "Ce lien n&#39;est pas valide." in broken.text and 'href="/manage"' in broken.text
    # That page's form: the primary admin gets a fresh link that works.
    assert ask(admin, seed.admin).status_code == 303
    fresh = any_link_in(mailbox.wait(seed.admin, subject="Manage", count=2)[-1])
    assert admin.get(fresh).status_code == 200
