"""Rendering emails from jinja2 templates in ``email/<locale>/`` of the template folders.

Each email is three files: ``NAME.subject``, ``NAME.txt`` and ``NAME.html``
(the HTML extends ``email/layout.html``). The folders are searched in order,
file by file: the operator's override folder, then the built-in templates.
Autoescaping is on for HTML; undefined variables are errors, so a missing fact
fails loudly in tests instead of producing an email with a blank in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from daemon.i18n import date_filters

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

    def render(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> RenderedEmail:
        values = {**context, "locale": locale, "timezone": timezone}
        env = self._env
        subject = env.get_template(f"{locale}/{name}.subject").render(values)
        return RenderedEmail(
            # A subject is one line: newlines in it would be header injection.
            subject=" ".join(subject.split()),
            text=env.get_template(f"{locale}/{name}.txt").render(values),
            html=env.get_template(f"{locale}/{name}.html").render(values),
        )

    def subject(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> str:
        """The subject line alone (what the outbox lists before the email is rendered)."""
        values = {**context, "locale": locale, "timezone": timezone}
        return " ".join(self._env.get_template(f"{locale}/{name}.subject").render(values).split())

    def reload(self) -> None:
        """Forget compiled templates (SIGHUP): edited files and new override files are read again."""
        self._env = self._environment()
