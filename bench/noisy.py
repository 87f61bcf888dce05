"""Noisy neighbour: one tenant's per-message latency alone, under another tenant's flood, among slow clients,
and beside another tenant's burst of simultaneous messages from a new address.

RELIABILITY.md's last attack class ("one noisy tenant: other tenants' latency stays flat"), measured on
loopback through `.venv/bin/relay` for each RELAY_WORKERS value, into one `smtp-sink -c` upstream:
(a) `quiet` alone: sequential messages, one per connection, timed from connect to the 250 after the dot;
(b) the same while `noisy` floods with `smtp-source -s 40 -l 51200` (its own process);
(c) the same while 200 slow sessions trickle DATA, one line a second;
(d) the same while 80 sessions of `noisy`, from an address the relay has not seen, end DATA at once.
smtp-source cannot bind a source address, so the noisy tenant's client is the network 127.0.0.1/32 (where
its connections come from); `quiet` binds 127.0.0.3, the slow sessions 127.0.1.1-4, the burst 127.0.2.N.
Every phase is bounded in time and count; everything started is stopped. Knobs (environment):
QUIET_MESSAGES QUIET_SIZE FLOOD_SESSIONS FLOOD_SIZE SLOW_SESSIONS SLOW_SECONDS BURST_SESSIONS PHASE_LIMIT
WORKERS SHARED_BENCH RESULTS.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `run` beside this file, from anywhere

from run import (  # noqa: E402
    REPO,
    BenchError,
    Knobs,
    _cpu_model,
    _ints,
    _revision,
    admin,
    check_tools,
    free_port,
    relay_env,
    running_relay,
)

from relay.core.models import TenantStatus  # noqa: E402  (run put the repo on sys.path)
from relay.core.store import SqliteStore, utcnow  # noqa: E402

HOST = "127.0.0.1"  # the relay and the sink listen here
NOISY_NET, QUIET_IP = "127.0.0.1/32", "127.0.0.3"
SLOW_IPS = ("127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4")  # under the relay's 100 per IP per process
STEP_TIMEOUT = 30.0  # one SMTP reply; a bench client never waits longer
STOP_TIMEOUT = 10.0
FLOOD_RAMP = 100  # upstream messages counted before the flood is judged in full swing


@dataclass(frozen=True)
class Noisy:
    quiet_messages: int
    quiet_size: int
    flood_sessions: int
    flood_size: int
    slow_sessions: int
    slow_seconds: float
    burst_sessions: int
    phase_limit: float
    workers: tuple[int, ...]
    shared: Path
    results: Path


def _int(name: str, default: int, low: int, high: int) -> int:
    text = os.environ.get(name, str(default))
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise BenchError(f"{name}: {text!r}: expected a whole number from {low} to {high}")
    return int(text)


def read_noisy() -> Noisy:
    shared = Path(os.environ.get("SHARED_BENCH", "../shared/bench"))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    return Noisy(
        quiet_messages=_int("QUIET_MESSAGES", 300, 1, 100_000),
        quiet_size=_int("QUIET_SIZE", 5120, 200, 10_000_000),
        flood_sessions=_int("FLOOD_SESSIONS", 40, 1, 100),
        flood_size=_int("FLOOD_SIZE", 51200, 1, 10_000_000),
        slow_sessions=_int("SLOW_SESSIONS", 200, 0, 4 * 100),
        slow_seconds=float(_int("SLOW_SECONDS", 30, 2, 600)),
        burst_sessions=_int("BURST_SESSIONS", 80, 0, 100),
        phase_limit=float(_int("PHASE_LIMIT", 60, 1, 600)),
        workers=_ints("WORKERS", "1 2", 1, 64),
        shared=shared if shared.is_absolute() else (REPO / shared).resolve(),
        results=Path(os.environ.get("RESULTS", REPO / "bench" / "results" / f"{stamp}-noisy.jsonl")),
    )


# ---------------------------------------------------------------- environment


def provision(home: Path) -> dict[str, str]:
    """Two verified tenants, each with a client known by its source network (no AUTH, as smtp-source)."""
    env = relay_env(home)
    admin(env, "user", "add", "bench", "--role", "owner")
    for name in ("noisy", "quiet"):
        admin(env, "tenant", "set", name, "--name", f"{name.title()} Accounting",
              "--email", f"billing@{name}.test", "--domain", f"{name}.test")
    admin(env, "client", "add", "noisy-flood", "--tenant", "noisy", "--network", NOISY_NET)
    admin(env, "client", "add", "noisy-more", "--tenant", "noisy", "--network", "127.0.1.0/24", "127.0.2.0/24")
    admin(env, "client", "add", "quiet-app", "--tenant", "quiet", "--network", f"{QUIET_IP}/32")
    store = SqliteStore(home / "relay.db")  # no DNS here: mark them verified as `validate` would
    try:
        now = utcnow()
        for tenant_id in ("noisy", "quiet"):
            tenant = store.get_tenant(tenant_id)
            if tenant is None:
                raise BenchError(f"tenant {tenant_id} missing after tenant set")
            store.save_tenant(replace(tenant, status=TenantStatus.VERIFIED, verified_at=now,
                                      last_validated_at=now, updated_at=now))
    finally:
        store.close()
    return env


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


class Sink:
    """`smtp-sink -c` on a free port; `count()` is its running message counter (`mesg=N`)."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self._out = home / f"sink-{self.port}.out"

    def count(self) -> int:
        try:
            with open(self._out, "rb") as file:
                file.seek(max(0, self._out.stat().st_size - 200))
                found = re.findall(rb"mesg=(\d+)", file.read())
        except OSError:
            return 0
        return int(found[-1]) if found else 0

    @contextmanager
    def running(self) -> Iterator["Sink"]:
        with open(self._out, "wb") as out:
            # smtp-sink insists on dropping privileges (-u) when started as root, and can only then.
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            proc = subprocess.Popen(["smtp-sink", "-c", *user, "-m", "1024", f"{HOST}:{self.port}", "1024"],
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _listening(self.port), what="smtp-sink listening", proc=proc)
            yield self
        finally:
            stop_process(proc)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], bool], *, what: str, proc: subprocess.Popen[bytes] | None = None, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited (code {proc.returncode})")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {limit:.0f} s")
        time.sleep(0.02)


@contextmanager
def flood(knobs: Noisy, port: int, messages: int) -> Iterator[None]:
    """smtp-source from 127.0.0.1 (the noisy client's network); its count bounds it even if orphaned."""
    cmd = ["smtp-source", "-s", str(knobs.flood_sessions), "-m", str(messages), "-l", str(knobs.flood_size),
           "-f", "app@noisy.test", "-t", "customer@dest.test", "-S", "flood", "-M", "noisy.bench.test",
           f"{HOST}:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- SMTP clients (asyncio, raw sockets)


class Refused(Exception):
    """An SMTP reply other than the one expected: `stage` and `code` say which."""

    def __init__(self, stage: str, code: int) -> None:
        super().__init__(f"{stage}: {code}")
        self.stage, self.code = stage, code


async def reply_code(reader: asyncio.StreamReader) -> int:
    while True:
        line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
        if len(line) < 4:
            raise ConnectionError("the relay closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def dialogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: str) -> None:
    """Greeting, EHLO, MAIL, RCPT, DATA: up to the 354."""
    code = await reply_code(reader)
    if code != 220:
        raise Refused("greeting", code)
    for stage, command, expected in (("EHLO", b"EHLO client.bench.test", 250),
                                     ("MAIL", f"MAIL FROM:<{sender}>".encode(), 250),
                                     ("RCPT", b"RCPT TO:<customer@dest.test>", 250), ("DATA", b"DATA", 354)):
        writer.write(command + b"\r\n")
        code = await reply_code(reader)
        if code != expected:
            raise Refused(stage, code)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), STOP_TIMEOUT)
    except (OSError, TimeoutError):
        pass


def message(size: int, subject: str) -> bytes:
    """A CRLF message of about `size` bytes, 76-character body lines, no line starting with a dot."""
    head = (f"From: app@platform.bench.test\r\nTo: customer@dest.test\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def quiet_message(port: int, body: bytes) -> float:
    """One message on its own connection; seconds from connect to the 250 after the dot."""
    started = time.perf_counter()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, local_addr=(QUIET_IP, 0)), STEP_TIMEOUT)
    try:
        await dialogue(reader, writer, "app@quiet.test")
        writer.write(body + b".\r\n")
        code = await reply_code(reader)
        elapsed = time.perf_counter() - started
        if code != 250:
            raise Refused("end of DATA", code)
        writer.write(b"QUIT\r\n")
        await reply_code(reader)
        return elapsed
    finally:
        await close(writer)


@dataclass
class Series:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def quiet_series(port: int, knobs: Noisy, *, limit: float) -> Series:
    """Sequential quiet messages until QUIET_MESSAGES or `limit` seconds, whichever comes first."""
    body, series = message(knobs.quiet_size, "quiet"), Series()
    started = time.monotonic()
    for _ in range(knobs.quiet_messages):
        if time.monotonic() - started > limit:
            break
        try:
            series.latencies.append(await quiet_message(port, body))
        except (Refused, OSError, TimeoutError) as exc:
            key = str(exc) if isinstance(exc, Refused) else type(exc).__name__
            series.failures[key] = series.failures.get(key, 0) + 1
    series.seconds = time.monotonic() - started
    return series


async def slow_session(port: int, source: str, ready: asyncio.Future[bool], stop: asyncio.Event,
                       seconds: float) -> str:
    """Reach DATA, then one line a second until `stop` or `seconds`; then the dot. Returns the outcome."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, local_addr=(source, 0)), STEP_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        ready.set_result(False)
        return f"connect {type(exc).__name__}"
    try:
        await dialogue(reader, writer, "app@noisy.test")
        ready.set_result(True)
        writer.write(b"From: app@noisy.test\r\nTo: customer@dest.test\r\nSubject: slow\r\n\r\n")
        deadline, line = time.monotonic() + seconds, 0
        while time.monotonic() < deadline and not stop.is_set():
            line += 1
            writer.write(f"slow line {line}\r\n".encode())
            await writer.drain()
            try:
                await asyncio.wait_for(stop.wait(), min(1.0, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                pass
        writer.write(b".\r\n")
        code = await reply_code(reader)
        return "delivered" if code == 250 else f"end of DATA: {code}"
    except Refused as exc:
        return str(exc)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        if not ready.done():
            ready.set_result(False)
        await close(writer)


async def among_slow(port: int, knobs: Noisy) -> tuple[Series, dict[str, int]]:
    """SLOW_SESSIONS trickling DATA while the quiet series runs; they finish when it does."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    readies: list[asyncio.Future[bool]] = [loop.create_future() for _ in range(knobs.slow_sessions)]
    tasks = [asyncio.create_task(slow_session(port, SLOW_IPS[i % len(SLOW_IPS)], ready, stop, knobs.slow_seconds))
             for i, ready in enumerate(readies)]
    try:
        if readies:
            await asyncio.wait(readies, timeout=STEP_TIMEOUT)
        series = await quiet_series(port, knobs, limit=min(knobs.phase_limit, knobs.slow_seconds - 1))
        stop.set()
        outcomes: dict[str, int] = {}
        for outcome in await asyncio.wait_for(asyncio.gather(*tasks), STEP_TIMEOUT + knobs.slow_seconds):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return series, outcomes
    finally:
        for task in tasks:
            task.cancel()


async def burst_session(port: int, source: str, ready: asyncio.Future[bool], go: asyncio.Event) -> str:
    """Reach DATA, wait for `go`, then the whole message and the dot. Returns the outcome."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, local_addr=(source, 0)), STEP_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        ready.set_result(False)
        return f"connect {type(exc).__name__}"
    try:
        await dialogue(reader, writer, "app@noisy.test")
        ready.set_result(True)
        await asyncio.wait_for(go.wait(), STEP_TIMEOUT)
        writer.write(message(5120, "burst") + b".\r\n")
        code = await reply_code(reader)
        return "delivered" if code == 250 else f"end of DATA: {code}"
    except Refused as exc:
        return str(exc)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        if not ready.done():
            ready.set_result(False)
        await close(writer)


async def beside_burst(port: int, knobs: Noisy, source: str) -> tuple[Series, dict[str, int]]:
    """The quiet series, while BURST_SESSIONS from `source` (new to the relay) end DATA together."""
    go, loop = asyncio.Event(), asyncio.get_running_loop()
    quiet = asyncio.create_task(quiet_series(port, knobs, limit=knobs.phase_limit))
    readies: list[asyncio.Future[bool]] = [loop.create_future() for _ in range(knobs.burst_sessions)]
    tasks = [asyncio.create_task(burst_session(port, source, ready, go)) for ready in readies]
    try:
        await asyncio.wait(readies, timeout=STEP_TIMEOUT)
        go.set()
        started = time.monotonic()
        outcomes: dict[str, int] = {}
        for outcome in await asyncio.wait_for(asyncio.gather(*tasks), 2 * STEP_TIMEOUT):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        outcomes["ms_to_last_reply"] = round(1000 * (time.monotonic() - started))
        return await quiet, outcomes
    finally:
        for task in [quiet, *tasks]:
            task.cancel()


# ---------------------------------------------------------------- phases


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a latency some message really had)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def cpu_jiffies() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) over all CPUs, from /proc/stat."""
    with open("/proc/stat") as file:
        values = [int(item) for item in file.readline().split()[1:]]
    return sum(values[:8]), values[3] + values[4], values[7]


def log_outcomes(log: Path, offset: int) -> dict[str, dict[str, int]]:
    """{client: {outcome: count}} of the relay's transaction lines since `offset`."""
    counts: dict[str, dict[str, int]] = {}
    with open(log, "rb") as file:
        file.seek(offset)
        for found in re.finditer(rb" client=(\S+) .*? outcome=(\w+)", file.read()):
            per = counts.setdefault(found[1].decode(), {})
            per[found[2].decode()] = per.get(found[2].decode(), 0) + 1
    return counts


@dataclass
class Phase:
    """What one phase measured: the quiet series, what the relay logged and the sink counted meanwhile."""

    case: str
    series: Series
    relay: dict[str, dict[str, int]]
    upstream: int  # the sink's running counter at the end of the phase
    steal_pct: float
    busy_pct: float
    others: dict[str, int] = field(default_factory=dict)  # the slow or burst sessions' outcomes

    def record(self, workers: int) -> dict[str, Any]:
        lat = self.series.latencies
        stats = {f"p{p}_ms": round(1000 * percentile(lat, p), 2) for p in (50, 95, 99)} if lat else {}
        noisy = self.relay.get("noisy-flood", {}).get("delivered", 0)
        return {"workers": workers, "case": self.case, "quiet_messages": len(lat), **stats,
                "max_ms": round(1000 * max(lat), 2) if lat else None, "quiet_failures": self.series.failures,
                "seconds": round(self.series.seconds, 2),
                "noisy_msgs_per_s": round(noisy / self.series.seconds, 1) if noisy else 0.0,
                "relay_outcomes": self.relay, "upstream_count": self.upstream, "other_sessions": self.others,
                "cpu_steal_pct": self.steal_pct, "cpu_busy_pct": self.busy_pct}


def measured(case: str, log: Path, sink: Sink,
             run: Callable[[], Coroutine[Any, Any, Series | tuple[Series, dict[str, int]]]]) -> Phase:
    """Run `run()` (an awaitable factory giving a Series, or (Series, other sessions' outcomes)); frame it."""
    offset = log.stat().st_size
    total0, idle0, steal0 = cpu_jiffies()
    result = asyncio.run(run())
    total1, idle1, steal1 = cpu_jiffies()
    series, others = result if isinstance(result, tuple) else (result, {})
    span = max(1, total1 - total0)
    return Phase(case, series, log_outcomes(log, offset), sink.count(), round(100 * (steal1 - steal0) / span, 1),
                 round(100 * (1 - (idle1 - idle0) / span), 1), others)


def under_flood(knobs: Noisy, port: int, log: Path, sink: Sink) -> Phase:
    # More messages than the relay can take within a phase: smtp-source stays bounded if we die.
    with flood(knobs, port, messages=int(knobs.phase_limit) * 2000 + 10_000):
        base = sink.count()
        wait_for(lambda: sink.count() >= base + FLOOD_RAMP, what="the flood reaching upstream", limit=STEP_TIMEOUT)
        return measured("(b) under flood", log, sink, lambda: quiet_series(port, knobs, limit=knobs.phase_limit))


def one_relay(knobs: Noisy, env: dict[str, str], home: Path, workers: int,
              burst_ip: str) -> tuple[list[Phase], dict[str, Any]]:
    """A fresh sink and relay; warm-up, then (a) to (d) back to back; both stopped at the end.
    Also the totals: what the relay logged as delivered against what the upstream counted."""
    log = home / f"relay-w{workers}.log"
    log.touch()
    with Sink(home).running() as sink, running_relay(env, workers=workers, sink_port=sink.port, log=log) as port:
        warm = replace(knobs, quiet_messages=min(50, knobs.quiet_messages))
        asyncio.run(quiet_series(port, warm, limit=knobs.phase_limit))
        phases = [measured("(a) alone", log, sink, lambda: quiet_series(port, knobs, limit=knobs.phase_limit)),
                  under_flood(knobs, port, log, sink)]
        if knobs.slow_sessions:
            phases.append(measured(f"(c) among {knobs.slow_sessions} slow", log, sink,
                                   lambda: among_slow(port, knobs)))
        if knobs.burst_sessions:
            phases.append(measured(f"(d) beside a burst of {knobs.burst_sessions}", log, sink,
                                   lambda: beside_burst(port, knobs, burst_ip)))
        delivered = sum(per.get("delivered", 0) for per in log_outcomes(log, 0).values())
        # Messages still in flight when the flood stopped may land a moment later: wait, bounded.
        try:
            wait_for(lambda: sink.count() >= delivered, what="upstream count", limit=5)
        except BenchError:
            pass
        totals = {"workers": workers, "case": "totals", "relay_logged_delivered": delivered,
                  "upstream_count": sink.count()}
    problems = [line for line in log.read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line]
    if problems:
        print(f"noisy: the relay logged {len(problems)} errors; first: {problems[0]}", flush=True)
    return phases, dict(totals, relay_errors=len(problems))


# ---------------------------------------------------------------- table and main


def table(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| RELAY_WORKERS | quiet tenant | n | p50 ms | p95 ms | p99 ms | max ms | p99 / alone | "
             "noisy msgs/s | quiet failures | upstream count | CPU busy % | steal % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        alone = next((r for r in records if r["workers"] == record["workers"] and r["case"].startswith("(a)")), None)
        ratio = f"{record['p99_ms'] / alone['p99_ms']:.1f}x" if alone and record.get("p99_ms") else "-"
        cells = [str(record["workers"]), record["case"], str(record["quiet_messages"])]
        cells += [f"{record[k]:.1f}" if record.get(k) is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms",
                                                                                      "max_ms")]
        cells += [ratio, f"{record['noisy_msgs_per_s']:.0f}" if record["case"].startswith("(b)") else "-",
                  str(sum(record["quiet_failures"].values())), str(record["upstream_count"]),
                  f"{record['cpu_busy_pct']:.0f}", f"{record['cpu_steal_pct']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ensure_tools(knobs: Noisy) -> None:
    """run.py's check: the shared scripts, and smtp-source/smtp-sink (installed by them when missing)."""
    check_tools(Knobs(messages=1, sessions=1, sizes=(1,), repeats=1, workers=knobs.workers, peer_modes=(),
                      timeout=1.0, shared=knobs.shared, results=knobs.results))
    if shutil.which("smtp-source") is None or shutil.which("smtp-sink") is None:
        raise BenchError("smtp-source and smtp-sink are needed (Debian package postfix)")


def bench(knobs: Noisy, out: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Phase records (the table) and per-relay totals, each also written as a JSON line."""
    records: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relay-noisy-") as tmp:
        home = Path(tmp)
        env = provision(home)
        for index, workers in enumerate(knobs.workers):
            phases, total = one_relay(knobs, env, home, workers, burst_ip=f"127.0.2.{index + 1}")
            totals.append(total)
            out.write(json.dumps(total) + "\n")
            for phase in phases:
                record = phase.record(workers)
                records.append(record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(f"noisy: w{workers} {record['case']}: p99 {record.get('p99_ms')} ms over "
                      f"{record['quiet_messages']} messages; noisy {record['noisy_msgs_per_s']} msgs/s; "
                      f"others {record['other_sessions'] or '-'}; failures {record['quiet_failures'] or '-'}",
                      flush=True)
    return records, totals


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: stop what we started
    try:
        knobs = read_noisy()
        ensure_tools(knobs)
        knobs.results.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(knobs.results, "w") as out:
            meta = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "host_cpus": os.cpu_count(),
                    "cpu_model": _cpu_model(), "relay_revision": _revision(), **{
                        k: str(v) if isinstance(v, Path) else v for k, v in knobs.__dict__.items()}}
            out.write("# " + json.dumps(meta) + "\n")
            records, totals = bench(knobs, out)
    except BenchError as exc:
        print(f"noisy: {exc}", file=sys.stderr)
        return 2
    print(f"\nnoisy: {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s; raw lines in {knobs.results}\n")
    print("\n".join(table(records)))
    for total in totals:
        print(f"\nRELAY_WORKERS={total['workers']}: the relay logged {total['relay_logged_delivered']} delivered, "
              f"the upstream counted {total['upstream_count']}; {total['relay_errors']} relay error lines")
    return 1 if any(r["quiet_failures"] or not r["quiet_messages"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
