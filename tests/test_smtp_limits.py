"""The inbound listener's limits, against the real daemon with smtplib: clear 421s, real mail still flows.

Clients on other loopback addresses (127.0.0.2…) stand in for other hosts.
"""

from __future__ import annotations

import smtplib
import socket
from email.utils import parseaddr

import pytest

from tests.conftest import Cli, Env, Mailbox, Seed
from tests.inbound_helpers import TRUSTED_MTA, reply, wait_processed

MAX_PER_IP = 3
MAX_IDLE = 4


@pytest.fixture
def env(env: Env) -> Env:
    with env.config_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[inbound]\ntrusted_authserv_ids = ["{TRUSTED_MTA}"]\nmax_connections = 8\n'
            f"max_connections_per_ip = {MAX_PER_IP}\nmax_idle_commands = {MAX_IDLE}\n"
        )
    return env


def connect(env: Env, source: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30, source_address=(source, 0))


def greeting(env: Env, source: str = "127.0.0.1") -> bytes:
    """The first line the listener sends to a raw connection from ``source``."""
    with socket.create_connection(("127.0.0.1", env.smtp_port), timeout=30, source_address=(source, 0)) as sock:
        with sock.makefile("rb") as reader:
            return reader.readline()


def reply_address(cli: Cli, mailbox: Mailbox, seed: Seed) -> str:
    cli("invitation", "send", "--company", seed.company, "--email", seed.accountant)
    return parseaddr(str(mailbox.wait(seed.accountant, subject="Invitation")[-1]["Reply-To"]))[1]


def test_the_greeting_and_ehlo_name_no_version(server, env: Env):
    line = greeting(env)
    assert line.startswith(b"220 cabinet.example ")
    with connect(env) as smtp:
        code, answer = smtp.ehlo("mta.example")
        assert code == 250
    for text in (line, answer):
        assert b"Python" not in text and b"aiosmtpd" not in text and b"1.4" not in text, text


def test_connections_from_one_address_beyond_the_limit_get_a_clear_421(server, env: Env):
    held = [connect(env, "127.0.0.2") for _ in range(MAX_PER_IP)]
    try:
        assert greeting(env, "127.0.0.2") == b"421 4.7.0 Too many connections from your address\r\n"
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect(env, "127.0.0.2")
        assert refused.value.smtp_code == 421
        # Another address is not affected.
        with connect(env, "127.0.0.3") as other:
            assert other.noop()[0] == 250
        held.pop().quit()  # one slot freed: the address may connect again
        with connect(env, "127.0.0.2") as again:
            assert again.noop()[0] == 250
    finally:
        for smtp in held:
            smtp.close()


def test_a_session_without_a_message_is_closed_after_a_few_commands(server, env: Env):
    with connect(env) as smtp:
        smtp.ehlo("idle.example")  # counts
        for _ in range(MAX_IDLE - 1):
            assert smtp.noop()[0] == 250
        code, text = smtp.docmd("RSET")  # one command past the budget
        assert (code, text) == (421, b"4.7.0 Too many commands without a message; closing the connection")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
    assert env.sql("SELECT count(*) FROM inbound") == [(0,)]


def test_refused_recipients_count_as_commands_without_a_message(server, env: Env):
    with connect(env) as smtp:
        smtp.ehlo("prober.example")
        smtp.mail("prober@elsewhere.example")
        codes = [smtp.rcpt(f"guess{n}@cabinet.example")[0] for n in range(MAX_IDLE)]
        assert codes[:MAX_IDLE - 2] == [550] * (MAX_IDLE - 2)
        assert codes[-1] == 421


def test_messages_reset_the_count_so_a_busy_mta_is_never_cut_off(server, cli, seed, mailbox, env: Env):
    reply_to = reply_address(cli, mailbox, seed)
    with connect(env) as smtp:
        smtp.ehlo("mx.firm.example")
        for n in range(MAX_IDLE * 2):
            smtp.rset()  # Postfix resets between messages on a reused connection
            message = reply(reply_to, seed.accountant, f"Thanks, message {n}", subject=f"Re: Invitation {n}")
            assert smtp.sendmail(seed.accountant, [reply_to], message.as_bytes()) == {}
    wait_processed(env, MAX_IDLE * 2)


def test_real_mail_is_accepted_while_idle_clients_hammer(server, cli, seed, mailbox, env: Env):
    reply_to = reply_address(cli, mailbox, seed)
    hammering: list[smtplib.SMTP] = []
    refused = closed = 0
    try:
        # Idle clients from two other addresses take every slot they may, and keep asking for more.
        for round_ in range(3):
            for source in ("127.0.0.2", "127.0.0.3"):
                for _ in range(MAX_PER_IP + 1):
                    try:
                        hammering.append(connect(env, source))
                    except smtplib.SMTPConnectError as error:
                        assert error.smtp_code == 421
                        refused += 1
            for smtp in list(hammering):
                try:
                    for _ in range(MAX_IDLE + 1):
                        smtp.noop()
                except smtplib.SMTPServerDisconnected:
                    closed += 1
                    hammering.remove(smtp)
            # Real mail from the firm's MTA gets through between the rounds.
            message = reply(reply_to, seed.accountant, f"Real reply {round_}", subject=f"Re: Invitation {round_}")
            with connect(env, "127.0.0.1") as mta:
                assert mta.sendmail(seed.accountant, [reply_to], message.as_bytes()) == {}
    finally:
        for smtp in hammering:
            smtp.close()
    assert refused >= 6 and closed >= 6
    rows = wait_processed(env, 3)
    assert len(rows) == 3
