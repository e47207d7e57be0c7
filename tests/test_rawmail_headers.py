"""The store step's Message-ID read from the header block only, and from a plain block without the parser:
the same answer as the parser's reading of the whole message."""

from __future__ import annotations

from email import policy
from email.parser import BytesHeaderParser

from hypothesis import given, settings, strategies as st

from daemon import rawmail
from tests.mail_corpus import names, raw

# Lines a header block and the body after it may hold, odd ones included, joined by any line end.
LINES = [b"Message-ID: <a@b.example>", b"message-id:  <second@b.example>", b"Message-ID:", b"Message-Id: <>",
         b" <folded@b.example>", b"\t<tab-folded@b.example>", b"From a@b Mon Nov 30 12:00:00 2026",
         b"Subject: hi", b":odd", b"no colon here", b"X-\xff: \xfe", b"", b"Message-ID: bare@b.example",
         b"Message-ID: <\x01@b.example>", b"Subject: a\x0bb\x0cc\x1cd\x85e", b"Message-ID : <space@b.example>",
         b"MESSAGE-ID:<upper@b.example>", b"Message-ID-Not: <no@b.example>", b"X-Message-ID: <no@b.example>", b"Message-ID: " + b"<" + b"x" * 300 + b"@b.example>"]
ENDS = [b"\r\n", b"\n", b"\r"]


def reference_message_id(data: bytes, limit: int = 255) -> str | None:
    """``rawmail.message_id`` as it was: the parser over the whole message."""
    values = [value for name, value in BytesHeaderParser(policy=policy.compat32).parsebytes(data).raw_items()
              if name.lower() == "message-id"]
    if not values:
        return None
    text = " ".join(str(values[0]).split())
    match = rawmail._BRACKETED.search(text) or rawmail._BARE.fullmatch(text.split(" ")[0])
    return None if match is None or len(match.group(0)) > limit else match.group(0)


def whole_parse(data: bytes) -> list[tuple[str, str]]:
    """What the parser reads as headers from all of ``data`` (the store step before the cut)."""
    return [(name, str(value)) for name, value in BytesHeaderParser(policy=policy.compat32).parsebytes(data).raw_items()]


def block_parse(data: bytes) -> list[tuple[str, str]]:
    return [(name, str(value))
            for name, value in BytesHeaderParser(policy=policy.compat32).parsebytes(rawmail.header_block(data)).raw_items()]


def test_the_block_ends_at_the_first_empty_line_whatever_the_line_ends() -> None:
    body = b"Message-ID: <in-the-body@b.example>\r\n" * 50
    assert rawmail.header_block(b"A: b\r\nC: d\r\n\r\n" + body) == b"A: b\r\nC: d\r\n"
    assert rawmail.header_block(b"A: b\nC: d\n\n" + body) == b"A: b\nC: d\n"
    assert rawmail.header_block(b"A: b\rC: d\r\r" + body) == b"A: b\rC: d\r"
    assert rawmail.header_block(b"A: b\r\n\n" + body) == b"A: b\r\n"
    assert rawmail.header_block(b"A: b\n\r\n" + body) == b"A: b\n"
    assert rawmail.header_block(b"A: b\r\r\n" + body) == b"A: b\r"
    assert rawmail.header_block(b"A: b\r\nno body") == b"A: b\r\nno body"
    assert rawmail.message_id(b"Subject: x\r\n\r\n" + body) is None


def test_the_corpus_reads_the_same_headers_and_message_id() -> None:
    for name in names(""):
        data = raw(name)
        assert block_parse(data) == whole_parse(data), name
        assert rawmail.message_id(data) == reference_message_id(data), name


def test_a_plain_block_is_read_without_the_parser() -> None:
    """The fast path is taken for CRLF blocks of fields and folds only, and gives the
    parser's answer for folded, upper-case and spaced fields."""
    assert rawmail._PLAIN_BLOCK.fullmatch(b"From: a@b.example\r\nMessage-ID:\r\n <folded@b.example>\r\n")
    assert not rawmail._PLAIN_BLOCK.fullmatch(b"From a@b Mon\r\nMessage-ID: <x@b.example>\r\n")
    assert not rawmail._PLAIN_BLOCK.fullmatch(b"Message-ID : <x@b.example>\r\n")
    for data in (b"From: a@b.example\r\nMessage-ID:\r\n <folded@b.example>\r\n\r\nbody",
                 b"MESSAGE-ID:<upper@b.example>\r\nMessage-ID: <second@b.example>\r\n\r\n",
                 b"Message-Id:   <a@b.example>  (comment)\r\n\r\n", b"X-Message-ID: <no@b.example>\r\n\r\n"):
        assert rawmail.message_id(data) == reference_message_id(data), data
    assert rawmail.message_id(b"Message-ID:\r\n <folded@b.example>\r\n\r\n") == "<folded@b.example>"


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LINES), st.sampled_from(ENDS)), max_size=12))
def test_any_mix_of_lines_and_line_ends_reads_the_same(lines: list[tuple[bytes, bytes]]) -> None:
    data = b"".join(line + end for line, end in lines)
    assert block_parse(data) == whole_parse(data)
    for cut in (0, 1, 2):  # the last line's end missing or cut in two
        cut_data = data[:len(data) - cut]
        assert block_parse(cut_data) == whole_parse(cut_data)
        assert rawmail.message_id(cut_data) == reference_message_id(cut_data)


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=12), st.binary(max_size=20))
def test_crlf_blocks_read_without_the_parser_give_the_parsers_message_id(lines: list[bytes], body: bytes) -> None:
    data = b"".join(line + b"\r\n" for line in lines) + body
    assert rawmail.message_id(data) == reference_message_id(data)
