"""``message_bytes`` writes exactly the bytes ``build_message(...).as_bytes()`` wrote: for every email in
both languages (built-in templates, sample facts), for generated names, subjects and bodies, and for the
header-injection attacks. The email package stays the reference: each case builds both and compares.
"""

from __future__ import annotations

import re
import string
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy, quoprimime
from email.headerregistry import Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from daemon.config import LOCALES
from mailer import mime
from mailer.headers import display_name_text, header_text
from mailer.message import build_message, message_bytes
from mailer.render import EmailRenderer, email_names
from mailer.samples import SAMPLES
from tests.test_headers import ATTACKS

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
NAMES = email_names(TEMPLATES / "email" / "en")
BOUNDARY = re.compile(rb'boundary="([^"]+)"')
AT = datetime(2026, 11, 30, 10, 52, 19, 777239, tzinfo=timezone.utc)


def both(**fields: Any) -> tuple[bytes, bytes]:
    """(the email package's bytes, ``message_bytes``'s with the same boundary)."""
    reference = build_message(**fields).as_bytes()
    boundary = BOUNDARY.search(reference)
    assert boundary is not None
    return reference, message_bytes(**fields, boundary=boundary.group(1))


def fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from_address": "Boulangerie Roy via Cabinet <cabinet@cabinet.example>",
        "to": "olivia@boulangerie-roy.example",
        "to_name": "Olivia Roy",
        "subject": "Invitation from Boulangerie Roy to be their accountant",
        "text": "Hello,\n\nbody\n",
        "html": "<p>body</p>\n",
        "message_id": "<179603593977.10553.5223335921654301658.cabinet@cabinet.example>",
        "date": AT,
        "auto_submitted": False,
        "reply_to": "reply+IjNjMGY1ZGI0YjE2NCI.yXp0MsAW3nxPn5CuOu7CY7K6m3E@cabinet.example",
    }
    return {**base, **overrides}


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    return EmailRenderer([TEMPLATES / "email"])


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("name", NAMES)
def test_every_email_is_byte_identical_in_both_languages(renderer: EmailRenderer, name: str, locale: str) -> None:
    context = {"now": AT, "to_name": "Olivia Roy", "product_name": "Cabinet", **SAMPLES[name]}
    rendered = renderer.render(name, locale, "America/Toronto", context)
    for auto_submitted, reply_to in [(False, fields()["reply_to"]), (True, None)]:
        reference, written = both(**fields(subject=rendered.subject, text=rendered.text, html=rendered.html,
                                           auto_submitted=auto_submitted, reply_to=reply_to))
        assert written == reference
        parsed, expected = (message_from_bytes(raw, policy=policy.default) for raw in (written, reference))
        assert parsed.items() == expected.items()
        assert parsed.get_body(("plain",)).get_content() == rendered.text
        assert parsed.get_body(("html",)).get_content() == rendered.html


# Names, subjects and addresses: plain ones (written here), and ones the email package writes (accents,
# quoting, long values folded over lines, encoded-word look-alikes, controls).
_WORD = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1, max_size=12)
_PLAIN = st.lists(_WORD, min_size=1, max_size=12).map(" ".join)
# Words the fast path writes itself (atext less "=" and "?"), short and long enough to need folding.
_ATOMS = st.lists(st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-/^_`{|}~", min_size=1,
                          max_size=10), min_size=1, max_size=9).map(" ".join)
_ANY = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=90)
_LOCAL = st.from_regex(r"[a-z0-9.+_-]{1,40}", fullmatch=True)
_DOMAIN = st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True)
_TEXTS = st.one_of(_ATOMS, _PLAIN, _ANY, st.sampled_from(ATTACKS), st.just(""))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(to_name=_TEXTS, subject=_TEXTS, company=_TEXTS, local=_LOCAL, domain=_DOMAIN,
       token=st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True))
def test_generated_headers_are_byte_identical(to_name: str, subject: str, company: str, local: str,
                                              domain: str, token: str) -> None:
    try:  # as Outbox._from_header writes it: the name quoted when it must be
        from_address = str(Address(display_name=f"{company} via Cabinet", username="cabinet", domain=domain))
    except ValueError:  # CR or LF in a name: refused at input long before an email
        assume(False)
    given_fields = fields(to=f"{local}@{domain}", to_name=to_name, subject=subject or "x", from_address=from_address,
                          reply_to=f"reply+{token}@{domain}", message_id=f"<{token}.cabinet@{domain}>")
    try:
        reference = build_message(**given_fields).as_bytes()
    except ValueError:  # refused by the header checks: refused here too
        with pytest.raises(ValueError):
            message_bytes(**given_fields)
        return
    boundary = BOUNDARY.search(reference)
    assert boundary is not None
    assert message_bytes(**given_fields, boundary=boundary.group(1)) == reference


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(
    st.text(max_size=400),
    st.lists(st.text(alphabet=string.printable + "éàç€…Å—", max_size=120), max_size=30).map("\n".join),
    st.lists(st.text(alphabet="ab \t=.", max_size=100), max_size=15).map("\r\n".join),
))
def test_generated_bodies_are_byte_identical(body: str) -> None:
    reference, written = both(**fields(text=body, html=f"<p>{body}</p>"))
    assert written == reference


@settings(max_examples=200, deadline=None)
@given(phrase=st.one_of(_ATOMS, _PLAIN))
def test_plain_values_are_what_the_header_checks_leave_them(phrase: str) -> None:
    """What ``mailer.mime`` writes itself is what ``set_header``'s cleaning would have written."""
    if mime.PLAIN_TEXT.fullmatch(phrase):
        assert header_text(phrase) == phrase
    if mime.PLAIN_PHRASE.fullmatch(phrase):
        assert display_name_text(phrase) == phrase


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_are_written_by_the_email_package(attack: str) -> None:
    assert not mime.PLAIN_TEXT.fullmatch(attack) and not mime.PLAIN_PHRASE.fullmatch(attack)
    reference, written = both(**fields(subject=f"Invitation: {attack}", to_name=attack,
                                       from_address=f"{attack} via Cabinet <cabinet@cabinet.example>"))
    assert written == reference
    parsed = message_from_bytes(written, policy=policy.default)
    assert parsed["Reply-To"] == fields()["reply_to"]
    assert parsed["To"].addresses[0].addr_spec == "olivia@boulangerie-roy.example"


def test_lines_are_as_long_as_the_email_packages() -> None:
    assert mime.MAX_LINE == policy.default.max_line_length


def test_recipient_with_control_characters_is_refused() -> None:
    with pytest.raises(ValueError):
        message_bytes(**fields(to="admin\r\nBcc: x@evil.example@company.example"))


def test_dates_in_other_zones_are_written_as_the_email_package_writes_them() -> None:
    for date in [AT.astimezone(timezone(timedelta(hours=-5))), AT.replace(tzinfo=None)]:
        reference, written = both(**fields(date=date))
        assert written == reference


def test_the_boundary_is_new_for_each_email_and_never_in_a_body() -> None:
    first, second = (message_bytes(**fields()) for _ in range(2))
    boundaries = [BOUNDARY.search(raw) for raw in (first, second)]
    assert boundaries[0] and boundaries[1] and boundaries[0].group(1) != boundaries[1].group(1)
    taken = mime.new_boundary(b"")
    assert all(mime.new_boundary(b"--" + taken + b"--") != taken for _ in range(20))  # a body holding it rules it out


@pytest.mark.parametrize("length", [50, 64, 65, 66, 67, 68, 75, 76, 77, 78, 90])
def test_long_message_ids_and_reply_addresses_fold_as_the_email_package_folds_them(length: int) -> None:
    """Around the line length: on the name's line, alone on the next, or (too long) as the email package does."""
    token = ("a1b2.c3" * 20)[:length]
    reference, written = both(**fields(message_id=f"<{token}@cabinet.example>",
                                       reply_to=f"reply+{token}@cabinet.example"))
    assert written == reference


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(
    st.text(alphabet=st.characters(max_codepoint=255), max_size=300),
    st.lists(st.text(alphabet="ab= \t\r\xe9", max_size=90), max_size=8).map("\n".join),
), max_line=st.sampled_from([4, 5, 76, 78]))
def test_quoted_printable_is_the_email_packages(body: str, max_line: int) -> None:
    assert mime.quoted_printable(body, max_line) == quoprimime.body_encode(body, max_line)
