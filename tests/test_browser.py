"""The accept flow driven in headless Chromium (Debian's package, through Playwright)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterator

import pytest

from tests.conftest import PASSWORD, Cli, Mailbox, Seed, link_in

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CABINET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium must not reach out to the internet (none here): these flags keep it quiet.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}; ./scripts/test.sh installs Debian's chromium package")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


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
    page.get_by_role("button", name="Ouvrir une session").click()
    # Signed in, the page follows Marie's own language (en): the button is in English.
    page.get_by_role("button", name="Accept invitation").click()
    page.wait_for_url(link)
    context.close()
    roster = json.loads(cli("client", "list", "--firm", seed.firm, "--json").output)
    assert len(roster) == 1
