"""A real authoritative DNS server for tests: NSD on a free loopback port, zones written by the test."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

NSD_CONF = """\
server:
    ip-address: 127.0.0.1@{port}
    username: ""
    chroot: ""
    zonesdir: "{dir}"
    database: ""
    pidfile: "{dir}/nsd.pid"
    xfrdfile: "{dir}/xfrd.state"
    zonelistfile: "{dir}/zone.list"
    xfrdir: "{dir}"
    logfile: "{dir}/nsd.log"
    server-count: 1
    verbosity: 1
    # No response rate limiting: the tests ask the same names from one address far faster than any
    # resolver would, and RRL then drops or truncates answers (seen while `_wait_for_serial` polled).
    rrl-ratelimit: 0
remote-control:
    control-enable: no
"""

SOA_TEMPLATE = """\
$ORIGIN {origin}.
$TTL 300
@ IN SOA ns1.{origin}. hostmaster.{origin}. ( {serial} 3600 600 86400 {negative_ttl} )
@ IN NS ns1.{origin}.
ns1 IN A 127.0.0.1
"""


def nsd_binary() -> str | None:
    return shutil.which("nsd") or (Path("/usr/sbin/nsd").exists() and "/usr/sbin/nsd") or None


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (NSD listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


def zone_text(origin: str, body: str, *, serial: int = 1, negative_ttl: int = 300) -> str:
    """A zone file: SOA and NS for `origin`, then `body` verbatim (mistakes included)."""
    return SOA_TEMPLATE.format(origin=origin, serial=serial, negative_ttl=negative_ttl) + body + "\n"


class Nsd:
    """NSD serving `zones` ({origin: zone file text}); `update()` rewrites them and reloads (SIGHUP)."""

    def __init__(self, directory: Path, zones: dict[str, str]) -> None:
        binary = nsd_binary()
        if binary is None:
            raise RuntimeError("nsd is not installed (make test installs it as root)")
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.zones = dict(zones)
        self.process: subprocess.Popen[bytes] | None = None

    def _write(self) -> None:
        conf = NSD_CONF.format(port=self.port, dir=self.dir)
        for origin, text in self.zones.items():
            (self.dir / f"{origin}.zone").write_text(text)
            conf += f"zone:\n    name: {origin}\n    zonefile: {origin}.zone\n"
        (self.dir / "nsd.conf").write_text(conf)

    def start(self) -> "Nsd":
        self._write()
        self.process = subprocess.Popen(
            [self.binary, "-d", "-c", str(self.dir / "nsd.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        # Poll an SOA query of the first zone: a synchronisation, not a sleep.
        origin = next(iter(self.zones))
        query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nsd exited: {err}{self.log()}")
            try:
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2, ignore_unexpected=True)
                return
            except (dns.exception.DNSException, OSError):
                # Timeout; or BadResponse: an answer that does not match the question, seen once while
                # NSD was starting (nothing loaded yet). Either way: not answering yet, ask again.
                continue
        raise RuntimeError(f"nsd did not answer on port {self.port}: {self.log()}")

    def update(self, zones: dict[str, str]) -> None:
        """Rewrite zone files and reload; returns once a changed zone's new SOA serial is served."""
        self.zones.update(zones)
        self._write()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        for origin, text in zones.items():
            self._wait_for_serial(origin, text)

    def _wait_for_serial(self, origin: str, text: str) -> None:
        serial = None
        for line in text.splitlines():
            if " SOA " in line:
                serial = int(line.split("(")[1].split()[0])
        if serial is None:
            return
        query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2, ignore_unexpected=True)
            except (dns.exception.DNSException, OSError):  # as in _wait_until_answering
                continue
            if answer.answer and answer.answer[0][0].serial == serial:
                return
            time.sleep(0.01)  # the old serial: NSD is still reloading; ask again soon, not in a tight loop
        raise RuntimeError(f"nsd did not load serial {serial} of {origin}: {self.log()}")

    def log(self) -> str:
        path = self.dir / "nsd.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
