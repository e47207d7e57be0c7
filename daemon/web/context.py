"""Per-request state for the HTTP adapter: who is visiting, in which language, with which CSRF token."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, TypeVar

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy

from daemon.app import Cabinet
from daemon.auth import WebSessions
from daemon.clock import INSTANT, Clock
from daemon.errors import CabinetError, LinkError
from daemon.config import LOCALES
from daemon.i18n import negotiate
from daemon.tokens import LinkSigner, Purpose
from daemon.views import UserView
from daemon.link_opens import KnownOpenings, Opening
from daemon.thread_reads import ThreadReads
from daemon.web.browser_ids import BrowserIds
from daemon.web.pages import Pages
from daemon.web.security import SECURITY, SecuredResponse, WebSecurity

CABINET = web.AppKey("cabinet", Cabinet)
PAGES = web.AppKey("pages", Pages)
SESSIONS = web.AppKey("web_sessions", WebSessions)
BROWSER_IDS = web.AppKey("browser_ids", BrowserIds)
THREAD_READS = web.AppKey("thread_reads", ThreadReads)  # here, not in daemon.thread_reads: the CLI imports that (accepts) without aiohttp


@dataclass(frozen=True, slots=True)
class Site:
    """What every request of the app is served with (the settings change only on a restart; the templates
    on SIGHUP, inside ``pages``), found once per request: ``request.app[SITE]`` (a property of a property,
    then the application's mapping: Python calls each) where the link page's path looked up one app key per
    value, nine times a page (``daemon.web.through`` reads it and hands it on in the ``Visitor``)."""

    cabinet: Cabinet
    pages: Pages
    security: WebSecurity
    sessions: WebSessions
    browser_ids: BrowserIds
    clock: Clock
    signer: LinkSigner
    public_url: str
    product_name: str
    default_locale: str
    timezone: str
    sqlite: bool  # the page reads run on the event loop (``read``)
    page_headers: CIMultiDictProxy[str]  # ``security``'s, with an HTML page's content type
    known_openings: KnownOpenings  # ``cabinet.link_opens.known``: links whose page need not ask
    # The request metrics' series per (route, method) (``daemon.web._measure``), filled as routes are first
    # seen: the app's own, as ``MEASURED`` holds it.
    measured: dict[tuple[Any, str], Any]

    @classmethod
    def of(cls, app: web.Application, measured: dict[tuple[Any, str], Any]) -> Site:
        cabinet = app[CABINET]
        general = cabinet.config.general
        return cls(
            cabinet=cabinet, pages=app[PAGES], security=app[SECURITY], sessions=app[SESSIONS],
            browser_ids=app[BROWSER_IDS], clock=cabinet.clock, signer=cabinet.signer,
            public_url=cabinet.config.http.public_url, product_name=general.product_name,
            default_locale=general.default_locale, timezone=general.timezone,
            sqlite=cabinet.engine.dialect.name == "sqlite", page_headers=app[SECURITY].page_headers,
            known_openings=cabinet.link_opens.known, measured=measured,
        )


SITE = web.AppKey("site", Site)

#: The language a visitor chose with the switch on every page; it wins over everything else.
LANGUAGE_COOKIE = "cabinet_lang"

T = TypeVar("T")


class CsrfFailed(CabinetError):
    http_status = 403


class CsrfToken:
    """The page's CSRF token, signed only when a page shows a form.

    Whether a page used it decides whether the browser gets a cookie at all: an anonymous GET of a
    page without a form sets none. A new browser's id is minted with its token, and its cookie signed
    with it (``cookie``, for ``daemon.web.through``): the two share the id, the time and one encoding
    (``LinkSigner.sign_each``).
    """

    __slots__ = ("_signer", "_browser", "_ids", "_value", "cookie")

    def __init__(self, signer: LinkSigner, known_browser: str | None, ids: BrowserIds) -> None:
        self._signer = signer
        self._browser = known_browser
        self._ids = ids
        self._value: str | None = None
        #: A new browser's cookie, signed with its token; None until a page needs one.
        self.cookie: str | None = None

    @property
    def used(self) -> bool:
        return self._value is not None

    def __str__(self) -> str:
        if self._value is None:
            if self._browser is None:
                self._browser = self._ids.take()
                self._value, self.cookie = self._signer.sign_each((Purpose.CSRF, Purpose.BROWSER), self._browser)
            else:
                self._value = self._signer.sign(Purpose.CSRF, self._browser)
        return self._value

    __html__ = __str__  # jinja's autoescape asks for this; a token needs no escaping


@dataclass(slots=True)
class Visitor:
    known_browser: str | None  # the id in a browser cookie we signed; None: the cookie is set if the page needs it
    session_token: str | None
    user: UserView | None
    locale: str
    timezone: str
    csrf_token: CsrfToken
    chosen_locale: bool = False  # from the language switch's cookie
    site: Site | None = None  # the app's (``through``); None only for a visitor made without a request's app
    # Set by a link's page whose own read checked its "link opened" record (``opening_checked``): what a
    # first opening records (``daemon.web.through`` writes it), or None. Unchecked, ``through`` reads the
    # link itself.
    opening_checked: bool = False
    first_opening: Opening | None = None

    def found_opening(self, opening: Opening | None) -> None:
        """The page's own read checked the link's "link opened" record: ``opening`` is what a first opening
        records, or None (recorded already, or not a valid link's)."""
        self.opening_checked = True
        self.first_opening = opening

    @property
    def new_browser(self) -> bool:
        return self.known_browser is None


VISITOR = web.RequestKey("visitor", Visitor)
FORM = web.RequestKey("form", MultiDictProxy)


def visitor(request: web.Request) -> Visitor:
    return request[VISITOR]


def form(request: web.Request) -> MultiDictProxy[Any]:
    return request[FORM]


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Domain calls do blocking database I/O (fsync on commit): keep them off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def read(request: web.Request, site: Site, fn: Callable[..., T], *args: Any) -> T:
    """A hot page's one indexed read: on SQLite, inline on the event loop; elsewhere in a thread (``run``).

    A SQLite read in WAL mode takes no lock a writer holds and reads pages the OS has cached: it is
    over sooner than a thread hop (queue, wake-up, GIL hand-over, the loop's self-pipe) would be; the
    reads of one turn of the loop share one read transaction (``daemon.reads.ReadConnections``).
    PostgreSQL's read is a network round trip: it keeps the thread, one of ``cabinet serve``'s read
    threads (``daemon.thread_reads``: a third of ``run``'s cost per hop)."""
    if site.sqlite:
        return fn(*args)
    return await request.app[THREAD_READS].run(fn, *args)


def _browser_id(signer: LinkSigner, cookie: str | None) -> str | None:
    """The id inside a browser cookie Cabinet issued; None for a missing, chosen or forged one."""
    if not cookie:
        return None
    try:
        value = signer.verify(Purpose.BROWSER, cookie, max_age=None)
    except LinkError:
        return None
    return value if isinstance(value, str) else None


async def load_visitor(request: web.Request, site: Site) -> Visitor:
    headers = request.headers
    if "Cookie" in headers:
        cookies = request.cookies
        browser_id = _browser_id(site.signer, cookies.get(site.security.browser_cookie))
        token = cookies.get(site.security.session_cookie)
        chosen = cookies.get(LANGUAGE_COOKIE, "")
    else:  # a new browser (a first click, a mail scanner): no header to parse into an empty mapping
        browser_id = token = None
        chosen = ""
    user = await read(request, site, site.sessions.user, token) if token else None
    if chosen in LOCALES:
        locale = chosen
    elif user:
        locale = user.locale
    else:
        accept = headers.get("Accept-Language")
        locale = negotiate(accept, site.default_locale) if accept else site.default_locale
    return Visitor(
        known_browser=browser_id,
        session_token=token if user else None,
        user=user,
        locale=locale,
        timezone=user.timezone if user else site.timezone,
        csrf_token=CsrfToken(site.signer, browser_id, site.browser_ids),
        chosen_locale=chosen in LOCALES,
        site=site,
    )


def speak_to(request: web.Request, locale: str, timezone: str) -> None:
    """A link's page speaks to the person it was sent to: their recorded language (unless this browser
    chose one with the switch) and time zone, as their email did, signed in or not."""
    v = visitor(request)
    if locale in LOCALES and not v.chosen_locale:
        v.locale = locale
    if timezone:
        v.timezone = timezone


def check_csrf(request: web.Request, submitted: str | None) -> None:
    """The form's token must be ours, recent, and bound to this browser's cookie."""
    cabinet = request.app[CABINET]
    max_age = timedelta(hours=cabinet.config.security.session_hours)
    try:
        bound = cabinet.signer.verify(Purpose.CSRF, submitted or "", max_age=max_age)
    except LinkError:
        raise CsrfFailed("csrf.expired") from None
    current = visitor(request).known_browser  # the browser cookie, verified once per request (load_visitor)
    if not current or not secrets.compare_digest(str(bound), current):
        raise CsrfFailed("csrf.other_browser")


def page(request: web.Request, template: str, status: int = 200, *, now: datetime | None = None,
         **context: Any) -> web.Response:
    """The page ``template`` for this request's visitor."""
    v = visitor(request)
    app = request.app  # a property of a property: read once
    cabinet = app[CABINET]
    values = {
        **context,
        "user": v.user,
        "csrf_token": v.csrf_token,
        "path": request.path,
        "public_url": cabinet.config.http.public_url,
        "now": now or cabinet.clock.now(),
        "product_name": cabinet.config.general.product_name,
    }
    body = app[PAGES].render(template, v.locale, v.timezone, values).encode()
    # Made with the security headers (``security._add_headers`` then leaves it alone). The body as bytes
    # with its content type among them: what ``text=`` and ``content_type=`` make, set once.
    return SecuredResponse(body=body, status=status, headers=app[SECURITY].page_headers)


_MINUTE = timedelta(minutes=1)

#: What ``shared_page``'s ``context`` gives: the page's values, and the instants strictly between which
#: they hold (an invitation's status changes at its expiry date).
SharedContext = tuple[dict[str, Any], datetime, datetime]


def shared_page(
    v: Visitor, site: Site, template: str, path: str, key: tuple[Any, ...], now: datetime,
    context: Callable[[], SharedContext],
) -> web.Response:
    """The page ``template`` for ``v``, a signed-out visitor, at ``path``, when it is a pure function of
    ``key`` (with the template, path, the visitor's language and zone, and the site's settings) but for its
    CSRF token: rendered once and kept (``Pages.keep``), each visitor's own token put in
    (``Pages.with_token``).

    ``key`` must name whatever else the page is made of, and is looked for before anything else is made;
    ``context()`` is called only to render anew. A template that shows ``now`` itself
    (``Pages.reads_clock``) is kept for the minute it was rendered in, which bounds the kept page's span
    rather than being part of its key (nothing worked out from the clock before the lookup); its
    relative-time filters are followed by ``Pages.keep``."""
    pages = site.pages
    full_key = (template, v.locale, v.timezone, path, site.public_url, site.product_name, key)
    parts = pages.kept(full_key, now)
    if parts is None:
        values, start, end = context()
        values = {**values, "user": None, "path": path, "public_url": site.public_url, "now": now,
                  "product_name": site.product_name}
        if pages.reads_clock(template):  # it shows the minute: kept for that minute only
            minute = now.replace(second=0, microsecond=0)
            start, end = max(start, minute - INSTANT), min(end, minute + _MINUTE)
        parts = pages.keep(full_key, template, v.locale, v.timezone, values, start, end)
    return SecuredResponse(body=pages.with_token(parts, v.csrf_token), headers=site.page_headers)


def message(request: web.Request, error: CabinetError) -> str:
    """What a visitor reads for a domain error: its code in their language, never the exception's text."""
    return request.app[PAGES].error_message(error, visitor(request).locale)


def redirect(location: str) -> web.Response:
    """Post/Redirect/Get: 303 so a reload never re-submits the form."""
    return web.Response(status=303, headers={"Location": location})
