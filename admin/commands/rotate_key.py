"""`relay-admin rotate-key TENANT`: issue the next DKIM key and say what IT must publish."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from admin import inputs, services
from admin.context import EXIT_OK, Context
from admin.rotation import Rotation
from relay.domains.checks.common import duration
from relay.domains.records import DnsRecord


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
    """RELAY_KEY_OVERLAP in words, to the second (`relay.domains.checks.common.duration`)."""
    return duration(seconds, exact=True)


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
    rotation = services.rotate(ctx, tenant_id)
    record = services.new_record(ctx, rotation)
    key_file = Path(ctx.settings.keys_dir).absolute() / rotation.key.key_file
    data = services.rotation_json(ctx, rotation) | {"key_file": str(key_file)}
    ctx.emit(data, rotation_text(rotation, record, key_file, duration_words(ctx.settings.key_overlap)))
    return EXIT_OK
