"""An SMTP load generator: N persistent connections, one message after another.

Written on raw asyncio streams rather than smtplib so that one core of load
can outrun the server under test (the no-op aiosmtpd ceiling included).

    python -m bench.smtpload HOST PORT JOBS.json CONNECTIONS

JOBS.json is a list of {"from": ..., "to": ..., "data": ...}; prints one JSON
line: count, elapsed, per-message latencies' p50/p99, and the reply codes seen.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from bench.stats import percentile


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def _connection(host: str, port: int, jobs: asyncio.Queue[dict[str, Any]], latencies: list[float],
                      codes: Counter[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    await _reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await _reply(reader)
    while True:
        try:
            job = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        data: bytes = job["bytes"]
        started = time.perf_counter()
        writer.write(f"MAIL FROM:<{job['from']}>\r\n".encode())
        code = await _reply(reader)
        if code == 250:
            writer.write(f"RCPT TO:<{job['to']}>\r\n".encode())
            code = await _reply(reader)
        if code == 250:
            writer.write(b"DATA\r\n")
            code = await _reply(reader)
            if code == 354:
                writer.write(data + b".\r\n")
                code = await _reply(reader)
        else:
            writer.write(b"RSET\r\n")
            await _reply(reader)
        latencies.append(time.perf_counter() - started)
        codes[code] += 1
    writer.write(b"QUIT\r\n")
    try:
        await _reply(reader)
    except ConnectionError:
        pass
    writer.close()


def _wire(data: str) -> bytes:
    lines = data.replace("\r\n", "\n").split("\n")
    stuffed = ["." + line if line.startswith(".") else line for line in lines]
    text = "\r\n".join(stuffed)
    if not text.endswith("\r\n"):
        text += "\r\n"
    return text.encode("utf-8")


async def run(host: str, port: int, jobs: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait({**job, "bytes": _wire(job["data"])})
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    started = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, queue, latencies, codes) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "count": len(latencies),
        "elapsed": elapsed,
        "rate": len(latencies) / elapsed if elapsed else 0.0,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "codes": {str(k): v for k, v in codes.items()},
    }


def main(argv: list[str]) -> None:
    host, port, jobs_file, connections = argv[0], int(argv[1]), argv[2], int(argv[3])
    with open(jobs_file, encoding="utf-8") as handle:
        jobs = json.load(handle)
    print(json.dumps(asyncio.run(run(host, port, jobs, connections))))


if __name__ == "__main__":
    main(sys.argv[1:])
