"""`relay-admin revalidate (TENANT|--all)`: re-check DNS and apply the lifecycle, e.g. from cron.

Each tenant is checked as `validate` checks it, under its lease: a tenant that another process (a
relay worker, another cron) is checking right now is skipped and reported as such. `--all` checks
every tenant whether due or not. Exit 0 when every tenant checked is verified (skipped ones are not
counted, unless all were skipped), 1 otherwise. Notifications still queued from earlier failures are
delivered too, so a cron-only set-up retries them.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from admin.context import EXIT_NEGATIVE, EXIT_OK, Context, UsageError
from admin.services import send_notifications
from relay.domains import lifecycle
from relay.domains.revalidation import all_verified, revalidate
from relay.domains.validation import COULD_NOT_CHECK, ValidationReport


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "revalidate", parents=[common], help="re-check DNS of one tenant or all (for cron)",
        description="Re-check the DNS records of TENANT, or of every tenant with --all, and apply the "
                    "lifecycle (verified, degraded, failed). Exit 0 when every tenant checked is "
                    "verified, 1 otherwise.")
    parser.add_argument("tenant", metavar="TENANT", nargs="?")
    parser.add_argument("--all", dest="all_tenants", action="store_true", help="every tenant")
    parser.set_defaults(handler=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    if (args.tenant is None) == (not args.all_tenants):
        raise UsageError("TENANT: name one tenant, or use --all (not both)")
    actor = ctx.authorize("revalidate", tenant=args.tenant)
    if args.tenant is not None:
        ctx.tenant(args.tenant)
    holder = lifecycle.default_holder()
    # --all is every tenant the acting user sees: a scoped admin re-checks its own tenants only.
    ids = [args.tenant] if args.tenant else [t.id for t in ctx.visible_tenants()]
    reports = asyncio.run(revalidate(ctx.store, ctx.settings, tenant_ids=ids, holder=holder, actor=actor))
    ctx.emit([r.to_json() for r in reports], "\n".join(line(r) for r in reports))
    send_notifications(ctx, [i for r in reports for i in r.notifications], holder=holder, due=True)
    return EXIT_OK if all_verified(reports) else EXIT_NEGATIVE


def line(report: ValidationReport) -> str:
    """`acme: verified -> degraded (dkim TXT ... missing); failed after ...`, or why nothing changed."""
    head = f"{report.tenant}: "
    if report.skipped:
        return f"{head}skipped: {report.skipped}"
    if report.discarded:
        return f"{head}{report.status}: result discarded: {report.discarded}"
    text = f"{head}{report.status_before} -> {report.status}"
    if report.outcome == COULD_NOT_CHECK:
        text += " (could not check every record: status unchanged)"
    elif report.reason:
        text += f" ({report.reason})"
    if report.failed_after is not None:
        text += f"; failed after {report.failed_after.isoformat()}"
    if report.promotion is not None:
        text += f"; DKIM key {report.promotion.active} promoted to active"
    return text
