"""The time zones a person picks from on the profile page: Canada's first, then the world's by region,
then UTC, each named in the reader's language; the value of each choice is its IANA name.

Which names are offered: CLDR's table of zones by country (``babel.core.get_global("zone_territories")``;
babel is a dependency already), which babel keys by the tz database's current names: the same names as
the tz database's ``zone.tab`` (one per region of a country: 418 of them with babel 2.19 and tzdata
2025b), none of its backward aliases (America/Montreal, now America/Toronto; US/Eastern, Canada/…,
Africa/Asmera), which babel's ``zone_aliases`` maps to the names offered. It ships inside babel's wheel,
so it is there on any machine whatever tz files the system has (``zone.tab`` is not always installed,
and the ``tzdata`` package is not a dependency). A name the tz database installed here cannot load is
left out: what is offered must pass ``daemon.i18n.check_timezone``, which stays the only check of a
posted zone.

What a choice reads: CLDR's name of the zone's city in the reader's language with, for Canada, the
zone's generic name ("Vancouver — heure du Pacifique"), elsewhere the country ("Paris — France"). The
groups' names are our words, translated in the template (``profile.html``, ``fr.po``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.core import get_global
from babel.dates import get_timezone_location

from daemon.i18n import BABEL_LOCALE

#: The product's market: its zones come first.
HOME = "CA"
#: The group of the home country's zones, and of UTC (the template names each group).
HOME_GROUP = "canada"
UTC_GROUP = "utc"
UTC = "UTC"
#: The world's regions (a zone's first part), nearest first for a Canadian firm; one the tz database adds
#: later follows them, in its own order.
REGIONS = ("America", "Europe", "Africa", "Asia", "Australia", "Atlantic", "Indian", "Pacific", "Antarctica",
           "Arctic")
#: Cities named beside a zone's own: CLDR names each zone by one city, and a Québec firm looks for Montréal,
#: in America/Toronto's zone (America/Montreal is its alias).
_ALSO: Mapping[str, tuple[str, ...]] = MappingProxyType({"America/Toronto": ("Montréal",)})
#: A city as its people write it, where CLDR's name in a language is another's: CLDR's en_CA names
#: America/St_Johns "Saint John’s", which a Canadian reads as Saint John, New Brunswick (in the Atlantic
#: zone); the city writes itself "St. John’s", as CLDR's fr_CA and en do.
_CITY: Mapping[tuple[str, str], str] = MappingProxyType({("en", "America/St_Johns"): "St. John’s"})
#: The instant whose offset orders Canada's zones west to east: in January, standard time.
_STANDARD_TIME = datetime(2025, 1, 15, 12, tzinfo=timezone.utc)
_DASH = " — "


@dataclass(frozen=True)
class ZoneGroup:
    """An ``<optgroup>``: ``name`` is ``HOME_GROUP``, a region of ``REGIONS`` or ``UTC_GROUP``."""

    name: str
    choices: tuple[tuple[str, str], ...]  # (IANA name, label)


@dataclass(frozen=True)
class ZoneMenu:
    """The zone choice in one language."""

    groups: tuple[ZoneGroup, ...]
    labels: dict[str, str]
    aliases: dict[str, str]

    def offers(self, zone: str) -> bool:
        return zone in self.labels

    def label(self, zone: str) -> str:
        """What a zone reads as; one not offered (a stored alias: the user keeps it until they choose
        another) reads as the zone it stands for, with its own name; anything else as its name."""
        found = self.labels.get(zone)
        if found is not None:
            return found
        standing_for = self.aliases.get(zone, zone)
        # CLDR's UTC is Etc/UTC; the choice offers "UTC", the name the configuration's default stores.
        canonical = self.labels.get(UTC if standing_for == "Etc/UTC" else standing_for)
        return f"{canonical} ({zone})" if canonical is not None else zone


class ZoneChoices:
    """Each language's ``ZoneMenu``, made on its first page and kept: a few hundred babel lookups and tz
    files read (``daemon.web.workspace`` makes it off the event loop)."""

    def __init__(self) -> None:
        self._menus: dict[str, ZoneMenu] = {}
        self._zones: dict[str, tuple[str, ZoneInfo]] | None = None

    def made(self, locale: str) -> ZoneMenu | None:
        """The menu of ``locale`` if it is made already."""
        return self._menus.get(locale)

    def menu(self, locale: str) -> ZoneMenu:
        # Made twice at worst, by two first pages at once: the same menu, kept by the last one.
        found = self._menus.get(locale)
        if found is None:
            if self._zones is None:
                self._zones = offered_zones()
            found = self._menus[locale] = build_menu(BABEL_LOCALE[locale], self._zones)
        return found


def offered_zones() -> dict[str, tuple[str, ZoneInfo]]:
    """The zones offered, each with its country's code (CLDR's; "001" for one of no country: Antarctica's
    Troll station) and its rules, which the menu orders and names it by."""
    territories: Mapping[str, str] = get_global("zone_territories")
    found = {}
    for zone, territory in territories.items():
        # Not the "Etc/" offsets nor the POSIX-style names (EST5EDT): no place a person lives in.
        if "/" not in zone or zone.startswith("Etc/"):
            continue
        try:
            found[zone] = (territory, ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):  # newer than the tz database installed here
            continue
    return found


def build_menu(locale: Locale, zones: Mapping[str, tuple[str, ZoneInfo]]) -> ZoneMenu:
    meta_zones: Mapping[str, str] = get_global("meta_zones")
    labels: dict[str, str] = {}
    home: list[tuple[str, str]] = []
    regions: dict[str, list[tuple[str, str]]] = {}
    offsets: dict[str, float] = {}
    for zone, (territory, rules) in zones.items():
        city = _CITY.get((locale.language, zone)) or get_timezone_location(rules, locale, return_city=True)
        if territory == HOME:
            cities = ", ".join(sorted((city, *_ALSO.get(zone, ())), key=_collation_key))
            generic = _generic_name(locale, meta_zones.get(zone))
            label = f"{cities}{_DASH}{generic}" if generic else cities
            home.append((zone, label))
            offsets[zone] = _standard_offset(rules)
        else:
            country = locale.territories.get(territory) if territory.isalpha() else None
            label = city if country in (None, city) else f"{city}{_DASH}{country}"
            regions.setdefault(zone.split("/", 1)[0], []).append((zone, label))
        labels[zone] = label
    home.sort(key=lambda choice: (offsets[choice[0]], _label_order(choice[1])))
    groups = [ZoneGroup(HOME_GROUP, tuple(home))]
    for region in (*REGIONS, *sorted(set(regions) - set(REGIONS))):
        if region in regions:
            groups.append(ZoneGroup(region, tuple(sorted(regions[region], key=lambda c: _label_order(c[1])))))
    utc_name = locale.time_zones.get("Etc/UTC", {}).get("long", {}).get("standard")
    labels[UTC] = f"{UTC}{_DASH}{utc_name}" if utc_name else UTC
    groups.append(ZoneGroup(UTC_GROUP, ((UTC, labels[UTC]),)))
    aliases: Mapping[str, str] = get_global("zone_aliases")
    return ZoneMenu(tuple(groups), labels, dict(aliases))


def _generic_name(locale: Locale, meta_zone: str | None) -> str | None:
    """The zone's name that holds all year ("heure de l’Est"), or, for one without daylight time that has
    none ("Yukon"), its standard time's name."""
    if meta_zone is None:
        return None
    names = locale.meta_zones.get(meta_zone, {}).get("long", {})
    found = names.get("generic") or names.get("standard")
    return str(found) if found else None


def _standard_offset(rules: ZoneInfo) -> float:
    offset = rules.utcoffset(_STANDARD_TIME)
    return offset.total_seconds() if offset is not None else 0.0


def _label_order(label: str) -> tuple[str, ...]:
    """Labels in dictionary order, city first: "Dawson" before "Dawson Creek"."""
    return tuple(_collation_key(part) for part in label.split(_DASH))


def _collation_key(text: str) -> str:
    """Dictionary order for names: É with E (a page is never sorted by code point)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
