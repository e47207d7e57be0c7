"""The bytes of one outbound email, written directly in the email package's own layout.

Building an ``EmailMessage`` and flattening it (``as_bytes``) was most of the
outbox worker's CPU: each header went through the header registry, its parser
and its folder, and each body through the content manager. Every email Cabinet
sends has one shape (a few headers, then multipart/alternative: text, HTML,
UTF-8), so this module writes that shape itself, byte for byte what
``build_message(...).as_bytes()`` writes (``tests/test_mime.py`` compares them
for every template in both languages and for generated names and subjects).

Only plain headers are written here: printable ASCII words, nothing to quote,
no encoded-word look-alike (``=?``), on one line (or one word on the line after
the name, which is how the email package folds a long Message-ID or address).
Anything else (accents, quoting, folding over several lines, a value that could
carry a header injection) is written by the email package as before, through
``mailer.headers.set_header`` and its checks. Bodies are encoded with the email
package's own rules (``email.contentmanager``: 7bit, 8bit, quoted-printable or
base64, whichever it would choose), quoted-printable as ``email.quoprimime`` writes it.
"""

from __future__ import annotations

import binascii
import re
import secrets
import sys
from datetime import datetime, timedelta
from email import base64mime, quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from mailer.headers import display_name_text, is_clean, set_header

# ``policy.default.max_line_length``, where the email package folds (typed ``int | None``, None being no
# limit, which the default policy never has); tests/test_mime.py compares the bytes written with its.
MAX_LINE: Final = 78

# Characters of an atom (RFC 5322 atext) less "=" and "?": no value written here can hold "=?".
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/^_`{|}~]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDR_SPEC = rf"{_DOT_ATOM}@{_LABEL}(?:\.{_LABEL})*"
_PHRASE = rf"{_ATEXT}+(?: {_ATEXT}+)*"

PLAIN_PHRASE = re.compile(_PHRASE)
PLAIN_ADDRESS = re.compile(_ADDR_SPEC)
PLAIN_MAILBOX = re.compile(rf"{_PHRASE} <{_ADDR_SPEC}>")
PLAIN_MESSAGE_ID = re.compile(rf"<{_ADDR_SPEC}>")
# Unstructured text (Subject): printable ASCII words, single spaces, no encoded-word.
PLAIN_TEXT = re.compile(r"(?!.*=\?)[!-~]+(?: [!-~]+)*")

_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # as email.generator makes them: 15 "=", 19 digits, "=="


def _one_line(name: str, value: str) -> bytes | None:
    """``Name: value``, if it fits on one line."""
    if len(name) + 2 + len(value) <= MAX_LINE:
        return f"{name}: {value}\n".encode("ascii")
    return None


def _one_word(name: str, value: str) -> bytes | None:
    """A value with no space: on the name's line if it fits, else alone on the next (the email package's fold)."""
    line = _one_line(name, value)
    if line is None and 1 + len(value) <= MAX_LINE:
        return f"{name}:\n {value}\n".encode("ascii")
    return line


def _by_email_package(name: str, value: str | Address, checked: bool = True) -> bytes:
    """The header as ``EmailMessage`` + ``as_bytes`` write it, with ``set_header``'s checks when ``checked``."""
    scratch = EmailMessage()
    if checked:
        set_header(scratch, name, value)
    else:
        scratch[name] = value
    return b"".join(scratch.policy.fold_binary(key, item) for key, item in scratch.raw_items())


def from_header(value: str) -> bytes:
    if PLAIN_MAILBOX.fullmatch(value) or PLAIN_ADDRESS.fullmatch(value):
        line = _one_line("From", value)
        if line is not None:
            return line
    return _by_email_package("From", value)


def to_header(name: str, local: str, domain: str) -> bytes:
    address = f"{local}@{domain}"
    if PLAIN_ADDRESS.fullmatch(address) and (name == "" or PLAIN_PHRASE.fullmatch(name)):
        line = _one_line("To", f"{name} <{address}>" if name else address)
        if line is not None:
            return line
    return _by_email_package("To", Address(display_name=display_name_text(name), username=local, domain=domain))


def subject_header(value: str) -> bytes:
    if PLAIN_TEXT.fullmatch(value):
        line = _one_line("Subject", value)
        if line is not None:
            return line
    elif not value.isascii():
        words = _encoded_words("Subject", value)
        if words is not None:
            return words
    return _by_email_package("Subject", value)


_RFC2047_CHROME = len("=?utf-8?q??=")
NEXT_WORD = "\n "  # an encoded-word per line, the next ones on continuation lines
# Encoded length of each byte in a "q" encoded-word (``email.quoprimime.header_length``'s map).
_QP_HEADER_LENGTH = [len(quoprimime.header_encode(bytes([octet]), "utf-8")) - _RFC2047_CHROME for octet in range(256)]


def _encoded_words(name: str, value: str) -> bytes | None:
    """A header of non-ASCII text as ``set_header`` writes it through the email package (``header_text``,
    then ``email.header.Header(value, "utf-8", header_name=name).encode()``, then folded as is), in one
    pass: ``Header`` finds where a line of encoded-words ends by encoding the line again after each
    character (a French subject took over a millisecond). ``None`` for anything but one line of text
    that ``header_text`` leaves as it is and that holds nothing the parser could read as an encoded-word.
    """
    if "=?" in value or not is_clean(value):
        return None
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the email package decides
        return None
    # "q" or "b" for the whole value, whichever is shorter ("b" only if strictly shorter): Charset SHORTEST.
    qp = sum(_QP_HEADER_LENGTH[octet] for octet in data)
    b64 = base64mime.header_length(data)
    use_b64 = b64 < qp
    encode = base64mime.header_encode if use_b64 else quoprimime.header_encode
    # Room on each line for the encoded text: after "Name: " on the first, after one space on the others.
    room = MAX_LINE - len(name) - 2 - _RFC2047_CHROME
    words: list[str] = []
    start = size = 0  # where the current word starts in ``value``; its encoded length (q) or its bytes (b)
    for index, character in enumerate(value):
        code = ord(character)
        octets = 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        cost = octets if use_b64 else _QP_HEADER_LENGTH[code] if code < 0x80 else 3 * octets
        grown = size + cost
        if ((grown + 2) // 3 * 4 if use_b64 else grown) > room:
            if index == start:
                return None  # nothing fits on a line: the email package's own (odd) case
            words.append(encode(value[start:index].encode("utf-8"), "utf-8"))
            start, room, grown = index, MAX_LINE - 1 - _RFC2047_CHROME, cost
        size = grown
    words.append(encode(value[start:].encode("utf-8"), "utf-8"))
    return f"{name}: {NEXT_WORD.join(words)}\n".encode("ascii")


def date_header(date: datetime) -> bytes:
    if date.utcoffset() == timedelta(0):  # what the Date header's parser reads back unchanged
        return f"Date: {format_datetime(date)}\n".encode("ascii")
    return _by_email_package("Date", format_datetime(date), checked=False)


def message_id_header(value: str) -> bytes:
    if PLAIN_MESSAGE_ID.fullmatch(value):
        line = _one_word("Message-ID", value)
        if line is not None:
            return line
    return _by_email_package("Message-ID", value, checked=False)


def reply_to_header(value: str) -> bytes:
    if PLAIN_ADDRESS.fullmatch(value):
        line = _one_word("Reply-To", value)
        if line is not None:
            return line
    return _by_email_package("Reply-To", value)


# What quoted-printable leaves as it is (``email.quoprimime``'s body map): printable ASCII but "=" (replaced
# first, on its own), tab, CR, LF.
_QP_UNSAFE = re.compile(r"[^\t\n\r -~]")


def _quoted(match: re.Match[str]) -> str:
    return f"={ord(match.group()):02X}"


def quoted_printable(body: str, max_line: int = MAX_LINE) -> str:
    """``email.quoprimime.body_encode(body, max_line)``, the same text, faster.

    ``body`` is bytes read as latin-1. The stdlib maps every character through a
    256-entry list (``str.translate`` on its slow path: most of its time); here
    "=" is replaced at C speed and only the rest of the unsafe characters (accents,
    controls: few) go through a regular expression. Line breaking is the stdlib's,
    step for step: soft breaks never split an escape, trailing whitespace is quoted.
    """
    if not body:
        return body
    out = _qp_lines(body, max_line)
    if body[-1] in "\r\n":
        out.append("")
    return "\n".join(out)


def _qp_lines(body: str, max_line: int = MAX_LINE) -> list[str]:
    """Each line of ``body`` quoted-printable encoded (with its soft breaks), in order: the encoding is
    line by line, so the encoding of the first lines of a body is the first of these."""
    body = _QP_UNSAFE.sub(_quoted, body.replace("=", "=3D"))
    limit = max_line - 1  # room for the soft break's "="
    out: list[str] = []
    append = out.append
    for line in body.splitlines():
        if len(line) <= max_line and line[-1:] not in (" ", "\t"):
            append(line)  # most lines: nothing to break, nothing to quote at the end
            continue
        pieces: list[str] = []
        add = pieces.append
        start = 0
        last_start = len(line) - 1 - max_line
        while start <= last_start:
            stop = start + limit
            if line[stop - 2] == "=":
                add(line[start:stop - 1])
                start = stop - 2
            elif line[stop - 1] == "=":
                add(line[start:stop])
                start = stop - 1
            else:
                add(line[start:stop] + "=")
                start = stop
        if line and line[-1] in " \t":
            room = start - last_start
            if room >= 3:
                tail = f"={ord(line[-1]):02X}"
            elif room == 2:
                tail = line[-1] + "=\n"
            else:
                tail = f"=\n={ord(line[-1]):02X}"
            add(line[start:-1] + tail)
        else:
            add(line[start:])
        append("\n".join(pieces))
    return out


def encode_text(text: str) -> tuple[str, bytes]:
    """The transfer encoding and body of a UTF-8 text part, as ``EmailMessage.set_content(text)`` chooses them.

    The rules of ``email.contentmanager`` (default policy: 78 columns, 8bit allowed):
    short lines go as they are (7bit or 8bit); otherwise quoted-printable, or base64
    when the first ten lines come out shorter in base64. The body is encoded once: the
    first ten lines' quoted-printable (what the choice compares) is the start of the whole body's.
    """
    lines = text.encode("utf-8").splitlines()
    normal = b"\n".join(lines) + b"\n"
    if max(map(len, lines), default=0) <= MAX_LINE:
        return ("7bit" if normal.isascii() else "8bit"), normal
    encoded = _qp_lines(normal.decode("latin-1"))
    sniff_qp_length = sum(map(len, encoded[:10])) + min(len(encoded), 10)  # each line and its "\n"
    sniff_length = sum(map(len, lines[:10])) + min(len(lines), 10)
    if sniff_qp_length > (sniff_length + 2) // 3 * 4 + 1:  # len(binascii.b2a_base64(sniff))
        per_line = MAX_LINE // 4 * 3
        return "base64", b"".join(binascii.b2a_base64(normal[i:i + per_line]) for i in range(0, len(normal), per_line))
    encoded.append("")  # the body ends with a line break
    return "quoted-printable", "\n".join(encoded).encode("ascii")


def new_boundary(*texts: bytes) -> bytes:
    """A multipart boundary in the email package's form that none of ``texts`` contains."""
    while True:
        boundary = b"=" * 15 + b"%0*d" % (_BOUNDARY_DIGITS, secrets.randbelow(sys.maxsize)) + b"=="
        if not any(boundary in text for text in texts):
            return boundary


def alternative(headers: list[bytes], text: str, html: str, boundary: bytes | None = None) -> bytes:
    """The whole message: ``headers`` (each a written line or lines), then multipart/alternative of text and HTML."""
    text_cte, text_body = encode_text(text)
    html_cte, html_body = encode_text(html)
    if boundary is None:
        boundary = new_boundary(text_body, html_body)
    return b"".join([
        *headers,
        b'MIME-Version: 1.0\nContent-Type: multipart/alternative;\n boundary="', boundary, b'"\n\n',
        b"--", boundary, b'\nContent-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: ',
        text_cte.encode("ascii"), b"\n\n", text_body,
        # The HTML part carries its own MIME-Version: EmailMessage.add_alternative wrote one.
        b"\n--", boundary, b'\nContent-Type: text/html; charset="utf-8"\nContent-Transfer-Encoding: ',
        html_cte.encode("ascii"), b"\nMIME-Version: 1.0\n\n", html_body,
        b"\n--", boundary, b"--\n",
    ])
