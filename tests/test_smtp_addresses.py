"""MAIL FROM / RCPT TO read the plain way (daemon.smtp.plain_path) exactly as the standard library's
parser (what aiosmtpd calls) reads them; every other form still goes to that parser, on the real listener."""

from __future__ import annotations

import smtplib
import string

from email._header_value_parser import get_angle_addr
from hypothesis import given, settings, strategies as st

from daemon.smtp import plain_path
from tests.conftest import Env

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
# Characters that make an address not plain, or that the standard library reads in its own way.
ODD = ".@<> \t()\"[]:;,\\\r\né"
parts = st.text(st.sampled_from(list(ATEXT) * 6 + list(ODD)), max_size=8)
tails = st.sampled_from(["", " SIZE=1", "  BODY=8BITMIME SIZE=2", " (c) SIZE=1", "\tSIZE=1", " ", "SIZE=1",
                         " é", " SIZE=1 ", " a(b)", "(x)", " SIZE=1\r\n"])


@settings(max_examples=3000, deadline=None)
@given(parts, st.sampled_from(["@", "@", ".", ""]), parts, st.sampled_from([".", ""]), parts,
       st.sampled_from([">", ">", ""]), tails)
def test_the_plain_form_reads_as_the_standard_library_reads_it(local, at, domain, dot, more, close, tail):
    arg = f"<{local}{at}{domain}{dot}{more}{close}{tail}"
    plain = plain_path(arg)
    if plain is None:
        return  # the standard library reads it (aiosmtpd's own path)
    address, rest = get_angle_addr(arg)
    assert plain == (address.addr_spec, rest)


def test_plain_and_other_forms():
    assert plain_path("<a.b+c@d.example>") == ("a.b+c@d.example", "")
    assert plain_path("<a@d.example> SIZE=1200 BODY=8BITMIME") == ("a@d.example", "SIZE=1200 BODY=8BITMIME")
    for other in ("<>", '<"a b"@d.example>', "<a@[127.0.0.1]>", "<@relay:a@d.example>", "a@d.example",
                  " <a@d.example>", "<a..b@d.example>", "<a@d.example> (comment) SIZE=1"):
        assert plain_path(other) is None, other


def test_the_listener_reads_every_form(server, env: Env):
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mta.example")
        assert smtp.docmd("MAIL FROM:<a.b+c@mta.example> SIZE=100")[0] == 250
        assert smtp.docmd("RCPT TO:<nobody@cabinet.example>")[0] == 550  # read, and not ours
        assert smtp.docmd('RCPT TO:<"no body"@cabinet.example>')[0] == 550  # the standard library's path
        assert smtp.docmd("RSET")[0] == 250
        assert smtp.docmd("MAIL FROM:<>")[0] == 250  # the null sender (bounces)
        assert smtp.docmd("RSET")[0] == 250
        assert smtp.docmd("MAIL FROM:<a@@mta.example>")[0] == 553  # unreadable, as before
