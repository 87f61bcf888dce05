"""`relay-admin audit [TENANT]`: the audit log, every change and every denied attempt, oldest first.

Reading it is open to every role (SPEC.md "Lifecycle") and is not itself audited: the log records
changes and denied attempts, and a read changes nothing (a denied read would be, but none is denied).
"""

from __future__ import annotations

import argparse
from typing import Any

from admin.context import EXIT_OK, Context
from admin.services import audit_entries, entry_json
from relay.core.models import AuditEntry


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("audit", parents=[common], help="the audit log (of one tenant)",
                                 description="Every change and every denied attempt, oldest first.")
    parser.add_argument("tenant", metavar="TENANT", nargs="?", help="only this tenant's entries")
    parser.set_defaults(handler=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    entries = audit_entries(ctx, args.tenant)
    text = "\n".join(line(e) for e in entries) if entries else "no audit entries"
    ctx.emit([entry_json(e) for e in entries], text)
    return EXIT_OK


def line(entry: AuditEntry) -> str:
    """`2026-11-27T11:12:11+00:00  olivia  validate  acme  done: verified`."""
    detail = f": {entry.detail}" if entry.detail else ""
    fields = (entry.time.isoformat(), entry.actor, entry.action, entry.tenant or "-", entry.outcome)
    return "  ".join(fields) + detail
