"""`relay-admin send-test TENANT --to ADDRESS`: send a sample message through the relay and report the result."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
from typing import Any

from admin.context import EXIT_NEGATIVE, EXIT_OK, CliError, Context, UsageError
from admin.sendtest import (
    DEFAULT_CLIENT_IP,
    SendTestReport,
    SessionFailed,
    UnknownTenant,
    recipient,
    run_in_process,
    run_through_relay,
)
from admin.sendtest_client import RelayTarget, ReservedClientMisused
from relay.core.settings import parse_host_port
from relay.domains.receiver import Check

# A client is patient for longer than the relay's session timeout (RELIABILITY.md R5).
_PATIENCE = 10.0


class SendTestFailed(CliError):
    """No session with the relay to send in (nothing listening, TLS, AUTH): done, and negative."""

    exit_code = EXIT_NEGATIVE


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "send-test", parents=[common], help="send a sample message through the relay and report the result",
        description="Send a sample message through the running relay (RELAY_LISTEN), authenticated with "
                    "send-test's own credential, and report the relay's reply and, where the forwarded copy "
                    "can be read (an outbox upstream), DKIM, SPF and DMARC as a receiver would judge them. "
                    "Exit 0: accepted and every check passes (or the copy cannot be read); 1: otherwise.",
    )
    parser.add_argument("tenant", metavar="TENANT")
    parser.add_argument("--to", required=True, metavar="ADDRESS", help="one recipient, local@domain")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--relay", metavar="HOST:PORT",
                       help="the relay's listener (default: RELAY_LISTEN)")
    where.add_argument("--in-process", dest="in_process", action="store_true",
                       help="run the relay's pipeline here instead (needs the keys and RELAY_UPSTREAM here)")
    parser.add_argument("--ip", default=DEFAULT_CLIENT_IP, metavar="IP",
                        help="the address SPF is evaluated for (default 127.0.0.1: in outbox mode the message "
                             "has not left this machine; give the upstream's outbound address to check that)")
    parser.set_defaults(handler=run)


def _client_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise UsageError(f"--ip: {value!r} is not an IPv4 or IPv6 address") from None


def _target(ctx: Context, relay: str | None) -> RelayTarget:
    settings = ctx.settings
    if relay is None:
        address, source = settings.listen, "RELAY_LISTEN"
    else:
        try:
            address, source = parse_host_port(relay), "--relay"
        except ValueError as exc:
            raise UsageError(f"--relay: {exc}") from None
        if address.port == 0:
            raise UsageError(f"--relay: {relay!r}: give the port the relay listens on")
    return RelayTarget(address=address, source=source, tls_cert=settings.tls_cert,
                       timeout=settings.session_timeout + _PATIENCE, retry_for=settings.reload_interval + 1.0)


def run(ctx: Context, args: argparse.Namespace) -> int:
    actor = ctx.authorize("send-test", tenant=args.tenant)
    to = recipient(args.to)
    client_ip = _client_ip(args.ip)
    target = None if args.in_process else _target(ctx, args.relay)
    ctx.tenant(args.tenant)  # before any work: the message names the store it looked in
    try:
        if target is None:
            report = asyncio.run(run_in_process(ctx.settings, ctx.store, args.tenant, to, client_ip=client_ip))
        else:
            report = asyncio.run(run_through_relay(ctx.settings, ctx.store, args.tenant, to, target=target,
                                                   actor=actor, client_ip=client_ip))
    except UnknownTenant:  # removed between the two reads
        raise ctx.unknown_tenant(args.tenant) from None
    except ReservedClientMisused as exc:
        raise UsageError(str(exc)) from None
    except SessionFailed as exc:  # only through the relay: there was no session to send in
        where = target.address if target else "-"
        ctx.audit("send-test", tenant=args.tenant, detail=f"to {to} through the relay at {where}: failed: {exc}")
        raise SendTestFailed(str(exc)) from None
    ctx.audit("send-test", tenant=report.tenant, detail=_audit_detail(report))
    ctx.emit(report.to_json(), render(report))
    return EXIT_OK if report.passed else EXIT_NEGATIVE


def _route(report: SendTestReport) -> str:
    return f"through the relay at {report.relay}" if report.relay else "in-process"


def _audit_detail(report: SendTestReport) -> str:
    detail = f"to {report.to} {_route(report)}: {report.reply}"
    if report.verdict is not None:
        verdict = report.verdict
        detail += f"; dkim={verdict.dkim.result} spf={verdict.spf.result} dmarc={verdict.dmarc.result}"
    return detail


def _headline(report: SendTestReport) -> str:
    if not report.accepted:
        return "deferred (temporary: try again later)" if report.reply.transient else "refused"
    if report.failing:
        return f"accepted, but a receiver would not pass {', '.join(report.failing)}"
    return "accepted"


def render(report: SendTestReport) -> str:
    """Headline, the reply and what the message left as, then one line per check a receiver makes."""
    rows = [("reply", str(report.reply))]
    if report.offered is not None:
        signature = report.offered.signature
        rows += [
            ("from", report.offered.from_),
            ("envelope from", report.offered.envelope_from),
            ("dkim signature", f"d={signature.domain} s={signature.selector}" if signature else "(none)"),
        ]
    elif not report.accepted:
        rows.append(("sent", "nothing reached the upstream"))
    rows.append(("message-id", report.message_id))
    if report.transaction is not None:
        rows.append(("transaction", report.transaction))
    if report.outbox_file is not None:
        rows.append(("outbox file", str(report.outbox_file)))
    lines = [f"send-test {report.tenant} -> {report.to} {_route(report)}: {_headline(report)}"]
    lines += [f"  {label + ':':<16}{value}" for label, value in rows]
    verdict = report.verdict
    if verdict is None:
        lines.append(f"checks not made: {report.verdict_unavailable}")
        return "\n".join(lines)
    selector = f" s={report.offered.signature.selector}" if report.offered and report.offered.signature else ""
    lines += [
        _check_line("DKIM", verdict.dkim, f"d={verdict.dkim.domain}{selector}" if verdict.dkim.domain else "-"),
        _check_line("SPF", verdict.spf, f"{verdict.spf.domain or '-'} from {report.client_ip}"),
        _check_line("DMARC", verdict.dmarc, verdict.dmarc.domain or "-"),
    ]
    return "\n".join(lines)


def _check_line(name: str, check: Check, subject: str) -> str:
    """`DKIM   pass   d=acme.test s=sel: reason`: one line per check, as a receiver would judge it."""
    return f"{name:<6} {check.result:<6} {subject}: {check.reason}"
