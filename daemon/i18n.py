"""Languages, time zones and dates in the reader's language."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.dates import format_date as babel_format_date
from jinja2 import pass_context
from jinja2.runtime import Context
from babel.dates import format_datetime as babel_format_datetime

from daemon.config import LOCALES
from daemon.errors import InvalidInput

# Babel locales used for formatting: the source document is fr-CA.
BABEL_LOCALE = {"en": "en_CA", "fr": "fr_CA"}


def check_locale(locale: str) -> str:
    locale = locale.strip().lower()
    if locale not in LOCALES:
        raise InvalidInput("locale.unknown", choices=", ".join(LOCALES), locale=locale)
    return locale


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("timezone.unknown", timezone=name) from None
    return name


def format_datetime(value: datetime, locale: str, timezone: str) -> str:
    """A date and time as the reader expects it, in their zone, with the zone named."""
    local = value.astimezone(ZoneInfo(timezone))
    return babel_format_datetime(local, "long", tzinfo=ZoneInfo(timezone), locale=BABEL_LOCALE[locale])


def format_date(value: datetime, locale: str, timezone: str) -> str:
    return babel_format_date(value.astimezone(ZoneInfo(timezone)).date(), "long", locale=BABEL_LOCALE[locale])


def negotiate(accept_language: str | None, default: str) -> str:
    """Pick fr or en from an ``Accept-Language`` header, honouring q-values."""
    if not accept_language:
        return default
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LOCALES and quality > 0:
            choices.append((-quality, position, primary))
    return min(choices)[2] if choices else default


@pass_context
def _datetime_filter(ctx: Context, value: datetime) -> str:
    return format_datetime(value, ctx["locale"], ctx["timezone"])


@pass_context
def _date_filter(ctx: Context, value: datetime) -> str:
    return format_date(value, ctx["locale"], ctx["timezone"])


ELIDING = tuple("aeiouyhàâäéèêëîïôöùûüœæ")


def of_name(name: str) -> str:
    """French "de" before a name, elided before a vowel or h: "d'Érablière Roy", "de Boulangerie Roy"."""
    return f"d'{name}" if name[:1].lower() in ELIDING else f"de {name}"


def date_filters() -> dict[str, Callable[..., Any]]:
    """``|datetime``, ``|date`` (the context has ``locale`` and ``timezone``) and ``|de`` (French elision)."""
    return {"datetime": _datetime_filter, "date": _date_filter, "de": of_name}
