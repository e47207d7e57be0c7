"""The ceilings each Cabinet figure is divided by: the same protocol doing nothing.

Each runs as its own process, pinned like Cabinet, so a ratio compares
Cabinet with the fastest thing that could answer the same request here:

- ``static PORT SIZE``: aiohttp answering every GET with a page of SIZE bytes;
- ``post PORT``: aiohttp parsing a urlencoded form and answering 303;
- ``smtp PORT``: aiosmtpd whose handler only answers 250;
- ``sink PORT COUNTFILE [SAVEDIR]``: aiosmtpd counting the messages it receives
  (the relay Cabinet sends to; it writes the count to COUNTFILE at every
  message, and each message's bytes to SAVEDIR when given).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web


def serve_static(port: int, size: int) -> None:
    body = ("<!doctype html><title>ceiling</title>" + "x" * max(0, size - 36)).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_post(port: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        return web.Response(status=303, headers={"Location": f"/done/{len(form)}"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_smtp(port: int, count_file: Path | None, save_dir: Path | None = None) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self) -> None:
            self.count = 0

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            self.count += 1
            if save_dir is not None:
                (save_dir / f"{self.count:06d}.eml").write_bytes(envelope.original_content)  # type: ignore[attr-defined]
            if count_file is not None:
                count_file.write_text(str(self.count))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=0)
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "static":
        serve_static(port, int(argv[2]))
    elif kind == "post":
        serve_post(port)
    elif kind == "smtp":
        serve_smtp(port, None)
    elif kind == "sink":
        serve_smtp(port, Path(argv[2]), Path(argv[3]) if len(argv) > 3 else None)
    else:
        raise SystemExit(f"unknown ceiling {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
