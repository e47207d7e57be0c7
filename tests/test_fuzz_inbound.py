"""Hostile inbound mail, generated and mutated (hypothesis, derandomized): nothing lost, nothing thrown.

Most messages go only through the parsing the store step and bounce detection
do (no database: fast); a few hundred through the daemon's own store and
process steps in-process, and a hundred through the real SMTP listener with
smtplib. Every
250 must be a stored row, every stored row must end in a terminal
classification (``unparseable`` when the parsers choke), and the daemon must
still answer at the end. ``bench/fuzz_inbound.py`` runs the same for longer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
from dataclasses import dataclass, field
from email.utils import parseaddr

from email import policy
from email.parser import BytesParser

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from daemon import rawmail
from daemon.bounces import UnreadableBounce, parse_bounce
from tests.conftest import Cli, Env, Mailbox, RunningServer, Seed, wait_until
from tests.fuzz_mail import batches
from tests.inbound_helpers import TRUSTED_MTA, wait_processed

BATCH = 20
# scripts/fuzz_inbound.sh COUNT runs longer; the suite's run is 3,000.
COUNT = max(int(os.environ.get("CABINET_FUZZ_COUNT", "3000")), 600)
PARSER_BATCHES = COUNT // BATCH  # through the store step's reading (no database)...
BOUNCE_EVERY = 4  # ...and every fourth through the bounce detectors too (some 25 ms each)
IN_PROCESS_BATCHES = COUNT // 15 // BATCH  # through the daemon's store and process (a transaction or two each)
SMTP_BATCHES = COUNT // 30 // BATCH  # through the real listener
FIRM_ADDRESS = "clients@cabinet.example"
SENDERS = ["", "mailer-daemon@mx.remote.example", "admin@company-z.example", "marie@tremblay.example"]
FUZZ_ID = re.compile(rb"^X-Fuzz-Id: (\d+)\r?$", re.MULTILINE)
TERMINAL = ("processed", "duplicate")


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[inbound]\ntrusted_authserv_ids = ["{TRUSTED_MTA}"]\nfirm_addresses = ["{FIRM_ADDRESS}"]\n'
            f"max_idle_commands = 1000\n"
        )
    return env


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    stored: set[int] = field(default_factory=set)
    unparseable: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self, where: str) -> str:
        lost = len(self.failures)
        return (f"fuzz ({where}): {self.tried} inputs tried, {self.refused} refused, {len(self.stored)} stored "
                f"({self.unparseable} unparseable), lost {lost}")


def addresses(cli: Cli, mailbox: Mailbox, seed: Seed) -> list[str]:
    """A reply+ and a bounce+ address of a real invitation, and a firm address."""
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    sent = mailbox.wait(seed.accountant, subject="Invitation")[-1]
    return [parseaddr(str(sent["Reply-To"]))[1], parseaddr(str(sent["Return-Path"]))[1], FIRM_ADDRESS]


def settled(env: Env, ids: list[int]) -> dict[int, tuple[str, str | None, str | None]]:
    rows = env.sql("SELECT id, state, kind, last_error FROM inbound")
    return {row[0]: (row[1], row[2], row[3]) for row in rows if row[0] in set(ids)}


def quiet_flufl(caplog: pytest.LogCaptureFixture) -> None:
    """As `cabinet serve` does (daemon/logs.py): flufl.bounce logs every detector run and traceback."""
    caplog.set_level(logging.CRITICAL, logger="flufl.bounce")


def test_the_store_step_and_bounce_detection_never_raise_anything_unexpected(capsys, caplog):
    quiet_flufl(caplog)
    tried = unreadable = 0
    failures: list[str] = []

    @settings(max_examples=PARSER_BATCHES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(batches(BATCH))
    def one_batch(messages: list[bytes]) -> None:
        nonlocal tried, unreadable
        for raw in messages:
            tried += 1
            try:
                message_id = rawmail.message_id(raw)
                assert message_id is None or (0 < len(message_id) <= 255 and message_id.isprintable()
                                              and message_id.isascii()), message_id
                if tried % BOUNCE_EVERY == 0:
                    parse_bounce(BytesParser(policy=policy.default).parsebytes(raw))
            except UnreadableBounce:
                unreadable += 1  # processing classifies it "unparseable"
            except Exception as exc:
                failures.append(f"{exc!r} on {raw[:200]!r}")

    one_batch()
    with capsys.disabled():
        print(f"\nfuzz (store step, bounce detectors): {tried} inputs tried, {tried // BOUNCE_EVERY} through the "
              f"detectors, {unreadable} unreadable reports, {len(failures)} unexpected exceptions")
    assert failures == [], "\n".join(failures[:20])
    assert tried == PARSER_BATCHES * BATCH


def test_hostile_messages_are_stored_and_classified_in_process(server: RunningServer, cli, seed, mailbox, env: Env, capsys, caplog):
    quiet_flufl(caplog)
    inbound = server.cabinet.inbound
    recipients = addresses(cli, mailbox, seed)
    tally = Tally()

    @settings(max_examples=IN_PROCESS_BATCHES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(batches(BATCH))
    def one_batch(messages: list[bytes]) -> None:
        for raw in messages:
            n = tally.tried
            tally.tried += 1
            try:
                stored = inbound.store(SENDERS[n % len(SENDERS)], [recipients[n % len(recipients)]], raw)
            except Exception as exc:  # the listener would answer 451 forever
                tally.failures.append(f"store raised {exc!r} on {raw[:200]!r}")
                continue
            tally.stored.add(stored)
            inbound.process(stored)  # the daemon's own processor may have taken it first: either way, see below

    one_batch()
    rows = settled(env, sorted(tally.stored))
    for inbound_id in tally.stored:
        state, kind, error = rows.get(inbound_id, ("missing", None, None))
        if state not in TERMINAL or kind is None:
            tally.failures.append(f"inbound {inbound_id}: {state}/{kind} ({error})")
        tally.unparseable += kind == "unparseable"
    with capsys.disabled():
        print("\n" + tally.line("in-process"))
    assert tally.failures == [], "\n".join(tally.failures[:20])
    assert tally.tried == IN_PROCESS_BATCHES * BATCH
    assert_daemon_up(env)


def test_hostile_messages_through_the_listener_are_refused_or_stored(server: RunningServer, cli, seed, mailbox, env: Env, capsys):
    recipients = addresses(cli, mailbox, seed)
    tally = Tally()
    accepted: set[int] = set()

    @settings(max_examples=SMTP_BATCHES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(batches(BATCH))
    def one_batch(messages: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=60) as smtp:
            smtp.ehlo("fuzz.example")
            for raw in messages:
                n = tally.tried
                tally.tried += 1
                marked = b"X-Fuzz-Id: %d\r\n" % n + raw  # each message distinct, and findable in the store
                try:
                    smtp.sendmail(SENDERS[n % len(SENDERS)], [recipients[n % len(recipients)]], marked)
                except smtplib.SMTPResponseException as refusal:
                    assert 400 <= refusal.smtp_code < 600, refusal
                    tally.refused += 1
                    smtp.rset()
                else:
                    accepted.add(n)

    one_batch()
    stored = {int(match.group(1)): row[0] for row in env.sql("SELECT id, raw FROM inbound")
              if (match := FUZZ_ID.search(bytes(row[1])))}
    tally.failures += [f"message {n} got 250 but is not stored" for n in sorted(accepted - set(stored))]
    tally.stored = set(stored.values())
    total = len(env.sql("SELECT id FROM inbound"))
    rows = wait_processed(env, total, timeout=120)
    for inbound_id, state, kind, _ in rows:
        if state not in TERMINAL:
            tally.failures.append(f"inbound {inbound_id}: {state}/{kind}")
        tally.unparseable += kind == "unparseable"
    errors = env.sql("SELECT id, last_error FROM inbound WHERE last_error IS NOT NULL AND kind IS NULL")
    tally.failures += [f"inbound {row[0]} failed in processing: {row[1]}" for row in errors]
    with capsys.disabled():
        print("\n" + tally.line("SMTP"))
    assert tally.failures == [], "\n".join(tally.failures[:20])
    assert tally.tried == SMTP_BATCHES * BATCH and len(accepted) + tally.refused == tally.tried
    assert_daemon_up(env)


def assert_daemon_up(env: Env) -> None:
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        assert smtp.noop()[0] == 250
    assert httpx.get(f"{env.base_url}/readyz", timeout=30).status_code == 200


def test_an_empty_message_id_is_stored_and_answered_250(server, cli, seed, mailbox, env: Env):
    """The case that got 451 forever: ``Message-ID: <>`` raised inside the store step."""
    reply_to = addresses(cli, mailbox, seed)[0]
    raw = (f"From: {seed.accountant}\r\nTo: {reply_to}\r\nMessage-ID: <>\r\nSubject: Re: Invitation\r\n\r\n"
           "Thanks\r\n").encode()
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        assert smtp.sendmail(seed.accountant, [reply_to], raw) == {}
    rows = wait_processed(env, 1)
    assert [(row[1], row[2]) for row in rows] == [("processed", "reply")]
    assert env.sql("SELECT message_id, digest FROM inbound") == [(None, hashlib.sha256(raw).hexdigest())]


def test_a_report_the_bounce_detectors_choke_on_is_classified_unparseable(server, cli, seed, mailbox, env: Env):
    bounce = addresses(cli, mailbox, seed)[1]
    raw = (f"From: \r\nTo: {bounce}\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=\"x\x00y\"\r\n\r\nThe message could not be delivered.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        assert smtp.sendmail("", [bounce], raw) == {}
    rows = wait_processed(env, 1)
    assert [(row[1], row[2]) for row in rows] == [("processed", "unparseable")]
    listed = cli("inbound", "list").output
    assert "unparseable" in listed
    [(attempts, error)] = env.sql("SELECT attempts, last_error FROM inbound")
    assert attempts == 1 and error
    assert env.sql("SELECT state FROM invitations") == [("pending",)]


def test_an_unparseable_message_can_be_retried_by_the_operator(server, cli, seed, mailbox, env: Env):
    bounce = addresses(cli, mailbox, seed)[1]
    raw = (f"From: \r\nTo: {bounce}\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=\"x\x00y\"\r\n\r\nThe message could not be delivered.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        assert smtp.sendmail("", [bounce], raw) == {}
    [(inbound_id, *_)] = wait_processed(env, 1)
    [(first,)] = env.sql("SELECT processed_at FROM inbound")
    cli("inbound", "retry", str(inbound_id))  # back in line: processing runs again in the background
    wait_until(lambda: env.sql("SELECT processed_at FROM inbound WHERE state = 'processed'") not in ([], [(first,)]),
               what="the retried message to be processed again")
    assert env.sql("SELECT state, kind, attempts FROM inbound") == [("processed", "unparseable", 1)]


def test_an_overlong_or_control_character_sender_is_stored(server, cli, seed, mailbox, env: Env):
    reply_to = addresses(cli, mailbox, seed)[0]
    sender = "x" * 400 + "@elsewhere.example"  # longer than the column (320): stored cut, raw intact
    raw = f"From: someone@elsewhere.example\r\nTo: {reply_to}\r\nSubject: Hello\r\n\r\nHello\r\n".encode()
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mta.example")
        assert smtp.docmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert smtp.rcpt(reply_to)[0] == 250
        assert smtp.data(raw)[0] == 250
    wait_processed(env, 1)
    [(mail_from,)] = env.sql("SELECT mail_from FROM inbound")
    assert mail_from == sender[:320]
