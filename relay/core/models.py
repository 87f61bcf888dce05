"""Typed records shared by the relay and the admin side: tenants, senders, keys, clients, users, checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    ACCOUNTANT = "accountant"  # may look, never change


class TenantStatus(StrEnum):
    """The sender's lifecycle (SPEC.md "Lifecycle"); the store converts it at its boundary."""

    PENDING = "pending"  # never verified
    VERIFIED = "verified"
    DEGRADED = "degraded"  # a required record fails definitively while verified; still sends as itself
    FAILED = "failed"  # still failing after RELAY_GRACE: treated as not verified (platform sender)

    @property
    def sends_as_itself(self) -> bool:
        """Whether mail leaves as the tenant's own sender, signed with its own key."""
        return self in (TenantStatus.VERIFIED, TenantStatus.DEGRADED)


class KeyState(StrEnum):
    ACTIVE = "active"  # signs now
    NEXT = "next"  # issued by a rotation, waiting to be seen in DNS
    RETIRING = "retiring"  # still published for in-flight verification, removed after the overlap


class CheckStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"
    MISMATCH = "mismatch"
    WARNING = "warning"
    ERROR = "error"  # DNS could not answer: "could not check", never "missing"


@dataclass(frozen=True)
class Sender:
    """What the settings screen holds: Name, E-mail address, Domain (+ the return-path label)."""

    name: str
    email: str  # local@domain with the domain in A-labels, lower case
    domain: str  # A-labels, lower case, no trailing dot
    return_path_label: str = "bounce"

    @property
    def return_path_host(self) -> str:
        return f"{self.return_path_label}.{self.domain}"

    @property
    def bounce_address(self) -> str:
        """The envelope sender (RFC 5321 MAIL FROM) on the tenant's return-path host."""
        return f"bounces@{self.return_path_host}"


@dataclass(frozen=True)
class DkimKey:
    tenant: str
    selector: str
    state: KeyState
    public_key_b64: str  # base64 DER SubjectPublicKeyInfo, exactly what `p=` publishes
    key_file: str  # relative to RELAY_KEYS_DIR
    created_at: datetime
    remove_after: datetime | None = None


@dataclass(frozen=True)
class Tenant:
    id: str
    sender: Sender
    status: TenantStatus
    created_at: datetime
    updated_at: datetime
    last_validated_at: datetime | None = None
    verified_at: datetime | None = None
    # When a required record was first seen failing definitively since the last full success;
    # RELAY_GRACE counts from here (SPEC.md "Lifecycle"). None while everything is ok.
    failing_since: datetime | None = None


@dataclass(frozen=True)
class User:
    """A person with a role; `tenants` limits what it sees and acts on (empty: every tenant)."""

    name: str
    role: Role
    created_at: datetime
    tenants: tuple[str, ...] = ()  # a customer's own admin or accountant; owners are never scoped
    password_hash: str | None = field(default=None, repr=False, compare=False)  # salted scrypt

    @property
    def scoped(self) -> bool:
        """Whether the user sees only its own tenants (else every tenant: platform staff)."""
        return bool(self.tenants)


@dataclass(frozen=True)
class ApiToken:
    """An admin API token that acts as `user`; only its prefix (to name it) and a hash are kept."""

    prefix: str
    user: str
    token_hash: str = field(repr=False)
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Client:
    """An internal service allowed to submit mail (AUTH user = name, or by source network)."""

    name: str
    secret_hash: str
    all_tenants: bool
    tenants: tuple[str, ...]
    networks: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class CheckResult:
    """One record's validation outcome, as `validate --json` shows it and the store keeps it."""

    purpose: str  # dkim | return-path | dmarc
    type: str  # TXT | CNAME
    name: str
    status: CheckStatus
    expected: str
    found: tuple[str, ...]
    diagnosis: str
    checked_at: datetime
    required: bool = True


@dataclass(frozen=True)
class AuditEntry:
    time: datetime
    actor: str
    action: str
    tenant: str | None
    outcome: str  # done | denied
    detail: str = ""
    id: int | None = field(default=None, compare=False)
