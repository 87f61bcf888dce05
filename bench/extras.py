"""Issue 11's extra figures, run by bench/run.py after the throughput runs (knob EXTRAS).

- latency: p50/p99 per-message latency (connect to the 250 after DATA) at a fixed rate of half the
  relay's measured maximum (1 KB, the largest RELAY_WORKERS, SQLite), through the relay into an
  smtp-sink, beside the same load straight into an smtp-sink; the difference is what the relay adds.
- idle: summed RSS of the relay's processes with 1,000 concurrent idle sessions (banner + EHLO only).
- big: peak RSS (VmHWM) of the one worker relaying one 25 MB message.

Our own asyncio client drives these (smtp-source cannot pace by rate nor time single messages), on
uvloop like the relay; it is a Python process on the same 2 cores, so its own cost is in the direct
figure too, and it starts each client when its turn comes (`_paced`).

Alone: `.venv/bin/python bench/extras.py big` (or `idle`; `latency` needs bench/run.py's throughput
runs for its rate) provisions a throwaway SQLite store as bench/run.py does and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from relay.service import eventloop

SENDER, RCPT = "a@example.test", "b@example.com"
IDLE_SESSIONS = 1000
BIG_BYTES = 25 * 1024 * 1024


def _message(size: int, n: int = 0) -> bytes:
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: bench {n}\r\nMessage-ID: <bench{n}.{time.time_ns()}"
            f"@example.test>\r\nDate: Thu, 27 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class Sink:
    """`smtp-sink` on a port, in its own session; stopped by its pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-m", "2048", f"127.0.0.1:{port}", "2048"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("smtp-sink did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return line


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    line = await _reply(reader)
    if not line.startswith(code):
        raise ConnectionError(line.decode(errors="replace").strip())


async def _one(port: int, data: bytes) -> float:
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _expect(reader, b"220")
        writer.write(b"EHLO client.example.test\r\n")
        await _expect(reader, b"250")
        writer.write(f"MAIL FROM:<{SENDER}>\r\n".encode())
        await _expect(reader, b"250")
        writer.write(f"RCPT TO:<{RCPT}>\r\n".encode())
        await _expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await _expect(reader, b"354")
        writer.write(data + b".\r\n")
        await _expect(reader, b"250")
        elapsed = time.perf_counter() - began
        writer.write(b"QUIT\r\n")
        return elapsed
    finally:
        writer.close()


async def _paced(port: int, rate: float, count: int, size: int, timeout: float) -> tuple[list[float], int]:
    """`count` messages at `rate` per second, each on its own connection, started on schedule.

    Each client task is made when its turn comes: making them all up front (sleeping until their
    turn) cost this driver enough at the start that the first few dozen messages were late because
    of the driver, not of what it measures.
    """
    data = _message(size)
    start = time.perf_counter()
    sessions = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sessions.append(asyncio.ensure_future(asyncio.wait_for(_one(port, data), timeout)))
    results = await asyncio.gather(*sessions, return_exceptions=True)
    ok = [r for r in results if isinstance(r, float)]
    return ok, count - len(ok)


def _client_run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run our load client on uvloop, as the relay runs: on 2 cores it competes for the CPU with what it
    measures, and on asyncio's own loop it took enough to add ~2 ms to the relay's p99 (and little
    to smtp-sink's: the direct figure hides it)."""
    return eventloop.run(main, "uvloop")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields after the comm: state ppid pgrp ...
            pids.append(int(entry))
    return pids


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def latency(env: dict[str, str], home: Path, records: list[dict[str, Any]], running_relay: Callable[..., Any],
            free_port: Callable[[], int], *, workers: int, timeout: float) -> list[str]:
    label = f"relay-w{workers}-l1024-"
    rates = [r["e2e_msgs_per_s"] for r in records if r["label"].startswith(label) and r.get("e2e_msgs_per_s")]
    if not rates:
        return ["- latency: skipped (no 1 KB SQLite run of the relay with RELAY_WORKERS="
                f"{workers} to take the maximum rate from; SIZES must include 1024)"]
    rate = statistics.median(rates) / 2
    # ~6 s per side: the p99 is then the 30th-slowest of 3,000, not the 5th of 500 (one stray stall was the figure)
    count = int(min(3000, max(50, rate * 6)))
    sink = Sink(free_port())
    try:
        direct, direct_bad = _client_run(_paced(sink.port, rate, count, 1024, timeout))
    finally:
        sink.close()
    sink = Sink(free_port())
    try:
        with running_relay(env, workers=workers, sink_port=sink.port, log=home / "relay.log") as port:
            _client_run(_paced(port, rate, 50, 1024, timeout))  # warm-up
            ours, ours_bad = _client_run(_paced(port, rate, count, 1024, timeout))
    finally:
        sink.close()
    if not ours or not direct:
        return [f"- latency: failed (direct {len(direct)} ok, relay {len(ours)} ok of {count})"]
    ms = 1000.0
    p50, p99 = _pct(ours, 0.5) * ms, _pct(ours, 0.99) * ms
    d50, d99 = _pct(direct, 0.5) * ms, _pct(direct, 0.99) * ms
    return [f"- latency at half the max rate ({rate:.0f} msgs/s = median {statistics.median(rates):.0f} / 2, "
            f"RELAY_WORKERS={workers}, 1 KB, {count} messages, one connection each): relay p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms; smtp-sink directly p50 {d50:.1f} ms, p99 {d99:.1f} ms; added p50 "
            f"{p50 - d50:.1f} ms, p99 {p99 - d99:.1f} ms"
            + (f" ({ours_bad} relay / {direct_bad} direct failed)" if ours_bad or direct_bad else "")]


async def _idle(port: int, count: int, hold: Callable[[], Any]) -> tuple[int, Any]:
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(100)

    async def session() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            await asyncio.wait_for(_expect(reader, b"220"), 30)
            writer.write(b"EHLO client.example.test\r\n")
            await asyncio.wait_for(_expect(reader, b"250"), 30)

    results = await asyncio.gather(*(session() for _ in range(count)), return_exceptions=True)
    ok = sum(1 for r in results if r is None)
    await asyncio.sleep(1.0)  # let the relay settle
    measured = hold()
    for writer in writers:
        writer.close()
    return ok, measured


def idle(env: dict[str, str], home: Path, running_relay: Callable[..., Any], free_port: Callable[[], int],
         *, workers: int) -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * IDLE_SESSIONS + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    extra = {"RELAY_MAX_CONNECTIONS": str(2 * IDLE_SESSIONS), "RELAY_MAX_CONNECTIONS_PER_IP": str(2 * IDLE_SESSIONS),
             "RELAY_SESSION_TIMEOUT": "600"}
    pids: list[int] = []
    sink = Sink(free_port())
    try:
        with running_relay(env, workers=workers, sink_port=sink.port, log=home / "relay.log", extra=extra,
                           pids=pids) as port:
            time.sleep(1.0)
            group = _group(pids[0])
            before = sum(_status_kb(pid, "VmRSS") for pid in group)

            def measure() -> tuple[int, int]:
                procs = _group(pids[0])
                return sum(_status_kb(pid, "VmRSS") for pid in procs), len(procs)

            ok, (after, nprocs) = _client_run(_idle(port, IDLE_SESSIONS, measure))
    finally:
        sink.close()
    return [f"- RSS with {ok}/{IDLE_SESSIONS} concurrent idle sessions (banner + EHLO), RELAY_WORKERS={workers}: "
            f"{_mb(after)} summed over {nprocs} relay processes (idle before: {_mb(before)}; "
            f"{(after - before) / max(ok, 1):.1f} KB per session)"]


def big(env: dict[str, str], home: Path, running_relay: Callable[..., Any], free_port: Callable[[], int],
        *, timeout: float) -> list[str]:
    pids: list[int] = []
    sink = Sink(free_port())
    data = _message(BIG_BYTES)
    try:
        with running_relay(env, workers=1, sink_port=sink.port, log=home / "relay.log", pids=pids) as port:
            time.sleep(1.0)
            group = _group(pids[0])
            before = {pid: _status_kb(pid, "VmHWM") for pid in group}
            began = time.monotonic()
            with smtplib.SMTP("127.0.0.1", port, "client.example.test", timeout=timeout) as client:
                refused = client.sendmail(SENDER, [RCPT], data)
            took = time.monotonic() - began
            after = {pid: _status_kb(pid, "VmHWM") for pid in _group(pids[0])}
    except (smtplib.SMTPException, OSError) as exc:
        return [f"- peak RSS for one 25 MB message: failed ({exc})"]
    finally:
        sink.close()
    # The worker is the process whose peak grew the most (with RELAY_WORKERS=1 a supervisor may sit above it).
    worker = max(after, key=lambda pid: after[pid] - before.get(pid, 0))
    return [f"- peak RSS (VmHWM) of the relay worker for one {len(data) / 2**20:.0f} MB message "
            f"(RELAY_WORKERS=1, {took:.1f} s{', refused ' + str(refused) if refused else ''}): "
            f"{_mb(before.get(worker, 0))} before, {_mb(after[worker])} after "
            f"(+{_mb(after[worker] - before.get(worker, 0))}; {len(after)} relay processes)"]


def run(which: tuple[str, ...], env: dict[str, str], home: Path, records: list[dict[str, Any]],
        running_relay: Callable[..., Any], free_port: Callable[[], int], *, workers: int,
        timeout: float) -> list[str]:
    lines = ["extra figures (issue 11), SQLite store:"]
    steps = {
        "latency": lambda: latency(env, home, records, running_relay, free_port, workers=workers, timeout=timeout),
        "idle": lambda: idle(env, home, running_relay, free_port, workers=workers),
        "big": lambda: big(env, home, running_relay, free_port, timeout=timeout),
    }
    for name in ("latency", "idle", "big"):
        if name not in which:
            continue
        print(f"bench: extra figure: {name}", flush=True)
        try:
            got = steps[name]()
        except Exception as exc:  # one figure failing must not lose the table
            got = [f"- {name}: failed ({type(exc).__name__}: {exc})"]
        print("bench: " + " ".join(got), flush=True)
        lines += got
    return lines




def main(argv: list[str] | None = None) -> int:
    """Run some extras without the throughput table (bench/run.py's provisioning and relay runner)."""
    parser = argparse.ArgumentParser(description="Issue 11's extra figures on their own (SQLite store).")
    parser.add_argument("extras", nargs="+", metavar="EXTRA", choices=("latency", "idle", "big"),
                        help="latency, idle and/or big")
    parser.add_argument("--workers", type=int, default=2, help="RELAY_WORKERS for latency and idle (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds (default 300)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as bench_run  # bench/run.py: provision, running_relay, free_port

    with tempfile.TemporaryDirectory(prefix="relay-extras-") as tmp:
        home = Path(tmp)
        try:
            env = bench_run.provision(home)
        except bench_run.BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        lines = run(tuple(args.extras), env, home, [], bench_run.running_relay, bench_run.free_port,
                    workers=args.workers, timeout=args.timeout)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
