"""The profile page's time zone choice, through the real HTTP server: Canada's zones first, the world's by
region, then UTC, named in the reader's language; no backward alias offered; a zone stored earlier that is
not offered (America/Montreal) stays chosen, readable, and saving the form unchanged keeps it; a zone that
does not exist is still refused, in the reader's language."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

from daemon.web.zones import ZoneChoices
from tests.conftest import PASSWORD, Browser, Env, Seed, csrf_of

Option = tuple[str, str, bool]  # value, label, selected


class ZoneSelect(HTMLParser):
    """The ``<select name="timezone">`` of a page: its options outside any group, and its groups in order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.loose: list[Option] = []
        self.groups: list[tuple[str, list[Option]]] = []
        self._inside = False
        self._group: list[Option] | None = None
        self._option: dict[str, Any] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "select" and found.get("name") == "timezone":
            self._inside = True
        elif self._inside and tag == "optgroup":
            self._group = []
            self.groups.append((str(found["label"]), self._group))
        elif self._inside and tag == "option":
            self._option = {"value": found["value"], "selected": "selected" in found, "label": ""}

    def handle_data(self, data: str) -> None:
        if self._option is not None:
            self._option["label"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "option" and self._option is not None:
            option = (self._option["value"], self._option["label"], self._option["selected"])
            (self._group if self._group is not None else self.loose).append(option)
            self._option = None
        elif tag == "optgroup":
            self._group = None
        elif tag == "select":
            self._inside = False

    def offered(self) -> list[str]:
        return [value for _, options in self.groups for value, _, _ in options]

    def selected(self) -> list[Option]:
        return [o for o in self.loose + [o for _, options in self.groups for o in options] if o[2]]


def sign_in(env: Env, email: str) -> Browser:
    # The Accept-Language is English on purpose: a signed-in page speaks the user's recorded language.
    browser = Browser(env.base_url, "en")
    response = browser.post("/sign-in", email=email, password=PASSWORD, next="/profile")
    assert response.status_code == 303, response.text
    return browser


def add_staff(cli: Any, seed: Seed, email: str, locale: str, zone: str) -> None:
    cli("staff", "add", email, "--name", "Luc Gagnon", "--firm", seed.firm, "--locale", locale, "--timezone", zone,
        "--password-stdin", input=PASSWORD + "\n")


def test_canada_s_zones_come_first_then_the_world_by_region_then_utc_in_the_reader_s_language(
        server, cli, seed: Seed, env: Env) -> None:
    add_staff(cli, seed, "luc@tremblay.example", "fr", "America/Vancouver")
    add_staff(cli, seed, "ann@tremblay.example", "en", "America/Vancouver")
    french, english = sign_in(env, "luc@tremblay.example"), sign_in(env, "ann@tremblay.example")

    fr = ZoneSelect(french.get("/profile").text)
    names = [name for name, _ in fr.groups]
    assert names[0] == "Canada" and names[1] == "Amériques" and "Europe" in names and names[-1] == "Temps universel"
    canada = dict((value, label) for value, label, _ in fr.groups[0][1])
    assert canada["America/Toronto"] == "Montréal, Toronto — heure de l’Est"
    assert canada["America/St_Johns"] == "St. John’s — heure de Terre-Neuve"
    assert "America/New_York" not in canada and all(label for label in canada.values())
    order = list(canada)  # west to east, as Canada's zones are listed: Pacific first, Newfoundland last
    assert order[0] == "America/Vancouver" and order[-1] == "America/St_Johns"
    assert order.index("America/Edmonton") < order.index("America/Winnipeg") < order.index("America/Toronto")
    world = {value: label for _, options in fr.groups[1:] for value, label, _ in options}
    assert world["Europe/Paris"] == "Paris — France" and world["America/New_York"] == "New York — États-Unis"
    assert fr.groups[-1][1] == [("UTC", "UTC — temps universel coordonné", False)]
    assert fr.selected() == [("America/Vancouver", "Vancouver — heure du Pacifique", True)] and fr.loose == []

    en = ZoneSelect(english.get("/profile").text)
    assert [name for name, _ in en.groups][:2] == ["Canada", "Americas"] and en.groups[-1][0] == "Universal time"
    assert ("America/Toronto", "Montréal, Toronto — Eastern Time", False) in en.groups[0][1]
    # Newfoundland's capital, not Saint John, New Brunswick (CLDR's en_CA name for it)
    assert ("America/St_Johns", "St. John’s — Newfoundland Time", False) in en.groups[0][1]
    assert ("Europe/Paris", "Paris — France", False) in [o for _, options in en.groups for o in options]
    assert sorted(en.offered()) == sorted(fr.offered())  # one list, in each language its own order
    for browser in (french, english):
        browser.close()


def test_only_the_tz_database_s_current_names_are_offered(server, cli, seed: Seed, env: Env) -> None:
    add_staff(cli, seed, "luc@tremblay.example", "fr", "America/Toronto")
    browser = sign_in(env, "luc@tremblay.example")
    select = ZoneSelect(browser.get("/profile").text)
    offered = [value for value, _, _ in select.loose] + select.offered()  # every option of the select
    assert len(offered) == len(set(offered)) > 300
    for alias in ("America/Montreal", "US/Eastern", "Canada/Eastern", "Africa/Asmera", "Asia/Calcutta",
                  "America/Nipigon", "Europe/Kiev", "Etc/GMT+5", "EST5EDT"):
        assert alias not in offered, alias
    assert not [zone for zone in offered if zone.startswith(("US/", "Canada/", "Etc/"))]
    assert {"America/Toronto", "Asia/Kolkata", "Africa/Asmara", "Europe/Kyiv", "America/Blanc-Sablon",
            "Antarctica/Troll"} <= set(offered)
    for zone in offered:
        ZoneInfo(zone)  # each one passes the profile's check
    browser.close()


def test_a_stored_alias_stays_chosen_readable_and_saving_unchanged_keeps_it(server, cli, seed: Seed, env: Env) -> None:
    add_staff(cli, seed, "luc@tremblay.example", "fr", "America/Montreal")
    browser = sign_in(env, "luc@tremblay.example")
    html = browser.get("/profile").text
    select = ZoneSelect(html)
    chosen = ("America/Montreal", "Montréal, Toronto — heure de l’Est (America/Montreal)", True)
    assert select.selected() == [chosen]
    assert select.loose == select.selected() and "America/Montreal" not in select.offered()

    # The form sent as it is shown: the same zone, stored as it was (not America/Toronto).
    saved = browser.http.post("/profile", data={"csrf_token": csrf_of(html), "name": "Luc Gagnon", "locale": "fr",
                                                "timezone": select.selected()[0][0]})
    assert saved.status_code == 303, saved.text
    assert env.sql("SELECT timezone FROM users WHERE email = :e", e="luc@tremblay.example") == [("America/Montreal",)]
    assert ZoneSelect(browser.get("/profile").text).selected()[0][0] == "America/Montreal"
    browser.close()


def test_a_zone_that_does_not_exist_is_still_refused_in_the_reader_s_language(
        server, cli, seed: Seed, env: Env) -> None:
    add_staff(cli, seed, "luc@tremblay.example", "fr", "America/Toronto")
    browser = sign_in(env, "luc@tremblay.example")
    token = csrf_of(browser.get("/profile").text)
    refused = browser.http.post("/profile", data={"csrf_token": token, "name": "Luc Gagnon", "locale": "fr",
                                                  "timezone": "Mars/Olympus"})
    assert refused.status_code == 400 and "Fuseau horaire inconnu : « Mars/Olympus »" in refused.text
    # The form comes back with what was sent, as it reads (its name: nothing more is known), and the choice.
    select = ZoneSelect(refused.text)
    assert select.loose == [("Mars/Olympus", "Mars/Olympus", True)] and select.groups[0][0] == "Canada"
    assert env.sql("SELECT timezone FROM users WHERE email = :e", e="luc@tremblay.example") == [("America/Toronto",)]
    browser.close()


def test_a_zone_not_offered_reads_as_the_one_it_stands_for_with_its_own_name() -> None:
    english, french = ZoneChoices().menu("en"), ZoneChoices().menu("fr")
    assert english.label("US/Eastern") == "New York — United States (US/Eastern)"
    assert french.label("Canada/Eastern") == "Montréal, Toronto — heure de l’Est (Canada/Eastern)"
    assert english.label("Etc/UTC") == "UTC — Coordinated Universal Time (Etc/UTC)" and not english.offers("Etc/UTC")
    assert english.label("UTC") == "UTC — Coordinated Universal Time" and english.offers("UTC")
    assert english.label("Mars/Olympus") == "Mars/Olympus"  # nothing more is known of it
