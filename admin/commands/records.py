"""`relay-admin records TENANT [--format table|json|bind|csv] [--sep ,|;]`: the DNS records to publish."""

from __future__ import annotations

import argparse
from typing import Any

from admin.context import EXIT_OK, Context, UsageError
from admin.render import CSV_SEPARATORS, FORMATS, render
from admin.services import tenant_records
from relay.core.store import utcnow


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "records", parents=[common], help="the DNS records to publish for a tenant",
        description="Print the DNS records a tenant's IT must publish.",
    )
    parser.add_argument("tenant", metavar="TENANT")
    parser.add_argument("--format", dest="format", choices=FORMATS, default=None,
                        help="output form (default: table; --json is --format json)")
    parser.add_argument("--sep", choices=CSV_SEPARATORS, default=None, metavar="SEP",
                        help="CSV field separator: ',' (default) or ';' (for spreadsheets whose "
                             "list separator is ';')")
    parser.set_defaults(handler=run)


def chosen_format(requested: str | None, json_output: bool) -> str:
    if json_output and requested not in (None, "json"):
        raise UsageError(f"--format: {requested} conflicts with --json (which means --format json)")
    return "json" if json_output else requested or "table"


def chosen_separator(requested: str | None, fmt: str) -> str:
    """The CSV separator; asking for one with another format is a usage error, not silently ignored."""
    if requested is not None and fmt != "csv":
        raise UsageError(f"--sep: only applies to --format csv, not {fmt}")
    return requested or ","


def run(ctx: Context, args: argparse.Namespace) -> int:
    fmt = chosen_format(args.format, ctx.json_output)
    sep = chosen_separator(args.sep, fmt)
    tenant, records = tenant_records(ctx, args.tenant)
    ctx.out.write(render(records, fmt, zone=tenant.sender.domain, sep=sep, now=utcnow()))
    return EXIT_OK
