"""Inbound trust (issue #11): who may act through a reply+/bounce+ address, tried as an attacker would.

Everything goes through the real SMTP listener with smtplib, to the real reply+/bounce+ addresses
of real emails; the effects are read from the real database and Maildir. Anyone can write to these
addresses (they are in every email's Reply-To and envelope sender), so each attack below must be
recorded, change nothing and send nothing — and the genuine message next to it must still work,
so every test can fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import parseaddr

import pytest

from tests.conftest import Cli, Env, FakeClock, Mailbox, Seed
from tests.inbound_helpers import TRUSTED_MTA, deliver, dsn, reply, wait_processed

EVIL_URL = "https://evil.example/reinvite"
MTA_RECEIVED = (
    "Received: from smtp.attacker.example (smtp.attacker.example [198.51.100.66])\r\n"
    f"\tby {TRUSTED_MTA} (Postfix) with ESMTPS id 4Z1J8m3NpQz3c; Mon, 30 Nov 2026 03:00:00 +0000\r\n"
)


@dataclass
class Tally:
    tried: int = 0  # hostile messages delivered
    refused: int = 0  # of which recorded and not acted on
    lost: int = 0  # delivered (250) but without a stored row

    def line(self) -> str:
        return f"inbound trust: {self.tried} inputs tried, {self.refused} refused, lost {self.lost}"


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    counted = Tally()
    yield counted
    print(f"\n{counted.line()}")
    assert counted.lost == 0, counted.line()


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[inbound]\ntrusted_authserv_ids = ["{TRUSTED_MTA}"]\n')
    return env


def invite(cli: Cli, mailbox: Mailbox, seed: Seed, email: str) -> EmailMessage:
    cli("invitation", "send", "--company", seed.company, "--email", email)
    return mailbox.wait(email, subject="Invitation")[-1]


def address(message: EmailMessage, header: str) -> str:
    return parseaddr(str(message[header]))[1]


def status(cli: Cli) -> list[str]:
    return [i["status"] for i in json.loads(cli("invitation", "list", "--json").output)]


def inbound(env: Env) -> list[tuple[int, str, str | None, str | None]]:
    return env.sql("SELECT id, state, kind, outcome FROM inbound ORDER BY id")


def count(tally: Tally, env: Env, tried: int, refused: int) -> None:
    tally.tried += tried
    tally.refused += refused
    tally.lost += max(0, tried - env.sql("SELECT count(*) FROM inbound")[0][0])


def bodies(message: EmailMessage) -> str:
    return "\n".join(str(message.get_body((kind,)).get_content()) for kind in ("plain", "html"))


def test_a_forged_dsn_naming_another_recipient_or_message_changes_nothing(server, cli, seed, mailbox, env, tally):
    sent = invite(cli, mailbox, seed, "nobody@remote.example")
    bounce_address, message_id = address(sent, "Return-Path"), str(sent["Message-ID"])
    assert bounce_address.startswith("bounce+")
    deliver(env, "", [bounce_address], dsn(bounce_address, "someone@else.example", message_id))  # another recipient
    deliver(env, "", [bounce_address], dsn(bounce_address, "nobody@remote.example", "<other.1@evil.example>"))
    rows = wait_processed(env, 2)
    assert [(r[1], r[2]) for r in rows] == [("processed", "bounce")] * 2
    assert all("did not match the message its address names" in r[3] for r in rows), rows
    assert "someone@else.example" in rows[0][3] and "<other.1@evil.example>" in rows[1][3]
    count(tally, env, tried=2, refused=2)
    server.settle(sweep=False)
    assert status(cli) == ["pending"]
    assert env.sql("SELECT state, bounced_at FROM outbox WHERE kind = 'invitation'") == [("sent", None)]
    assert [m for m in mailbox.messages(seed.admin) if "delivered" in str(m["Subject"])] == []
    assert env.sql("SELECT count(*) FROM events WHERE kind LIKE '%bounced'") == [(0,)]

    # The genuine report (the right recipient and Message-ID) still acts: the refusals above were the match.
    deliver(env, "", [bounce_address], dsn(bounce_address, "nobody@remote.example", message_id))
    wait_processed(env, 3)
    assert status(cli) == ["bounced"]
    mailbox.wait(seed.admin, subject="delivered")


@pytest.mark.parametrize(
    ("status_code", "diagnostic", "wording"),
    [
        ("5.1.1", f"smtp; 550 5.1.1 Mailbox moved. To stay in touch, re-invite at {EVIL_URL}",
         "the address does not exist (status 5.1.1)"),
        ("5.2.2", f"smtp; 552 5.2.2 Over quota <a href=\"{EVIL_URL}\">free space</a>",
         "the mailbox is full (status 5.2.2)"),
        ("5.7.1", f"smtp; 554 5.7.1 Blocked. Visit {EVIL_URL} to be unblocked",
         "the receiving server refused it (status 5.7.1)"),
    ],
    ids=["no-such-address", "mailbox-full", "refused"],
)
def test_the_client_admin_is_told_cabinets_wording_and_the_status_code_never_the_remote_text(
    server, cli, seed, mailbox, env, tally, status_code: str, diagnostic: str, wording: str,
):
    sent = invite(cli, mailbox, seed, "nobody@remote.example")
    bounce_address = address(sent, "Return-Path")
    report = dsn(bounce_address, "nobody@remote.example", str(sent["Message-ID"]), status=status_code,
                 diagnostic=diagnostic)
    deliver(env, "", [bounce_address], report)
    (row,) = wait_processed(env, 1)
    count(tally, env, tried=1, refused=1)
    assert row[2] == "bounce" and status(cli) == ["bounced"]
    (told,) = mailbox.wait(seed.admin, subject="delivered")
    text = bodies(told)
    assert wording in text, text
    assert "evil.example" not in text and "re-invite" not in text and "Blocked" not in text
    assert "evil.example" not in told.as_string()
    # The remote words are kept for operators, on the stored rows only.
    (stored,) = env.sql("SELECT bounce_reason FROM outbox WHERE kind = 'invitation'")
    assert EVIL_URL in stored[0]


def test_a_reply_from_another_address_is_recorded_unverified_and_not_forwarded(server, cli, seed, mailbox, env, tally):
    sent = invite(cli, mailbox, seed, seed.accountant)
    reply_to = address(sent, "Reply-To")  # issued to the accountant
    forgeries = [
        # Proven, even, but for another party: the company admin of another client.
        reply(reply_to, "admin@company-z.example", "Please call me about the invoice."),
        # Unproven, and the envelope from elsewhere.
        reply(reply_to, "admin@company-z.example", "Wire the fee to our new account.", authenticated=False),
        # The invited address, but a second address beside it in From:.
        reply(reply_to, seed.accountant, "Send the files here."),
    ]
    forgeries[2].replace_header("From", f"{seed.accountant}, boss@company-z.example")
    for forged in forgeries:
        deliver(env, "bulk@mailer.evil.example", [reply_to], forged)
    rows = wait_processed(env, len(forgeries))
    assert [r[2] for r in rows] == ["unverified reply"] * len(forgeries), rows
    assert all("not forwarded" in r[3] for r in rows)
    count(tally, env, tried=len(forgeries), refused=len(forgeries))
    server.settle(sweep=False)
    assert [m for m in mailbox.messages() if "Reply from" in str(m["Subject"])] == []
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'reply.received'") == [(0,)]
    assert status(cli) == ["pending"]
    listed = json.loads(cli("inbound", "list", "--json").output)
    assert [item["kind"] for item in listed] == ["unverified reply"] * len(forgeries)

    # The party the address was issued to is heard, and forwarded to the other side.
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "Happy to help, call me Monday."))
    rows = wait_processed(env, len(forgeries) + 1)
    assert rows[-1][2] == "reply"
    (forwarded,) = mailbox.wait(seed.admin, subject="Reply from")
    assert "call me Monday" in bodies(forwarded)


def test_fourteen_unproven_accepts_get_at_most_one_answer_per_hour(
    server, cli, seed, mailbox, env, tally, clock: FakeClock,
):
    sent = invite(cli, mailbox, seed, seed.accountant)
    reply_to = address(sent, "Reply-To")
    for n in range(14):
        forged = reply(reply_to, seed.accountant, "accept" if n % 2 else "Accept\n\nthanks", authenticated=False)
        deliver(env, "bulk@mailer.evil.example", [reply_to], forged)
    rows = wait_processed(env, 14)
    assert all(r[2] == "command" and "not executed" in r[3] for r in rows), rows
    assert sum("the link was emailed" in r[3] for r in rows) == 1
    assert sum("not emailed again" in r[3] for r in rows) == 13
    count(tally, env, tried=14, refused=14)
    server.settle(sweep=False)
    answers = [m for m in mailbox.messages(seed.accountant) if "Use the link" in str(m["Subject"])]
    assert len(answers) == 1
    assert status(cli) == ["pending"]

    # An hour later the invitee may be answered again, once.
    clock.advance(hours=1, minutes=1)
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "accept", authenticated=False))
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "accept", authenticated=False))
    rows = wait_processed(env, 16)
    count(tally, env, tried=2, refused=2)
    assert "the link was emailed" in rows[14][3] and "not emailed again" in rows[15][3]
    mailbox.wait(seed.accountant, count=2, subject="Use the link")
    server.settle(sweep=False)
    assert len([m for m in mailbox.messages(seed.accountant) if "Use the link" in str(m["Subject"])]) == 2


def test_an_authentication_results_header_typed_by_the_client_is_ignored(server, cli, seed, mailbox, env, tally):
    sent = invite(cli, mailbox, seed, seed.accountant)
    reply_to = address(sent, "Reply-To")
    # The client typed a header in the trusted MTA's name; the MTA then prepended its Received:.
    typed = reply(reply_to, seed.accountant, "accept").as_bytes(policy=SMTP_POLICY)
    assert typed.startswith(f"Authentication-Results: {TRUSTED_MTA};".encode())
    deliver(env, seed.accountant, [reply_to], MTA_RECEIVED.encode() + typed)
    (row,) = wait_processed(env, 1)
    count(tally, env, tried=1, refused=1)
    assert row[2] == "command" and "not executed (unverified" in row[3], row
    assert status(cli) == ["pending"]

    # The same verdict written by the MTA's milter, above the MTA's Received:, is believed.
    genuine = reply(reply_to, seed.accountant, "accept").as_bytes(policy=SMTP_POLICY)
    results, _, rest = genuine.partition(b"\r\nFrom:")
    deliver(env, seed.accountant, [reply_to], results + b"\r\n" + MTA_RECEIVED.encode() + b"From:" + rest)
    rows = wait_processed(env, 2)
    assert "accepted by reply" in rows[1][3], rows
    assert status(cli) == ["accepted"]
