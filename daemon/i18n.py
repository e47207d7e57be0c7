"""Languages, time zones and dates in the reader's language."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import lru_cache
import math
import unicodedata
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date as babel_format_date
from jinja2 import pass_context
from jinja2.runtime import Context
from babel.dates import format_datetime as babel_format_datetime
from babel.dates import TIMEDELTA_UNITS
from babel.dates import format_timedelta as babel_format_timedelta
from babel.numbers import format_decimal

from daemon.config import LOCALES
from daemon.errors import InvalidInput

# Babel locales used for formatting: the source document is fr-CA. Parsed once: given a string, every
# babel call parses it into a new Locale (identifier parsing, likely-subtags lookup) on each date shown.
BABEL_LOCALE = {"en": Locale.parse("en_CA"), "fr": Locale.parse("fr_CA")}


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


def _local(value: datetime, timezone: str) -> datetime:
    return value.astimezone(ZoneInfo(timezone))


def _french_day(local: datetime) -> str:
    # French writes the first of the month as an ordinal: "1er décembre".
    day = "1er" if local.day == 1 else str(local.day)
    return f"{day} {babel_format_datetime(local, 'MMMM', locale=BABEL_LOCALE['fr'])} {local.year}"


def format_datetime(value: datetime, locale: str, timezone: str) -> str:
    """A date and time to the minute, in the reader's zone, with the zone named.

    fr: "1er décembre 2026 à 5 h 59 HNE" (Québec's hours: "18 h", "5 h 05"); en: "December 1, 2026 at 5:59 a.m. EST".
    """
    local = _local(value, timezone)
    zone = babel_format_datetime(local, "zzz", tzinfo=ZoneInfo(timezone), locale=BABEL_LOCALE[locale])
    if locale == "fr":
        minutes = f" {local.minute:02d}" if local.minute else ""
        return f"{_french_day(local)} à {local.hour} h{minutes} {zone}"
    english = babel_format_datetime(local, "MMMM d, y 'at' h:mm a", locale=BABEL_LOCALE[locale])
    return f"{english} {zone}"


def format_date(value: datetime, locale: str, timezone: str) -> str:
    local = _local(value, timezone)
    if locale == "fr":
        return _french_day(local)
    return babel_format_date(local.date(), "long", locale=BABEL_LOCALE[locale])


def format_duration(delta: timedelta, locale: str, direction: bool = False) -> str:
    """ "47 heures", "dans 47 heures", "in 2 days": hours stay hours up to two and a half days."""
    return babel_format_timedelta(delta, threshold=DURATION_THRESHOLD, add_direction=direction, locale=BABEL_LOCALE[locale])


DURATION_THRESHOLD = 2.5


def duration_key(delta: timedelta, direction: bool = False) -> tuple[str, int, bool]:
    """What ``format_duration``'s text depends on besides the language: the unit babel picks, the
    rounded count of it, and (with a direction) whether it is ahead. Babel's own choice
    (``format_timedelta``: the largest unit reaching the threshold, else seconds, at least one)."""
    seconds = delta.total_seconds()
    for unit, per_unit in TIMEDELTA_UNITS:
        value = abs(seconds) / per_unit
        if value >= DURATION_THRESHOLD or unit == "second":
            if unit == "second" and value > 0:
                value = max(1, value)
            return unit, int(round(value)), direction and seconds >= 0
    raise AssertionError("unreachable: seconds is the last unit")


#: How far inside a rounding edge ``duration_span`` stays: a float at the edge is no one's to trust.
SPAN_MARGIN = 0.001


def duration_span(delta: timedelta) -> tuple[float, float]:
    """The open interval of seconds around ``delta``'s over which ``duration_key`` stays what it is for
    ``delta``, with or without a direction: a text kept for ``delta`` reads the same for any delta
    strictly inside. Narrower than the truth (by ``SPAN_MARGIN`` at each end, and down to half a second
    near zero); empty for no time at all. The unit is kept between its threshold and the next larger
    unit's; the count between its rounding edges; the sign never changes inside."""
    seconds = delta.total_seconds()
    unit, count, _ = duration_key(delta)
    at = [name for name, _ in TIMEDELTA_UNITS].index(unit)
    per_unit = TIMEDELTA_UNITS[at][1]
    floor = 0.0 if unit == "second" else DURATION_THRESHOLD * per_unit
    ceiling = DURATION_THRESHOLD * TIMEDELTA_UNITS[at - 1][1] if at > 0 else math.inf
    low = max((count - 0.5) * per_unit, floor) + SPAN_MARGIN
    high = min((count + 0.5) * per_unit, ceiling) - SPAN_MARGIN
    if seconds == 0 or low >= high:
        return 0.0, 0.0
    return (low, high) if seconds > 0 else (-high, -low)


def cached_durations(size: int) -> Callable[[timedelta, str, bool], str]:
    """``format_duration`` keeping its texts: a deadline moves every second, its text rarely ("dans 47
    heures" for an hour), so the key is what babel's text depends on (``duration_key``), not the delta."""
    texts: dict[tuple[str, int, bool, bool, str], str] = {}

    def cached(delta: timedelta, locale: str, direction: bool = False) -> str:
        key = (*duration_key(delta, direction), direction, locale)
        text = texts.get(key)
        if text is None:
            if len(texts) >= size:
                texts.clear()  # bounded; refilled in a few renders
            text = texts[key] = format_duration(delta, locale, direction)
        return text

    return cached


def format_deadline(value: datetime, locale: str, timezone: str, now: datetime) -> str:
    """A deadline with how far it is: "1er décembre 2026 à 5 h 59 HNE (dans 47 heures)"."""
    return f"{format_datetime(value, locale, timezone)} ({format_duration(value - now, locale, direction=True)})"


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


#: Where a render may keep a list for the relative-time filters (``|deadline``, ``|remaining``) to note
#: each (instant, direction) they measured from ``now``: a kept page is then good for as long as each
#: of those texts stays the same (``daemon.web.pages.Pages.keep``).
CLOCK_READS = "_clock_reads"


def _now(ctx: Context) -> datetime:
    now = ctx.get("now")
    return now if isinstance(now, datetime) else datetime.now(dt_timezone.utc)


def _from_now(ctx: Context, value: datetime, direction: bool) -> timedelta:
    """How far ``value`` is from the page's ``now``, noted for a kept page (``CLOCK_READS``)."""
    reads = ctx.get(CLOCK_READS)
    if reads is not None:
        reads.append((value, direction))
    return value - _now(ctx)


#: Formatted dates kept per template environment: an instant's text in a (language, zone) never
#: changes, and a page opened again shows the same dates (babel takes tens of µs for each).
DATE_CACHE_SIZE = 4096


ELIDING = tuple("aeiouyhàâäéèêëîïôöùûüœæ")


def of_name(name: str) -> str:
    """French "de" before a name, elided before a vowel or h: "d'Érablière Roy", "de Boulangerie Roy"."""
    return f"d'{name}" if name[:1].lower() in ELIDING else f"de {name}"


def collation_key(text: str) -> tuple[str, str]:
    """Sort as a dictionary does: accents and case matter only between otherwise equal words
    ("Ébénisterie" < "Érablière" < "Zoé"), not by code point (which puts "É" after "Z")."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in folded if not unicodedata.combining(c)), text


def collate(items: Iterable[Any], attribute: str | None = None) -> list[Any]:
    """``|collate`` / ``|collate("name")``: a list in dictionary order."""
    return sorted(items, key=lambda item: collation_key(str(getattr(item, attribute) if attribute else item)))


def to_the_minute(value: datetime) -> datetime:
    """The cache key of ``format_datetime``, which shows the minute: emails queued in the same minute
    (a batch of invitations) share their deadline's text instead of each paying babel for it."""
    return value.replace(second=0, microsecond=0)


def format_number(value: int, locale: str) -> str:
    """"1,000" (en), "1 000" (fr, with a no-break space, as CLDR has it for Canada's French)."""
    if -1000 < value < 1000:  # no group to separate: what babel would say, without its 5 µs a number
        return str(value)
    return format_decimal(value, locale=BABEL_LOCALE[locale])


def date_filters() -> dict[str, Callable[..., Any]]:
    """``|datetime``, ``|date``, ``|deadline``, ``|remaining``, ``|number`` (the context has ``locale`` and ``timezone``, and
    may have ``now``) and ``|de`` (French elision). Each call makes filters with caches of their own
    (one set per template environment), bounded, of pure functions of their arguments."""
    absolute = lru_cache(maxsize=DATE_CACHE_SIZE)(format_datetime)
    day = lru_cache(maxsize=DATE_CACHE_SIZE)(format_date)
    duration = cached_durations(DATE_CACHE_SIZE)

    @pass_context
    def datetime_filter(ctx: Context, value: datetime) -> str:
        return absolute(to_the_minute(value), ctx["locale"], ctx["timezone"])

    @pass_context
    def deadline_filter(ctx: Context, value: datetime) -> str:
        """A deadline with how far it is: "1er décembre 2026 à 5 h 59 HNE (dans 47 heures)"."""
        locale = ctx["locale"]
        ahead = duration(_from_now(ctx, value, True), locale, True)
        return f"{absolute(to_the_minute(value), locale, ctx['timezone'])} ({ahead})"

    @pass_context
    def remaining_filter(ctx: Context, value: datetime) -> str:
        """How long until ``value``, rounded to what a reader says ("12 heures", "12 hours")."""
        return duration(_from_now(ctx, value, False), ctx["locale"], False)

    @pass_context
    def date_filter(ctx: Context, value: datetime) -> str:
        return day(value, ctx["locale"], ctx["timezone"])

    @pass_context
    def number_filter(ctx: Context, value: int) -> str:
        """A count as its reader writes it: "1,000" in English, "1 000" in French."""
        return format_number(value, ctx["locale"])

    return {
        "datetime": datetime_filter,
        "date": date_filter,
        "number": number_filter,
        "deadline": deadline_filter,
        "remaining": remaining_filter,
        "de": of_name,
        "collate": collate,
    }
