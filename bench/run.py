"""`make bench`: our relay beside Postfix + OpenDKIM under the same smtp-source load, as one table.

Every run is bounded in time and count, on loopback only, and stops what it starts. Per size and
round, the peer (Postfix with and without the OpenDKIM milter, through the shared `postfix_bench.sh`),
our relay with each RELAY_WORKERS value, and the load tools' own ceiling run back to back, so the
VM's drift hits all of them alike. Knobs (environment): MESSAGES SESSIONS SIZES REPEATS WORKERS,
POOL_SIZES (RELAY_UPSTREAM_POOL_SIZE values, one row each; empty: the relay's default),
PEER_MODES ("nomilter milter"), STORES ("sqlite postgresql": the relay's store, PostgreSQL on a
throwaway cluster), EXTRAS ("latency idle big": issue 11's figures after the table), TIMEOUT (per run, s), SHARED_BENCH (dir of the shared scripts,
default ../shared/bench from the repo root), RESULTS (the JSON lines file to write).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python bench/run.py` from anywhere finds relay/
sys.path.insert(0, str(REPO / "bench"))  # and bench/pgcluster.py, bench/extras.py

from relay.core.models import TenantStatus  # noqa: E402
from relay.core.store import SqliteStore, utcnow  # noqa: E402

TENANT, DOMAIN = "example", "example.test"  # smtp-source sends as a@example.test
LOAD_TOOLS = {"smtp-source", "smtp-sink", "python", "python3"}  # never counted as relay CPU
# Other jobs on this shared VM (other sessions' test suites run as `python`): counted, never as ours, and
# shown per run, since they take CPU from whatever is being measured. Our load driver is `python3` or idle.
OTHER_JOBS = "python"
PEER_COMMS = "opendkim,smtpd,cleanup,qmgr,smtp,trivial-rewrite,master,postlogd,proxymap,anvil"
# A forked worker keeps the comm of the console script that `.venv/bin/relay` execs (checked with ps).
OUR_COMMS = "relay"
START_TIMEOUT = 20.0  # the relay must answer 220 within this
STOP_TIMEOUT = 15.0  # SIGTERM, then SIGKILL


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Knobs:
    messages: int
    sessions: int
    sizes: tuple[int, ...]
    repeats: int
    workers: tuple[int, ...]
    peer_modes: tuple[str, ...]
    timeout: float
    shared: Path
    results: Path
    # With defaults, so that bench/noisy.py's Knobs(...) for check_tools needs none of them.
    stores: tuple[str, ...] = ("sqlite",)
    extras: tuple[str, ...] = ()
    pool_sizes: tuple[int | None, ...] = (None,)  # None: the relay's default RELAY_UPSTREAM_POOL_SIZE


def _ints(name: str, default: str, low: int, high: int) -> tuple[int, ...]:
    text = os.environ.get(name, default)
    try:
        values = tuple(int(item) for item in text.split())
    except ValueError:
        raise BenchError(f"{name}: {text!r} expected whole number(s)") from None
    if not values or not all(low <= value <= high for value in values):
        raise BenchError(f"{name}: {text!r}: each value must be from {low} to {high}")
    return values


def read_knobs() -> Knobs:
    shared = Path(os.environ.get("SHARED_BENCH", "../shared/bench"))
    shared = shared if shared.is_absolute() else (REPO / shared).resolve()
    modes = tuple(os.environ.get("PEER_MODES", "nomilter milter").split())
    if not set(modes) <= {"nomilter", "milter"}:
        raise BenchError(f"PEER_MODES: {' '.join(modes)!r}: use nomilter and/or milter")
    stores = tuple(os.environ.get("STORES", "sqlite postgresql").split())
    if not stores or not set(stores) <= {"sqlite", "postgresql"}:
        raise BenchError(f"STORES: {' '.join(stores)!r}: use sqlite and/or postgresql")
    extras = tuple(os.environ.get("EXTRAS", "latency idle big").split())
    if not set(extras) <= {"latency", "idle", "big"}:
        raise BenchError(f"EXTRAS: {' '.join(extras)!r}: use latency, idle and/or big (or empty)")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    results = Path(os.environ.get("RESULTS", REPO / "bench" / "results" / f"{stamp}.jsonl"))
    return Knobs(
        messages=_ints("MESSAGES", "2000", 1, 1_000_000)[0],
        sessions=_ints("SESSIONS", "20", 1, 1000)[0],
        sizes=_ints("SIZES", "1024 51200", 1, 10_000_000),
        repeats=_ints("REPEATS", "3", 1, 100)[0],
        workers=_ints("WORKERS", "1 2", 1, 64),
        pool_sizes=_ints("POOL_SIZES", os.environ["POOL_SIZES"], 0, 1000) if os.environ.get("POOL_SIZES") else (None,),
        peer_modes=modes,
        stores=stores,
        extras=extras,
        timeout=float(_ints("TIMEOUT", "300", 1, 3600)[0]),
        shared=shared,
        results=results,
    )


# Debian's packages: the peer (Postfix, the OpenDKIM milter and its key tool) and Postfix's load tools.
PEER_PACKAGES = ("postfix", "opendkim", "opendkim-tools")
PEER_TOOLS = ("smtp-source", "smtp-sink", "postfix", "opendkim", "opendkim-genkey")
MAIN_CF = Path("/etc/postfix/main.cf")
DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")  # what Debian's postinst starts main.cf from


def check_tools(knobs: Knobs) -> None:
    """The shared scripts must be there; the peer and Postfix's load tools are installed and set up if missing."""
    for name in ("loadrun.py", "postfix_bench.sh", "setup_postfix.sh"):
        if not (knobs.shared / name).is_file():
            raise BenchError(f"SHARED_BENCH: {knobs.shared / name} is missing (set SHARED_BENCH to the shared bench dir)")
    if knobs.peer_modes and os.geteuid() != 0:
        raise BenchError("the peer (Postfix + OpenDKIM) needs root: run as root, or PEER_MODES= to skip it")
    if knobs.peer_modes:
        prepare_peer(knobs)
    elif shutil.which("smtp-source") is None or shutil.which("smtp-sink") is None:
        if os.geteuid() != 0:
            raise BenchError("smtp-source and smtp-sink are missing: apt-get install postfix (as root), "
                             "or run make bench as root")
        prepare_peer(knobs)


def _run(what: str, cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
         stdin: str | None = None) -> None:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{what}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        raise BenchError(f"{what} failed (exit {done.returncode}): {' '.join(last)}")


def prepare_peer(knobs: Knobs) -> None:
    """What the shared setup_postfix.sh takes for granted, then that script, once (it is idempotent).

    Installed without a debconf answer (or with "No configuration"), Debian's postfix leaves no
    /etc/postfix/main.cf, and the script's `postconf -e` then fails. So: install the packages with
    "No configuration" (nothing starts, nothing is written), then write main.cf as Debian's postinst would
    (main.cf.debian plus the aliases map, and `newaliases`), and let the script configure the rest.
    """
    if any(shutil.which(tool) is None for tool in PEER_TOOLS):
        print(f"bench: installing {' '.join(PEER_PACKAGES)} (Debian packages) for the peer and the load tools",
              flush=True)
        _run("debconf-set-selections", ["debconf-set-selections"], timeout=60,
             stdin="postfix postfix/main_mailer_type select No configuration\n"
                   "postfix postfix/mailname string relay.example.test\n")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run("apt-get update", ["apt-get", "update", "-qq"], timeout=600, env=env)
        _run("apt-get install", ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PEER_PACKAGES],
             timeout=900, env=env)
    if not MAIN_CF.exists():
        base = DEBIAN_MAIN_CF.read_text() if DEBIAN_MAIN_CF.is_file() else "compatibility_level = 3.6\n"
        MAIN_CF.write_text(base.rstrip("\n") + "\n\n# Written by accounton-relay's bench/run.py, as Debian's postinst "
                           "would; setup_postfix.sh edits the rest.\nalias_maps = hash:/etc/aliases\n"
                           "alias_database = hash:/etc/aliases\n")
        print(f"bench: wrote {MAIN_CF} (none was installed) from {DEBIAN_MAIN_CF.name}", flush=True)
    if Path("/etc/aliases").is_file() and not Path("/etc/aliases.db").exists():
        _run("newaliases", ["newaliases"], timeout=60)
    _run("setup_postfix.sh", ["bash", str(knobs.shared / "setup_postfix.sh")], timeout=900)
    if any(shutil.which(tool) is None for tool in PEER_TOOLS):
        raise BenchError(f"after setup_postfix.sh, still missing: "
                         f"{', '.join(t for t in PEER_TOOLS if shutil.which(t) is None)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- our relay's environment


def relay_env(home: Path, database: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE=database or f"sqlite:///{home / 'relay.db'}",
        RELAY_KEYS_DIR=str(home / "keys"),
        RELAY_HOSTNAME="relay.bench.test",
        RELAY_ADMIN_USER="bench",
    )
    return env


def admin(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([str(REPO / ".venv" / "bin" / "relay-admin"), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:  # stdout is not shown: `client add` prints a secret there
        raise BenchError(f"relay-admin {' '.join(args[:2])} failed: {done.stderr.strip()}")


def provision(home: Path, database: str | None = None) -> dict[str, str]:
    """One verified tenant with an RSA-2048 key, and the load generator as a client by its network.

    `database`: a postgresql:// URL (an empty database) instead of SQLite at home/relay.db.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = relay_env(home, database)
    admin(env, "user", "add", "bench", "--role", "owner")
    admin(env, "tenant", "set", TENANT, "--name", "Example Accounting", "--email", f"billing@{DOMAIN}",
          "--domain", DOMAIN)
    admin(env, "client", "add", "loadgen", "--tenant", TENANT, "--network", "127.0.0.0/8")
    # No DNS here, so `validate` cannot pass: mark the tenant verified the way validate would.
    if database:
        from relay.core.store.postgres import (
            PostgresStore,  # psycopg only when PostgreSQL is measured
        )

        store: Any = PostgresStore(database, create=False)
    else:
        store = SqliteStore(home / "relay.db")
    try:
        tenant = store.get_tenant(TENANT)
        if tenant is None:
            raise BenchError(f"tenant {TENANT} missing after tenant set")
        now = utcnow()
        store.save_tenant(replace(tenant, status=TenantStatus.VERIFIED, verified_at=now,
                                  last_validated_at=now, updated_at=now))
    finally:
        store.close()
    return env


def answers_smtp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


@contextmanager
def running_relay(env: dict[str, str], *, workers: int, sink_port: int, log: Path,
                  extra: dict[str, str] | None = None, pids: list[int] | None = None) -> Iterator[int]:
    """Our relay on a free port, forwarding to the sink; stopped (TERM, bounded wait, KILL) on exit.

    `extra`: more RELAY_* settings; `pids` gets the supervisor's pid (its process group is the relay's).
    """
    port = free_port()
    run_env = dict(env, RELAY_LISTEN=f"127.0.0.1:{port}", RELAY_UPSTREAM=f"smtp://127.0.0.1:{sink_port}",
                   RELAY_WORKERS=str(workers), **(extra or {}))
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "relay")], env=run_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_smtp(port):
            if proc.poll() is not None:
                raise BenchError(f"relay exited at start (code {proc.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise BenchError(f"relay did not answer 220 on port {port} within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the supervisor forwards it to its workers
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
            proc.wait(timeout=STOP_TIMEOUT)


def outcomes(log: Path, offset: int) -> dict[str, int]:
    """Transaction outcomes and error lines the relay logged since `offset` (a functional check)."""
    counts: dict[str, int] = {}
    with open(log, "rb") as file:
        file.seek(offset)
        for line in file:
            for word in (b"outcome=delivered", b"outcome=deferred", b"outcome=refused", b" ERROR ", b"Traceback"):
                if word in line:
                    key = word.strip().decode()
                    counts[key] = counts.get(key, 0) + 1
    return counts


# ---------------------------------------------------------------- runs


def loadrun(knobs: Knobs, label: str, *, target: int, sink: int, size: int, comms: str,
            messages: int | None = None) -> dict[str, Any]:
    """One shared loadrun.py: a fresh smtp-sink on `sink`, smtp-source against `target`."""
    count = messages or knobs.messages
    cmd = [sys.executable, str(knobs.shared / "loadrun.py"), "--label", label, "--target-port", str(target),
           "--sink-port", str(sink), "-m", str(count), "-s", str(knobs.sessions), "-l", str(size),
           "--timeout", str(knobs.timeout), "--comms", comms]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=knobs.timeout + 30)
    except subprocess.TimeoutExpired:
        return {"label": label, "length": size, "messages": count, "error": "loadrun did not finish"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"label": label, "length": size, "messages": count, "error": done.stderr.strip()[-300:]}
    return dict(json.loads(lines[-1]))


def our_run(knobs: Knobs, env: dict[str, str], home: Path, *, workers: int, size: int, rnd: int,
            store: str = "sqlite", pool: int | None = None) -> dict[str, Any]:
    sink = free_port()
    log = home / "relay.log"
    log.touch()
    extra = {} if pool is None else {"RELAY_UPSTREAM_POOL_SIZE": str(pool)}
    with running_relay(env, workers=workers, sink_port=sink, log=log, extra=extra) as port:
        # Warm-up, not reported (as postfix_bench.sh does for Postfix): first sessions, key and imports.
        loadrun(knobs, "warmup", target=port, sink=sink, size=size, comms=OUR_COMMS, messages=200)
        offset = log.stat().st_size
        tag = ("" if store == "sqlite" else "-pg") + ("" if pool is None else f"-pool{pool}")
        record = loadrun(knobs, f"relay-w{workers}{tag}-l{size}-r{rnd}", target=port, sink=sink, size=size,
                         comms=f"{OUR_COMMS},smtp-sink,smtp-source,{OTHER_JOBS}")
    record["relay_log"] = outcomes(log, offset)
    return record


def peer_runs(knobs: Knobs, *, size: int, rnd: int) -> list[dict[str, Any]]:
    """postfix_bench.sh for one size and one repeat: it starts and stops postfix and opendkim itself."""
    env = dict(os.environ, MESSAGES=str(knobs.messages), SESSIONS=str(knobs.sessions), SIZES=str(size),
               MODES=" ".join(knobs.peer_modes), REPEATS="1", TIMEOUT=str(int(knobs.timeout)))
    budget = len(knobs.peer_modes) * (2 * knobs.timeout + 180)
    try:
        done = subprocess.run(["bash", str(knobs.shared / "postfix_bench.sh")], env=env, capture_output=True,
                              text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        raise BenchError(f"postfix_bench.sh did not finish within {budget:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"postfix_bench.sh failed: {done.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for record in records:
        record["label"] = record["label"].rsplit("-r", 1)[0] + f"-r{rnd}"
    return records


def ceiling_run(knobs: Knobs, *, size: int, rnd: int) -> dict[str, Any]:
    sink = free_port()
    return loadrun(knobs, f"direct-l{size}-r{rnd}", target=sink, sink=sink, size=size,
                   comms=f"smtp-sink,smtp-source,{OTHER_JOBS}")


# ---------------------------------------------------------------- table


def setup_of(label: str) -> str:
    return label.rsplit("-l", 1)[0]


SETUP_NAMES = {
    "direct": "smtp-source -> smtp-sink (ceiling of the load tools)",
    "postfix-nomilter": "Postfix, no DKIM",
    "postfix-milter": "**Postfix + OpenDKIM RSA-2048 (the peer)**",
}


def server_cpu_ms(record: dict[str, Any]) -> float | None:
    """CPU ms per message of the relaying processes (ours or Postfix's + OpenDKIM's), load tools excluded."""
    per = record.get("cpu_s_by_process") or {}
    seconds = sum(v for k, v in per.items() if k not in LOAD_TOOLS)
    return 1000.0 * seconds / record["messages"] if record.get("e2e_s") and seconds else None


def other_jobs_pct(record: dict[str, Any]) -> float | None:
    """How much of the machine other jobs (OTHER_JOBS) took during the run, in % of all cores."""
    seconds = float((record.get("cpu_s_by_process") or {}).get(OTHER_JOBS, 0.0))
    if not record.get("e2e_s") or not record.get("cpu_cores"):
        return None
    return 100.0 * seconds / (float(record["e2e_s"]) * int(record["cpu_cores"]))


def setup_name(setup: str) -> str:
    """`relay-w2-pg-pool0` -> `accounton-relay, RELAY_WORKERS=2, PostgreSQL, RELAY_UPSTREAM_POOL_SIZE=0`."""
    if setup in SETUP_NAMES or not setup.startswith("relay-w"):
        return SETUP_NAMES.get(setup, setup)
    workers, *tags = setup.removeprefix("relay-w").split("-")
    words = [f"accounton-relay, RELAY_WORKERS={workers}", "PostgreSQL" if "pg" in tags else "SQLite"]
    words += [f"RELAY_UPSTREAM_POOL_SIZE={tag.removeprefix('pool')}" for tag in tags if tag.startswith("pool")]
    return ", ".join(words)


def _cell(values: list[float]) -> str:
    if not values:
        return "failed"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def table(records: list[dict[str, Any]], sizes: tuple[int, ...]) -> list[str]:
    setups: list[str] = []
    for record in records:
        if setup_of(record["label"]) not in setups:
            setups.append(setup_of(record["label"]))
    order = ["direct", "postfix-nomilter", "postfix-milter"]
    setups.sort(key=lambda s: (order.index(s) if s in order else len(order), s))
    head = "| setup | " + " | ".join(f"{size // 1024} KB msgs/s median (min-max) | CPU ms/msg | steal % | others %"
                                    for size in sizes) + " |"
    lines = [head, "|---|" + "---|---|---|---|" * len(sizes)]
    rate: dict[tuple[str, int], dict[int, float]] = {}
    for setup in setups:
        cells = []
        for size in sizes:
            runs = [r for r in records if setup_of(r["label"]) == setup and r.get("length") == size]
            ok = [r for r in runs if r.get("e2e_msgs_per_s")]
            rate[(setup, size)] = {int(r["label"].rsplit("-r", 1)[1]): r["e2e_msgs_per_s"] for r in ok}
            cpu = [c for c in (server_cpu_ms(r) for r in ok) if c is not None]
            failed = f", {len(runs) - len(ok)} failed" if len(runs) > len(ok) else ""
            steal = [r["cpu_steal_pct"] for r in ok if r.get("cpu_steal_pct") is not None]
            others = [o for o in (other_jobs_pct(r) for r in ok) if o is not None]
            cells += [_cell([r["e2e_msgs_per_s"] for r in ok]) + failed,
                      f"{statistics.median(cpu):.2f}" if cpu and setup != "direct" else "-",
                      f"{statistics.median(steal):.0f}" if steal else "-",
                      f"{statistics.median(others):.0f} ({min(others):.0f}-{max(others):.0f})" if others else "-"]
        lines.append(f"| {setup_name(setup)} | " + " | ".join(cells) + " |")
    lines += ["", "ours / peer (Postfix + OpenDKIM), per size: ratio of medians; paired by round, median (min-max)"]
    for setup in (s for s in setups if s.startswith("relay")):
        parts = []
        for size in sizes:
            ours, peer = rate.get((setup, size), {}), rate.get(("postfix-milter", size), {})
            paired = [ours[r] / peer[r] for r in ours if r in peer]
            if not paired:
                parts.append(f"{size // 1024} KB: -")
                continue
            ratio = statistics.median(ours.values()) / statistics.median(peer.values())
            parts.append(f"{size // 1024} KB: {ratio:.2f}x; paired {statistics.median(paired):.2f}x "
                         f"({min(paired):.2f}-{max(paired):.2f})")
        lines.append(f"- {setup}: " + "; ".join(parts))
    return lines


# ---------------------------------------------------------------- main


def meta(knobs: Knobs) -> dict[str, Any]:
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "host_cpus": os.cpu_count(),
        "cpu_model": _cpu_model(), "kernel": platform.release(), "python": platform.python_version(),
        "messages": knobs.messages, "sessions": knobs.sessions, "sizes": list(knobs.sizes),
        "repeats": knobs.repeats, "workers": list(knobs.workers), "peer_modes": list(knobs.peer_modes),
        "pool_sizes": list(knobs.pool_sizes), "stores": list(knobs.stores), "extras": list(knobs.extras),
        "loadavg_at_start": os.getloadavg(), "relay_revision": _revision(),
    }


def _revision() -> str:
    """The commit measured, `+dirty` when the work tree differs from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "relay"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bench(knobs: Knobs, out: Any, extra_lines: list[str]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []

    def keep(record: dict[str, Any]) -> None:
        record["loadavg_1m"] = round(os.getloadavg()[0], 2)
        records.append(record)
        out.write(json.dumps(record) + "\n")
        out.flush()
        rate = record.get("e2e_msgs_per_s")
        extra = f" relay log {record['relay_log']}" if "relay_log" in record else ""
        print(f"bench: {record['label']}: {rate if rate else 'FAILED ' + str(record.get('error', ''))} msgs/s"
              f" (received {record.get('received', '?')}/{record.get('messages')}){extra}", flush=True)

    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, ExitStack() as stack:
        home = Path(tmp)
        env = provision(home)
        # The same tenant and client in a PostgreSQL store, on a throwaway cluster (issue 10).
        homes = {"sqlite": (home, env)}
        if "postgresql" in knobs.stores:
            from pgcluster import cluster  # bench/pgcluster.py

            try:
                url = stack.enter_context(cluster())
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                raise BenchError(f"PostgreSQL cluster: {exc} (STORES=sqlite to skip it)") from None
            homes["postgresql"] = (home / "pg", provision(home / "pg", url))
        for size in knobs.sizes:
            for rnd in range(1, knobs.repeats + 1):
                keep(ceiling_run(knobs, size=size, rnd=rnd))
                if knobs.peer_modes:
                    for record in peer_runs(knobs, size=size, rnd=rnd):
                        keep(record)
                for store in knobs.stores:
                    store_home, store_env = homes[store]
                    for workers in knobs.workers:
                        for pool in knobs.pool_sizes:
                            keep(our_run(knobs, store_env, store_home, workers=workers, size=size, rnd=rnd,
                                         store=store, pool=pool))
        if knobs.extras:
            import extras  # bench/extras.py: issue 11's figures

            extra_lines.extend(extras.run(knobs.extras, env, home, records, running_relay, free_port,
                                          workers=max(knobs.workers), timeout=knobs.timeout))
            for line in extra_lines:  # kept with the runs they belong to (readers skip `#` lines)
                out.write("# " + json.dumps({"extra": line.removeprefix("- ")}) + "\n")
        for store_home, _ in homes.values():
            log = store_home / "relay.log"
            failures = [line for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
                        if " ERROR " in line or " WARNING " in line]
            if failures:
                print(f"bench: the relay logged {len(failures)} warnings/errors in {log.name} "
                      f"({store_home.name}); first: {failures[0]}", flush=True)
    return records


def main() -> int:
    try:
        knobs = read_knobs()
        check_tools(knobs)
        knobs.results.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(knobs.results, "w") as out:
            out.write("# " + json.dumps(meta(knobs)) + "\n")
            extra_lines: list[str] = []
            records = bench(knobs, out, extra_lines)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(f"\nbench: {knobs.messages} messages, {knobs.sessions} sessions, {knobs.repeats} rounds, "
          f"{os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s; raw lines in {knobs.results}\n")
    print("\n".join(table(records, knobs.sizes)))
    if extra_lines:
        print("\n" + "\n".join(extra_lines))
    bad = [r for r in records if not r.get("e2e_s")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
