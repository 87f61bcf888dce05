"""One service per thing an admin asks for, shared by the CLI commands and the web (API and page).

A `relay-admin` command and a web request for the same thing call the same function here, with the
same `Context` (the acting user), so they check, refuse, change and audit alike. Each service checks
in one order, the one SPEC.md gives the API: the tenant first (unknown, or outside the acting user's
scope: the unknown-tenant `UsageError`), then the role (`PermissionDenied`, audited), then the input
(`UsageError` naming the field), and only then changes anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from openpyxl import Workbook

from admin import inputs
from admin.context import Context, StorageError, UsageError
from admin.export import build_workbook
from admin.export_texts import LANGUAGES
from admin.rotation import ACTION as ROTATE_ACTION
from admin.rotation import Rotation, RotationRefused, rotate_key
from admin.rotation import UnknownTenant as RotationUnknownTenant
from admin.tenants import KeyWriteError, TenantChange, set_tenant
from relay.core.models import AuditEntry, CheckResult, DkimKey, Sender, Tenant
from relay.core.store import utcnow
from relay.domains import lifecycle, notify
from relay.domains.notify import Delivery
from relay.domains.records import DnsRecord, in_lifecycle_order, key_note, records_for
from relay.domains.validation import UnknownTenant, ValidationReport, validate_tenant
from relay.policy import directory

DEFAULT_RETURN_PATH = "bounce"


# --- shapes: the `--json` objects, for the CLI and the API alike -------------------------------------

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


def check_json(c: CheckResult) -> dict[str, Any]:
    """One stored check as `tenant show --json` lists it."""
    return {
        "purpose": c.purpose, "type": c.type, "name": c.name, "status": c.status.value,
        "expected": c.expected, "found": list(c.found), "diagnosis": c.diagnosis,
        "checked_at": _iso(c.checked_at),
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
        data["checks"] = [check_json(c) for c in checks]
    return data


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """SPEC.md's audit shape: time (ISO 8601), actor, action, tenant, outcome (done|denied), detail."""
    return {"time": entry.time.isoformat(), "actor": entry.actor, "action": entry.action,
            "tenant": entry.tenant, "outcome": entry.outcome, "detail": entry.detail}


# --- reading ----------------------------------------------------------------------------------------

def list_tenants(ctx: Context) -> list[dict[str, Any]]:
    """`tenant list --json`: the tenants in the acting user's scope."""
    ctx.authorize("tenant.list")
    keys: dict[str, list[DkimKey]] = {}
    for key in ctx.store.list_keys():  # one query for all tenants, not one per tenant
        keys.setdefault(key.tenant, []).append(key)
    return [tenant_json(t, directory.active_key(keys.get(t.id, []))) for t in ctx.visible_tenants()]


def show_tenant(ctx: Context, tenant_id: str) -> dict[str, Any]:
    """`tenant show --json`: sender, status, keys and the last validation's checks."""
    tenant = ctx.tenant(tenant_id, action="tenant.show")
    ctx.authorize("tenant.show", tenant=tenant.id)
    return tenant_view(ctx, tenant)


def tenant_view(ctx: Context, tenant: Tenant) -> dict[str, Any]:
    """`tenant show --json` of a tenant already looked up and authorised."""
    keys = ctx.store.list_keys(tenant.id)
    return tenant_json(tenant, directory.active_key(keys), ctx.store.latest_checks(tenant.id), keys)


def tenant_records(ctx: Context, tenant_id: str, action: str = "records") -> tuple[Tenant, list[DnsRecord]]:
    """The tenant and every record it publishes, retiring keys included (still published until removed)."""
    tenant = ctx.tenant(tenant_id, action=action)
    ctx.authorize(action, tenant=tenant.id)
    return tenant, records_of(ctx, tenant)


def records_of(ctx: Context, tenant: Tenant) -> list[DnsRecord]:
    """The records of a tenant already looked up and authorised."""
    return records_for(
        tenant.sender,
        ctx.store.list_keys(tenant.id),
        return_path_target=ctx.settings.return_path_target,
        dmarc_rua=ctx.settings.dmarc_rua,
    )


def language(lang: str) -> str:
    """The hand-over's language, as `export --lang` accepts it."""
    if lang not in LANGUAGES:
        choices = ", ".join(repr(code) for code in LANGUAGES)
        raise UsageError(f"--lang: invalid choice: {lang!r} (choose from {choices})")
    return lang


def export_workbook(ctx: Context, tenant_id: str, lang: str) -> tuple[Tenant, Workbook]:
    """The Excel hand-over in `lang`, with the last validation's result beside each record."""
    tenant, records = tenant_records(ctx, tenant_id, "export")
    texts = LANGUAGES[language(lang)]
    return tenant, build_workbook(tenant.sender, records, ctx.store.latest_checks(tenant.id), texts)


def audit_entries(ctx: Context, tenant_id: str | None) -> list[AuditEntry]:
    """The audit log, oldest first: of one tenant, or every entry the acting user may see."""
    if tenant_id is not None:
        tenant_id = ctx.tenant(tenant_id, action="audit").id
    ctx.authorize("audit", tenant=tenant_id)
    if tenant_id is not None:
        return ctx.store.list_audit(tenant_id)
    user = ctx.acting_user
    if user is None or not user.scoped:
        return ctx.store.list_audit()
    # A scoped user sees its own tenants' entries only: scope never reveals another tenant.
    visible = {t.id for t in ctx.visible_tenants()}
    return [e for e in ctx.store.list_audit() if e.tenant in visible]


# --- changing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SenderInput:
    """The settings screen's three fields as typed (and the return-path label, None = keep it)."""

    name: str
    email: str
    domain: str
    return_path: str | None = None


def may_set_sender(ctx: Context, tenant_id: str) -> str:
    """Scope, then role, for `tenant set`; returns the acting user's name.

    A tenant that exists must be in the acting user's scope. One that does not is created only by
    an unscoped user: for a scoped one it is outside the scope, answered as an unknown tenant
    (`Context.authorize` decides both, in that order).
    """
    return ctx.authorize("tenant.set", tenant=tenant_id)


def sender_from_input(ctx: Context, tenant_id: str, raw: SenderInput) -> Sender:
    """Every input check, before anything is written; each message names its field."""
    name = inputs.display_name(raw.name)
    address = inputs.email(raw.email)
    domain = inputs.sender_domain(raw.domain)
    inputs.email_within_domain(address, domain)
    if raw.return_path is not None:
        label = inputs.return_path_label(raw.return_path)
    else:  # an omitted label keeps the tenant's own: omitting it must not change the records
        existing = ctx.store.get_tenant(tenant_id)
        label = existing.sender.return_path_label if existing else DEFAULT_RETURN_PATH
    inputs.return_path_clear_of_address(label, address, domain)
    return Sender(name=name, email=address, domain=domain, return_path_label=label)


def sender_warnings(sender: Sender) -> list[str]:
    """What `tenant set` accepts but says plainly: an address below the domain is signed d=<domain>,
    which strict DKIM alignment (adkim=s) at the From domain's DMARC policy rejects (issue 11)."""
    host = sender.email.rpartition("@")[2]
    if host == sender.domain:
        return []
    return [f"{sender.email} is below {sender.domain}: DKIM will sign d={sender.domain}, so a DMARC"
            f" policy with adkim=s (strict alignment) for {host} would fail DMARC for this address;"
            f" use an address at {sender.domain}, or --domain {host}, to avoid that"]


def sender_problems(raw: SenderInput) -> list[UsageError]:
    """Each of the three fields checked on its own, so a form can show every wrong field at once
    (`set_sender` stops at the first, as the CLI does, and also checks the fields together)."""
    problems: list[UsageError] = []
    for check, value in ((inputs.display_name, raw.name), (inputs.email, raw.email),
                         (inputs.sender_domain, raw.domain)):
        try:
            check(value)
        except UsageError as exc:
            problems.append(exc)
    return problems


def set_sender(ctx: Context, tenant_id: str, raw: SenderInput) -> TenantChange:
    """`tenant set`: create or change the sender; a new address or domain gets a new key (audited)."""
    actor = may_set_sender(ctx, tenant_id)
    tenant_id = inputs.identifier(tenant_id, "TENANT", "tenant id")
    sender = sender_from_input(ctx, tenant_id, raw)
    # Absolute once, here: every path reported is then one the reader can find.
    keys_dir = Path(ctx.settings.keys_dir).absolute()
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


def validate(ctx: Context, tenant_id: str) -> ValidationReport:
    """`validate`: check DNS now (seconds), apply the lifecycle, then deliver its notifications."""
    tenant = ctx.tenant(tenant_id, action="validate")
    actor = ctx.authorize("validate", tenant=tenant.id)
    holder = lifecycle.default_holder()
    try:
        report = asyncio.run(validate_tenant(ctx.store, ctx.settings, tenant.id, actor=actor,
                                             holder=holder))
    except UnknownTenant:
        raise ctx.unknown_tenant(tenant_id) from None
    send_notifications(ctx, report.notifications, holder=holder)
    return report


def rotate(ctx: Context, tenant_id: str) -> Rotation:
    """`rotate-key`: issue the next DKIM key beside the active one (audited)."""
    tenant = ctx.tenant(tenant_id, action=ROTATE_ACTION)
    actor = ctx.authorize(ROTATE_ACTION, tenant=tenant.id)
    keys_dir = Path(ctx.settings.keys_dir).absolute()
    try:
        return rotate_key(ctx.store, keys_dir, tenant.id, actor=actor)
    except RotationRefused as exc:
        raise UsageError(str(exc)) from None
    except RotationUnknownTenant:
        raise ctx.unknown_tenant(tenant_id) from None
    except KeyWriteError as exc:
        raise StorageError(f"{exc}; RELAY_KEYS_DIR={ctx.settings.keys_dir} must be a directory this "
                           "user can write; nothing changed") from None


def new_record(ctx: Context, rotation: Rotation) -> DnsRecord:
    """The record IT must publish for the new key, exactly as `records` lists it."""
    records = records_for(rotation.tenant.sender, [rotation.key],
                          return_path_target=ctx.settings.return_path_target)
    return next(record for record in records if record.purpose == "dkim")


def rotation_json(ctx: Context, rotation: Rotation) -> dict[str, Any]:
    """`rotate-key --json` without the key file's path (the CLI adds it; the API keeps it to itself)."""
    return {
        "tenant": rotation.tenant.id, "selector": rotation.key.selector,
        "state": rotation.key.state.value, "record": new_record(ctx, rotation).as_json(utcnow()),
        "active_selector": rotation.active.selector, "key_overlap_seconds": ctx.settings.key_overlap,
    }


# --- notifications after a validation ---------------------------------------------------------------

def send_notifications(ctx: Context, ids: Sequence[int], *, holder: str, due: bool = False) -> None:
    """One delivery attempt right after the commit; a failure is a warning, retried later."""
    if ctx.settings.notify_url is None or not (ids or due):
        return
    deliveries = asyncio.run(notify.deliver_due(ctx.store, ctx.settings, holder=holder) if due
                             else notify.deliver(ctx.store, ctx.settings, ids, holder=holder))
    for delivery in deliveries:
        if not delivery.delivered:
            ctx.notice(undelivered(delivery, notify.where(ctx.settings.notify_url)))


def undelivered(delivery: Delivery, url: str) -> str:
    later = (f"queued, next attempt after {when(delivery.retry_at)}" if delivery.retry_at
             else "given up after 24 hours of attempts")
    return (f"warning: notification {delivery.notification} could not be delivered to {url}"
            f" ({delivery.error}); {later}")


def when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC"
