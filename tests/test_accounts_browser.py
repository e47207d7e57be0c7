"""Forgot password, and an account created from an invitation, driven in headless Chromium as the accountant would."""

from __future__ import annotations


import pytest

from tests.conftest import Mailbox, Seed, link_in, roster_of
from mailer.maildir import text_body
from tests.test_new_account import ACCOUNT_LINK
from tests.test_password_reset import NEW_PASSWORD, reset_link

pytest.importorskip("playwright.sync_api")  # every test here drives a browser

pytestmark = pytest.mark.browser


def test_forgot_password_in_a_real_browser(chromium, server, seed: Seed, mailbox: Mailbox, env) -> None:
    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    page.goto(env.base_url + "/sign-in")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(seed.accountant)
    page.get_by_role("button", name="Email me a link").click()
    page.get_by_text("If this address has a Cabinet account").first.wait_for()

    link = reset_link(mailbox.wait(seed.accountant, subject="Reset")[-1])
    page.goto(link)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set my password").click()
    page.get_by_text("Your password has been changed").first.wait_for()

    page.get_by_role("link", name="Sign in").last.click()
    page.get_by_label("Email").fill(seed.accountant)
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(env.base_url + "/")
    assert 'name="password"' not in page.content()
    context.close()


def test_forgot_password_in_french(chromium, server, seed: Seed, mailbox: Mailbox, env) -> None:
    context = chromium.new_context(locale="fr-CA", extra_http_headers={"Accept-Language": "fr-CA,fr"})
    page = context.new_page()
    page.goto(env.base_url + "/sign-in")
    page.get_by_role("link", name="Mot de passe oublié?").click()
    page.get_by_label("Courriel").fill(seed.accountant)
    page.get_by_role("button", name="M'envoyer un lien par courriel").click()
    page.get_by_text("Si cette adresse a un compte Cabinet").first.wait_for()
    context.close()


def test_an_accountant_with_no_account_accepts_end_to_end(chromium, server, cli, seed: Seed, mailbox: Mailbox) -> None:
    cli("invitation", "send", "--company", seed.company, "--email", "luc@cote.example")
    link = link_in(mailbox.wait("luc@cote.example", subject="Invitation")[-1])
    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    page.goto(link)
    page.get_by_role("button", name="Create your account").click()
    page.get_by_text("link to create your account").first.wait_for()
    message = mailbox.wait("luc@cote.example", subject="Create your Cabinet account")[-1]
    page.goto(ACCOUNT_LINK.search(text_body(message)).group(0))
    page.get_by_label("Your name").fill("Luc Côté")
    page.get_by_label("Your firm's name").fill("Côté Fiscalité")
    page.get_by_label("Language").select_option("en")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Create my account and continue").click()
    page.get_by_role("button", name="Accept invitation").click()
    page.get_by_text("accepted by Luc Côté").first.wait_for()
    context.close()
    assert [c["name"] for c in roster_of(cli, "Côté Fiscalité")] == [seed.company]
