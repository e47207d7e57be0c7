"""The fr-CA glossary (docs/glossary-fr-CA.toml, from the source article's own words) holds everywhere:
the page catalogue and the French emails use one term per idea, and never the synonyms it replaces."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
HTML_TAG = re.compile(r"<[^>]+>")
PLACEHOLDER = re.compile(r"%\(\w+\)s|\{\w+\}")


def glossary() -> list[dict[str, object]]:
    with (ROOT / "docs" / "glossary-fr-CA.toml").open("rb") as handle:
        return list(tomllib.load(handle)["term"])


def catalogue_pairs() -> list[tuple[str, str, str]]:
    """(where, English, French) for every translated message of the page catalogue."""
    with (TEMPLATES / "web" / "locale" / "fr.po").open("rb") as handle:
        catalogue = read_po(handle, locale="fr")
    pairs = []
    for m in catalogue:
        if isinstance(m.id, (tuple, list)):  # a plural entry: each form
            pairs += [(f"fr.po {m.context or ''} {english!r}", str(english), str(french))
                      for english, french in zip(m.id, m.string)]
        elif m.id:
            pairs.append((f"fr.po {m.context or ''} {m.id!r}", str(m.id), str(m.string)))
    return pairs


def prose(template: str) -> str:
    """A template's words: without jinja code and HTML tags (names come from variables)."""
    return HTML_TAG.sub(" ", JINJA.sub(" ", template))


def email_pairs() -> list[tuple[str, str, str]]:
    pairs = []
    for french in sorted((TEMPLATES / "email" / "fr").iterdir()):
        english = TEMPLATES / "email" / "en" / french.name
        pairs.append((f"email {french.name}", prose(english.read_text("utf-8")), prose(french.read_text("utf-8"))))
    return pairs


def all_pairs() -> list[tuple[str, str, str]]:
    return catalogue_pairs() + email_pairs()


def test_the_glossary_reads_and_quotes_the_article() -> None:
    article = (Path("/work/shared/seed/quickbooks-add-clients-fr.txt"))
    terms = glossary()
    assert len(terms) >= 20
    if article.exists():  # the source article, where this checkout has it
        text = article.read_text("utf-8").replace("’", "'")
        for term in terms:
            quote = term.get("article")
            if quote:
                assert str(quote) in text, f"not in the article: {quote!r}"


@pytest.mark.parametrize("term", [t for t in glossary() if "en" in t], ids=lambda t: str(t["en"]))
def test_each_english_term_has_the_glossary_french_term(term: dict[str, object]) -> None:
    flags = 0 if term.get("case") else re.I
    english = re.compile(str(term["en"]), flags)
    french = re.compile(str(term["fr"]), 0 if term.get("fr_case") else re.I)
    drift = [
        where for where, en, fr in all_pairs() if english.search(PLACEHOLDER.sub(" ", en)) and not french.search(fr)
    ]
    assert not drift, f"English has {term['en']!r} but French lacks {term['fr']!r} in: {drift}"


def test_no_french_text_uses_a_term_the_glossary_replaces() -> None:
    avoid = [re.compile(str(p)) for term in glossary() for p in term.get("avoid", [])]  # type: ignore[attr-defined]
    found = [
        (where, pattern.pattern, fr)
        for where, _, fr in all_pairs()
        for pattern in avoid
        if pattern.search(fr)
    ]
    assert not found, found


def test_french_emails_elide_de_before_a_name() -> None:
    """"de {{ company }}" would print "de Érablière": the `de` filter elides ("d'Érablière")."""
    bad = [f.name for f in (TEMPLATES / "email" / "fr").iterdir() if re.search(r"\bde \{\{", f.read_text("utf-8"))]
    assert not bad, bad


def test_every_page_string_has_a_french_translation() -> None:
    with (TEMPLATES / "web" / "locale" / "fr.po").open("rb") as handle:
        catalogue = read_po(handle, locale="fr")
    # A plural entry (``ngettext``) is its English forms, as extraction gives them, with every French form.
    translated = {tuple(m.id) if isinstance(m.id, (tuple, list)) else str(m.id) for m in catalogue
                  if m.id and (all(m.string) if isinstance(m.string, (tuple, list)) else m.string)}
    method_map = [("**.html", "jinja2")]
    options = {"**.html": {"extensions": "jinja2.ext.i18n"}}
    extracted = {tuple(message) if isinstance(message, (tuple, list)) else message
                 for _, _, message, _, _ in extract_from_dir(TEMPLATES / "web", method_map, options)}
    assert ("%(num)s client found.", "%(num)s clients found.") in extracted  # ngettext's forms are checked too
    missing = sorted(map(str, extracted - translated))
    assert not missing, f"page strings without French in fr.po: {missing}"


BUTTON_NAMED = {"fr": re.compile(r"bouton « ([^»]+?) »"), "en": re.compile(r'the "([^"]+)" button')}


@pytest.mark.parametrize("locale", ["fr", "en"])
def test_emails_name_the_buttons_their_pages_show(locale: str) -> None:
    """An email that says "press the X button on that page" names X as the page's button reads, word for
    word, in the reader's language: the French setup email said « Devenir Administrateur principal » while
    its page's button reads « Devenir l'Administrateur principal »."""
    buttons = {english if locale == "en" else french for _, english, french in catalogue_pairs()}
    named: list[tuple[str, str]] = []
    for path in sorted((TEMPLATES / "email" / locale).glob("*.*")):
        if path.suffix == ".subject":
            continue
        text = path.read_text(encoding="utf-8")
        # Both branches of an {% if %} inside the quotes: each is a button the reader may be told of.
        for quoted in BUTTON_NAMED[locale].findall(text):
            for name in re.split(r"\{%.*?%\}", quoted):
                if name.strip():
                    named.append((path.name, name.strip()))
    assert named, "no email names a button any more: the pattern is stale"
    assert [(where, name) for where, name in named if name not in buttons] == []
