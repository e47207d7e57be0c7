"""Rendering emails from jinja2 templates in ``email/<locale>/`` of the template folders.

Each email is three files: ``NAME.subject``, ``NAME.txt`` and ``NAME.html``
(the HTML extends ``email/layout.html``). The folders are searched in order,
file by file: the operator's override folder, then the built-in templates.
Autoescaping is on for HTML; undefined variables are errors, so a missing fact
fails loudly in tests instead of producing an email with a blank in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, TemplateError, select_autoescape

from daemon.i18n import date_filters
from mailer.subjects import PlainSubject, plain_subject

log = logging.getLogger(__name__)

EMAIL_PARTS = ("subject", "txt", "html")
# Shared by every email's HTML part.
EMAIL_LAYOUTS = ("layout.html", "macros.html")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def email_names(folder: Path) -> list[str]:
    """The emails Cabinet sends: one per ``NAME.subject`` in ``folder`` (a built-in ``email/en``)."""
    return sorted(path.stem for path in folder.glob("*.subject"))


class EmailRenderer:
    def __init__(self, search_path: Sequence[Path]) -> None:
        self._search_path = list(search_path)
        self._env = self._environment()
        # Each email's three compiled templates, looked up once per (name, locale).
        self._parts: dict[tuple[str, str], tuple[Template, Template, Template]] = {}
        # Each subject template alone, looked up once per (name, locale): the outbox renders the subject
        # when it queues an email (its bodies only when it sends it), and jinja's own lookup (its cache's
        # lock and the loader's up-to-date check) cost as much as rendering the line.
        self._subjects: dict[tuple[str, str], tuple[Template, PlainSubject | None]] = {}

    def _environment(self) -> Environment:
        env = Environment(
            loader=FileSystemLoader(self._search_path),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            # Compiled once: no stat() per template per render. SIGHUP (``reload``) re-reads them.
            auto_reload=False,
        )
        env.filters.update(date_filters())
        return env

    def _templates(self, name: str, locale: str) -> tuple[Template, Template, Template]:
        parts = self._parts.get((name, locale))
        if parts is None:
            subject, text, html = (self._env.get_template(f"{locale}/{name}.{part}") for part in EMAIL_PARTS)
            parts = self._parts[(name, locale)] = (subject, text, html)
        return parts

    def _values(self, locale: str, timezone: str, context: dict[str, Any]) -> dict[str, Any]:
        """What every part of one email renders with: the environment's globals and the facts, built once
        for the three parts (``Template.render`` copied them into a new dict for each)."""
        return {**self._env.globals, **context, "locale": locale, "timezone": timezone}

    def _run(self, template: Template, values: dict[str, Any]) -> str:
        """``template.render(values)`` on ``values`` as they are (``_values``), not a copy of them."""
        try:
            return self._env.concat(template.root_render_func(template.new_context(values, shared=True)))
        except Exception:
            self._env.handle_exception()
            raise  # not reached: handle_exception raises the template's error with its template lines

    def render(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> RenderedEmail:
        subject, text, html = self._templates(name, locale)
        values = self._values(locale, timezone, context)
        return RenderedEmail(
            # A subject is one line: newlines in it would be header injection.
            subject=" ".join(self._run(subject, values).split()),
            text=self._run(text, values),
            html=self._run(html, values),
        )

    def bodies(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> tuple[str, str]:
        """The text and HTML parts alone (the outbox rendered the subject when it queued the email)."""
        _, text, html = self._templates(name, locale)
        values = self._values(locale, timezone, context)
        return self._run(text, values), self._run(html, values)

    def subject(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> str:
        """The subject line alone (what the outbox lists before the email is rendered)."""
        found = self._subjects.get((name, locale))
        if found is None:
            found = self._subjects[(name, locale)] = self._subject_template(name, locale)
        template, plain = found
        values = self._values(locale, timezone, context)
        text = plain.render(values) if plain is not None else None
        if text is None:
            text = self._run(template, values)
        return " ".join(text.split())

    def _subject_template(self, name: str, locale: str,
                          template: Template | None = None) -> tuple[Template, PlainSubject | None]:
        """The subject's compiled template, and its plain form if it has one (``mailer.subjects``)."""
        path = f"{locale}/{name}.subject"
        if template is None:
            template = self._env.get_template(path)
        return template, plain_subject(self._env, path, template.filename)

    def warm(self, names: Sequence[str], locales: Sequence[str]) -> None:
        """Compile the emails ``names`` (subject and bodies) in ``locales`` now, rather than when the first
        request that queues one renders its subject (on the event loop, inside an accept) or the worker
        its bodies. What ``_templates`` would load, the operator's override first; an email that fails
        to load is left to fail where it always did, when it is rendered."""
        for name in names:
            for locale in locales:
                try:
                    subject, _, _ = self._templates(name, locale)
                    self._subjects[(name, locale)] = self._subject_template(name, locale, subject)
                except TemplateError as exc:
                    log.warning("email %s/%s could not be compiled ahead of its first use: %s", locale, name, exc)
        for layout in EMAIL_LAYOUTS:  # what every HTML part extends or imports, loaded when it first renders
            try:
                self._env.get_template(layout)
            except TemplateError as exc:
                log.warning("email %s could not be compiled ahead of its first use: %s", layout, exc)

    def reload(self) -> None:
        """Forget compiled templates (SIGHUP): edited files and new override files are read again."""
        self._env = self._environment()
        self._parts = {}
        self._subjects = {}
