"""`cabinet staff set-password | edit | add-firm | remove-firm | disable` against the real server."""

from __future__ import annotations

import json

from tests.conftest import PASSWORD, Browser, Cli, Env, Seed

NEW_PASSWORD = "a brand new passphrase"


def signed_in(browser: Browser) -> bool:
    return 'name="password"' not in browser.get("/").text


def staff_entry(cli: Cli, email: str) -> dict:
    return next(u for u in json.loads(cli("staff", "list", "--json").output) if u["email"] == email)


def test_set_password_ends_sessions_and_the_old_password_stops_working(
    cli: Cli, seed: Seed, browser: Browser, make_browser
) -> None:
    assert browser.sign_in("/", seed.accountant).status_code == 303
    assert signed_in(browser)
    result = cli("staff", "set-password", seed.accountant, "--password-stdin", input=NEW_PASSWORD + "\n")
    assert "sessions have ended" in result.output
    assert not signed_in(browser)
    assert browser.sign_in("/", seed.accountant, PASSWORD).status_code == 401
    other = make_browser()
    assert other.sign_in("/", seed.accountant, NEW_PASSWORD).status_code == 303
    assert signed_in(other)


def test_set_password_prompts_twice_and_refuses_a_short_one(cli: Cli, seed: Seed, env: Env) -> None:
    before = env.sql("SELECT password_hash FROM users WHERE email = :e", e=seed.accountant)
    mismatch = cli("staff", "set-password", seed.accountant, input="first passphrase\nsecond passphrase\n", expect=1)
    assert "do not match" in mismatch.output or "match" in mismatch.output
    short = cli("staff", "set-password", seed.accountant, "--password-stdin", input="short\n", expect=1)
    assert "[password.too_short]" in short.output
    assert env.sql("SELECT password_hash FROM users WHERE email = :e", e=seed.accountant) == before
    cli("staff", "set-password", seed.accountant, input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert env.sql("SELECT password_hash FROM users WHERE email = :e", e=seed.accountant) != before
    missing = cli("staff", "set-password", "nobody@example.com", "--password-stdin", input=NEW_PASSWORD + "\n", expect=3)
    assert "[staff.not_found]" in missing.output


def test_edit_changes_only_what_is_given(cli: Cli, seed: Seed) -> None:
    cli("staff", "edit", seed.accountant, "--name", "Marie  Tremblay-Roy", "--locale", "fr")
    entry = staff_entry(cli, seed.accountant)
    assert (entry["name"], entry["locale"]) == ("Marie Tremblay-Roy", "fr")
    cli("staff", "edit", seed.accountant, "--timezone", "America/Vancouver")
    entry = staff_entry(cli, seed.accountant)
    assert (entry["name"], entry["locale"], entry["timezone"]) == ("Marie Tremblay-Roy", "fr", "America/Vancouver")
    bad = cli("staff", "edit", seed.accountant, "--timezone", "Mars/Olympus", expect=1)
    assert "[timezone.unknown]" in bad.output
    assert staff_entry(cli, seed.accountant)["timezone"] == "America/Vancouver"
    empty = cli("staff", "edit", seed.accountant, "--name", "   ", expect=1)
    assert "[name.empty]" in empty.output


def test_add_and_remove_firms_never_the_last_one(cli: Cli, seed: Seed) -> None:
    cli("staff", "add-firm", seed.accountant, seed.other_firm)
    assert set(staff_entry(cli, seed.accountant)["firms"]) == {seed.firm, seed.other_firm}
    again = cli("staff", "add-firm", seed.accountant, seed.other_firm, expect=4)
    assert "[staff.already_member]" in again.output
    assert "[firm.not_found]" in cli("staff", "add-firm", seed.accountant, "No Such Firm", expect=3).output
    cli("staff", "remove-firm", seed.accountant, seed.firm)
    assert staff_entry(cli, seed.accountant)["firms"] == [seed.other_firm]
    not_member = cli("staff", "remove-firm", seed.accountant, seed.firm, expect=3)
    assert "[staff.not_member]" in not_member.output
    last = cli("staff", "remove-firm", seed.accountant, seed.other_firm, expect=1)
    assert "[staff.last_firm]" in last.output
    assert staff_entry(cli, seed.accountant)["firms"] == [seed.other_firm]


def test_a_disabled_account_cannot_sign_in_and_its_sessions_end(
    cli: Cli, seed: Seed, browser: Browser, make_browser, env: Env
) -> None:
    assert browser.sign_in("/", seed.accountant).status_code == 303
    assert signed_in(browser)
    cli("staff", "disable", seed.accountant)
    assert not signed_in(browser)
    assert env.sql("SELECT count(*) FROM web_sessions") == [(0,)]
    other = make_browser()
    refused = other.sign_in("/", seed.accountant)
    assert refused.status_code == 401
    # The same answer as a wrong password: a disabled account is not revealed.
    wrong = make_browser().sign_in("/", "nobody@tremblay.example")
    assert wrong.status_code == 401
    assert staff_entry(cli, seed.accountant)["disabled_at"] is not None
    assert "[staff.already_disabled]" in cli("staff", "disable", seed.accountant, expect=1).output
    assert "disabled" in cli("staff", "list").output


def test_a_disabled_member_is_no_longer_emailed_about_the_firm(
    cli: Cli, seed: Seed, server, browser: Browser, mailbox
) -> None:
    from tests.conftest import accept_invitation

    cli("staff", "add", "paul@tremblay.example", "--name", "Paul Roy", "--firm", seed.firm, "--password-stdin",
        input=PASSWORD + "\n")
    cli("staff", "disable", "paul@tremblay.example")
    accept_invitation(browser, cli, mailbox, seed.company, seed.accountant)
    server.settle()
    assert mailbox.wait(seed.accountant, subject="added")
    assert mailbox.messages("paul@tremblay.example") == []
