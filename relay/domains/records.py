"""Records are data: one pure function from a tenant's sender and keys to the DNS records to publish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from relay.core.models import DkimKey, KeyState, Sender

Purpose = Literal["dkim", "return-path", "dmarc"]
DEFAULT_TTL = 3600


@dataclass(frozen=True)
class DnsRecord:
    type: Literal["TXT", "CNAME"]
    name: str  # fully qualified, A-labels, no trailing dot
    value: str  # the record's data as one string (TXT unsplit)
    ttl: int
    purpose: Purpose
    required: bool
    zone: str  # the tenant's domain: `name` relative to it is what a DNS provider's form wants
    state: KeyState | None = None  # DKIM only: active / next / retiring
    remove_after: datetime | None = None  # DKIM retiring only: when the record may be deleted

    @property
    def relative_name(self) -> str:
        """The host as typed into a provider's form (`s1._domainkey`, `@` for the zone itself)."""
        if self.name == self.zone:
            return "@"
        return self.name[: -len(self.zone) - 1]

    def as_json(self, now: datetime | None = None) -> dict[str, object]:
        """SPEC.md's shape; DKIM adds `state`, `remove_after` (retiring) and a `note` (next, retiring)."""
        data: dict[str, object] = {
            "type": self.type,
            "name": self.name,
            "value": self.value,
            "ttl": self.ttl,
            "purpose": self.purpose,
            "required": self.required,
        }
        if self.state is not None:
            data["state"] = self.state.value
        if self.state is KeyState.RETIRING:
            data["remove_after"] = self.remove_after.isoformat() if self.remove_after else None
        note = key_note(self.state, self.remove_after, now)
        if note:
            data["note"] = note
        return data


def human_time(value: datetime) -> str:
    """`2026-12-07 12:00 UTC`: how a time is written for people (and never read as a date by a spreadsheet)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def removable(remove_after: datetime | None, now: datetime) -> bool:
    """Whether a retiring key's record may be deleted now (its overlap is over)."""
    return remove_after is not None and remove_after <= now


def key_note(state: KeyState | None, remove_after: datetime | None, now: datetime | None) -> str:
    """What IT must do with a DKIM record in this state; "" for the active key (or no key at all)."""
    if state is KeyState.NEXT:
        return ("publish this record now, beside the active key: the relay switches to this key on "
                "the first validation that sees it published")
    if state is not KeyState.RETIRING:
        return ""
    if remove_after is None:
        return "still verifies mail signed before the key change; keep it until the overlap is over"
    if now is not None and removable(remove_after, now):
        return f"safe to remove since {human_time(remove_after)}: delete this record from the zone"
    return (f"still verifies mail signed before the key change: keep it published until "
            f"{human_time(remove_after)}, then remove it")


_LIFECYCLE = {KeyState.RETIRING: 0, KeyState.ACTIVE: 1, KeyState.NEXT: 2}


def in_lifecycle_order(keys: list[DkimKey]) -> list[DkimKey]:
    """Retiring, active, next (oldest first within a state): a key change read from top to bottom."""
    return sorted(keys, key=lambda key: (_LIFECYCLE[key.state], key.created_at, key.selector))


def dkim_value(public_key_b64: str) -> str:
    """RFC 6376 3.6.1: `v=DKIM1` first, `k=rsa`, `p=` base64 SubjectPublicKeyInfo."""
    return f"v=DKIM1; k=rsa; p={public_key_b64}"


def dmarc_value(rua: str | None) -> str:
    """The DMARC record we advise when a domain has none (RFC 7489 6.3): monitor only."""
    return f"v=DMARC1; p=none; rua={rua}" if rua else "v=DMARC1; p=none"


def records_for(
    sender: Sender,
    keys: list[DkimKey],
    *,
    return_path_target: str,
    dmarc_rua: str | None = None,
    ttl: int = DEFAULT_TTL,
) -> list[DnsRecord]:
    """Every record for one tenant: DKIM per published key (retiring, active, next), the return-path
    CNAME, DMARC advice.

    DMARC is never required: an existing record is checked, never replaced (SPEC.md).
    """
    domain = sender.domain
    records = [
        DnsRecord(
            type="TXT",
            name=f"{key.selector}._domainkey.{domain}",
            value=dkim_value(key.public_key_b64),
            ttl=ttl,
            purpose="dkim",
            required=key.state is not KeyState.RETIRING,
            zone=domain,
            state=key.state,
            remove_after=key.remove_after if key.state is KeyState.RETIRING else None,
        )
        for key in in_lifecycle_order(keys)
    ]
    records.append(
        DnsRecord(
            type="CNAME",
            name=sender.return_path_host,
            value=return_path_target,
            ttl=ttl,
            purpose="return-path",
            required=True,
            zone=domain,
        )
    )
    records.append(
        DnsRecord(
            type="TXT",
            name=f"_dmarc.{domain}",
            value=dmarc_value(dmarc_rua),
            ttl=ttl,
            purpose="dmarc",
            required=False,
            zone=domain,
        )
    )
    return records
