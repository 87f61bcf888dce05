"""`relay-admin tenant set|show|list`: a tenant's sender (name, address, domain), its key and status."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from admin import inputs, services
from admin.context import EXIT_OK, Context
from admin.render import domain_label
from admin.services import DEFAULT_RETURN_PATH
from admin.tenants import TenantChange
from relay.domains.records import human_time


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    tenant = commands.add_parser("tenant", help="a tenant's custom sender", parents=[common])
    actions = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION",
                                    parser_class=type(tenant))
    set_ = actions.add_parser("set", parents=[common], help="create or change a tenant's sender")
    set_.add_argument("tenant", metavar="TENANT", help="tenant id (a-z, 0-9, '.', '_', '-')")
    set_.add_argument("--name", required=True, help="display name of the From header")
    set_.add_argument("--email", required=True, help="sender address, in the domain or below it")
    set_.add_argument("--domain", required=True, help="the domain the records are published in")
    set_.add_argument("--return-path", dest="return_path", metavar="LABEL", default=None,
                      help=f"label of the return-path host (default: kept, or {DEFAULT_RETURN_PATH})")
    set_.set_defaults(handler=set_command)
    show = actions.add_parser("show", parents=[common], help="a tenant's sender, status, checks")
    show.add_argument("tenant", metavar="TENANT")
    show.set_defaults(handler=show_command)
    list_ = actions.add_parser("list", parents=[common], help="all tenants")
    list_.set_defaults(handler=list_command)


def tenant_text(data: dict[str, Any]) -> str:
    local, _, host = str(data["email"]).rpartition("@")
    rows = [
        ("tenant", data["tenant"]),
        ("name", data["name"]),
        ("email", f"{local}@{domain_label(host)}"),
        ("domain", domain_label(str(data["domain"]))),
        ("return-path", data["return_path_host"]),
        ("selector", data["selector"] or "(none)"),
        ("status", data["status"]),
        ("created", data["created_at"]),
        ("updated", data["updated_at"]),
        ("last validated", data["last_validated_at"] or "never"),
        ("verified", data["verified_at"] or "never"),
    ]
    lines = [f"{label + ':':<16}{value}" for label, value in rows]
    if data.get("keys") is not None:
        lines += keys_text(data["keys"])
    checks = data.get("checks")
    if checks is not None:
        lines.append(f"{'checks:':<16}" + ("" if checks else "none yet (run `relay-admin validate`)"))
        for c in checks:
            lines.append(f"  {c['purpose']:<12}{c['type']:<6}{c['status']:<9}{c['name']}")
            if c["diagnosis"]:
                lines.append(f"    {c['diagnosis']}")
    return "\n".join(lines)


def keys_text(keys: list[dict[str, Any]]) -> list[str]:
    """`keys:` then one line per key (selector, state, created, remove after) and what to do with it."""
    lines = ["keys:" if keys else f"{'keys:':<16}none"]
    for k in keys:
        line = f"  {k['selector']:<18}{k['state']:<10}created {_human(k['created_at'])}"
        if k["remove_after"]:
            line += f"  remove after {_human(k['remove_after'])}"
        lines.append(line)
        if k["note"]:
            lines.append(f"    {k['note']}")
    return lines


def _human(iso: str) -> str:
    return human_time(datetime.fromisoformat(iso))


def _summary(change: TenantChange, key_file: Path) -> str:
    tid = change.tenant.id
    if not change.changed:
        return f"tenant {tid} unchanged"
    if not change.key_issued:
        return f"tenant {tid}: name changed; key and status kept"
    verb = "created" if change.created else "changed"
    return (f"tenant {tid} {verb}: new DKIM key, selector {change.key.selector}, status pending\n"
            f"key file: {key_file}\n"
            f"next: publish `relay-admin records {tid}`, then run `relay-admin validate {tid}`")


def set_command(ctx: Context, args: argparse.Namespace) -> int:
    change = services.set_sender(ctx, args.tenant, services.SenderInput(
        name=args.name, email=args.email, domain=args.domain, return_path=args.return_path))
    key_file = Path(ctx.settings.keys_dir).absolute() / change.key.key_file
    data = services.tenant_view(ctx, change.tenant)
    data["key_issued"] = change.key_issued
    data["key_file"] = str(key_file)
    data["warnings"] = services.sender_warnings(change.tenant.sender)
    for warning in data["warnings"]:  # stderr: accepted, not an error; stdout stays the result
        ctx.notice(f"warning: {warning}")
    ctx.emit(data, _summary(change, key_file) + "\n\n" + tenant_text(data))
    return EXIT_OK


def show_command(ctx: Context, args: argparse.Namespace) -> int:
    tenant_id = inputs.identifier(args.tenant, "TENANT", "tenant id")
    data = services.show_tenant(ctx, tenant_id)
    ctx.emit(data, tenant_text(data))
    return EXIT_OK


def list_command(ctx: Context, args: argparse.Namespace) -> int:
    items = services.list_tenants(ctx)
    ctx.emit(items, _table(items))
    return EXIT_OK


def _table(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no tenants yet (add one with `relay-admin tenant set`)"
    header = ("TENANT", "STATUS", "DOMAIN", "EMAIL", "NAME")
    rows = [header] + [
        (i["tenant"], i["status"], domain_label(i["domain"]), i["email"], i["name"]) for i in items
    ]
    widths = [max(len(str(row[col])) for row in rows) for col in range(len(header) - 1)]
    return "\n".join(
        "  ".join(f"{str(v):<{w}}" for v, w in zip(row[:-1], widths)) + "  " + str(row[-1])
        for row in rows
    )
