"""`relay-admin tenant set|show|list`: a tenant's sender (name, address, domain), its key and status."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from admin import inputs
from admin.context import EXIT_OK, Context, StorageError
from admin.records import human_time, in_lifecycle_order, key_note
from admin.render import domain_label
from admin.tenants import KeyWriteError, TenantChange, set_tenant
from relay import directory
from relay.models import CheckResult, DkimKey, Sender, Tenant
from relay.store import utcnow

DEFAULT_RETURN_PATH = "bounce"


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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def key_json(key: DkimKey, domain: str, now: datetime) -> dict[str, Any]:
    """One DKIM key as `tenant show --json` lists it: selector, state, times, its record, what to do."""
    return {
        "selector": key.selector,
        "state": key.state.value,
        "name": f"{key.selector}._domainkey.{domain}",
        "created_at": _iso(key.created_at),
        "remove_after": _iso(key.remove_after),
        "note": key_note(key.state, key.remove_after, now),
    }


def tenant_json(tenant: Tenant, key: DkimKey | None, checks: list[CheckResult] | None = None,
                keys: list[DkimKey] | None = None) -> dict[str, Any]:
    """The `tenant show --json` object; `tenant list --json` leaves out `checks` and `keys`."""
    s = tenant.sender
    data: dict[str, Any] = {
        "tenant": tenant.id,
        "name": s.name,
        "email": s.email,
        "domain": s.domain,
        "domain_unicode": inputs.unicode_domain(s.domain),
        "return_path": s.return_path_label,
        "return_path_host": s.return_path_host,
        "selector": key.selector if key else None,
        "status": str(tenant.status),
        "created_at": _iso(tenant.created_at),
        "updated_at": _iso(tenant.updated_at),
        "last_validated_at": _iso(tenant.last_validated_at),
        "verified_at": _iso(tenant.verified_at),
    }
    if keys is not None:
        now = utcnow()
        data["keys"] = [key_json(k, s.domain, now) for k in in_lifecycle_order(keys)]
    if checks is not None:
        data["checks"] = [
            {
                "purpose": c.purpose, "type": c.type, "name": c.name, "status": c.status.value,
                "expected": c.expected, "found": list(c.found), "diagnosis": c.diagnosis,
                "checked_at": _iso(c.checked_at),
            }
            for c in checks
        ]
    return data


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


def _sender_from_args(ctx: Context, tenant_id: str, args: argparse.Namespace) -> Sender:
    """Every input check, before anything is written; field named in each message."""
    name = inputs.display_name(args.name)
    address = inputs.email(args.email)
    domain = inputs.sender_domain(args.domain)
    inputs.email_within_domain(address, domain)
    if args.return_path is not None:
        label = inputs.return_path_label(args.return_path)
    else:  # an omitted label keeps the tenant's own: omitting it must not change the records
        existing = ctx.store.get_tenant(tenant_id)
        label = existing.sender.return_path_label if existing else DEFAULT_RETURN_PATH
    inputs.return_path_clear_of_address(label, address, domain)
    return Sender(name=name, email=address, domain=domain, return_path_label=label)


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


def _set_tenant(ctx: Context, keys_dir: Path, tenant_id: str, sender: Sender,
                actor: str) -> TenantChange:
    """`set_tenant`, saying so when it had to create the keys directory (RELAY_KEYS_DIR may be relative)."""
    new_dir = not keys_dir.exists()
    try:
        change = set_tenant(ctx.store, keys_dir, tenant_id, sender, actor=actor,
                            key_overlap=timedelta(seconds=ctx.settings.key_overlap))
    except KeyWriteError as exc:
        raise StorageError(f"{exc}; RELAY_KEYS_DIR={ctx.settings.keys_dir} must be a directory this "
                           "user can write; nothing changed") from None
    if new_dir and keys_dir.is_dir():
        ctx.notice(f"created the keys directory {keys_dir} (RELAY_KEYS_DIR={ctx.settings.keys_dir})")
    return change


def set_command(ctx: Context, args: argparse.Namespace) -> int:
    tenant_id = inputs.identifier(args.tenant, "TENANT", "tenant id")
    sender = _sender_from_args(ctx, tenant_id, args)
    actor = ctx.authorize("tenant.set", tenant=tenant_id)
    # Absolute once, here: every path the command reports is then one the reader can find.
    keys_dir = Path(ctx.settings.keys_dir).absolute()
    change = _set_tenant(ctx, keys_dir, tenant_id, sender, actor)
    key_file = keys_dir / change.key.key_file
    data = tenant_json(change.tenant, change.key, ctx.store.latest_checks(tenant_id),
                       ctx.store.list_keys(tenant_id))
    data["key_issued"] = change.key_issued
    data["key_file"] = str(key_file)
    ctx.emit(data, _summary(change, key_file) + "\n\n" + tenant_text(data))
    return EXIT_OK


def show_command(ctx: Context, args: argparse.Namespace) -> int:
    tenant_id = inputs.identifier(args.tenant, "TENANT", "tenant id")
    ctx.authorize("tenant.show", tenant=tenant_id)
    tenant = ctx.tenant(tenant_id)
    keys = ctx.store.list_keys(tenant.id)
    data = tenant_json(tenant, directory.active_key(keys), ctx.store.latest_checks(tenant.id), keys)
    ctx.emit(data, tenant_text(data))
    return EXIT_OK


def list_command(ctx: Context, args: argparse.Namespace) -> int:
    ctx.authorize("tenant.list")
    keys: dict[str, list[DkimKey]] = {}
    for key in ctx.store.list_keys():  # one query for all tenants, not one per tenant
        keys.setdefault(key.tenant, []).append(key)
    items = [tenant_json(t, directory.active_key(keys.get(t.id, []))) for t in ctx.store.list_tenants()]
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
