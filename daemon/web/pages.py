"""Rendering pages from ``web/`` of the template folders in the reader's language.

Page strings are written in English in the templates and translated with
gettext; the French catalogue is ``web/locale/fr.po``, compiled in memory at
start-up with Babel, so there is no build step to forget (and no ``.mo`` file
to ship). Templates and catalogues are looked up file by file: the operator's
override folder first, then the built-in templates.

Shared pages (``Pages.kept`` and ``Pages.keep``): the page an emailed invitation link shows a signed-out
visitor is opened again and again (by its accountant, by mail scanners) and is the same for everyone who
opens it but for the CSRF token in its forms. It is kept once rendered, under a key of everything it is
made of: the template, language and time zone; the link's path; the settings it shows; the invitation's
row as the database driver gave it on this request (its state, names and dates, and those of the rows it
joins: a change shows on the next request; found before any view of it is made,
``daemon.web.invitations.show``); and the clock's minute only when the template (or one it extends,
includes or imports) names ``now`` itself (``reads_clock``, decided once per template; a template named
by an expression counts as naming it). What the clock decides is bounded: a kept page is served only
strictly between two instants, the ones over which what it shows holds (a pending invitation's status
until its expiry date) narrowed to those over which each of its relative texts ("in 47 hours", the
``|deadline`` and ``|remaining`` filters, noted as the page renders) reads the same
(``daemon.i18n.duration_span``): the built-in invitation page is rendered again when its deadline's text
changes, not every minute. Never a signed-in page: those show the user. The token is rendered as a random
marker and each response gets its own visitor's token in its place, so no visitor ever sees another's
token (``tests/test_shared_pages.py``). The kept pages are bounded and dropped with the templates on
reload.
"""

from __future__ import annotations

import io
import logging
import secrets
from gettext import NullTranslations
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, TemplateError, meta, nodes
from markupsafe import Markup

from daemon.clock import EARLIEST, LATEST
from daemon.config import LOCALES
from daemon.errors import CabinetError, render
from daemon.i18n import CLOCK_READS, date_filters, duration_span
from daemon.template_folders import TemplateFolders
from daemon.web.compiled_gettext import CompiledGettext

log = logging.getLogger(__name__)

#: The filters that measure from the page's ``now`` (``daemon.i18n.date_filters``).
RELATIVE_FILTERS = ("deadline", "remaining")

#: Pages ``keep`` keeps: a few KB each.
SHARED_PAGES = 2048


def load_translations(po: Path | None, locale: str) -> NullTranslations:
    if po is None:
        return NullTranslations()
    with po.open("rb") as handle:
        catalog = read_po(handle, locale=locale)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


class Pages:
    def __init__(self, folders: TemplateFolders) -> None:
        self._folders = folders
        self._envs: dict[str, Environment] = {}
        self._translations: dict[str, NullTranslations] = {}
        self._templates: dict[tuple[str, str], tuple[Template, dict[str, Any]]] = {}
        # A kept page: its UTF-8 bytes cut where the CSRF token goes, and the instants strictly between
        # which its relative texts read as they did when it was rendered (``_kept_while``).
        self._shared: dict[tuple[Any, ...], tuple[tuple[bytes, ...], datetime, datetime]] = {}
        self._reads_clock: dict[str, bool] = {}
        # Where a shared page's CSRF token goes (``keep``): random per process, so no text a
        # visitor or an invitation brings can name it.
        self._token_marker = f"csrf-{secrets.token_hex(16)}"
        self.reload()

    def reload(self) -> None:
        """Re-read templates and catalogues (SIGHUP)."""
        envs = {}
        translations = {}
        for locale in LOCALES:
            env = Environment(
                loader=FileSystemLoader(self._folders.search_path("web")),
                autoescape=True,
                undefined=StrictUndefined,
                # CompiledGettext: literal page strings translated when a template compiles (not per render).
                extensions=["jinja2.ext.i18n", CompiledGettext],
                # Compiled once: no stat() per template per request. SIGHUP (``reload``) re-reads them.
                auto_reload=False,
            )
            catalogue = load_translations(self._folders.find(f"web/locale/{locale}.po"), locale)
            translations[locale] = catalogue
            # Both added to the Environment at run time by extensions (jinja2.ext.i18n, CompiledGettext),
            # unknown to its class's annotations.
            env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
            env.compiled_translations = catalogue  # type: ignore[attr-defined]
            env.filters.update(date_filters())
            envs[locale] = env
        self._envs = envs
        self._translations = translations
        self._templates = {}
        self._shared = {}
        self._reads_clock = {}

    def _template(self, name: str, locale: str) -> tuple[Template, dict[str, Any]]:
        found = self._templates.get((locale, name))
        if found is None:
            template = self._envs[locale].get_template(name)
            found = self._templates[(locale, name)] = (template, dict(template.globals))
        return found

    def warm(self, names: tuple[str, ...]) -> None:
        """Compile ``names`` in every language, and decide ``reads_clock`` for each, now rather than on
        the first request that shows them (on the event loop: ~50 ms of a fresh serve's first link GET,
        whose later ones take ~2 ms); what a page extends or imports too, which jinja loads only when the
        page first renders. The templates are the ones ``render`` would load, the operator's override
        first; one that fails to load is left to fail where it always did, on its request."""
        for name in names:
            for locale in LOCALES:
                try:
                    self._template(name, locale)
                    _compile_referenced(self._envs[locale], name)
                except TemplateError as exc:
                    log.warning("template %s could not be compiled ahead of its first page: %s", name, exc)
                    break
            else:
                self.reads_clock(name)

    def render(self, name: str, locale: str, timezone: str, context: dict[str, Any]) -> str:
        """``Template.render`` without its per-render copies: the template is kept here (no loader
        cache lookup) with its globals as one dict (jinja copies them out of a ``ChainMap`` into every
        context it makes, twice), merged with ``context`` in one copy."""
        template, globals_ = self._template(name, locale)
        env = template.environment
        parent = {**globals_, **context, "locale": locale, "timezone": timezone}
        ctx = env.context_class(env, parent, template.name, template.blocks, globals=globals_)
        try:
            return env.concat(template.root_render_func(ctx))
        except Exception:
            env.handle_exception()
        raise AssertionError("unreachable: handle_exception raises")

    def kept(self, key: tuple[Any, ...], now: datetime) -> tuple[bytes, ...] | None:
        """The page ``keep`` kept under ``key``, while ``now`` is strictly inside the span it holds for; else
        None. Looked up before anything else of the page is made: a page served again is two comparisons."""
        kept = self._shared.get(key)
        if kept is not None and kept[1] < now < kept[2]:
            return kept[0]
        return None

    def keep(
        self, key: tuple[Any, ...], name: str, locale: str, timezone: str, context: dict[str, Any],
        start: datetime = EARLIEST, end: datetime = LATEST,
    ) -> tuple[bytes, ...]:
        """``render`` of a page that is a pure function of ``key`` but for its CSRF token, kept for ``kept``
        as UTF-8 bytes cut where the token goes (``with_token`` puts each visitor's own in).

        The caller's key must name everything the page is made of (the template, language and zone
        included; see ``daemon.web.context.shared_page``), and ``start`` and ``end`` the instants strictly
        between which what it shows holds (an invitation's status, the minute of a page that shows ``now``);
        the span is narrowed to the one over which each of its relative texts reads the same
        (``_kept_while``). Bounded; ``reload`` empties it with the templates."""
        reads: list[tuple[datetime, bool]] = []
        html = self.render(name, locale, timezone,
                           {**context, "csrf_token": Markup(self._token_marker), CLOCK_READS: reads})
        if key not in self._shared and len(self._shared) >= SHARED_PAGES:
            self._shared.clear()  # bounded; the hot pages come back in a few requests
        low, high = _kept_while(reads, context["now"])
        parts = tuple(html.encode().split(self._token_marker.encode()))
        self._shared[key] = (parts, max(low, start), min(high, end))
        return parts

    @staticmethod
    def with_token(parts: tuple[bytes, ...], csrf_token: Any) -> bytes:
        """A kept page (``keep``) with ``csrf_token`` where its token goes, signed only if it has a form."""
        if len(parts) == 1:
            return parts[0]
        return str(csrf_token).encode("ascii").join(parts)

    def reads_clock(self, name: str) -> bool:
        """Whether the page ``name`` shows ``now`` itself, so that a kept rendering of it is good for the
        minute only (``daemon.web.context.page``). Decided once per template, from its source and that of
        every template it extends, includes or imports: one named by an expression, or one that cannot be
        read, counts as yes. The relative-time filters are not this: ``keep`` follows them."""
        found = self._reads_clock.get(name)
        if found is None:
            found = self._reads_clock[name] = _names_now(self._envs[LOCALES[0]], name)
        return found

    def error_message(self, error: CabinetError, locale: str) -> str:
        """An error's code in the reader's language, as a sentence (the domain only gives codes)."""
        text = render(error.code, error.params, self._translations[locale])
        text = text[:1].upper() + text[1:]
        return text if text.endswith((".", "!", "?", "»")) else text + "."


def _compile_referenced(env: Environment, name: str) -> None:
    """Compile into ``env``'s cache each template ``name`` extends, includes or imports (by a constant
    name), and theirs: jinja loads those when the page first renders, not when it compiles."""
    seen = {name}
    waiting = [name]
    while waiting:
        # Optional in jinja2's types; every Environment of Pages has its FileSystemLoader.
        source, _, _ = env.loader.get_source(env, waiting.pop())  # type: ignore[union-attr]
        for referenced in meta.find_referenced_templates(env.parse(source)):
            if referenced is not None and referenced not in seen:
                seen.add(referenced)
                env.get_template(referenced)
                waiting.append(referenced)


def _kept_while(reads: list[tuple[datetime, bool]], now: datetime) -> tuple[datetime, datetime]:
    """The instants strictly between which each relative text a page rendered at ``now`` showed (an
    instant, measured from ``now``: ``reads``) reads the same (``daemon.i18n.duration_span``): a request
    inside them is served the kept page with two comparisons, where each text's key was worked out
    again on every request."""
    start, end = EARLIEST, LATEST
    for at, _ in reads:
        low, high = duration_span(at - now)
        try:
            start, end = max(start, at - timedelta(seconds=high)), min(end, at - timedelta(seconds=low))
        except OverflowError:  # a text about an instant near the calendar's ends: kept for no time
            return now, now
    return start, end


# The nodes that name another template (each has ``template``), typed as their union: given the tuple of
# four classes, jinja2's ``find_all`` is typed as yielding their common base, which has no ``template``.
_NAMING_TEMPLATES: tuple[type[nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport], ...] = (
    nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _names_now(env: Environment, name: str) -> bool:
    """``Pages.reads_clock`` for one environment (the loader is the same for every language).

    A template imported without the page's context has no ``now``: its relative-time filters would read
    the real clock unnoticed, so one that uses them counts as yes too."""
    seen: set[tuple[str, bool]] = set()
    waiting = [(name, True)]
    while waiting:
        current, with_context = waiting.pop()
        if (current, with_context) in seen:
            continue
        seen.add((current, with_context))
        try:
            # Optional in jinja2's types; every Environment of Pages has its FileSystemLoader.
            source, _, _ = env.loader.get_source(env, current)  # type: ignore[union-attr]
            parsed = env.parse(source)
            names = meta.find_undeclared_variables(parsed)
        except Exception:  # noqa: BLE001 - unknown is "yes": the page then keeps the minute in its key
            return True
        if "now" in names:
            return True
        if not with_context and any(f.name in RELATIVE_FILTERS for f in parsed.find_all(nodes.Filter)):
            return True
        for node in parsed.find_all(_NAMING_TEMPLATES):
            try:
                names_of = node.template.as_const()
            except nodes.Impossible:  # named by an expression: which one is unknown
                return True
            for referenced in names_of if isinstance(names_of, (list, tuple)) else [names_of]:
                if not isinstance(referenced, str):
                    return True
                keeps = not isinstance(node, (nodes.Import, nodes.FromImport)) or node.with_context
                waiting.append((referenced, keeps and with_context))
    return False
