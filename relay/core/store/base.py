"""The store's interface (`Store`), what it hands out, and `open_store`, which picks the backend.

Both the admin side and the relay read and write only through `Store`. Two backends implement it:
SQLite (sqlite.py) and PostgreSQL (postgres.py), each with its own list of versioned migrations
that mirror each other (add a migration to both lists). Every write of what the relay serves
(tenants, keys, clients) bumps `generation()`, which running relays watch to pick up admin changes
without a restart; audit rows, checks, leases, notifications, users and tokens do not. Writes
grouped in `transaction()` are all-or-nothing.

Each bump also records what it changed (a `Changed`: one tenant, or one client) in the store's change
log, in the same transaction, so a running relay reads only what moved since the generation it holds
(`read_changes`) instead of every tenant again. The log keeps the last `KEEP_CHANGES` generations;
a relay further behind than that reads the whole `read_snapshot`, as it does when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from relay.core.models import (
    ApiToken,
    AuditEntry,
    CheckResult,
    Client,
    DkimKey,
    KeyState,
    Tenant,
    TenantStatus,
    User,
)
from relay.core.settings import POSTGRES_SCHEMES, Settings, redact_url

# Generations the change log keeps. A relay that falls further behind (a long outage, a bulk import)
# reads a full snapshot instead; one `tenant set` is about four generations, one client one per row
# it writes, so this is thousands of admin changes: a few hundred kilobytes of log at most.
KEEP_CHANGES = 10_000


class ChangeKind(StrEnum):
    """What one generation changed, as the relay serves it (the change log's `kind`)."""

    TENANT = "tenant"  # the tenant's row (sender, status) or any of its DKIM keys
    CLIENT = "client"  # the client's row (secret hash), its tenants or its networks


@dataclass(frozen=True)
class Changed:
    """One entry of the change log: which tenant (by id) or client (by name) a bump was for."""

    kind: ChangeKind
    key: str

    @classmethod
    def tenant(cls, tenant_id: str) -> Changed:
        return cls(ChangeKind.TENANT, tenant_id)

    @classmethod
    def client(cls, name: str) -> Changed:
        return cls(ChangeKind.CLIENT, name)


class StoreError(Exception):
    """The store cannot be opened or used (bad path, newer schema, locked too long)."""


@dataclass(frozen=True)
class Notification:
    """One queued RELAY_NOTIFY_URL POST (a JSON payload) and its delivery attempts so far."""

    id: int
    created_at: datetime
    payload: str
    attempts: int
    next_attempt_at: datetime
    last_error: str


@dataclass(frozen=True)
class WebSession:
    """A signed-in browser of `relay-admin serve`: the cookie's SHA-256 (never the cookie), its user,
    the CSRF token its forms carry, and when it ends."""

    id_hash: str
    user: str
    csrf_token: str = field(repr=False)
    created_at: datetime
    expires_at: datetime


class StoreMissing(StoreError):
    """The store named by RELAY_DATABASE does not exist, and this command may not create one."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Store(Protocol):
    def close(self) -> None: ...
    def transaction(self) -> Any: ...
    def generation(self) -> int: ...

    def add_user(self, user: User) -> None: ...
    def get_user(self, name: str) -> User | None: ...
    def list_users(self) -> list[User]: ...

    def save_tenant(self, tenant: Tenant) -> None: ...
    def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    def list_tenants(self) -> list[Tenant]: ...

    def add_key(self, key: DkimKey) -> None: ...
    def list_keys(self, tenant_id: str | None = None) -> list[DkimKey]: ...
    def set_key_state(
        self, tenant_id: str, selector: str, state: KeyState, remove_after: datetime | None = None
    ) -> None: ...

    def delete_key(self, tenant_id: str, selector: str) -> None: ...

    def add_client(self, client: Client) -> None: ...
    def get_client(self, name: str) -> Client | None: ...
    def list_clients(self) -> list[Client]: ...
    def delete_client(self, name: str) -> bool: ...

    def save_checks(self, tenant_id: str, checks: list[CheckResult]) -> None: ...
    def latest_checks(self, tenant_id: str) -> list[CheckResult]: ...

    def add_audit(self, entry: AuditEntry) -> None: ...
    def list_audit(self, tenant_id: str | None = None) -> list[AuditEntry]: ...

    def acquire_lease(self, name: str, holder: str, until: datetime, now: datetime) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...

    def add_notification(self, payload: str, now: datetime) -> int: ...
    def due_notifications(self, now: datetime, limit: int = 20) -> list[Notification]: ...
    def notification_delivered(self, notification_id: int, now: datetime) -> None: ...
    def notification_failed(self, notification_id: int, error: str, retry_at: datetime | None) -> None: ...

    def set_client_secret(self, name: str, secret_hash: str) -> bool: ...

    def save_lifecycle(
        self, tenant_id: str, *, status: TenantStatus, failing_since: datetime | None,
        verified_at: datetime | None, last_validated_at: datetime | None,
    ) -> None: ...
    def queued_notification(self, notification_id: int) -> Notification | None: ...

    def set_password_hash(self, name: str, password_hash: str) -> bool: ...
    def add_token(self, token: ApiToken) -> None: ...
    def tokens_with_prefix(self, prefix: str) -> list[ApiToken]: ...
    def revoke_token(self, prefix: str, now: datetime) -> int: ...
    def read_snapshot(self) -> StoreSnapshot: ...
    def read_changes(self, since: int) -> StoreChanges | None: ...

    def add_web_session(self, session: WebSession) -> None: ...
    def get_web_session(self, id_hash: str) -> WebSession | None: ...
    def delete_web_session(self, id_hash: str) -> None: ...
    def delete_expired_web_sessions(self, now: datetime) -> int: ...
    def add_signin_failure(self, key: str, time: datetime, *, forget_before: datetime) -> None: ...
    def signin_failures(self, key: str, since: datetime) -> list[datetime]: ...
    def clear_signin_failures(self, key: str) -> None: ...


def store_location(settings: Settings) -> str:
    """Where the store is, as messages name it: the absolute path, whatever directory we run in
    (a PostgreSQL URL without its password)."""
    if settings.database.startswith(POSTGRES_SCHEMES):
        return redact_url(settings.database)
    return str(settings.database_path.resolve())


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """The backend named by RELAY_DATABASE: sqlite:///PATH, or postgresql://... (relay/core/store/postgres.py).

    With `create=False` a store that does not exist yet raises `StoreMissing` (naming the absolute
    path looked for) instead of being created silently wherever the command happens to run; for
    PostgreSQL, the database must exist and hold the relay's schema (a server that cannot be
    reached is a `StoreError`).
    """
    if settings.database.startswith(POSTGRES_SCHEMES):
        from relay.core.store.postgres import (
            PostgresStore,  # imported here: psycopg loads only when used
        )

        return PostgresStore(settings.database, create=create)
    path = settings.database_path
    if not create and not path.exists():
        raise StoreMissing(
            f"the store {store_location(settings)} does not exist (RELAY_DATABASE={settings.database}); "
            "point RELAY_DATABASE at the existing store, or start a new one with "
            "`relay-admin user add NAME --role owner`"
        )
    from relay.core.store.sqlite import SqliteStore

    return SqliteStore(path)


@dataclass(frozen=True)
class StoreSnapshot:
    """What the relay serves from, read in one read transaction (`Store.read_snapshot`)."""

    generation: int
    tenants: list[Tenant]
    keys: list[DkimKey]
    clients: list[Client]


@dataclass(frozen=True)
class StoreChanges:
    """What the relay serves that changed after generation `since` (`Store.read_changes`), read in one
    read transaction like `StoreSnapshot`: the tenants and clients as they are now at `generation`."""

    generation: int
    tenants: list[Tenant]  # changed or added, with every one of their keys in `keys`
    keys: list[DkimKey]
    clients: list[Client]  # changed or added
    removed_tenants: list[str]  # changed, and no longer in the store
    removed_clients: list[str]
