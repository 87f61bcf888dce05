"""`relay-admin send-test TENANT --to ADDRESS`: send a sample message through the relay and report the result."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from admin.context import EXIT_NEGATIVE, EXIT_OK, Context
from admin.sendtest import SendTestReport, UnknownTenant, recipient, run_send_test


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "send-test", parents=[common], help="send a sample message through the relay and report the result",
        description="Run a sample message through the relay's own pipeline (sender, DKIM, upstream) "
                    "and report what happened. Exit 0: upstream accepted it; 1: refused or deferred.",
    )
    parser.add_argument("tenant", metavar="TENANT")
    parser.add_argument("--to", required=True, metavar="ADDRESS", help="one recipient, local@domain")
    parser.set_defaults(handler=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    ctx.authorize("send-test", tenant=args.tenant)
    to = recipient(args.to)
    ctx.tenant(args.tenant)  # before any work: the message names the store it looked in
    try:
        report = asyncio.run(run_send_test(ctx.settings, ctx.store, args.tenant, to))
    except UnknownTenant:  # removed between the two reads
        raise ctx.unknown_tenant(args.tenant) from None
    ctx.audit("send-test", tenant=report.tenant, detail=f"to {report.to}: {report.reply}")
    ctx.emit(report.to_json(), render(report))
    return EXIT_OK if report.accepted else EXIT_NEGATIVE


def render(report: SendTestReport) -> str:
    """Headline, then the reply and what the message left as."""
    verdict = ("accepted" if report.accepted else
               "deferred (temporary: try again later)" if report.reply.transient else "refused")
    rows = [("reply", str(report.reply))]
    if report.offered is not None:
        signature = report.offered.signature
        rows += [
            ("from", report.offered.from_),
            ("envelope from", report.offered.envelope_from),
            ("dkim signature", f"d={signature.domain} s={signature.selector}" if signature else "(none)"),
        ]
    else:
        rows.append(("sent", "nothing reached the upstream"))
    rows.append(("message-id", report.message_id))
    if report.outbox_file is not None:
        rows.append(("outbox file", str(report.outbox_file)))
    lines = [f"send-test {report.tenant} -> {report.to}: {verdict}"]
    lines += [f"  {label + ':':<16}{value}" for label, value in rows]
    return "\n".join(lines)
