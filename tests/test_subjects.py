"""Subjects rendered from their plain form (``mailer.subjects``) are jinja's, character for character, for
every subject template in ``templates/`` and in every locale, whatever the values hold; the templates that
are not plain text and names (filters, tags), and values that are not ``str``, still go through jinja."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from jinja2 import meta
from markupsafe import Markup

from mailer.render import EmailRenderer

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
SUBJECTS = sorted((path.parent.name, path.stem) for path in TEMPLATES.glob("*/*.subject"))

HOSTILE = ["<b>&amp;</b>", "A & B < C > D \"E\" 'F'", "{{ company }}", "{% if x %}", "Ève Côté 中文 🙂",
           "line\r\nBcc: x@y.example", "\ttabs\tand  spaces ", "", " ", "%s %(x)s {0}", "\\", "\x00\x1b"]


def _jinja(renderer: EmailRenderer, locale: str, name: str, values: dict[str, Any]) -> str:
    """The subject as jinja renders it: the template's own ``render``, no plain form."""
    template = renderer._env.get_template(f"{locale}/{name}.subject")
    return " ".join(template.render(values).split())


def _names(renderer: EmailRenderer, locale: str, name: str) -> set[str]:
    env = renderer._env
    assert env.loader is not None
    source = env.loader.get_source(env, f"{locale}/{name}.subject")[0]
    return meta.find_undeclared_variables(env.parse(source))


def test_there_are_subjects_in_both_locales_and_most_are_plain() -> None:
    renderer = EmailRenderer([TEMPLATES])
    assert {locale for locale, _ in SUBJECTS} == {"en", "fr"} and len(SUBJECTS) > 40
    renderer.warm([name for _, name in SUBJECTS], ["en", "fr"])
    plain = [key for key, (_, form) in renderer._subjects.items() if form is not None]
    assert ("client_added", "en") in plain and ("invitation_accepted", "en") in plain
    assert ("trial_reminder", "en") not in plain  # a tag: jinja's
    assert len(plain) > len(SUBJECTS) // 2


@pytest.mark.parametrize(("locale", "name"), SUBJECTS)
def test_every_subject_is_jinjas_with_hostile_values(locale: str, name: str) -> None:
    renderer = EmailRenderer([TEMPLATES])
    names = sorted(_names(renderer, locale, name) - {"now", "to_name", "product_name", "locale", "timezone"})
    now = datetime(2026, 5, 9, 7, 34, 55, tzinfo=timezone.utc)
    for n, hostile in enumerate(HOSTILE):
        context: dict[str, Any] = {key: HOSTILE[(n + k) % len(HOSTILE)] for k, key in enumerate(names)}
        values = {**renderer._env.globals, "now": now, "to_name": hostile, "product_name": "Cabinet", **context,
                  "locale": locale, "timezone": "UTC"}
        try:
            expected = _jinja(renderer, locale, name, values)
        except Exception as exc:  # noqa: BLE001 - a filter refusing a string: ours must refuse it the same way
            with pytest.raises(type(exc)):
                renderer.subject(name, locale, "UTC", context | {"now": now, "to_name": hostile})
            continue
        assert renderer.subject(name, locale, "UTC", {**context, "now": now, "to_name": hostile}) == expected


def test_values_that_are_not_str_and_missing_values_go_through_jinja() -> None:
    renderer = EmailRenderer([TEMPLATES])
    now = datetime(2026, 5, 9, tzinfo=timezone.utc)
    for company in (Markup("<b>Roy</b> &amp;"), 42, 1.5, None, now, ["a"]):
        context = {"company": company, "firm": "Tremblay <CPA>", "now": now, "to_name": ""}
        values = {**renderer._env.globals, **context, "product_name": "Cabinet", "locale": "en", "timezone": "UTC"}
        assert renderer.subject("client_added", "en", "UTC", context) == _jinja(renderer, "en", "client_added", values)
    with pytest.raises(Exception, match="'firm' is undefined"):  # StrictUndefined's error, as before
        renderer.subject("client_added", "en", "UTC", {"company": "Roy", "now": now, "to_name": ""})


def test_an_override_folder_is_read_for_the_plain_form_too(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "client_added.subject").write_text("{{- company -}} \n joined {{firm}}!\n")
    renderer = EmailRenderer([tmp_path, TEMPLATES])
    context = {"company": " Roy & <Fils> ", "firm": "{{ x }}", "now": datetime.now(timezone.utc), "to_name": ""}
    assert renderer.subject("client_added", "en", "UTC", context) == "Roy & <Fils> joined {{ x }}!"
    assert renderer._subjects[("client_added", "en")][1] is not None
