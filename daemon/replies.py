"""What a person wrote in a reply, and whether its first line is a command.

Mail clients quote the message being answered and add signatures; only the new
text is recorded, forwarded and searched for a command. The rules follow what
English and French clients actually write (Gmail, Outlook, Apple Mail,
Thunderbird, phones); text whose quoting is not recognised is kept, because
losing what someone wrote is worse than forwarding a quote.

HTML is read with the standard library's html.parser: only the text and a few
quote containers matter, and a converter library would bring a dependency (the
common one, html2text, is GPL) for no better result.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.message import MIMEPart
from html.parser import HTMLParser
from typing import Literal

_BLOCK_TAGS = frozenset("address blockquote div dl dt dd h1 h2 h3 h4 h5 h6 hr li ol p pre table tr ul".split())
_VOID_TAGS = frozenset("area base br col embed hr img input link meta source wbr".split())
_HIDDEN_TAGS = frozenset("head script style template title".split())
# Containers holding the quoted message or a signature: Gmail, Thunderbird, Yahoo.
_QUOTE_CLASSES = frozenset("gmail_quote gmail_signature moz-cite-prefix moz-signature yahoo_quoted".split())

# "On <date>, <name> wrote:" / "Le <date>, <nom> a écrit :"; the digit (a date) keeps a sentence out.
_ATTRIBUTION = re.compile(r"(?:on\b(?=.*\d).*\bwrote|le\b(?=.*\d).*\ba\s+écrit)\s*:", re.IGNORECASE)
_SEPARATOR = re.compile(
    r"-{2,}\s*(?:original message|message d'origine|message original|forwarded message|message transféré)\s*-{2,}",
    re.IGNORECASE,
)
# Outlook's header block, plain or as Gmail renders its bold labels ("*From:*").
_FROM_LINE = re.compile(r"\*?(?:from|de)\s*:\*?\s*\S", re.IGNORECASE)
_HEADER_LINE = re.compile(r"\*?(?:sent|envoyé|date|to|à|a|cc|subject|objet)\s*:", re.IGNORECASE)
_MOBILE_SIGNATURE = re.compile(
    r"(?:sent from (?:my|mail for|outlook|yahoo mail)\b|get outlook for\b"
    r"|envoyé (?:de|depuis) mon\b|envoyé à partir de\b|obtenir outlook pour\b|télécharger outlook pour\b)",
    re.IGNORECASE,
)
_RULE = re.compile(r"[_=*-]{5,}")

_COMMAND = re.compile(
    r"(?P<verb>j'accepte|accepter|accept|je refuse|refuser|decline)"
    r"(?:(?:\s*[:\-–]\s*|\s+)(?:(?:for|pour)\b\s*)?(?P<firm>.*))?",
    re.IGNORECASE,
)
_ACTIONS: dict[str, Literal["accept", "decline"]] = {
    "accept": "accept", "accepter": "accept", "j'accepte": "accept",
    "decline": "decline", "refuser": "decline", "je refuse": "decline",
}


@dataclass(frozen=True)
class Command:
    action: Literal["accept", "decline"]
    firm: str | None


def reply_text(message: MIMEPart) -> str:
    """The text the sender wrote: text/plain (else the HTML as text) without quotes and signatures."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = str(part.get_content())
    except LookupError:  # a charset Python does not know
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if part.get_content_type() == "text/html":
        text = _html_to_text(text)
    return _strip_quotes(text)


def parse_command(text: str) -> Command | None:
    """The command on the first non-empty line, or None when that line is anything else.

    The whole line must be the command, so "I don't accept" or "Accept. Thanks"
    are ordinary replies. ``firm`` is whatever follows the verb (and "for" /
    "pour"), minus trailing punctuation: the caller must match it to one of the
    accountant's firms and never guess when it matches none.
    """
    first = next((line for line in text.splitlines() if line.strip()), "")
    line = _norm(first).strip("*_ ").rstrip(".!:; ")  # "Accept." "ACCEPTER !" "*Accept*"
    match = _COMMAND.fullmatch(line)
    if match is None:
        return None
    firm = (match["firm"] or "").strip(" \"'«»") or None
    return Command(_ACTIONS[match["verb"].lower()], firm)


def _norm(line: str) -> str:
    """One spelling for matching: composed accents, plain spaces (French puts no-break ones before ":"), ' quotes."""
    return " ".join(unicodedata.normalize("NFKC", line).replace("\u2019", "'").split())


def _strip_quotes(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    i = 0
    while i < len(lines):
        if _quoted(lines[i]):
            i += 1
            continue
        line = _norm(lines[i])
        span = _attribution_span(lines, i)
        if span:
            after = next((j for j in range(i + span, len(lines)) if _norm(lines[j])), None)
            if after is not None and _quoted(lines[after]):
                i = after  # bottom-posted or interleaved: drop the attribution, its quote follows
                continue
            break  # top-posted: everything after the attribution is the original
        if line == "--" or _SEPARATOR.fullmatch(line) or _MOBILE_SIGNATURE.match(line) or _header_block(lines, i):
            break  # a signature or the quoted original starts here and runs to the end
        kept.append(lines[i].rstrip())
        i += 1
    return _tidy(kept)


def _quoted(line: str) -> bool:
    """``_norm(line).startswith(">")``, without normalising the whole line when its start already says
    so: a reply is mostly quoted lines, and NFKC leaves a ">" followed by an ASCII character as it is
    (only a combining mark after it, never ASCII, could make it another character)."""
    start = line.lstrip()[:2]
    if start[:1] == ">" and (len(start) == 1 or start[1] < "\x80"):
        return True
    return _norm(line).startswith(">")


def _attribution_span(lines: list[str], i: int) -> int:
    """How many lines the attribution starting at ``i`` takes (0 if none); clients wrap it over two."""
    line = _norm(lines[i])
    if _ATTRIBUTION.fullmatch(line):
        return 1
    if i + 1 < len(lines) and line.lower().startswith(("on ", "le ")):
        return 2 if _ATTRIBUTION.fullmatch(f"{line} {_norm(lines[i + 1])}") else 0
    return 0


def _header_block(lines: list[str], i: int) -> bool:
    """A "From:"/"De :" line followed by at least two of Sent/To/Subject… (one alone could be prose)."""
    if not _FROM_LINE.match(_norm(lines[i])):
        return False
    return sum(bool(_HEADER_LINE.match(_norm(line))) for line in lines[i + 1 : i + 5]) >= 2


def _tidy(lines: list[str]) -> str:
    """Without the rules and blank lines a cut leaves behind, and one blank line at most in a row."""
    while lines and (not lines[-1].strip() or _RULE.fullmatch(lines[-1].strip())):
        lines.pop()
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text)


def _html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "\n".join(line.strip() for line in "".join(parser.chunks).split("\n"))


class _HtmlText(HTMLParser):
    """Text of an HTML body, one line per block, without quote containers and invisible elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping: str | None = None  # the tag whose element is being left out
        self._depth = 0  # its nesting: only that tag is counted, so unclosed <p>s do no harm
        self._line_has_text = False  # markup indentation between blocks must not make blank lines

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            self._depth += tag == self._skipping
            return
        attributes = {name: (value or "") for name, value in attrs}
        cite = tag == "blockquote" and attributes.get("type", "").lower() == "cite"  # Apple Mail, Thunderbird
        quote = cite or bool(_QUOTE_CLASSES & set(attributes.get("class", "").split()))
        if tag not in _VOID_TAGS and (quote or tag in _HIDDEN_TAGS):
            self._skipping, self._depth = tag, 1
        elif tag == "br":
            self.chunks.append("\n")
            self._line_has_text = False
        elif tag in _BLOCK_TAGS:
            self._new_line()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # <br/> is one line break, not a start and an end

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            self._depth -= tag == self._skipping
            if self._depth == 0:
                self._skipping = None
        elif tag in _BLOCK_TAGS:
            self._new_line()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            # HTML collapses ASCII whitespace; a no-break space (&nbsp;) is kept, and is text.
            text = re.sub(r"[ \t\r\n\f]+", " ", data)
            self.chunks.append(text)
            self._line_has_text |= bool(text.strip(" "))

    def _new_line(self) -> None:
        if self._line_has_text:
            self.chunks.append("\n")
            self._line_has_text = False
