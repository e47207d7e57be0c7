"""The access log's line is the one aiohttp's own AccessLogger made with Cabinet's former format.

Real servers and real requests: one aiohttp server logging through aiohttp's ``AccessLogger``
with ``%a "%r" %s %b %Tfs``, one through ``AccessLine``, the same requests to both; the captured
lines must be equal but for the time taken (its own shape is checked).
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from aiohttp import ClientSession, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger

from daemon.web.access_log import AccessLine

FORMER = '%a "%r" %s %b %Tfs'
TIME = re.compile(r" (\d+\.\d{6})s$")


async def _page(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        await request.read()
        raise web.HTTPSeeOther("/done")
    return web.Response(text="é" * 300, content_type="text/html")


async def _lines(access_log_class: type[AbstractAccessLogger], logger: logging.Logger) -> None:
    app = web.Application()
    app.router.add_route("*", "/invitations/{token}", _page)
    runner = web.AppRunner(app, access_log=logger, access_log_class=access_log_class, access_log_format=FORMER)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with ClientSession(f"http://127.0.0.1:{port}") as client:
            for method, path in [("GET", "/invitations/abc?lang=fr&x=%C3%A9"), ("POST", "/invitations/abc"),
                                 ("GET", "/nowhere"), ("HEAD", "/invitations/abc")]:
                async with client.request(method, path, data=b"a=1" if method == "POST" else None,
                                          allow_redirects=False) as answer:
                    await answer.read()
    finally:
        await runner.cleanup()


def _captured(caplog: pytest.LogCaptureFixture, access_log_class: type[AbstractAccessLogger]) -> list[str]:
    logger = logging.getLogger(f"test.access.{access_log_class.__name__}")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logger.name):
        asyncio.run(_lines(access_log_class, logger))
    return [r.getMessage() for r in caplog.records if r.name == logger.name]


def test_the_access_line_is_aiohttps_former_line(caplog: pytest.LogCaptureFixture) -> None:
    former = _captured(caplog, AccessLogger)
    ours = _captured(caplog, AccessLine)
    assert len(former) == len(ours) == 4
    for theirs, line in zip(former, ours):
        assert TIME.search(line), line
        assert TIME.sub(" Ts", line) == TIME.sub(" Ts", theirs)
    assert ours[0].startswith('127.0.0.1 "GET /invitations/abc?lang=fr&x=%C3%A9 HTTP/1.1" 200 ')
    assert ours[1].startswith('127.0.0.1 "POST /invitations/abc HTTP/1.1" 303 ')


def test_below_info_no_line_is_made(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access.quiet")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert not AccessLine(logger, FORMER).enabled
        asyncio.run(_lines(AccessLine, logger))
    assert not [r for r in caplog.records if r.name == logger.name]
