"""An HTTP/1.1 load generator that sends each request of a list exactly once.

wrk repeats requests for a fixed duration; an accept must be sent once per
invitation, so this sends a finite list over N keep-alive connections, on raw
asyncio streams. It outruns Cabinet's accepts, not the bare POST ceiling (about
half of wrk's rate against it): the ceilings are measured with wrk.

    python -m bench.httpload BASE_URL REQUESTS.txt CONNECTIONS [TIMES.tsv]

REQUESTS.txt has the lines ``bench/requests.lua`` reads. Prints one JSON line:
count, elapsed, rate, p50, p99 (seconds) and the status codes seen. TIMES.tsv,
if given, gets a line per request: its connection, its number on that
connection, when it was sent and when its answer was read (``time.monotonic``,
the clock a server on the same machine can log on too), and its status: where
in a round the slow ones fall.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

from bench.stats import percentile


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


# One request's connection, its number on it, when it was sent and answered (monotonic seconds), its status.
Timing = tuple[int, int, float, float, int]


async def _connection(host: str, port: int, origin: str, queue: asyncio.Queue[tuple[str, str, str, str]],
                      latencies: list[float], codes: Counter[int], timings: list[Timing], number: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sent = 0
    while True:
        try:
            method, path, body, cookie = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        payload = body.encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive",
                f"Content-Length: {len(payload)}"]
        if cookie:
            head.append(f"Cookie: {cookie}")
        if method == "POST":
            head += ["Content-Type: application/x-www-form-urlencoded", f"Origin: {origin}", "Sec-Fetch-Site: same-origin"]
        started = time.monotonic()
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status = await _read_response(reader)
        answered = time.monotonic()
        codes[status] += 1
        latencies.append(answered - started)
        timings.append((number, sent, started, answered, status))
        sent += 1
    writer.close()


async def run(base_url: str, lines: list[tuple[str, str, str, str]], connections: int,
              timings: list[Timing] | None = None) -> dict[str, object]:
    url = urlsplit(base_url)
    queue: asyncio.Queue[tuple[str, str, str, str]] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    timings = [] if timings is None else timings
    started = time.monotonic()
    await asyncio.gather(*(_connection(url.hostname or "127.0.0.1", url.port or 80, base_url, queue, latencies, codes,
                                       timings, n) for n in range(connections)))
    elapsed = time.monotonic() - started
    return {"count": len(latencies), "elapsed": elapsed, "rate": len(latencies) / elapsed,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "codes": {str(k): v for k, v in codes.items()}}


def main(argv: list[str]) -> None:
    base_url, requests_file, connections = argv[0], argv[1], int(argv[2])
    lines = []
    with open(requests_file, encoding="utf-8") as handle:
        for raw in handle:
            method, path, body, cookie = raw.rstrip("\n").split("\t", 3)
            lines.append((method, path, body, cookie))
    timings: list[Timing] = []
    print(json.dumps(asyncio.run(run(base_url, lines, connections, timings))))
    if len(argv) > 3:
        with open(argv[3], "w", encoding="utf-8") as handle:
            handle.writelines("\t".join(map(str, timing)) + "\n" for timing in timings)


if __name__ == "__main__":
    main(sys.argv[1:])
