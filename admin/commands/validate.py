"""`relay-admin validate TENANT`: check the tenant's DNS now and update its status.

The same check as `revalidate`, under the same rules (`relay.domains.validation`). When another process is
checking the tenant at this moment (the relay's own re-validation, say), it does not wait: it says so
and exits 1; that check's result shows in `relay-admin tenant show` a few seconds later.
"""

from __future__ import annotations

import argparse
from typing import Any

from admin import services
from admin.context import EXIT_NEGATIVE, EXIT_OK, Context
from admin.services import when
from relay.core.models import CheckResult, TenantStatus
from relay.domains.checks.common import duration
from relay.domains.validation import COULD_NOT_CHECK, ValidationReport

STATUS_LABEL = {"ok": "OK", "missing": "MISSING", "mismatch": "MISMATCH", "warning": "WARNING",
                "error": "COULD NOT CHECK"}


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "validate", parents=[common], help="check DNS now, update status",
        description="Check the tenant's DNS records now and update its status. Exit 0: verified; "
                    "1: not verified, or the check was skipped (another process is checking the "
                    "tenant) or discarded (its sender or keys changed during the check).")
    parser.add_argument("tenant", metavar="TENANT")
    parser.set_defaults(handler=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    report = services.validate(ctx, args.tenant)
    ctx.emit(report.to_json(), render(report, grace=ctx.settings.grace))
    return EXIT_OK if report.verified else EXIT_NEGATIVE


def render(report: ValidationReport, *, grace: float) -> str:
    """The headline, what changed, then one block per check: status, name, expected, found, diagnosis."""
    lines = [f"{report.tenant}: {headline(report, grace=grace)}", ""]
    if report.skipped or report.discarded:  # checks of records that no longer apply would mislead
        return lines[0]
    if report.changed:
        lines.insert(1, f"status: {report.status_before} -> {report.status}")
    if report.promotion is not None:
        p = report.promotion
        retiring = (f"; {p.retiring} is retiring: keep its record published until {when(p.remove_after)}"
                    if p.retiring and p.remove_after else "")
        lines.insert(1, f"key: {p.active} was seen published and signs from now on{retiring}")
    for check in report.checks:
        lines.extend(check_block(check))
    return "\n".join(lines)


def check_block(check: CheckResult) -> list[str]:
    label = STATUS_LABEL.get(check.status.value, check.status.value.upper())
    optional = "" if check.required else " (optional)"
    found = list(check.found) or ["(nothing)"]
    return [f"[{label}] {check.purpose}{optional}: {check.type} {check.name}",
            f"  expected:  {check.expected}",
            f"  found:     {found[0]}",
            *(f"             {item}" for item in found[1:]),
            f"  diagnosis: {check.diagnosis}",
            ""]


def headline(report: ValidationReport, *, grace: float) -> str:
    """One sentence: the status after the check, and what it means for mail."""
    if report.skipped:
        return f"not checked: {report.skipped}; see `relay-admin tenant show {report.tenant}` shortly"
    if report.discarded:
        return (f"result discarded: {report.discarded}, so it judged records that no longer apply;"
                f" nothing was stored (status {report.status}). Validate again to check the records"
                " as they are now")
    if report.outcome == COULD_NOT_CHECK:
        return f"could not check every record; status unchanged ({report.status})"
    if report.status is TenantStatus.VERIFIED:
        return "verified: every required record is published correctly"
    if report.status is TenantStatus.DEGRADED:
        return _degraded(report, grace)
    if report.status is TenantStatus.FAILED:
        since = f" since {when(report.failing_since)}" if report.failing_since else ""
        return (f"failed: a required record has failed{since} ({report.reason}), longer than"
                f" RELAY_GRACE; mail leaves as the platform sender until the records marked below"
                " are fixed and validated again")
    return f"not verified ({report.status}): fix the records marked below, then validate again"


def _degraded(report: ValidationReport, grace: float) -> str:
    until = when(report.failed_after) if report.failed_after else "RELAY_GRACE has passed"
    since = f" at {when(report.failing_since)}" if report.failing_since else ""
    return (f"degraded: {report.reason}. Mail still leaves as {report.sender} until {until}"
            f" (RELAY_GRACE, {duration(int(grace))}, after the first failure{since}), then as the platform"
            " sender: fix the records marked below, then validate again")
