"""Rendering emails from jinja2 templates in ``templates/email/<locale>/``.

Each email is three files: ``NAME.subject``, ``NAME.txt`` and ``NAME.html``
(the HTML extends ``templates/email/layout.html``). Autoescaping is on for
HTML; undefined variables are errors, so a missing fact fails loudly in tests
instead of producing an email with a blank in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from daemon.i18n import date_filters


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class EmailRenderer:
    def __init__(self, templates_dir: Path) -> None:
        self._env = Environment(
            loader=FileSystemLoader(templates_dir / "email"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        self._env.filters.update(date_filters())

    def render(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> RenderedEmail:
        values = {**context, "locale": locale, "timezone": timezone}
        subject = self._env.get_template(f"{locale}/{name}.subject").render(values)
        return RenderedEmail(
            # A subject is one line: newlines in it would be header injection.
            subject=" ".join(subject.split()),
            text=self._env.get_template(f"{locale}/{name}.txt").render(values),
            html=self._env.get_template(f"{locale}/{name}.html").render(values),
        )

    def reload(self) -> None:
        self._env.cache = {} if self._env.cache is not None else None
