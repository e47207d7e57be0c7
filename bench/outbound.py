"""Outbound drivers, each run pinned to the server core by ``bench.run``.

    python -m bench.outbound cabinet CONFIG     send Cabinet's whole outbox, as `cabinet mail flush` does
    python -m bench.outbound raw HOST PORT DIR [N]  send DIR's (first N) *.eml over one persistent aiosmtplib connection

Each prints one JSON line: count, elapsed seconds and the CPU seconds the sending took (every thread of
this process, start-up and seeding left out).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from email import message_from_bytes, policy
from email.utils import getaddresses
from pathlib import Path


def cabinet(config_path: str) -> dict[str, float]:
    from daemon.app import build
    from daemon.config import load_config

    app = build(load_config(config_path))
    try:
        started, cpu = time.perf_counter(), time.process_time()
        count = 0
        while True:
            sent = asyncio.run(app.worker.send_due())
            if not sent:
                break
            count += sent
        return {"count": count, "elapsed": time.perf_counter() - started, "cpu": time.process_time() - cpu}
    finally:
        app.close()


async def _raw(host: str, port: int, folder: Path, limit: int | None = None) -> dict[str, float]:
    import aiosmtplib

    messages = []
    # The sink keeps every email it receives (the ceiling's own too): send the first ``limit``, the
    # same count as a Cabinet round, or each round sent all of the earlier rounds' again.
    for path in sorted(folder.glob("*.eml"))[:limit]:
        data = path.read_bytes()
        parsed = message_from_bytes(data, policy=policy.default)
        recipients = [address for _, address in getaddresses(parsed.get_all("To", []))]
        sender = str(parsed.get("Return-Path", "")).strip("<>") or "bench@bench.example"
        messages.append((sender, recipients, data))
    started, cpu = time.perf_counter(), time.process_time()
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
    await smtp.connect()
    for sender, recipients, data in messages:
        await smtp.sendmail(sender, recipients, data)
    await smtp.quit()
    return {"count": len(messages), "elapsed": time.perf_counter() - started, "cpu": time.process_time() - cpu}


def main(argv: list[str]) -> None:
    if argv[0] == "cabinet":
        result = cabinet(argv[1])
    elif argv[0] == "raw":
        result = asyncio.run(_raw(argv[1], int(argv[2]), Path(argv[3]), int(argv[4]) if len(argv) > 4 else None))
    else:
        raise SystemExit(f"unknown driver {argv[0]!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
