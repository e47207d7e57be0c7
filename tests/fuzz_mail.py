"""Hostile inbound mail for the fuzz test and ``bench/fuzz_inbound.py``: hypothesis strategies.

Each message starts from the hand-written corpus (tests/fixtures/mail) or from
scratch, then goes through a few mutations an attacker or a broken MTA would
produce: empty and garbage Message-IDs, broken encoded-words, NUL bytes, long
lines (within the SMTP limit), broken MIME boundaries, unknown and NUL
charsets, DSN parts with garbage, truncation, flipped bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from random import Random

from hypothesis import strategies as st

FIXTURES = Path(__file__).parent / "fixtures" / "mail"
CORPUS = [path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for path in sorted(FIXTURES.glob("*.eml"))]
LINE_LIMIT = 990  # stays under the listener's 1001 (998 + CRLF) with room for a header name

HEADERS = [
    b"Message-ID", b"From", b"To", b"Subject", b"Content-Type", b"Content-Transfer-Encoding", b"MIME-Version",
    b"Authentication-Results", b"Date", b"Auto-Submitted", b"Reply-To", b"Sender", b"In-Reply-To", b"References",
    b"Precedence", b"X-Autoreply", b"List-Id", b"DKIM-Signature", b"Received", b"Return-Path",
]
GARBAGE_VALUES = [
    b"", b"<>", b"<", b">", b"<@>", b"<<>>", b"\x00", b"<\x00@\x00>", b"<a@b> <a@b>", b"(unclosed comment",
    b'"', b"undisclosed-recipients:;", b"a:b:c;;", b"Group: <x@y>;, :;", b"=?utf-8?q?=0d=0aBcc:_evil@example.com?=",
    b"=?utf-8?b?PT91dGYtOD9xPz0wZD0wYVJlcGx5LVRvOl9ldmlsQGV4YW1wbGUuY29tPz0=?=", b"=?utf-8?b?====?=",
    b"=?\x00?q?x?=", b"=?unknown-charset?q?x?=", b"=?utf-8?x?bad-encoding?=", b"=?utf-8?q?", b"=?", b"?=",
    b"\xff\xfe\xfd", b"\xc3\x28", b"\x1b[31mred\x1b[0m", "\u202eevil".encode(), b"a" * 900, b"<" + b"x" * 900 + b">",
    b"multipart/mixed; boundary=", b'multipart/mixed; boundary="', b"multipart/report; report-type=delivery-status",
    b"multipart/report; report-type=delivery-status; boundary=\x00", b"text/plain; charset=\x00",
    b"text/plain; charset=utf-99", b"text/plain; charset=\"\"", b"message/rfc822", b"message/delivery-status",
    b"text/rfc822-headers", b"base64", b"quoted-printable", b"x-uuencode", b"7bit; 8bit", b"1.0 (garbage)",
    b"mx.cabinet.example; dkim=pass header.d=", b"; ; ;", b"Mon, 99 Foo 9999 99:99:99 +9999",
]
DSN_GARBAGE = [
    b"Final-Recipient: rfc822;", b"Final-Recipient: ;;;", b"Final-Recipient: rfc822; <>", b"Action:",
    b"Action: failed\x00", b"Status: 5", b"Status: x.y.z", b"Diagnostic-Code: smtp;", b"Diagnostic-Code: \xff\xfe",
    b"Original-Recipient: rfc822;\x00", b"Reporting-MTA:", b"X-Failed-Recipients: ,,,", b"X-Failed-Recipients: <>",
    b"Content-Type: message/delivery-status", b"Content-Type: text/rfc822-headers; charset=\x00",
    b"Content-Type: message/rfc822", b"Content-Type: multipart/alternative; boundary=\"\"", b"--", b"--\x00",
]


def _set_header(message: bytes, name: bytes, value: bytes) -> bytes:
    head, sep, body = message.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(name.lower() + b":")]
    return b"\r\n".join([*lines, name + b": " + value]) + (sep or b"\r\n\r\n") + body


def _mutated(rng: Random, message: bytes) -> bytes:
    kind = rng.choice([
        "header", "header", "header", "nul", "truncate", "drop_line", "dsn", "boundary", "charset", "flip",
        "long_line", "duplicate_header", "bare_lf",
    ])
    size = max(len(message), 1)
    if kind == "header":
        value = rng.choice(GARBAGE_VALUES) if rng.random() < 0.8 else rng.randbytes(rng.randrange(60))
        return _set_header(message, rng.choice(HEADERS), value.replace(b"\r", b"").replace(b"\n", b""))
    if kind == "duplicate_header":
        return rng.choice(HEADERS) + b": " + rng.choice(GARBAGE_VALUES) + b"\r\n" + message
    if kind == "nul":
        at = rng.randrange(size + 1)
        return message[:at] + b"\x00" * rng.randint(1, 3) + message[at:]
    if kind == "truncate":
        return message[: rng.randrange(size + 1)]
    if kind == "flip":
        at = rng.randrange(size)
        return message[:at] + bytes([rng.randrange(256)]) + message[at + 1:]
    if kind == "long_line":
        at = rng.randrange(size + 1)
        line = rng.choice([b"x", b"=", b"=?utf-8?q?a?= ", b"\xff", b"-- "]) * 600
        return message[:at] + b"\r\n" + line[:LINE_LIMIT] + b"\r\n" + message[at:]
    if kind == "bare_lf":
        return message.replace(b"\r\n", b"\n", rng.randint(1, 20))
    lines = message.split(b"\r\n")
    index = rng.randrange(max(len(lines), 1))
    if kind == "drop_line":
        return b"\r\n".join(lines[:index] + lines[index + 1:])
    if kind == "dsn":
        lines.insert(index, rng.choice(DSN_GARBAGE))
        return b"\r\n".join(lines)
    if kind == "boundary":
        replacement = rng.choice([b"", b"\x00", b"--", b"\"", b"x" * 80, b"=?utf-8?q?x?="])
        return re.sub(rb'boundary="?[^";\r\n]*"?', b'boundary="' + replacement + b'"', message, count=1)
    # charset
    replacement = rng.choice([b"\x00", b"utf-99", b"", b"unknown-8bit", b"x\x00y", b"utf-7", b"\"\"", b"idna"])
    return re.sub(rb"charset=\"?[A-Za-z0-9_-]*\"?", b"charset=" + replacement, message, count=1)


def _from_scratch(rng: Random) -> bytes:
    headers = []
    for _ in range(rng.randrange(9)):
        value = rng.choice(GARBAGE_VALUES) if rng.random() < 0.7 else rng.randbytes(rng.randrange(40))
        headers.append(rng.choice(HEADERS) + b": " + value.replace(b"\r", b"").replace(b"\n", b""))
    return b"\r\n".join(headers) + b"\r\n\r\n" + rng.randbytes(rng.randrange(400))


def hostile(rng: Random) -> bytes:
    """One hostile message: a corpus message mutated 1-4 times, or one made from scratch."""
    if rng.random() < 0.1:
        return _from_scratch(rng)
    message = rng.choice(CORPUS)
    for _ in range(rng.randint(1, 4)):
        message = _mutated(rng, message)
    return message


def batches(size: int) -> st.SearchStrategy[list[bytes]]:
    """Lists of ``size`` hostile messages. Hypothesis draws the seed (derandomized: the same
    messages every run); a batch per example keeps its per-example cost off the total."""
    return st.integers(0, 2**32).map(lambda seed: batch(seed, size))


def batch(seed: int, size: int) -> list[bytes]:
    rng = Random(seed)
    return [hostile(rng) for _ in range(size)]
