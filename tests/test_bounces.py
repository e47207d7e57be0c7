"""Bounces in the shapes Postfix, Exim, Exchange and Gmail produce, and messages that are not bounces."""

from __future__ import annotations

import pytest

from daemon.bounces import Bounce, cause, parse_bounce, status_in
from tests.mail_corpus import load, names, parse, raw

CABINET = "cabinet@cabinet.tremblay-cpa.ca>"

BOUNCES = {
    "dsn_postfix_failed.eml": Bounce(
        recipients=("jane.doe@example.net",),
        permanent=True,
        reason="550 5.1.1 <Jane.Doe@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
        original_message_id=f"<174178829900.4242.3141592653.{CABINET}",
        status='5.1.1',
    ),
    "dsn_postfix_delayed.eml": Bounce(
        recipients=("luc@gagnon-comptables.ca",),
        permanent=False,
        reason="connect to mx.gagnon-comptables.ca[198.51.100.7]:25: Connection timed out",
        original_message_id=f"<174178829900.4242.3141592653.{CABINET}",  # from text/rfc822-headers
        status='4.4.1',
    ),
    "dsn_exim_failed.eml": Bounce(
        recipients=("sophie@gagnon-comptables.ca",),
        permanent=True,
        reason="550 5.2.1 Mailbox disabled, not accepting messages",
        original_message_id=f"<174178829900.4242.2718281828.{CABINET}",
        status='5.0.0',
    ),
    "dsn_exchange_online_failed.eml": Bounce(
        recipients=("pierre@cabinet-lavoie.ca",),
        permanent=True,
        reason="550 5.1.10 RESOLVER.ADR.RecipientNotFound;"
        " Recipient pierre@cabinet-lavoie.ca not found by SMTP address lookup",
        original_message_id=f"<174178829900.4242.5772156649.{CABINET}",
        status='5.1.10',
    ),
    "dsn_gmail_failed.eml": Bounce(
        recipients=("nadia@cabinet-lavoie.ca",),
        permanent=True,
        reason="550 5.1.1 <nadia@cabinet-lavoie.ca>: Recipient address rejected: User unknown in local recipient table",
        original_message_id=f"<174178829900.4242.2236067977.{CABINET}",
        status='5.1.1',
    ),
    # No DSN: the recipients come from flufl.bounce's heuristics, the reason from the quoted SMTP reply.
    "bounce_exim_classic_text.eml": Bounce(
        recipients=("sophie.gagnon.cpa@gmail.com",),
        permanent=True,
        reason="550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking"
        " the recipient's email address for typos or unnecessary spaces. For more information, go to"
        " https://support.google.com/mail/?p=NoSuchUser a640c23a62f3a-ac2b1c3d4e5si123456f.101 - gsmtp",
        original_message_id=f"<174178829900.4242.1618033988.{CABINET}",  # from the inline copy
        status='5.1.1',
    ),
    "bounce_gmail_legacy_text.eml": Bounce(
        recipients=("nadia@lavoiecpa.ca",),
        permanent=True,
        reason="550 5.1.1 <nadia@lavoiecpa.ca>: Recipient address rejected: User unknown in local recipient table",
        original_message_id=f"<174178829900.4242.1732050807.{CABINET}",
        status='5.1.1',
    ),
    # Exchange 2000/2003: no SMTP reply is quoted, so there is no reason to give but the fact.
    "bounce_exchange_legacy_text.eml": Bounce(
        recipients=("pierre@cabinet-lavoie.ca",),
        permanent=True,
        reason="delivery failed",
        original_message_id=f"<174178829900.4242.1414213562.{CABINET}",
        status=None,  # no status code anywhere in it
    ),
}
NOT_BOUNCES = ["dsn_postfix_relayed_success.eml"]  # a success DSN ("Action: relayed") reports no failure


def test_every_report_fixture_has_an_expectation() -> None:
    assert sorted([*BOUNCES, *NOT_BOUNCES]) == names("dsn_", "bounce_")


@pytest.mark.parametrize("name", sorted(BOUNCES))
def test_bounce(name: str) -> None:
    assert parse_bounce(load(name)) == BOUNCES[name]


@pytest.mark.parametrize("name", [*NOT_BOUNCES, *names("reply_", "ooo_", "sender_")])
def test_not_a_bounce(name: str) -> None:
    assert parse_bounce(load(name)) is None


def test_several_recipients_and_reasons() -> None:
    data = raw("dsn_postfix_failed.eml").replace(
        b"    rejected: User unknown in virtual mailbox table\n",
        b"    rejected: User unknown in virtual mailbox table\n\n"
        b"Final-Recipient: rfc822; luc@gagnon-comptables.ca\nAction: failed\nStatus: 5.2.2\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\n\n"
        b"Final-Recipient: rfc822; sophie@gagnon-comptables.ca\nAction: failed\nStatus: 5.4.4\n",
    )
    assert parse_bounce(parse(data)) == Bounce(
        recipients=("jane.doe@example.net", "luc@gagnon-comptables.ca", "sophie@gagnon-comptables.ca"),
        permanent=True,
        reason="550 5.1.1 <Jane.Doe@example.net>: Recipient address rejected: User unknown in virtual mailbox table"
        "; 552 5.2.2 Mailbox full; status 5.4.4",
        original_message_id=f"<174178829900.4242.3141592653.{CABINET}",
        status="5.1.1",  # the first failed block's
    )


@pytest.mark.xfail(
    strict=True,
    reason="flufl.bounce 6.0's SimpleMatch keeps only addresses whose domain matches [a-z0-9._]+,"
    " so a text bounce for a hyphenated domain is not recognised (DSNs are not affected)",
)
def test_text_bounce_for_a_hyphenated_domain() -> None:
    data = raw("bounce_gmail_legacy_text.eml").replace(b"lavoiecpa.ca", b"cabinet-lavoie.ca")
    bounce = parse_bounce(parse(data))
    assert bounce is not None and bounce.recipients == ("nadia@cabinet-lavoie.ca",)


@pytest.mark.parametrize(
    ("text", "status", "why"),
    [
        ("550 5.1.1 <jane@example.net>: User unknown", "5.1.1", "no_such_address"),
        ("552-5.2.2 The email account that you tried to reach is over quota", "5.2.2", "mailbox_full"),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10", "no_such_address"),
        ("554 5.7.1 see https://evil.example/5.1.1/reinvite", "5.7.1", "refused"),
        ("550 Go to https://evil.example/reinvite", None, "refused"),
        ("version 15.2.1.3 says no", None, "refused"),  # not a status code: part of a longer number
    ],
)
def test_what_people_are_told_is_chosen_from_the_status_code(text: str, status: str | None, why: str) -> None:
    assert status_in(text) == status
    assert cause(status) == why


def test_an_original_message_id_field_names_the_email_when_nothing_is_returned() -> None:
    """Without the returned message or its headers, a report block's Original-Message-ID is what it names."""
    data = raw("dsn_postfix_failed.eml")
    returned = data.index(b"Content-Type: text/rfc822-headers") if b"text/rfc822-headers" in data else data.index(b"Content-Type: message/rfc822")
    boundary = data.rindex(b"\n--", 0, returned)
    report = data[:boundary] + data[data.rindex(b"\n--"):]  # the returned part left out
    report = report.replace(b"Reporting-MTA:", b"Original-Message-ID: <named.1@cabinet.example>\nReporting-MTA:", 1)
    bounce = parse_bounce(parse(report))
    assert bounce is not None and bounce.original_message_id == "<named.1@cabinet.example>"
