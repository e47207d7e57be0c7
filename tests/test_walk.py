"""Every page and every email, in French and in English, read in headless Chromium: a French reader meets no
English word (and an English reader no French word) outside names. Screenshots of the main pages go to
``$CABINET_SCREENSHOTS`` when it is set (``docs/screenshots`` in the repository holds the last ones)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from mailer.maildir import text_body
from mailer.render import EmailRenderer
from mailer.samples import sample_context
from tests.conftest import PASSWORD, Cli, Mailbox, any_link_in, link_in

pytest.importorskip("playwright.sync_api")  # every test here drives a browser

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = os.environ.get("CABINET_SCREENSHOTS", "")

# Words of one language that are not words of the other (short, common, unambiguous), lower-case.
ENGLISH = set("""
the and your you this that with from will has have was are been for not link email sign signed firm firms billing
accept accepted decline declined complete completed payment details trial discount wholesale subscription business
individual products save name password add added allow allowed primary admin accountant company back please try
again only when here what which who expired valid until before after status connected phone payroll choose send
sent new invited invites yes cancel required optional marked field hours days left reminder manage my our
we is it of to by be at online start see hello clients' there nothing more
""".split())
FRENCH = set("""
le la les des du votre vos vous avec pour dans une est sont courriel entreprise facturation lien connecter connectez
abonnement rabais paie renseignements paiement essai refuser accepter envoyer oui annuler ajouter enregistrer et
bonjour cabinet comptable forfait groupée heures jusqu'au jours nous aucun aucune
""".split())
# Names the walk's data uses: people, firms, companies, products, and the product itself.
NAMES = set("""
Tremblay CPA Marie Luc Gagnon Julie Roy Érablière Boulangerie Garage Lévesque Marc Léa Café Direct Cabinet QuickBooks
Time Plus Simple Start Essentials Advanced Payroll Core Premium Elite Anne Associés Français English Olivia
""".split())
WORD = re.compile(r"[A-Za-zÀ-ÿ]+(?:'[A-Za-zÀ-ÿ]+)?")
NOT_WORDS = re.compile(r"\S+@\S+|https?://\S+|\S+\.example\S*|/\S+")


def foreign_words(text: str, locale: str) -> list[str]:
    """Words of the other language in ``text`` (names, addresses and links set aside)."""
    other = ENGLISH if locale == "fr" else FRENCH
    text = NOT_WORDS.sub(" ", text)
    found = []
    for word in WORD.findall(text):
        if word in NAMES or (word.isupper() and len(word) > 1):  # names; abbreviations (EST, HNE, CPA)
            continue
        # French elisions ("l'entreprise", "d'Érablière") are one French word followed by the rest.
        bare = re.sub(r"^(?:[ldjmnstc]|qu|jusqu)'", "", word, flags=re.I)
        if bare in NAMES:
            continue
        if bare.lower() in other or word.lower() in other:
            found.append(word)
    return found


class Walk:
    """One reader's Chromium tab: each page it reads is checked for foreign words, and the main ones shot."""

    def __init__(self, chromium: Any, locale: str, base_url: str) -> None:
        self.locale = locale
        self.base_url = base_url
        tag = "fr-CA" if locale == "fr" else "en-CA"
        self.context = chromium.new_context(locale=tag, extra_http_headers={"Accept-Language": tag},
                                            viewport={"width": 1024, "height": 800})
        self.page = self.context.new_page()
        self.read: list[str] = []
        self.problems: list[tuple[str, list[str]]] = []

    def check(self, where: str, shot: str = "") -> str:
        self.page.wait_for_load_state()
        assert self.page.evaluate("document.documentElement.lang") == self.locale, where
        text = self.page.inner_text("body")
        title = self.page.title()
        # The time zone choice's places are names, as CLDR writes them in the reader's language ("New York",
        # "La Paz"): set aside like the data's names (tests/test_zone_choice.py reads its labels' language).
        places = set(self.page.eval_on_selector_all("select#timezone option", "all => all.map(o => o.text.trim())"))
        read = "\n".join(line for line in text.splitlines() if line.strip() not in places)
        bad = foreign_words(title + "\n" + read, self.locale)
        if bad:
            self.problems.append((where, bad))
        self.read.append(where)
        if SHOTS and shot:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SHOTS) / f"{self.locale}-{shot}.png"), full_page=True)
        return text

    def goto(self, url: str, where: str, shot: str = "") -> str:
        self.page.goto(url if url.startswith("http") else self.base_url + url)
        return self.check(where, shot)

    def button(self, name: str) -> None:
        self.page.get_by_role("button", name=name, exact=True).click()

    def sign_in(self, email: str) -> None:
        self.page.locator("#email").fill(email)
        self.page.locator("#password").fill(PASSWORD)
        self.page.locator("form[action='/sign-in'] button[type=submit]").click()
        self.page.wait_for_load_state()

    def close(self) -> None:
        self.context.close()


WORDS = {
    "fr": {"accept": "Accepter l'invitation", "decline": "Refuser l'invitation", "confirm_decline": "Oui, refuser l'invitation",
           "save": "Enregistrer", "allow": "Autoriser le transfert", "complete": "Terminer le transfert",
           "confirm_complete": "Oui, terminer le transfert", "become": "Devenir l'Administrateur principal",
           "save_payment": "Enregistrer les renseignements de paiement", "invite": "Envoyer l'invitation",
           "wholesale": "Rabais de facturation groupée (le montant est facturé à votre cabinet)",
           "direct": "Rabais direct (le montant est facturé à votre client)", "payment_subject": "renseignements de paiement",
           "setup_subject": "Administrateur principal", "transfer_subject": "transfert", "manage_subject": "Gérer"},
    "en": {"accept": "Accept invitation", "decline": "Decline invitation", "confirm_decline": "Yes, decline the invitation",
           "save": "Save", "allow": "Allow transfer", "complete": "Complete transfer",
           "confirm_complete": "Yes, complete the transfer", "become": "Become primary admin",
           "save_payment": "Save payment details", "invite": "Send invitation",
           "wholesale": "Wholesale billing discount (billed to the firm)",
           "direct": "Direct discount (billed to the client)", "payment_subject": "payment details",
           "setup_subject": "primary admin", "transfer_subject": "transfer", "manage_subject": "Manage"},
}


@pytest.mark.parametrize("locale", ["fr", "en"])
def test_every_page_and_email_in_one_language(chromium, server, cli: Cli, mailbox: Mailbox, locale: str) -> None:
    w = WORDS[locale]
    cli("firm", "add", "Tremblay CPA", "--email", "bureau@tremblay.example")
    cli("firm", "add", "Gagnon & Associés", "--email", "info@gagnon.example")
    cli("staff", "add", "luc@tremblay.example", "--name", "Luc Gagnon", "--firm", "Tremblay CPA", "--locale", locale,
        "--timezone", "America/Montreal", "--password-stdin", input=PASSWORD + "\n")
    cli("company", "add", "Érablière Roy", "--admin-email", "julie@erabliere.example", "--admin-name", "Julie Roy",
        "--locale", locale, "--timezone", "America/Montreal")
    walk = Walk(chromium, locale, server.env.base_url)
    try:
        walk.goto("/sign-in", "sign in", "sign-in")
        walk.goto("/nowhere", "404")
        walk.goto("/sign-out", "405")
        walk.goto("/invitations/not-a-token", "invalid link")

        # Flow 1: the invitation, signed out, then signed in, the decline confirmation, accepted.
        cli("invitation", "send", "--company", "Érablière Roy", "--email", "luc@tremblay.example")
        invitation = link_in(mailbox.wait("luc@tremblay.example")[-1])
        walk.goto(invitation, "invitation signed out")
        walk.sign_in("luc@tremblay.example")
        walk.check("invitation signed in", "invitation")
        walk.goto(invitation + "?confirm=decline", "invitation decline confirmation", "confirm-decline")
        walk.goto(invitation, "invitation again")
        walk.button(w["accept"])
        walk.page.wait_for_url(invitation)
        walk.check("invitation accepted")

        # Flow 3: add a client, first with a mistake the page explains beside its field.
        walk.goto("/clients/new", "add client", "add-client")
        walk.page.locator("#name").fill("Garage Lévesque")
        walk.page.locator("#client-email").fill("marc@garage.example")
        walk.page.get_by_label(w["direct"]).check()
        walk.page.locator("#product-qbo-simple-start").check()
        walk.page.locator(f"#language-{locale}").check()
        walk.button(w["save"])
        walk.check("client added", "client-added")
        walk.goto("/", "client list", "client-list")
        # A phone: the header wraps and the client list scrolls in its box; the page never scrolls sideways.
        for width in (375, 320):
            walk.page.set_viewport_size({"width": width, "height": 700})
            for path in ("/", "/clients/new"):
                walk.page.goto(server.env.base_url + path)
                assert walk.page.evaluate("document.documentElement.scrollWidth") <= width, (path, width)
        walk.page.set_viewport_size({"width": 1024, "height": 800})
        # The staff workspace: the client list searched, a client's page and its timeline, Pending, Team, Profile.
        walk.goto("/clients?q=garage", "client list searched")
        walk.page.get_by_role("link", name="Garage Lévesque").click()
        walk.check("client page", "client")
        for path in ("/pending", "/team", "/profile"):
            walk.goto(path, path[1:], path[1:])

        # Flow 2: the client admin's manage page, then the firm completes the transfer.
        cli("company", "send-link", "Érablière Roy")
        manage = any_link_in(mailbox.wait("julie@erabliere.example", subject=w["manage_subject"])[-1])
        walk.goto(manage, "manage page", "manage")
        walk.page.get_by_label("Tremblay CPA").check()
        walk.button(w["allow"])
        walk.page.wait_for_url(re.compile(r".*done=transfer"))
        walk.check("manage page, transfer allowed")
        transfer = any_link_in(mailbox.wait("luc@tremblay.example", subject=w["transfer_subject"])[-1])
        walk.goto(transfer, "transfer pending", "transfer")
        walk.button(w["complete"])
        walk.check("transfer confirmation")
        walk.button(w["confirm_complete"])
        walk.page.wait_for_url(transfer)
        walk.check("transfer completed")

        # Flow 3's links for the new client: become primary admin, payment details.
        setup = any_link_in(mailbox.wait("marc@garage.example", subject=w["setup_subject"])[-1])
        walk.goto(setup, "setup", "setup")
        walk.page.locator("#admin-name").fill("Marc Lévesque")
        walk.button(w["become"])
        walk.check("setup done")
        payment = any_link_in(mailbox.wait("marc@garage.example", subject=w["payment_subject"])[-1])
        walk.goto(payment, "payment", "payment")
        walk.page.locator("#name-on-card").fill("Marc Lévesque")
        walk.button(w["save_payment"])
        walk.check("payment on file")

        # Every email this walk sent, as its reader sees it: subject, text, and the HTML in the browser.
        for message in mailbox.messages():
            where = f"email {message['Subject']}"
            html = next(part for part in message.walk() if part.get_content_type() == "text/html").get_content()
            walk.page.set_content(html)
            text = str(message["Subject"]) + "\n" + text_body(message) + "\n" + walk.page.inner_text("body")
            bad = foreign_words(text, locale)
            if bad:
                walk.problems.append((where, bad))
            walk.read.append(where)
    finally:
        walk.close()
    assert len(walk.read) >= 25
    assert not walk.problems, walk.problems


@pytest.mark.parametrize("locale", ["fr", "en"])
def test_all_emails_read_in_one_language(chromium, locale: str) -> None:
    """All 25 emails, not only those a walk happens to send: subject, text and HTML in Chromium, each with
    the sample facts `cabinet templates preview` shows (mailer/samples.py)."""
    renderer = EmailRenderer([ROOT / "templates" / "email"])
    names = sorted(p.stem for p in (ROOT / "templates" / "email" / locale).glob("*.subject"))
    assert len(names) >= 25
    page = chromium.new_page()
    problems = []
    try:
        for name in names:
            # A forwarded reply quotes the client's own words, in whatever language they wrote: not Cabinet's.
            facts = sample_context(name, {"text": "Merci!"} if name == "reply_forwarded" else None)
            rendered = renderer.render(name, locale, "America/Montreal", facts)
            assert "  " not in rendered.subject
            page.set_content(rendered.html)
            assert page.evaluate("document.documentElement.lang") == locale
            bad = foreign_words("\n".join([rendered.subject, rendered.text, page.inner_text("body")]), locale)
            if bad:
                problems.append((name, bad))
    finally:
        page.close()
    assert not problems, problems


def test_the_word_check_can_fail() -> None:
    assert foreign_words("Le client doit payer the subscription", "fr") == ["the", "subscription"]
    assert foreign_words("The client pays votre abonnement", "en") == ["votre", "abonnement"]
    assert foreign_words("Invitation d'Érablière Roy pour luc@tremblay.example", "fr") == []
