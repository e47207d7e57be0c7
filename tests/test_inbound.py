"""Inbound mail through the real SMTP/LMTP listener: replies that act, bounces, auto-replies.

The firm's MTA is played by smtplib on loopback; its Authentication-Results
header stands in for the DKIM/DMARC checks a real MTA makes against DNS,
which cannot run here.
"""

from __future__ import annotations

import json
import logging
import smtplib
import threading
from email.utils import parseaddr

import pytest
from email.policy import SMTP as SMTP_POLICY

from tests.conftest import PASSWORD, Browser, Cli, Env, FakeClock, Mailbox, Seed, link_in, queued_email
from tests.inbound_helpers import TRUSTED_MTA, deliver, dsn, execute, reply, wait_processed


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[inbound]\ntrusted_authserv_ids = ["{TRUSTED_MTA}"]\nmax_recipients = 3\n'
            f'max_message_size = 100000\nmax_attempts = 2\nfirm_addresses = ["clients@cabinet.example"]\n'
        )
    return env


def invite(cli: Cli, mailbox: Mailbox, seed: Seed, email: str | None = None):
    email = email or seed.accountant
    cli("invitation", "send", "--company", seed.company, "--email", email)
    message = mailbox.wait(email, subject="Invitation")[-1]
    reply_to = parseaddr(str(message["Reply-To"]))[1]
    return message, reply_to


def status(cli: Cli) -> list[str]:
    return [i["status"] for i in json.loads(cli("invitation", "list", "--json").output)]


def roster(cli: Cli, firm: str) -> list[dict[str, object]]:
    return json.loads(cli("client", "list", "--firm", firm, "--json").output)


def test_only_our_addresses_are_accepted_at_rcpt(server, cli, seed, mailbox, env: Env):
    _, reply_to = invite(cli, mailbox, seed)
    forged = reply_to.replace("reply+", "reply+x")
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mta.example")
        smtp.mail("someone@elsewhere.example")
        for refused in ("postmaster@cabinet.example", "anyone@other.example", forged,
                        "reply+@cabinet.example", reply_to.replace("@cabinet.example", "@other.example")):
            assert smtp.rcpt(refused)[0] == 550, refused
        assert smtp.rcpt(reply_to)[0] == 250
        assert smtp.rcpt("Clients@cabinet.example")[0] == 250  # a configured firm address
        assert smtp.rcpt(reply_to)[0] == 250
        assert smtp.rcpt(reply_to)[0] == 452  # max_recipients = 3
        smtp.rset()


def test_limits_answer_with_the_right_codes(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    big = reply(reply_to, seed.accountant, ("x" * 70 + "\n") * 3000)
    with pytest.raises(smtplib.SMTPSenderRefused) as declared:
        deliver(env, seed.accountant, [reply_to], big)  # SIZE= announced: refused at MAIL
    assert declared.value.smtp_code == 552
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mta.example")
        assert smtp.mail(seed.accountant)[0] == 250  # no SIZE=: refused after DATA
        assert smtp.rcpt(reply_to)[0] == 250
        assert smtp.data(big.as_bytes(policy=SMTP_POLICY))[0] == 552
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mta.example")
        code, _ = smtp.docmd("NOOP " + "x" * 2000)
        assert code == 500
    assert env.sql("SELECT count(*) FROM inbound") == [(0,)]


def test_a_message_is_stored_before_the_250(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    message = reply(reply_to, "someone@elsewhere.example", "hello")
    assert deliver(env, "someone@elsewhere.example", [reply_to], message) == {}
    rows = env.sql("SELECT message_id, mail_from, recipients FROM inbound")
    assert rows == [(message["Message-ID"], "someone@elsewhere.example", json.dumps([reply_to]))]


def test_reply_accept_from_a_proven_sender_acts_like_the_link_once(server, cli, seed, mailbox, env):
    invitation, reply_to = invite(cli, mailbox, seed)
    message = reply(reply_to, seed.accountant, "Accept\n\nOn Monday, Julie Roy wrote:\n> You are invited")
    deliver(env, seed.accountant, [reply_to], message)
    deliver(env, seed.accountant, [reply_to], message)  # the MTA retried: same bytes
    changed = message.as_bytes(policy=SMTP_POLICY).replace(b"Accept", b"accept")  # same Message-ID, other bytes
    deliver(env, seed.accountant, [reply_to], changed)
    rows = wait_processed(env, 2)
    assert [(r[1], r[2]) for r in rows] == [("processed", "command"), ("duplicate", "duplicate")]
    assert status(cli) == ["accepted"]
    assert [c["name"] for c in roster(cli, seed.firm)] == [seed.company]
    assert env.sql("SELECT channel FROM events WHERE kind = 'invitation.accepted'") == [("reply",)]
    accepted = mailbox.wait(seed.admin, subject="accepted")
    assert len(accepted) == 1
    # The link now says what happened, exactly as if the button had been pressed.
    assert "accepted by Marie Tremblay" in Browser(env.base_url).get(link_in(invitation)).text


def test_a_command_without_proof_is_not_executed_and_the_link_is_emailed(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "accept", authenticated=False))
    untrusted = reply(reply_to, seed.accountant, "accept", authserv_id="mx.attacker.example")
    deliver(env, seed.accountant, [reply_to], untrusted)
    rows = wait_processed(env, 2)
    assert all("not executed" in r[3] for r in rows)
    assert status(cli) == ["pending"] and roster(cli, seed.firm) == []
    notices = mailbox.wait(seed.accountant, count=2)
    texts = [m.get_body(("plain",)).get_content() for m in notices[1:]]
    assert len(texts) == 1 and "/invitations/" in texts[0] and "could not verify" in texts[0]
    # The second unproven command within the hour is not answered again (issue #11).
    assert "not emailed again" in rows[1][3]


def test_a_forged_sender_changes_nothing(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    # Proven, but for another address: the reply was not sent by the invited accountant.
    forged = reply(reply_to, "mallory@attacker.example", "accept")
    deliver(env, "mallory@attacker.example", [reply_to], forged)
    (row,) = wait_processed(env, 1)
    # Not the party this reply address was issued to: recorded, not acted on, not forwarded (issue #11).
    assert row[2] == "unverified reply" and "to whom this reply address was issued" in row[3]
    assert status(cli) == ["pending"] and roster(cli, seed.firm) == []
    server.settle(sweep=False)
    assert mailbox.messages("mallory@attacker.example") == []


def test_refuser_in_french_declines(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    deliver(env, seed.accountant, [reply_to],
            reply(reply_to, seed.accountant, "Refuser\n\nLe lundi 3 mars, Julie Roy a écrit :\n> Invitation"))
    wait_processed(env, 1)
    assert status(cli) == ["declined"]
    mailbox.wait(seed.admin, subject="declined")


def test_an_accountant_in_several_firms_names_the_firm(server, cli, seed, mailbox, env):
    cli("firm", "add", "Côté Fiscalité", "--email", "info@cote.example")
    cli("staff", "add", "luc@multi.example", "--name", "Luc Côté", "--firm", seed.firm, "--firm", "Côté Fiscalité",
        "--password-stdin", input=PASSWORD + "\n")
    _, reply_to = invite(cli, mailbox, seed, "luc@multi.example")
    deliver(env, "luc@multi.example", [reply_to], reply(reply_to, "luc@multi.example", "accept"))
    wait_processed(env, 1)
    (picker,) = mailbox.wait("luc@multi.example", subject="Choose")
    assert "Côté Fiscalité" in picker.get_body(("plain",)).get_content()
    assert status(cli) == ["pending"]
    deliver(env, "luc@multi.example", [reply_to], reply(reply_to, "luc@multi.example", "accept Côté Fiscalité"))
    wait_processed(env, 2)
    assert status(cli) == ["accepted"]
    assert [c["name"] for c in roster(cli, "Côté Fiscalité")] == [seed.company]


def test_a_bounced_invitation_is_marked_and_the_inviter_told(server, cli, seed, mailbox, env):
    cli("invitation", "send", "--company", seed.company, "--email", "nobody@remote.example")
    (sent,) = mailbox.wait("nobody@remote.example", subject="Invitation")
    bounce_address = parseaddr(str(sent["Return-Path"]))[1]
    assert bounce_address.startswith("bounce+")
    deliver(env, "", [bounce_address], dsn(bounce_address, "nobody@remote.example", str(sent["Message-ID"])))
    (row,) = wait_processed(env, 1)
    assert row[2] == "bounce"
    assert status(cli) == ["bounced"]
    (told,) = mailbox.wait(seed.admin, subject="delivered")
    body = told.get_body(("plain",)).get_content()
    # Cabinet's own words for the status code, never the remote server's text (issue #11).
    assert "nobody@remote.example" in body and "the address does not exist (status 5.1.1)" in body
    assert "User unknown" not in body
    assert env.sql("SELECT state FROM outbox WHERE recipient = 'nobody@remote.example'") == [("bounced",)]
    assert "could not be delivered" in Browser(env.base_url).get(link_in(sent)).text


@pytest.mark.parametrize(
    "headers, subject",
    [
        ({"Auto-Submitted": "auto-replied"}, "Automatic reply: Invitation"),
        ({}, "Absence du bureau"),
        ({"Precedence": "bulk"}, "Re: Invitation"),
        ({"X-Autoreply": "yes"}, "Re: Invitation"),
    ],
)
def test_out_of_office_changes_nothing_and_gets_no_answer(server, cli, seed, mailbox, env, headers, subject):
    _, reply_to = invite(cli, mailbox, seed)
    outbox_before = env.sql("SELECT count(*) FROM outbox")
    ooo = reply(reply_to, seed.accountant, "accept\nI am out of the office until Monday.", subject=subject,
                headers=headers)
    deliver(env, seed.accountant, [reply_to], ooo)
    (row,) = wait_processed(env, 1)
    assert row[2] == "auto-reply"
    server.settle(sweep=False)
    assert env.sql("SELECT count(*) FROM outbox") == outbox_before
    assert status(cli) == ["pending"]


def test_an_ordinary_reply_is_recorded_and_forwarded_once(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    text = "Thanks Julie, I'll look at it on Monday.\n\nOn Monday, Julie Roy wrote:\n> You are invited"
    message = reply(reply_to, seed.accountant, text)
    deliver(env, seed.accountant, [reply_to], message)
    deliver(env, seed.accountant, [reply_to], message)
    wait_processed(env, 1)
    (forwarded,) = mailbox.wait(seed.admin, subject="Reply from")
    body = forwarded.get_body(("plain",)).get_content()
    assert "look at it on Monday" in body and "You are invited" not in body
    assert str(forwarded["Reply-To"]).startswith("reply+")
    server.settle(sweep=False)
    assert len(mailbox.messages(seed.admin)) == 1
    assert env.sql("SELECT count(*) FROM events WHERE kind = 'reply.received'") == [(1,)]


def test_a_message_that_keeps_failing_is_quarantined_and_the_rest_flow(
    server, cli, seed, mailbox, env, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="daemon.inbound")
    _, reply_to = invite(cli, mailbox, seed)
    try:
        execute(env, "CREATE TRIGGER no_accept BEFORE UPDATE ON invitations BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        drop = "DROP TRIGGER no_accept"
    except Exception:  # PostgreSQL
        execute(env, "CREATE FUNCTION no_accept() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql")
        execute(env, "CREATE TRIGGER no_accept BEFORE UPDATE ON invitations FOR EACH ROW EXECUTE FUNCTION no_accept()")
        drop = "DROP TRIGGER no_accept ON invitations"
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "accept"))
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "Out of office", headers={"Auto-Submitted": "auto-replied"}))
    wait_processed(env, 1)  # the auto-reply goes through
    clock.advance(minutes=5)  # past the retry backoff: the second attempt fails too
    wait_processed(env, 1, states=("quarantined",))
    quarantined = json.loads(cli("inbound", "list", "--status", "quarantined", "--json").output)
    assert len(quarantined) == 1 and "disk on fire" in quarantined[0]["last_error"]
    assert quarantined[0]["attempts"] == 2
    # Each failure is in the log too, with the message's id and Message-ID, not only in a column.
    failures = [r.getMessage() for r in caplog.records if "processing failed" in r.getMessage()]
    assert len(failures) == 2 and all(quarantined[0]["message_id"] in line for line in failures), failures
    assert "quarantined" in failures[-1]
    assert status(cli) == ["pending"]
    execute(env, drop)
    retried = cli("inbound", "retry", str(quarantined[0]["id"]))
    assert "processed" in retried.output
    assert status(cli) == ["accepted"]


def test_lmtp_answers_once_per_recipient(tmp_path, seed_lmtp):
    env, reply_to, firm_address = seed_lmtp
    message = reply(reply_to, "someone@elsewhere.example", "hello").as_bytes(policy=SMTP_POLICY)
    lmtp = smtplib.LMTP("127.0.0.1", env.smtp_port, timeout=30)
    try:
        assert lmtp.ehlo_or_helo_if_needed() is None
        assert lmtp.mail("someone@elsewhere.example")[0] == 250
        assert lmtp.rcpt(reply_to)[0] == 250
        assert lmtp.rcpt(firm_address)[0] == 250
        assert lmtp.rcpt("stranger@cabinet.example")[0] == 550
        code, _ = lmtp.data(message)
        assert code == 250
        assert lmtp.getreply()[0] == 250  # the second recipient's own status
    finally:
        lmtp.close()
    assert env.sql("SELECT count(*) FROM inbound") == [(1,)]


@pytest.fixture
def seed_lmtp(env: Env, cli: Cli, clock: FakeClock, mailbox: Mailbox, seed: Seed):
    from tests.conftest import RunningServer

    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write('\n')
    text = env.config_path.read_text().replace('[inbound]\n', '[inbound]\nprotocol = "lmtp"\n')
    env.config_path.write_text(text)
    running = RunningServer(env, clock)
    running.start()
    try:
        cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
        message = mailbox.wait(seed.accountant, subject="Invitation")[-1]
        yield env, parseaddr(str(message["Reply-To"]))[1], "clients@cabinet.example"
    finally:
        running.stop()


def test_a_reply_from_the_previous_admin_goes_to_the_firm_not_to_the_new_admin(server, cli, seed, mailbox, env):
    """Forwards follow who the answered email was for (recorded when queued), not today's admin address."""
    _, reply_to = invite(cli, mailbox, seed)
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "Accept"))
    (accepted,) = mailbox.wait(seed.admin, subject="accepted")
    cli("company", "set-admin", seed.company, "--admin-email", "nouveau@roy.example", "--admin-name", "Paul Roy")
    answer_to = parseaddr(str(accepted["Reply-To"]))[1]
    deliver(env, seed.admin, [answer_to], reply(answer_to, seed.admin, "Merci, see you Monday."))
    (forwarded,) = mailbox.wait(seed.accountant, subject="Reply from")
    assert "see you Monday" in forwarded.get_body(("plain",)).get_content()
    wait_processed(env, 2)
    assert [m for m in mailbox.messages("nouveau@roy.example") if "Reply from" in str(m["Subject"])] == []
    audiences = dict(env.sql("SELECT kind, audience FROM outbox WHERE kind IN ('invitation', 'invitation_accepted')"))
    assert audiences == {"invitation": "accountant", "invitation_accepted": "company_admin"}


def test_the_same_bytes_stored_at_once_are_one_row(server, env):
    """The unique digest decides (no check-then-insert): eight sessions racing store one row."""
    raw = reply("clients@cabinet.example", "a@b.example", "hello").as_bytes(policy=SMTP_POLICY)
    barrier = threading.Barrier(8)
    ids: list[int] = []

    def store() -> None:
        barrier.wait()
        ids.append(server.cabinet.inbound.store("a@b.example", ["clients@cabinet.example"], raw))

    threads = [threading.Thread(target=store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert env.sql("SELECT count(*) FROM inbound") == [(1,)]
    uniques = inspect_unique_columns(env, "inbound")
    assert ["digest"] in uniques


def inspect_unique_columns(env: Env, table: str) -> list[list[str]]:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        found = inspect(engine)
        return [c["column_names"] for c in found.get_unique_constraints(table)] + [
            i["column_names"] for i in found.get_indexes(table) if i["unique"]
        ]
    finally:
        engine.dispose()


def test_listing_inbound_mail_and_scraping_metrics_never_read_stored_bodies(server, cli, seed, mailbox, env):
    from prometheus_client import generate_latest
    from sqlalchemy import event

    from daemon.metrics import Metrics

    _, reply_to = invite(cli, mailbox, seed)
    deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, "Thanks, noted."))
    wait_processed(env, 1)
    statements: list[str] = []
    me = threading.get_ident()  # the server's own workers use the same engine meanwhile: not ours to judge

    def record(conn, cursor, statement, *args) -> None:
        if threading.get_ident() == me:
            statements.append(" ".join(statement.split()).lower())

    engine = server.cabinet.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        (item,) = server.cabinet.inbound.list()
        generate_latest(Metrics(server.cabinet.sessions, server.cabinet.clock).registry)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert item.size > 0 and item.state == "processed"
    selects = [s.replace("length(inbound.raw)", "") for s in statements if s.startswith("select")]
    assert selects and not [s for s in selects if "inbound.raw" in s or "outbox.raw" in s], selects


def test_dkim_lookups_run_outside_any_transaction_and_are_capped(tmp_path, env, cli, seed, clock: FakeClock):
    """Cabinet's own DKIM check, with a stand-in for the internet's DNS passed in through the
    composition root (``build(dns_txt=...)``; DNS itself is outside the project).

    While a key is looked up, the app holds no database connection at all; a message with more
    signatures than the cap is judged on the first ``MAX_DKIM_SIGNATURES`` only.
    """
    import dataclasses
    from email.utils import format_datetime, make_msgid
    from datetime import datetime, timezone

    import dkim
    from dkim import dknewkey

    from daemon.app import build
    from daemon.config import load_config
    from daemon.db import connections_kept
    from daemon.senders import MAX_DKIM_SIGNATURES

    dknewkey.GenRSAKeys(str(tmp_path / "key"), verbose=False)
    dknewkey.ExtractRSADnsPublicKey(str(tmp_path / "key"), str(tmp_path / "dns"), verbose=False)
    private, public = (tmp_path / "key").read_bytes(), (tmp_path / "dns").read_bytes()
    config = load_config(env.config_path)
    config = dataclasses.replace(config, inbound=dataclasses.replace(config.inbound, trusted_authserv_ids=(), dkim_verify=True))
    lookups: list[tuple[bytes, int]] = []
    cabinet = None

    def dns_txt(name: bytes, timeout: float = 5) -> bytes | None:
        assert cabinet is not None
        # Connections in use: the SQLite writer's, kept idle between groups, holds no transaction.
        lookups.append((name, cabinet.engine.pool.checkedout() - connections_kept(cabinet.sessions)))
        return public if name.startswith(b"good.") else None

    cabinet = build(config, clock=clock, dns_txt=dns_txt)
    try:
        cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
        reply_to = parseaddr(str(queued_email(env, cli, "kind = 'invitation'")["Reply-To"]))[1]
        headers = [b"from", b"to", b"subject", b"date", b"message-id"]

        def signed(selectors: list[bytes]) -> bytes:
            data = (
                f"From: Marie Tremblay <{seed.accountant}>\r\nTo: {reply_to}\r\nSubject: Re: Invitation\r\n"
                f"Date: {format_datetime(datetime.now(timezone.utc))}\r\n"
                f"Message-ID: {make_msgid(domain='tremblay.example')}\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nAccept\r\n"
            ).encode()
            for selector in selectors:
                data = bytes(dkim.sign(data, selector, b"tremblay.example", private, include_headers=headers)) + data
            return data

        # Five signatures, only the last one good: past the cap, so unproven; the link is emailed instead.
        too_many = signed([b"good", b"bad1", b"bad2", b"bad3", b"bad4"])  # the last added is the first header
        inbound_id = cabinet.inbound.store(seed.accountant, [reply_to], too_many)
        cabinet.inbound.process(inbound_id)
        assert len(lookups) == MAX_DKIM_SIGNATURES, (reply_to, env.sql("SELECT state, kind, outcome, last_error FROM inbound"))
        assert all(held == 0 for _, held in lookups), lookups
        assert status(cli) == ["pending"]
        assert "unverified" in env.sql("SELECT outcome FROM inbound WHERE id = :i", i=inbound_id)[0][0]

        # One good signature: proven, and the command runs.
        lookups.clear()
        proven = signed([b"good"])
        cabinet.inbound.process(cabinet.inbound.store(seed.accountant, [reply_to], proven))
        assert status(cli) == ["accepted"]
        assert lookups and all(held == 0 for _, held in lookups)
    finally:
        cabinet.close()


def test_messages_stored_together_each_get_their_own_outcome(server, env):
    """Concurrent DATAs are stored in one transaction; one that cannot be stored fails alone (451), the rest stay."""
    to = ["clients@cabinet.example"]
    raws = [reply("clients@cabinet.example", "a@b.example", f"hello {n}").as_bytes(policy=SMTP_POLICY) for n in range(2)]
    broken: str = None  # type: ignore[assignment]  # an envelope the store step cannot read
    outcomes = server.cabinet.inbound.store_many(
        [("a@b.example", to, raws[0]), (broken, to, raws[1]), ("c@d.example", to, raws[1]), ("a@b.example", to, raws[0])]
    )
    assert isinstance(outcomes[1], Exception)
    first, _, second, again = outcomes
    assert isinstance(first, int) and isinstance(second, int) and first != second
    assert again == first  # the same bytes twice in one batch: one row
    assert env.sql("SELECT id, mail_from FROM inbound ORDER BY id") == [(first, "a@b.example"), (second, "c@d.example")]


def test_eight_connections_at_once_are_all_stored_before_their_250(server, cli, seed, mailbox, env):
    _, reply_to = invite(cli, mailbox, seed)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            barrier.wait()
            for k in range(5):
                deliver(env, seed.accountant, [reply_to], reply(reply_to, seed.accountant, f"note {n}-{k}"))
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Every 250 was for a committed row: all 40 are there the moment the last answer came.
    assert env.sql("SELECT count(*) FROM inbound") == [(40,)]
    wait_processed(env, 40)
