"""The hand-written mail corpus in tests/fixtures/mail, parsed the way Cabinet parses inbound mail.

File names say what each message is: ``reply_*`` (people answering, in
English and French, from the clients named), ``ooo_*`` (out-of-office and
other robots), ``dsn_*`` (RFC 3464 reports), ``bounce_*`` (bounces without
one) and ``sender_*`` (Authentication-Results cases).
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "mail"


def names(*prefixes: str) -> list[str]:
    return sorted(path.name for path in FIXTURES.glob("*.eml") if path.name.startswith(prefixes))


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)


def load(name: str) -> EmailMessage:
    return parse(raw(name))
