"""Pages in the reader's language: the link's recipient, the language switch, styled 404/405, the favicon."""

from __future__ import annotations

from tests.conftest import PASSWORD, Browser, any_link_in, csrf_of


def add_direct_french_client(cli, seed) -> None:
    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Érablière Roy",
        "--email", "lea@erabliere.example", "--billing", "direct", "--product", "qbo-simple-start", "--locale", "fr")


def test_a_link_page_speaks_the_recipients_language_until_the_switch_says_otherwise(server, cli, seed, mailbox, env):
    add_direct_french_client(cli, seed)
    email = mailbox.wait("lea@erabliere.example", subject="renseignements de paiement")[0]
    link = any_link_in(email)
    english_browser = Browser(env.base_url, accept_language="en-CA")
    page = english_browser.get(link)
    assert page.status_code == 200
    assert 'lang="fr"' in page.text and "Renseignements de paiement" in page.text
    assert "Nom du titulaire de la carte" in page.text and "(dans " in page.text  # deadline with time left
    # The switch, on every page, for anyone: remembered in a cookie.
    switched = english_browser.http.post("/language", data={"csrf_token": csrf_of(page.text), "language": "en",
                                                             "next": "/payment/x"})
    assert switched.status_code == 303 and switched.headers["Location"] == "/payment/x"
    again = english_browser.get(link)
    assert 'lang="en"' in again.text and "Name on the card" in again.text
    assert english_browser.get("/sign-in").text.count("Sign in") >= 1
    english_browser.close()


def test_the_switch_refuses_an_outside_redirect_and_unknown_languages(server, env):
    client = Browser(env.base_url)
    token = client.csrf()
    response = client.http.post("/language", data={"csrf_token": token, "language": "de", "next": "//evil.example"})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert "cabinet_lang" not in response.headers.get("Set-Cookie", "")
    client.close()


def test_unknown_pages_and_methods_get_the_sites_page_in_the_visitors_language(server, env):
    client = Browser(env.base_url, accept_language="fr-CA")
    missing = client.get("/nulle-part")
    assert missing.status_code == 404 and "Cette page n'existe pas" in missing.text and "<main>" in missing.text
    wrong = client.get("/sign-out")
    assert wrong.status_code == 405 and "Cette page ne peut pas être utilisée ainsi" in wrong.text
    assert "POST" in wrong.headers["Allow"]
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"
    client.close()


def test_the_french_roster_shows_words_not_codes_sorted_as_french_sorts(server, cli, seed, env):
    cli("staff", "add", "luc@tremblay.example", "--name", "Luc Gagnon", "--firm", seed.firm, "--locale", "fr",
        "--password-stdin", input=PASSWORD + "\n")
    for name in ("Zoé Roy", "Érablière Roy", "Ébénisterie Roy"):
        cli("client", "add", "--firm", seed.firm, "--kind", "individual", "--name", name, "--billing", "none")
    client = Browser(env.base_url)
    client.post("/sign-in", email="luc@tremblay.example", password=PASSWORD, next="/")
    home = client.get("/").text
    assert "Aucun abonnement" in home and ">none<" not in home
    assert home.index("Ébénisterie Roy") < home.index("Érablière Roy") < home.index("Zoé Roy")
    client.close()


def test_french_emails_name_the_sender_greet_by_name_and_carry_the_next_link(server, cli, seed, mailbox, env):
    from email.utils import parseaddr

    from mailer.maildir import text_body

    cli("client", "add", "--firm", seed.firm, "--kind", "business", "--name", "Garage Lévesque",
        "--email", "marc@garage.example", "--billing", "direct", "--product", "qbo-simple-start", "--locale", "fr")
    setup = mailbox.wait("marc@garage.example", subject="Administrateur principal")[0]
    assert parseaddr(str(setup["From"]))[0] == "Tremblay CPA via Cabinet"
    payment = mailbox.wait("marc@garage.example", subject="renseignements de paiement")[0]
    subject = str(payment["Subject"])
    assert "  " not in subject and "Garage Lévesque" in subject
    body = text_body(payment)
    assert body.startswith("Bonjour") and "(dans " in body and "Cabinet" in body.splitlines()[-1]


def test_add_client_prevents_errors_and_ties_them_to_their_field(server, cli, seed, mailbox, env):
    cli("staff", "add", "luc@tremblay.example", "--name", "Luc Gagnon", "--firm", seed.firm, "--firm", seed.other_firm,
        "--locale", "fr", "--password-stdin", input=PASSWORD + "\n")
    client = Browser(env.base_url)
    client.post("/sign-in", email="luc@tremblay.example", password=PASSWORD, next="/clients/new")
    form = client.get("/clients/new").text
    # Radios where one is required, required fields marked, the firm has no silent default, language defaults
    # to the firm's (its staff member's), Payroll explained under Direct discount.
    assert 'type="radio" id="product-qbo-plus" name="quickbooks_product"' in form
    assert 'name="payroll_product"' in form and 'type="checkbox" id="product-' not in form
    assert form.count('class="required"') >= 4 and "Choisissez un cabinet" in form
    assert 'id="language-fr" name="locale" value="fr" checked' in form
    assert "La paie n'est pas offerte avec le rabais direct." in form
    fields = {"csrf_token": csrf_of(form), "kind": "business", "name": "Garage Lévesque", "email": "marc@garage.example",
              "billing": "wholesale", "quickbooks_product": "qbo-plus", "payroll_product": "", "locale": "en"}
    no_firm = client.http.post("/clients/new", data=fields)
    assert no_firm.status_code == 400
    assert 'id="firm" name="firm_id" required aria-invalid="true" aria-describedby="firm-error"' in no_firm.text
    assert 'id="firm-error">Vous faites partie de plusieurs cabinets' in no_firm.text
    firm_id = str(env.sql("SELECT id FROM firms WHERE name = :n", n=seed.firm)[0][0])
    payroll_direct = client.http.post("/clients/new", data={**fields, "firm_id": firm_id, "billing": "direct",
                                                            "payroll_product": "payroll-core"})
    assert payroll_direct.status_code == 403  # still refused on the server
    assert 'aria-invalid="true" aria-describedby="payroll-error"' in payroll_direct.text
    assert 'id="payroll-error">Un client qui a besoin de la paie' in payroll_direct.text
    saved = client.http.post("/clients/new", data={**fields, "firm_id": firm_id})
    assert saved.status_code == 200
    # The client's language was chosen on the form: its email is in English though the firm works in French.
    setup = mailbox.wait("marc@garage.example", subject="primary admin")[0]
    assert str(setup["Subject"]).startswith("Tremblay CPA invites you")
    assert env.sql("SELECT admin_locale FROM companies WHERE name = 'Garage Lévesque'") == [("en",)]
    client.close()


def test_irreversible_actions_ask_for_confirmation_first(server, cli, seed, mailbox, env):
    from tests.conftest import link_in

    cli("staff", "add", "luc@tremblay.example", "--name", "Luc Gagnon", "--firm", seed.firm, "--locale", "fr",
        "--password-stdin", input=PASSWORD + "\n")
    cli("invitation", "send", "--company", seed.company, "--email", "luc@tremblay.example")
    link = link_in(mailbox.wait("luc@tremblay.example")[-1])
    client = Browser(env.base_url)
    client.sign_in(link, "luc@tremblay.example")
    page = client.get(link).text
    assert page.split("Refuser l'invitation")[0].rsplit("<form", 1)[1].startswith(' method="get"')  # a GET
    confirm = client.get(link + "?confirm=decline").text
    assert "Refuser cette invitation?" in confirm and "Oui, refuser l'invitation" in confirm and "Annuler" in confirm
    assert env.sql("SELECT state FROM invitations") == [("pending",)]  # showing the question changed nothing
    client.close()


def test_a_signed_out_invitation_page_dates_in_the_invited_zone(server, cli, seed, mailbox, env):
    from tests.conftest import link_in

    cli("staff", "add", "luc@tremblay.example", "--name", "Luc Gagnon", "--firm", seed.firm, "--locale", "fr",
        "--timezone", "America/Vancouver", "--password-stdin", input=PASSWORD + "\n")
    cli("invitation", "send", "--company", seed.company, "--email", "luc@tremblay.example")
    link = link_in(mailbox.wait("luc@tremblay.example")[-1])
    page = Browser(env.base_url, accept_language="fr-CA").get(link).text
    assert 'lang="fr"' in page and "Se connecter" in page and " HNP " in page  # Luc's zone, not the server's


def test_an_invitation_page_names_its_sender_as_the_email_does_while_they_are_primary_admin(
        server, cli, seed, mailbox, env):
    from tests.conftest import link_in

    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    email = mailbox.wait(seed.accountant)[-1]
    assert "Julie Roy (julie@roy.example)" in email.get_body(("plain",)).get_content()
    link = link_in(email)
    browser = Browser(env.base_url, accept_language="fr-CA")
    page = browser.get(link).text
    assert "Julie Roy (julie@roy.example) invite marie@tremblay.example à agir à titre de comptable" in page
    # Another primary admin since: the page names the sender by the address the invitation came from.
    cli("company", "set-admin", seed.company, "--admin-email", "paul@roy.example", "--admin-name", "Paul Roy")
    page = browser.get(link).text
    assert "julie@roy.example invite marie@tremblay.example" in page and "Julie Roy" not in page
    assert "Paul Roy" not in page
    browser.close()
