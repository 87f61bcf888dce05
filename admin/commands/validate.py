"""`relay-admin validate TENANT`: check the tenant's DNS now and update its status."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from admin.context import EXIT_NEGATIVE, EXIT_OK, Context
from admin.validation import UnknownTenant, ValidationReport, validate_tenant

STATUS_LABEL = {"ok": "OK", "missing": "MISSING", "mismatch": "MISMATCH", "warning": "WARNING",
                "error": "COULD NOT CHECK"}


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("validate", parents=[common], help="check DNS now, update status",
                                 description="Check the tenant's DNS records now and update its status.")
    parser.add_argument("tenant", metavar="TENANT")
    parser.set_defaults(handler=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    actor = ctx.authorize("validate", tenant=args.tenant)
    try:
        report = asyncio.run(validate_tenant(ctx.store, ctx.settings, args.tenant, actor=actor))
    except UnknownTenant:
        raise ctx.unknown_tenant(args.tenant) from None
    ctx.emit(report.to_json(), render(report))
    return EXIT_OK if report.verified else EXIT_NEGATIVE


def render(report: ValidationReport) -> str:
    """One block per check: status, name, expected, found, diagnosis."""
    lines = [f"{report.tenant}: {_headline(report)}", ""]
    for check in report.checks:
        label = STATUS_LABEL.get(check.status.value, check.status.value.upper())
        optional = "" if check.required else " (optional)"
        lines.append(f"[{label}] {check.purpose}{optional}: {check.type} {check.name}")
        lines.append(f"  expected:  {check.expected}")
        found = list(check.found) or ["(nothing)"]
        lines.append(f"  found:     {found[0]}")
        lines.extend(f"             {item}" for item in found[1:])
        lines.append(f"  diagnosis: {check.diagnosis}")
        lines.append("")
    return "\n".join(lines)


def _headline(report: ValidationReport) -> str:
    if report.outcome == "verified":
        return "verified: every required record is published correctly"
    if report.outcome == "could not check":
        return f"could not check every record; status unchanged ({report.status})"
    if report.verified:
        return "required records are not all in order; the tenant stays verified for now"
    return f"not verified ({report.status}): fix the records marked below, then validate again"
