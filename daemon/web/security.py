"""The HTTP adapter's defences that do not depend on any one page.

- POSTs from another site are refused before their body is read (``Origin``
  and ``Sec-Fetch-Site``), with a page that says why; the CSRF token is the
  second lock on the same door.
- Every response, aiohttp's own 404/405/413 included, carries the security
  headers, HSTS when Cabinet is served over https, and no software version.
- Cookie names take the ``__Host-`` prefix over https (no subdomain can set
  or shadow them) and the browser id in them is one Cabinet signed.
- ``safe_next`` lets a sign-in send people only to a path on this site.
- ``client_ip`` believes ``X-Forwarded-For`` only from a configured proxy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from daemon.config import HttpConfig
from daemon.i18n import negotiate
from daemon.web.pages import Pages

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Links carry tokens: never leak them to another site through Referer. Not "no-referrer":
    # with it browsers send "Origin: null" on our own form posts, which must be refused.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000"
SERVER = "Cabinet"

# Sec-Fetch-Site values a form post of ours can carry ("none": typed or bookmarked by the user).
SAME_SITE_FETCH = ("same-origin", "none")

CROSS_SITE_MESSAGE = (
    "This form was sent from another website, so Cabinet did not act on it. "
    "If you meant to do this, open Cabinet's page yourself and submit the form there."
)


@dataclass(frozen=True)
class WebSecurity:
    origin: str  # scheme://host[:port] of public_url, what a browser sends as Origin
    https: bool
    browser_cookie: str
    session_cookie: str
    trusted_proxies: tuple[Network, ...]
    pages: Pages
    default_locale: str
    timezone: str
    product_name: str = "Cabinet"  # the refusal page is drawn before any visitor is loaded
    # Built from the above (``__post_init__``): every response's security headers, HSTS over https.
    headers: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)
    # ``headers`` and an HTML page's content type (``context.page``: the body is given as UTF-8 bytes).
    page_headers: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)
    browser_cookie_tail: str = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, http: HttpConfig, pages: Pages, default_locale: str, timezone: str) -> WebSecurity:
        url = urlsplit(http.public_url)
        https = url.scheme == "https"
        prefix = "__Host-" if https else ""
        # As a browser serialises it: no default port, no path, no user info.
        port = "" if url.port in (None, 443 if https else 80) else f":{url.port}"
        host = f"[{url.hostname}]" if url.hostname and ":" in url.hostname else (url.hostname or "")
        return cls(
            origin=f"{url.scheme}://{host}{port}".lower(),
            https=https,
            browser_cookie=prefix + "cabinet_browser",
            session_cookie=prefix + "cabinet_session",
            trusted_proxies=tuple(ipaddress.ip_network(p, strict=False) for p in http.trusted_proxies),
            pages=pages,
            default_locale=default_locale,
            timezone=timezone,
        )

    def __post_init__(self) -> None:
        headers = CIMultiDict(HEADERS)
        if self.https:
            headers["Strict-Transport-Security"] = HSTS
        headers["Server"] = SERVER
        object.__setattr__(self, "headers", CIMultiDictProxy(headers))
        object.__setattr__(self, "page_headers", CIMultiDictProxy(CIMultiDict(headers, **{
            "Content-Type": "text/html; charset=utf-8"})))
        # What aiohttp's ``set_cookie`` writes for the browser cookie with ``set_cookie`` below's settings
        # (a test compares them), without a cookie jar and a Morsel per response.
        tail = "; HttpOnly; Path=/; SameSite=Lax" + ("; Secure" if self.https else "")
        object.__setattr__(self, "browser_cookie_tail", tail)

    def set_browser_cookie(self, response: web.StreamResponse, value: str) -> None:
        """The browser cookie (a signed id: URL-safe base64 and dots, nothing to quote), set as
        ``set_cookie`` would set it."""
        response.headers.add("Set-Cookie", f"{self.browser_cookie}={value}{self.browser_cookie_tail}")

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int | None = None) -> None:
        # __Host- requires Secure, Path=/ and no Domain; Lax keeps cross-site POSTs cookieless.
        response.set_cookie(name, value, httponly=True, samesite="Lax", secure=self.https, path="/", max_age=max_age)

    def delete_cookie(self, response: web.StreamResponse, name: str) -> None:
        response.del_cookie(name, path="/", secure=self.https, httponly=True, samesite="Lax")


SECURITY = web.AppKey("security", WebSecurity)


class SecuredResponse(web.Response):
    """A response made with ``WebSecurity.page_headers`` (``context.page``): every security header is in
    place already, so ``_add_headers`` has nothing to add."""


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in, or "/": an open redirect would help phishing.

    Only printable ASCII path characters; never "//" or a backslash at the
    start (browsers read both as another host), in the text or once decoded.
    """
    if not value or not _PATH.fullmatch(value):
        return "/"
    decoded = value
    for _ in range(3):  # %252F… decodes twice; three rounds cover what anyone would stack
        decoded = unquote(decoded)
    if _CONTROL.search(decoded) or "\\" in decoded or decoded.startswith("//") or urlsplit(decoded).netloc:
        return "/"
    return value


_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def client_ip(request: web.Request) -> str:
    """The socket's peer; or, when that peer is a trusted proxy, the nearest untrusted X-Forwarded-For hop."""
    peer = request.remote or ""
    trusted = request.app[SECURITY].trusted_proxies
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
    for hop in reversed(hops):
        if not _valid_ip(hop):
            return peer  # a garbled header is not evidence of anything
        if not _is_trusted(hop, trusted):
            return hop
    return peer


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def is_cross_site(request: web.Request, origin: str) -> bool:
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in SAME_SITE_FETCH:
        return True
    sent = request.headers.get("Origin")
    # "null" is what a sandboxed frame, a data: page or a cross-site redirect sends.
    return sent is not None and sent.lower() != origin


def cross_site_refusal(request: web.Request) -> web.Response | None:
    """The refusal of a state-changing request from another site, made before anything reads its body
    (``daemon.web.through`` answers with it); None for a request that may go on."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        security = request.app[SECURITY]
        if is_cross_site(request, security.origin):
            locale = negotiate(request.headers.get("Accept-Language"), security.default_locale)
            html = security.pages.render(
                "error.html",
                locale,
                security.timezone,
                {"message": CROSS_SITE_MESSAGE, "user": None, "csrf_token": "", "path": request.path,
                 "public_url": security.origin, "product_name": security.product_name},
            )
            return web.Response(text=html, status=403, content_type="text/html")
    return None


async def _add_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The headers on every response, aiohttp's own errors included (a page is made with them already,
    ``context.page``: a ``SecuredResponse``, left as it is)."""
    if type(response) is SecuredResponse:
        return
    headers = response.headers
    security = request.app[SECURITY] if isinstance(request, web.Request) else None
    for name, value in (security.headers if security is not None else HEADERS).items():
        headers.setdefault(name, value)
    headers["Server"] = SERVER


def install(
    app: web.Application, http: HttpConfig, pages: Pages, default_locale: str, timezone: str,
    product_name: str = "Cabinet",
) -> None:
    """Headers on every response this app prepares (errors included) and the settings the checks use."""
    app[SECURITY] = dataclasses.replace(
        WebSecurity.from_config(http, pages, default_locale, timezone), product_name=product_name
    )
    app.on_response_prepare.append(_add_headers)
