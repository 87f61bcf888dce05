"""`relay-admin rotate-key TENANT`: issue the next DKIM key and say what IT must publish."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from admin import inputs
from admin.context import EXIT_OK, Context, StorageError, UsageError
from admin.records import DnsRecord, records_for
from admin.rotation import ACTION, Rotation, RotationRefused, UnknownTenant, rotate_key
from admin.tenants import KeyWriteError
from relay.store import utcnow


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "rotate-key", parents=[common], help="issue a tenant's next DKIM key under a new selector",
        description="Issue a new DKIM key beside the active one. The relay switches to it on the "
                    "validation that sees its record published; the old key then stays published "
                    "for RELAY_KEY_OVERLAP.",
    )
    parser.add_argument("tenant", metavar="TENANT")
    parser.set_defaults(handler=run)


def duration_words(seconds: float) -> str:
    """`7 days`, `36 hours`, `90 minutes`, `1 second`: RELAY_KEY_OVERLAP as people say it."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    count = round(seconds)
    return f"{count} second{'' if count == 1 else 's'}"


def new_record(ctx: Context, rotation: Rotation) -> DnsRecord:
    """The record IT must publish for the new key, exactly as `records` lists it."""
    records = records_for(rotation.tenant.sender, [rotation.key],
                          return_path_target=ctx.settings.return_path_target)
    return next(record for record in records if record.purpose == "dkim")


def rotation_text(rotation: Rotation, record: DnsRecord, key_file: Path, overlap: str) -> str:
    """What was issued, the record to publish, and the next step."""
    tid, old, new = rotation.tenant.id, rotation.active.selector, rotation.key.selector
    return "\n".join([
        f"tenant {tid}: new DKIM key, selector {new}, state next; {old} (active) keeps signing",
        f"key file: {key_file}",
        "",
        f"publish this record in the zone of {record.zone}, beside the active key's:",
        f"  host:  {record.relative_name}",
        f"  name:  {record.name}",
        f"  type:  {record.type}",
        f"  value: {record.value}",
        "",
        f"next: publish it, then `relay-admin validate {tid}`: the relay switches to it on the "
        f"validation that sees it; the old key {old} stays published until {overlap} after that "
        f"switch (RELAY_KEY_OVERLAP), when `relay-admin records {tid}` says it is safe to remove",
    ])


def run(ctx: Context, args: argparse.Namespace) -> int:
    tenant_id = inputs.identifier(args.tenant, "TENANT", "tenant id")
    actor = ctx.authorize(ACTION, tenant=tenant_id)
    ctx.tenant(tenant_id)  # an unknown tenant is exit 2, before any key is generated
    keys_dir = Path(ctx.settings.keys_dir).absolute()
    try:
        rotation = rotate_key(ctx.store, keys_dir, tenant_id, actor=actor)
    except RotationRefused as exc:
        raise UsageError(str(exc)) from None
    except UnknownTenant:
        raise ctx.unknown_tenant(tenant_id) from None
    except KeyWriteError as exc:
        raise StorageError(f"{exc}; RELAY_KEYS_DIR={ctx.settings.keys_dir} must be a directory this "
                           "user can write; nothing changed") from None
    record = new_record(ctx, rotation)
    key_file = keys_dir / rotation.key.key_file
    data = {
        "tenant": tenant_id, "selector": rotation.key.selector, "state": rotation.key.state.value,
        "record": record.as_json(utcnow()), "active_selector": rotation.active.selector,
        "key_file": str(key_file), "key_overlap_seconds": ctx.settings.key_overlap,
    }
    ctx.emit(data, rotation_text(rotation, record, key_file, duration_words(ctx.settings.key_overlap)))
    return EXIT_OK
