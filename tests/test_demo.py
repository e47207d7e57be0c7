"""`cabinet demo` run again reuses what exists: no second invitation, no repeated emails."""

from __future__ import annotations

import json
import re

from tests.conftest import Browser, Cli, Env, RunningServer

LINK = re.compile(r"Invitation link:\s+(\S+)")


def outbox_count(env: Env) -> int:
    return int(env.sql("SELECT count(*) FROM outbox")[0][0])


def test_demo_twice_sends_one_invitation_and_reprints_its_link(cli: Cli, env: Env) -> None:
    first = cli("demo")
    queued = outbox_count(env)
    assert queued == 1
    second = cli("demo")
    assert outbox_count(env) == queued
    assert env.sql("SELECT count(*) FROM invitations") == [(1,)]
    assert env.sql("SELECT count(*) FROM firms") == [(1,)] and env.sql("SELECT count(*) FROM users") == [(1,)]
    assert "no new email" in second.output
    # The reprinted link names the same invitation.
    first_link, second_link = LINK.search(first.output).group(1), LINK.search(second.output).group(1)
    explained = [json.loads(cli("link", "explain", link, "--json").output) for link in (first_link, second_link)]
    assert explained[1]["state"] == "pending" and explained[1]["current"] is True
    assert explained[0]["id"] == explained[1]["id"]


def test_demo_after_the_invitation_was_accepted_sends_nothing(
    cli: Cli, env: Env, server: RunningServer, browser: Browser
) -> None:
    link = LINK.search(cli("demo").output).group(1)
    password = (env.root / "data" / "demo-password").read_text().strip()
    assert browser.sign_in(link, "accountant@example.com", password).status_code == 303
    assert browser.submit(link, link + "/accept").status_code == 303
    server.settle()
    queued = outbox_count(env)
    again = cli("demo")
    assert "already on Demo Firm's client list" in again.output
    assert "Invitation link" not in again.output
    assert outbox_count(env) == queued
    assert env.sql("SELECT count(*) FROM invitations") == [(1,)]
    assert env.sql("SELECT count(*) FROM clients") == [(1,)]
