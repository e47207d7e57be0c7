"""Every email, in both languages, is byte for byte what it was before the renderer was made faster.

``tests/fixtures/emails/`` holds the bytes ``Outbox.compose`` wrote for each email (built-in
templates) with its sample facts and with long accented facts (encoded and folded headers), made by
the code of main 5d1dd9c; each case here composes the same row again and compares (only the MIME
boundary, random per email, is set to one value on both sides). ``Outbox.prepare``'s subject (the
outbox row's ``subject``) is compared too.

    python -m tests.test_email_bytes --write   # regenerate the fixtures (only from a known-good checkout)
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import LOCALES, Secret
from daemon.notices import Notice
from daemon.tokens import LinkSigner, SecretKeys
from mailer.headers import _clean, is_clean
from mailer.outbox import Outbox
from mailer.render import EmailRenderer, email_names
from mailer.samples import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "emails"
NAMES = email_names(ROOT / "templates" / "email" / "en")
AT = datetime(2026, 11, 30, 10, 52, 19, 777239, tzinfo=timezone.utc)
BOUNDARY = re.compile(rb"={15}\d{19}==")
LONG = "Garage Lévesque & Fils — Entretien mécanique de l'Île-d'Orléans inc."


class _Clock:
    def now(self) -> datetime:
        return AT


def _outbox() -> Outbox:
    signer = LinkSigner(SecretKeys((Secret("fixture-key-" + "k" * 40),)), _Clock())  # type: ignore[arg-type]
    return Outbox(EmailRenderer([ROOT / "templates" / "email"]), signer, _Clock(),  # type: ignore[arg-type]
                  "cabinet@cabinet.example", "cabinet.example")


def _facts(name: str, variant: str) -> dict[str, Any]:
    facts = dict(SAMPLES[name])
    if variant == "long":  # every text fact long and accented: encoded-words, folding, quoted-printable
        facts = {key: (f"{LONG} ({value})" if isinstance(value, str) and key not in ("url", "manage_url", "roster_url",
                                                                                   "cause", "action", "reason")
                       and "@" not in value else value)
                 for key, value in facts.items()}
    return facts


CASES = [(name, locale, variant) for name in NAMES for locale in LOCALES for variant in ("sample", "long")]


def _case(outbox: Outbox, name: str, locale: str, variant: str) -> tuple[str, bytes]:
    """(the outbox row's subject, the email's bytes with its boundary made fixed)."""
    notice = Notice(
        template=name, to="olivia@boulangerie-roy.example",
        to_name="Olivia Roy" if variant == "sample" else "Olivia Lévesque-Roy",
        locale=locale, timezone="America/Toronto", context=_facts(name, variant),
        auto_submitted=variant == "long", company_id=7 if variant == "sample" else None,
    )
    row = outbox.prepare(notice)
    row.update(ref="0123456789ab", message_id="<179604741707.4216.2164171879637320976.cabinet@cabinet.example>")
    raw = outbox.compose(SimpleNamespace(**row))  # type: ignore[arg-type]
    return row["subject"], BOUNDARY.sub(b"===============0000000000000000000==", raw)


def _file(name: str, locale: str, variant: str) -> Path:
    return FIXTURES / locale / f"{name}.{variant}.eml"


@pytest.fixture(scope="module")
def outbox() -> Outbox:
    return _outbox()


@pytest.fixture(scope="module")
def subjects() -> dict[str, str]:
    return json.loads((FIXTURES / "subjects.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "locale", "variant"), CASES)
def test_email_bytes_unchanged(outbox: Outbox, subjects: dict[str, str], name: str, locale: str, variant: str) -> None:
    subject, raw = _case(outbox, name, locale, variant)
    assert raw == _file(name, locale, variant).read_bytes()
    assert subject == subjects[f"{locale}/{name}.{variant}"]


def test_every_email_has_its_fixture() -> None:
    """A new email gets its fixture (and a removed one loses it): the comparison above covers them all."""
    on_disk = sorted(str(path.relative_to(FIXTURES)) for path in FIXTURES.glob("*/*.eml"))
    assert on_disk == sorted(str(_file(*case).relative_to(FIXTURES)) for case in CASES)


@given(st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2000\u2028\u202e\u3000aé=?-")
               | st.characters(), max_size=12))
def test_is_clean_is_clean_text_unchanged(value: str) -> None:
    """The subject's fast path (``mailer.mime._encoded_words``) takes only what ``header_text`` would not change."""
    assert is_clean(value) == (_clean(value) == value)


def _write() -> None:
    outbox = _outbox()
    subjects = {}
    for name, locale, variant in CASES:
        subject, raw = _case(outbox, name, locale, variant)
        path = _file(name, locale, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        subjects[f"{locale}/{name}.{variant}"] = subject
    (FIXTURES / "subjects.json").write_text(json.dumps(subjects, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                            encoding="utf-8")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    _write()
