"""Records are data: one pure function from a tenant's sender and keys to the DNS records to publish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relay.models import DkimKey, KeyState, Sender

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

    @property
    def relative_name(self) -> str:
        """The host as typed into a provider's form (`s1._domainkey`, `@` for the zone itself)."""
        if self.name == self.zone:
            return "@"
        return self.name[: -len(self.zone) - 1]

    def as_json(self) -> dict[str, object]:
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
        return data


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
    """Every record for one tenant: DKIM per published key, the return-path CNAME, DMARC advice.

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
        )
        for key in keys
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
