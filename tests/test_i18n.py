"""Error codes, and the reader's language: every code the domain raises has English and French words,
and pages show the French words, never the exception's English text."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path

from babel.messages.pofile import read_po
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import errors
from daemon.errors import MESSAGES, CabinetError, InvalidInput, LimitReached, NotAllowed
from daemon.i18n import cached_durations, duration_span, format_duration
from daemon.template_folders import template_folders
from daemon.web.pages import Pages
from tests.conftest import PASSWORD, Browser, csrf_of

ROOT = Path(__file__).resolve().parent.parent
FIELD = re.compile(r"\{(\w+)")


def french_catalogue() -> dict[tuple[str | None, str], str]:
    """(context, English) → French; a plural entry as (context, singular) → its singular French and
    (context, plural) → its plural French."""
    with (ROOT / "templates" / "web" / "locale" / "fr.po").open("rb") as handle:
        catalogue = read_po(handle, locale="fr")
    french: dict[tuple[str | None, str], str] = {}
    for m in catalogue:
        if isinstance(m.id, (tuple, list)):
            french[(m.context, str(m.id[0]))], french[(m.context, str(m.id[1]))] = str(m.string[0]), str(m.string[1])
        elif m.id:
            french[(m.context, str(m.id))] = str(m.string)
    return french


def test_every_error_code_has_english_and_french_words() -> None:
    french = french_catalogue()
    english_texts = [(code, english) for code, english in MESSAGES.items()]
    english_texts += [(code, singular) for code, (_, singular) in errors.PLURALS.items()]
    missing = [(code, english) for code, english in english_texts if not french.get((code, english))]
    assert not missing, f"codes without a French translation in fr.po (msgctxt = code, msgid = English): {missing}"
    for code, english in english_texts:
        extra = set(FIELD.findall(french[(code, english)])) - set(FIELD.findall(english))
        assert not extra, f"{code}: the French text uses parameters the English one does not have: {extra}"


def test_a_counted_wait_reads_in_the_number_s_form() -> None:
    """"Try again in 1 minute", "in 5 minutes"; French "dans 1 minute", "dans 5 minutes" (and, as French
    counts, "0 seconde"): never "minute(s)"."""
    pages = Pages(template_folders(None))
    for code, (counted, singular) in errors.PLURALS.items():
        assert counted in FIELD.findall(singular) and counted in FIELD.findall(MESSAGES[code]), code
        assert "(s)" not in singular + MESSAGES[code], code
    one, five = LimitReached("manage_link.wait", minutes=1), LimitReached("manage_link.wait", minutes=5)
    assert str(one).endswith("Try again in 1 minute") and str(five).endswith("Try again in 5 minutes")
    assert pages.error_message(one, "fr").endswith("Réessayez dans 1 minute.")
    assert pages.error_message(five, "fr").endswith("Réessayez dans 5 minutes.")
    assert pages.error_message(five, "en").endswith("Try again in 5 minutes.")
    assert pages.error_message(LimitReached("signin.wait", seconds=0), "fr") == (
        "Trop de tentatives de connexion infructueuses. Attendez 0 seconde, puis réessayez.")
    assert pages.error_message(LimitReached("signin.wait", seconds=0), "en") == (
        "Too many failed sign-in attempts. Wait 0 seconds and try again.")
    locked = LimitReached("signin.locked_address", minutes=1)
    assert "Réessayez dans 1 minute ou" in pages.error_message(locked, "fr")
    # A count that is not a number (words) reads with the plural's words.
    assert errors.render("manage_link.wait", {"minutes": "a few"}).endswith("Try again in a few minutes")
    assert pages.error_message(LimitReached("manage_link.wait", minutes="quelques"), "fr").endswith(
        "Réessayez dans quelques minutes.")  # French too: the plural entry, not an English fallback


def _raised_codes() -> list[tuple[str, int, str]]:
    """Every string literal (or f-string) given first to a Cabinet error in the daemon and the mailer."""
    kinds = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, CabinetError)}
    kinds |= {"CsrfFailed"}
    found = []
    for path in [*(ROOT / "daemon").rglob("*.py"), *(ROOT / "mailer").rglob("*.py")]:
        if "cli" in path.parts or path.name in ("config.py", "errors.py"):
            continue  # operator-facing configuration errors (ConfigError) are English prose by design
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name not in kinds or name == "ConfigError":
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((str(path.relative_to(ROOT)), node.lineno, first.value))
            elif isinstance(first, ast.JoinedStr):
                # f"invitation.sign_in_{verb}": each possible value must be a code; check the fixed prefix.
                prefix = "".join(v.value for v in first.values if isinstance(v, ast.Constant))
                found.append((str(path.relative_to(ROOT)), node.lineno, prefix + "*"))
    return found


def test_the_domain_raises_codes_not_prose() -> None:
    raised = _raised_codes()
    assert len(raised) > 40  # the walk sees the raise sites
    prose = []
    for path, line, code in raised:
        if code.endswith("*"):
            if not any(c.startswith(code[:-1]) for c in MESSAGES):
                prose.append((path, line, code))
        elif code not in MESSAGES:
            prose.append((path, line, code))
    assert not prose, f"raise sites whose first argument is not a code in daemon/errors.py MESSAGES: {prose}"


def test_english_rendering_for_the_cli_and_logs() -> None:
    error = NotAllowed("firm.not_member_add_client", firm="Tremblay CPA")
    assert str(error) == "only a member of Tremblay CPA can add clients to its roster"
    assert error.code == "firm.not_member_add_client" and error.params == {"firm": "Tremblay CPA"}
    # Prose from a caller not yet converted never reaches a page: it becomes the generic code.
    legacy = InvalidInput("some English sentence")
    assert legacy.code == "error.unexpected" and str(legacy) == "some English sentence"


def test_pages_translate_codes_and_their_reasons() -> None:
    pages = Pages(template_folders(None))
    error = InvalidInput("email.invalid", address="luc@", detail="There must be something after the @-sign.")
    assert pages.error_message(error, "fr") == "« luc@ » n'est pas une adresse courriel valide."
    assert pages.error_message(error, "en") == "'luc@' is not a valid email address."
    refused = NotAllowed("transfer.refused", firm="Tremblay CPA", reasons=("transfer.reason.not_connected",))
    french = pages.error_message(refused, "fr")
    assert french.startswith("Le transfert de la facturation au cabinet Tremblay CPA n'est pas possible")
    assert "Invitez d'abord son comptable" in french and "not connected" not in french


def test_a_french_page_shows_a_french_error(server, cli, seed, env) -> None:
    cli("staff", "add", "luc@tremblay.example", "--name", "Luc Gagnon", "--firm", seed.firm, "--locale", "fr",
        "--password-stdin", input=PASSWORD + "\n")
    client = Browser(env.base_url)
    client.post("/sign-in", email="luc@tremblay.example", password=PASSWORD, next="/clients/new")
    page = client.get("/clients/new")
    refused = client.http.post("/clients/new", data={
        "csrf_token": csrf_of(page.text), "kind": "business", "name": "Paie Directe", "email": "p@d.example",
        "billing": "direct", "product": ["qbo-plus", "payroll-core"]})
    assert refused.status_code == 403
    assert "Un client qui a besoin de la paie doit faire partie de votre forfait" in refused.text
    assert "must be on the wholesale" not in refused.text
    client.close()


def test_dates_to_the_minute_with_french_ordinals_and_hours() -> None:
    from datetime import datetime, timedelta, timezone

    from daemon.i18n import format_date, format_datetime, format_deadline

    first = datetime(2026, 12, 1, 10, 59, 35, tzinfo=timezone.utc)
    assert format_datetime(first, "fr", "America/Montreal") == "1er décembre 2026 à 5 h 59 HNE"
    assert format_datetime(first, "en", "America/Montreal") == "December 1, 2026 at 5:59 a.m. EST"
    assert format_datetime(datetime(2026, 12, 2, 23, 0, tzinfo=timezone.utc), "fr", "America/Montreal") == (
        "2 décembre 2026 à 18 h HNE"
    )
    assert format_date(first, "fr", "America/Vancouver") == "1er décembre 2026"
    deadline = format_deadline(first, "fr", "America/Vancouver", now=first - timedelta(hours=47))
    assert deadline == "1er décembre 2026 à 2 h 59 HNP (dans 47 heures)"
    assert format_deadline(first, "en", "America/Montreal", now=first - timedelta(hours=47)).endswith("(in 47 hours)")


def test_date_filters_keep_each_language_zone_and_now_apart() -> None:
    """The filters keep formatted dates (an instant's text never changes), so the same instant read in
    another language or zone, or a deadline seen at another moment, must still come out as its own."""
    from datetime import datetime, timedelta, timezone

    from jinja2 import Environment

    from daemon.i18n import date_filters

    env = Environment(autoescape=True)
    env.filters.update(date_filters())
    page = env.from_string("{{ at|datetime }} / {{ at|date }} / {{ at|deadline }}")
    first = datetime(2026, 12, 1, 10, 59, 35, tzinfo=timezone.utc)
    seen = []
    for _ in range(2):  # the second round comes from the caches
        seen.append([
            page.render(at=first, locale="fr", timezone="America/Montreal", now=first - timedelta(hours=47)),
            page.render(at=first, locale="en", timezone="America/Montreal", now=first - timedelta(hours=47)),
            page.render(at=first, locale="fr", timezone="America/Vancouver", now=first - timedelta(hours=47)),
            page.render(at=first, locale="fr", timezone="America/Vancouver", now=first - timedelta(hours=12)),
        ])
    assert seen[0] == seen[1]
    assert seen[0] == [
        "1er décembre 2026 à 5 h 59 HNE / 1er décembre 2026 / 1er décembre 2026 à 5 h 59 HNE (dans 47 heures)",
        "December 1, 2026 at 5:59 a.m. EST / December 1, 2026 / December 1, 2026 at 5:59 a.m. EST (in 47 hours)",
        "1er décembre 2026 à 2 h 59 HNP / 1er décembre 2026 / 1er décembre 2026 à 2 h 59 HNP (dans 47 heures)",
        "1er décembre 2026 à 2 h 59 HNP / 1er décembre 2026 / 1er décembre 2026 à 2 h 59 HNP (dans 12 heures)",
    ]


def test_date_filters_cache_by_the_minute_and_show_what_the_instant_shows() -> None:
    """Instants of one minute share a cached text; each is still its own instant's, DST changes included."""
    from datetime import datetime, timedelta, timezone

    from jinja2 import Environment

    from daemon.i18n import date_filters, format_datetime

    env = Environment(autoescape=True)
    env.filters.update(date_filters())
    page = env.from_string("{{ at|datetime }}")
    change = datetime(2026, 11, 1, 6, 0, tzinfo=timezone.utc)  # Montréal: EDT ends, 2 a.m. is 1 a.m. again
    for start in (change - timedelta(minutes=1), change, change + timedelta(minutes=59)):
        for second in (0, 1, 30, 59):
            at = start + timedelta(seconds=second, microseconds=second * 7919)
            for locale in ("fr", "en"):
                assert page.render(at=at, locale=locale, timezone="America/Montreal") == (
                    format_datetime(at, locale, "America/Montreal"))


def test_french_elision_before_a_name() -> None:
    from daemon.i18n import of_name

    assert of_name("Érablière Roy") == "d'Érablière Roy"
    assert of_name("Boulangerie Roy") == "de Boulangerie Roy"


# Deltas around every unit's switching point and rounding edge: seconds to years, both directions.
_EDGES = [s * m + d for s in (1, 60, 3600, 86400, 604800, 2592000, 31536000) for m in (1, 2, 2.5, 3, 10.5, 47)
          for d in (-1, -0.5, 0, 0.5, 1)]


@given(st.one_of(st.sampled_from(_EDGES), st.floats(min_value=0, max_value=4 * 31536000)), st.booleans(),
       st.booleans(), st.sampled_from(["fr", "en"]))
@settings(max_examples=400, deadline=None)
def test_kept_duration_texts_are_babels(seconds: float, negative: bool, direction: bool, locale: str) -> None:
    # One cache for every example: a text kept for one delta must be right for every delta with its key.
    delta = timedelta(seconds=-seconds if negative else seconds)
    assert _KEPT_DURATIONS(delta, locale, direction) == format_duration(delta, locale, direction)


_KEPT_DURATIONS = cached_durations(64)  # small: the examples also refill it after it is cleared


@given(st.one_of(st.sampled_from(_EDGES), st.floats(min_value=0, max_value=4 * 31536000)), st.booleans(),
       st.floats(min_value=0, max_value=1), st.booleans(), st.sampled_from(["fr", "en"]))
@settings(max_examples=400, deadline=None)
def test_a_duration_text_reads_the_same_anywhere_inside_its_span(
    seconds: float, negative: bool, where: float, direction: bool, locale: str,
) -> None:
    # What a kept page relies on (``Pages.keep``): inside the span, babel's own text is unchanged.
    delta = timedelta(seconds=-seconds if negative else seconds)
    low, high = duration_span(delta)
    at = delta.total_seconds()
    if not low < at < high:  # outside its own span only on a rounding edge, or near zero
        assert (low, high) == (0.0, 0.0) or abs(at) < 1.5 or min(abs(at - low), abs(at - high)) < 0.01
        return
    for inside in (low + 1e-6, low + (high - low) * where, high - 1e-6):
        if low < inside < high:
            moved = timedelta(seconds=inside)
            assert format_duration(moved, locale, direction) == format_duration(delta, locale, direction)


def test_no_time_at_all_has_no_span() -> None:
    low, high = duration_span(timedelta())
    assert not low < 0 < high
    assert duration_span(timedelta(hours=47)) == (46.5 * 3600 + 0.001, 47.5 * 3600 - 0.001)
    assert duration_span(timedelta(hours=-47)) == (-47.5 * 3600 + 0.001, -46.5 * 3600 - 0.001)


def test_no_text_a_person_reads_counts_in_parentheses() -> None:
    """"client(s) trouvé(s)", "email(s)": every count's words are its number's form (ngettext, ``PLURALS``,
    the CLI's ``counted``); nothing a page, an email, an error or the CLI prints writes "(s)"."""
    parenthesised = re.compile(r"\w\((?:s|e|es)\)")
    sources = [ROOT / "templates" / "web" / "locale" / "fr.po", *(ROOT / "templates").rglob("*.html"),
               *(ROOT / "templates").rglob("*.txt"), *(ROOT / "templates").rglob("*.subject"),
               *(ROOT / "daemon" / "cli").glob("*.py")]
    found = [f"{path.relative_to(ROOT)}: {match.group()}" for path in sources
             for match in parenthesised.finditer(path.read_text("utf-8"))]
    found += [f"MESSAGES[{code!r}]" for code, english in MESSAGES.items() if parenthesised.search(english)]
    assert len(sources) > 60 and not found, found


@given(st.integers(min_value=-10**9, max_value=10**9), st.sampled_from(["en", "fr"]))
@settings(max_examples=300, deadline=None)
def test_a_number_reads_as_babel_writes_it_for_the_reader(value: int, locale: str) -> None:
    """``format_number`` skips babel below a thousand; what it prints is babel's, either way."""
    from babel.numbers import format_decimal

    from daemon.i18n import BABEL_LOCALE, format_number

    for number in (value, 999, 1000, -999, -1000, 0):
        assert format_number(number, locale) == format_decimal(number, locale=BABEL_LOCALE[locale])
    assert format_number(100_000, "fr") == "100\xa0000" and format_number(100_000, "en") == "100,000"
