"""`cabinet serve`: HTTP, SMTP and the outbox worker in one asyncio loop."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO, cast

from aiohttp import web

from daemon.app import Cabinet
from daemon.auth import WebSessions
from daemon.config import LOCALES, listen_address
from daemon.db import POSTGRESQL_ENGINE_OPTIONS, SQLITE_THREADS, checkpoint_in_background
from daemon.errors import ConfigError
from daemon.instance import RECORDED
from daemon.scheduler import Scheduler
from daemon.loops import Repeater
from daemon.metrics import Metrics
from daemon.reads import POSTGRESQL_KEPT
from daemon.thread_reads import ThreadReads
from daemon.accepts import POSTGRESQL_WRITERS
from daemon.arrivals import Arrivals
from daemon.smtp import InboundHandler, make_protocol_factory
from daemon.web import make_app, make_metrics_app
from daemon.web.access_log import AccessLine
from daemon.web.context import THREAD_READS
from daemon.web.pages import Pages

log = logging.getLogger(__name__)

# What the hot paths render (an emailed link's page and its sign-in; the accept's two emails), compiled
# at start and after a reload (``Service.warm``), in every language: on first use each cost the event
# loop more than the request itself (a fresh serve's first link GET took ~55 ms of the loop's CPU, the
# later ones ~2 ms; its first accept ~10 ms, the later ones ~2 ms). About 130 ms of CPU at start.
HOT_PAGES = ("invitation.html", "sign_in.html")
HOT_EMAILS = ("invitation_accepted", "client_added")


@contextmanager
def _listening(host: str, port: int, key: str) -> Iterator[None]:
    """A listener that cannot bind is a configuration problem: say which address and which key sets it."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno and exc.errno > 0 else (exc.strerror or str(exc))
        raise ConfigError(f"cannot listen on {host}:{port} (set by {key}): {reason}") from None


class InstanceLock:
    """With SQLite one process serves at a time: an exclusive lock on a file in the data folder.

    The kernel drops the lock when the process dies, even by SIGKILL, so a
    crash never leaves a stale lock behind.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: TextIO | None = None

    def acquire(self, database: str) -> None:
        try:
            handle = self._path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open {self._path} in the data folder ([storage] data_dir): {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"another `cabinet serve` (pid {holder}) is already serving {database}; with SQLite only one "
                "instance may run. Stop it, or move to PostgreSQL ([storage] database_url) to run several."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class Service:
    """The running daemon. ``start`` binds the listeners; ``stop`` drains and closes them."""

    def __init__(self, cabinet: Cabinet) -> None:
        self.cabinet = cabinet
        self.pages = Pages(cabinet.templates)
        self.web_sessions = WebSessions(
            cabinet.sessions, cabinet.clock, timedelta(hours=cabinet.config.security.session_hours)
        )
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port = 0
        self._smtp: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock: InstanceLock | None = None
        self._stoppers: list[Callable[[], None]] = []
        self.http_port = 0
        self.smtp_port = 0

    async def start(self) -> None:
        config = self.cabinet.config
        # Database work runs in threads. On SQLite those threads queue on the
        # group writer, so more of them in flight means larger groups (one
        # fsync for more callers); on PostgreSQL more threads than pooled
        # connections would only wait for the pool.
        threads = SQLITE_THREADS if config.is_sqlite else POSTGRESQL_ENGINE_OPTIONS["pool_size"] + POSTGRESQL_ENGINE_OPTIONS["max_overflow"]
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads, thread_name_prefix="cabinet-db"))
        if config.is_sqlite:
            self._lock = InstanceLock(config.storage.data_dir / "serve.lock")
            self._lock.acquire(config.database_url)
            # The writer's COMMITs no longer copy the WAL into the database file (until Cabinet.close):
            # a thread does (daemon/checkpoints.py).
            checkpoint_in_background(self.cabinet.sessions)
        self.metrics = Metrics(self.cabinet.sessions, self.cabinet.clock, self.cabinet.worker.stats)
        self.warm()
        app = make_app(self.cabinet, self.web_sessions, self.pages, self.metrics, self._readiness)
        if not config.is_sqlite:  # SQLite's page reads run on the loop (daemon.web.context.read)
            # The hot reads keep POSTGRESQL_KEPT connections, shared with the accept batches' threads
            # (their plans' reads): with these, never more readers at once than kept connections, so a
            # read never opens one of its own. 12 threads served the link GET as well as 20 (A/B).
            reads = ThreadReads(POSTGRESQL_KEPT - POSTGRESQL_WRITERS)
            app[THREAD_READS] = reads
            self._stoppers.append(reads.close)
        self._runner = web.AppRunner(
            app, access_log=logging.getLogger("aiohttp.access"), access_log_class=AccessLine, shutdown_timeout=5.0,
        )
        await self._runner.setup()
        host, port = listen_address(config.http.listen, "[http] listen")
        site = web.TCPSite(self._runner, host, port)
        with _listening(host, port, "[http] listen"):
            await site.start()
        server = cast(asyncio.Server, site._server)  # aiohttp keeps the bound asyncio server here
        self.http_port = server.sockets[0].getsockname()[1]
        if config.metrics.listen:
            # Metrics on a listener of their own (loopback by default), never next to the links.
            self._metrics_runner = web.AppRunner(make_metrics_app(self.metrics), access_log=None)
            await self._metrics_runner.setup()
            metrics_host, metrics_port = listen_address(config.metrics.listen, "[metrics] listen")
            metrics_site = web.TCPSite(self._metrics_runner, metrics_host, metrics_port)
            await metrics_site.start()
            self.metrics_port = cast(asyncio.Server, metrics_site._server).sockets[0].getsockname()[1]
            log.info("metrics on http://%s:%s/metrics", metrics_host, self.metrics_port)

        worker = self.cabinet.worker
        wake_worker: Callable[[Any], None] = lambda result: worker.wake() if result else None
        # Processing gives way to deliveries (stores first), and works through a backlog without pausing.
        arrivals = Arrivals()
        processor = Repeater("inbound processing", partial(self.cabinet.inbound.process_due, give_way=arrivals.wait_for_lull),
                             config.mail.poll_interval, wake_worker, again=bool)
        scheduler = Repeater("scheduled jobs", Scheduler(self.cabinet).run_due, config.scheduler.interval,
                             lambda counts: worker.wake() if any(counts.values()) else None)
        handler = InboundHandler(self.cabinet.inbound, config.inbound, processor.wake, arrivals)
        smtp_host, smtp_port = listen_address(config.smtp.listen, "[smtp] listen")
        loop = asyncio.get_running_loop()
        with _listening(smtp_host, smtp_port, "[smtp] listen"):
            self._smtp = await loop.create_server(
                make_protocol_factory(handler, config), smtp_host, smtp_port
            )
        self.smtp_port = self._smtp.sockets[0].getsockname()[1]
        self._stoppers = [worker.stop, processor.stop, scheduler.stop]
        self._tasks = [
            asyncio.create_task(worker.run(), name="outbox-worker"),
            asyncio.create_task(processor.run(), name="inbound-processing"),
            asyncio.create_task(scheduler.run(), name="scheduler"),
        ]
        log.info(
            "Cabinet is serving: HTTP on %s:%s, %s on %s:%s, mail via %s",
            host, self.http_port, config.inbound.protocol.upper(), smtp_host, self.smtp_port, config.mail.transport,
        )
        public_url = config.settings.get(("http", "public_url"))
        origin = public_url.origin if public_url else "[http] public_url"
        log.info("emailed links carry %s (%s)", config.http.public_url, origin)
        if origin != RECORDED:
            log.warning("no public URL is recorded with this instance yet: run `cabinet init` so every command's "
                        "links carry the same one")
        for warning in config.warnings:
            log.warning("configuration: %s", warning)
        # The decoy hash for unknown sign-in addresses, made now on the password pool (start-up
        # does not wait for it) rather than on the first attempt, which would take longer than the rest.
        self.cabinet.passwords.executor.submit(self.cabinet.passwords.warm)

    def warm(self) -> None:
        """Pay the hot paths' first-use costs before the first request does: their templates, and the
        statements the link page and the accept compile once per engine. Reads nothing, writes nothing."""
        self._warm_templates()
        self.cabinet.roster.warm()
        self.web_sessions.warm()

    def _warm_templates(self) -> None:
        self.pages.warm(HOT_PAGES)
        self.cabinet.renderer.warm(HOT_EMAILS, LOCALES)

    def _readiness(self) -> dict[str, bool]:
        return {
            "smtp listener": self._smtp is not None and self._smtp.is_serving(),
            "background tasks": bool(self._tasks) and not any(t.done() for t in self._tasks),
        }

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, then stop the worker."""
        if self._smtp is not None:
            self._smtp.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        for stop in self._stoppers:
            stop()
        if self._tasks:
            # In-flight work finishes its current step; what is still running after that is cancelled,
            # except an email being sent, which gets up to the relay timeout to finish and be recorded.
            _, pending = await asyncio.wait(self._tasks, timeout=4.0)
            worker = self.cabinet.worker
            sending = [task for task in pending if task.get_name() == "outbox-worker" and worker.sending]
            if sending:
                log.info("waiting up to %.0f s for the email being sent", worker.drain_timeout)
                await asyncio.wait(sending, timeout=worker.drain_timeout)
                pending = {task for task in pending if not task.done()}
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._smtp is not None:
            await self._smtp.wait_closed()
        if self._lock is not None:
            self._lock.release()
        log.info("Cabinet stopped")

    def reload(self) -> None:
        self.pages.reload()
        self.cabinet.renderer.reload()
        self._warm_templates()
        log.info("templates reloaded")
