"""A link GET's time outside its instructions: user and system CPU, syscalls by kind, context switches and
page faults per request, for Cabinet, the GET floor and the ceiling under the same load.

Each server runs pinned to the server core as in ``bench/run.py`` and is loaded by wrk (one thread, 32
connections, the 1,000 links in turn, pinned to the other core) for ``--seconds`` after a warm-up round
of the same length. During the counted round, ``/proc`` gives each thread's user and system CPU and
``perf stat`` counts every ``syscalls:sys_enter_*`` tracepoint and the kernel's software events
(context switches, page faults): counters in the kernel, which do not slow the server the way strace
does, so the syscalls per request are those of the load as run (how many requests an ``epoll_wait``
returns depends on the load; a read's locks, a response's sends and a page's allocations do not).
Hardware counters (cycles, cache misses) are not available on this machine (``perf stat -e
instructions true``: not supported), so only the kernel's side is split out here; the user-space
instructions are ``bench/callgrind_get.py``'s.

    .venv/bin/python -m bench.syscalls_get WORKDIR [--seconds 5] [--servers cabinet,floor,ceiling] [--sampled]

WORKDIR is ``bench/callgrind_get.py``'s (its seeded instance, the floor's folder and the page size),
seeded on the first call (minutes). Cabinet runs with the outbox worker's and scheduler's clock-driven
polls put off (``callgrind_get.QUIET``), as for the instruction counts, and logs at the instance's
WARNING unless ``--log-level INFO`` (the default configuration's level: an access line per request).

Prints, per server: requests; user and system CPU per request (ms), for the main thread (the event
loop's) and the others; context switches, page faults and syscalls per request, by kind (those with at
least 0.01), less what a round of the same length with no load counted (the clock's wake-ups). /proc's
split of user and system time is the scheduler tick's; ``--sampled`` adds a round under ``perf record -e
cpu-clock`` that splits the CPU by library and kernel function, by timer samples.

To see which file or socket a syscall is on, attach strace to the running server for a short while
(``strace -f -tt -e trace=fcntl,pread64,fstat,... -o FILE -p PID``): it slows the server by ten, so its
counts per request are the load-independent ones only.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import callgrind_get
from bench.instance import BIN, SERVER_CPU, free_port, pinned, wait_until
from bench.run import wrk, write_requests

TICK = os.sysconf("SC_CLK_TCK")
SAMPLES = 4000  # per second of CPU, for --sampled


@dataclass
class Counted:
    """One server's counted round."""

    name: str
    requests: int = 0
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # thread name: user, system seconds
    events: dict[str, int] = field(default_factory=dict)  # perf's event name: count

    def per_request(self, count: float) -> float:
        """``count`` divided by the round's requests."""
        return count / self.requests if self.requests else 0.0


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of ``pid``'s main thread (the event loop's) and of its other threads
    together (Python's threads all bear the process's name)."""
    found: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        user, system = int(fields[11]) / TICK, int(fields[12]) / TICK
        name = "main" if task.name == str(pid) else "others"
        before = found.get(name, (0.0, 0.0))
        found[name] = (before[0] + user, before[1] + system)
    return found


def syscall_events() -> list[str]:
    """Every syscall entry tracepoint this kernel has."""
    listed = subprocess.run(["perf", "list", "tracepoint"], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"syscalls:sys_enter_\w+", listed)))


def counted_round(name: str, pid: int, url: str, requests: Path, seconds: float, events: list[str]) -> Counted:
    """A wrk round against ``url`` with ``pid``'s CPU and kernel events counted."""
    out = Path(f"/tmp/syscalls_get-{pid}.csv")
    perf = subprocess.Popen(
        ["perf", "stat", "-x", ";", "-o", str(out), "-p", str(pid),
         "-e", ",".join(["raw_syscalls:sys_enter", "context-switches", "page-faults", "cpu-migrations", *events])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # perf opens thousands of counters before it counts
    before = thread_cpu(pid)
    sample = wrk(url, requests, 32, seconds)
    after = thread_cpu(pid)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=60)
    result = Counted(name, sample.count)
    for thread, (user, system) in after.items():
        was = before.get(thread, (0.0, 0.0))
        result.cpu[thread] = (user - was[0], system - was[1])
    for line in out.read_text().splitlines():
        parts = line.split(";")
        if len(parts) > 2 and parts[0].strip().isdigit():
            result.events[parts[2]] = int(parts[0])
    out.unlink()
    return result


def show(result: Counted, idle: dict[str, int]) -> None:
    """``result`` per request; ``idle``: the same events counted over the round's length with no load,
    subtracted (a server's timers and threads that wake by the clock)."""
    user = sum(u for u, _ in result.cpu.values())
    system = sum(s for _, s in result.cpu.values())
    print(f"{result.name}: {result.requests} requests; CPU per request: user {result.per_request(user) * 1000:.4f} ms, "
          f"system {result.per_request(system) * 1000:.4f} ms (system {system / (user + system or 1):.0%})")
    for thread, (u, s) in sorted(result.cpu.items(), key=lambda item: -sum(item[1])):
        if u + s > 0:
            print(f"  thread {thread}: user {result.per_request(u) * 1000:.4f} ms, system {result.per_request(s) * 1000:.4f} ms")
    for event in ("raw_syscalls:sys_enter", "context-switches", "page-faults", "cpu-migrations"):
        count = result.events.get(event, 0) - idle.get(event, 0)
        print(f"  {event.replace('raw_syscalls:sys_enter', 'syscalls, all'):24} {result.per_request(count):8.3f} per request")
    kinds = sorted(((result.per_request(count - idle.get(event, 0)), event.removeprefix("syscalls:sys_enter_"))
                    for event, count in result.events.items() if event.startswith("syscalls:")), reverse=True)
    for per, kind in kinds:
        if per >= 0.01:
            print(f"    {kind:24} {per:8.3f}")


def idle_round(pid: int, seconds: float, events: list[str]) -> dict[str, int]:
    """The events ``pid`` raises with no load, over ``seconds``."""
    out = Path(f"/tmp/syscalls_get-idle-{pid}.csv")
    subprocess.run(["perf", "stat", "-x", ";", "-o", str(out), "-p", str(pid),
                    "-e", ",".join(["raw_syscalls:sys_enter", "context-switches", "page-faults", "cpu-migrations",
                                    *events]),
                    "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    found = {}
    for line in out.read_text().splitlines():
        parts = line.split(";")
        if len(parts) > 2 and parts[0].strip().isdigit():
            found[parts[2]] = int(parts[0])
    out.unlink()
    return found


def sampled_round(pid: int, url: str, requests: Path, seconds: float) -> None:
    """A wrk round under ``perf record -e cpu-clock`` (timer samples, the only ones this machine has): the
    server's CPU per request split into the kernel's and each library's, and the kernel's functions."""
    out = Path(f"/tmp/syscalls_get-{pid}.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(SAMPLES), "-p", str(pid),
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    sample = wrk(url, requests, 32, seconds)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=60)
    per = 1000 / SAMPLES / max(sample.count, 1)  # ms of CPU per sample, per request
    for sort, pattern in (("dso", None), ("sym", "[k]")):
        report = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "-n", "--sort", sort],
                                capture_output=True, text=True, check=True).stdout
        rows = [line.split(None, 2) for line in report.splitlines() if line.strip() and not line.startswith("#")]
        shown = [row for row in rows if len(row) == 3 and (pattern is None or row[2].startswith(pattern))][:12]
        print(f"  sampled, by {'library' if sort == 'dso' else 'kernel function'} ({sample.count} requests):")
        for share, samples, name in shown:
            print(f"    {name.strip()[:44]:44} {int(samples) * per:.4f} ms per request ({share})")
    out.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--servers", default="cabinet,floor,ceiling")
    parser.add_argument("--sampled", action="store_true", help="one more round, under perf record")
    parser.add_argument("--log-level", default="", help="Cabinet's log level (the instance's is WARNING; INFO "
                                                         "writes the access log's line per request, to a file)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    config, cabinet_port, paths = callgrind_get.instance(args.work)
    size = (args.work / "page_size").read_text()
    events = syscall_events()
    for name in args.servers.split(","):
        if name == "cabinet":
            port, links = cabinet_port, paths
            command = [str(BIN / "cabinet"), "--config", str(config), "serve"]
        elif name == "floor":
            port, links = free_port(), callgrind_get.floor_paths(args.work / "floor", len(paths), size)
            command = [sys.executable, "-m", "bench.floors", "get", str(port), str(args.work / "floor"), size]
        elif name == "ceiling":
            port, links = free_port(), paths
            command = [sys.executable, "-m", "bench.ceilings", "static", str(port), size]
        else:
            raise SystemExit(f"no server {name!r}: cabinet, floor or ceiling")
        requests = write_requests(args.work / f"syscalls-{name}.txt", [("GET", p, "", "") for p in links])
        log = (args.work / f"syscalls-{name}.log").open("ab")
        server = subprocess.Popen(pinned(SERVER_CPU, command), stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **callgrind_get.QUIET,
                                       **({"CABINET_GENERAL_LOG_LEVEL": args.log_level} if args.log_level else {})})
        log.close()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(callgrind_get.answers(url + links[0]), 120, f"{name} answering")
            wrk(url, requests, 32, args.seconds)  # warm-up: every page kept, every token checked
            idle = idle_round(server.pid, args.seconds, events)
            show(counted_round(name, server.pid, url, requests, args.seconds, events), idle)
            if args.sampled:
                sampled_round(server.pid, url, requests, args.seconds)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
