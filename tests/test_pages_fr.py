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
