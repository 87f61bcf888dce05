"""The SQLite backend of `Store`: one file in WAL mode (the relay reads while the CLI writes), with
its versioned schema in `MIGRATIONS` (mirrored by postgres.py's `PG_MIGRATIONS`)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from relay.core.models import (
    ApiToken,
    AuditEntry,
    CheckResult,
    CheckStatus,
    Client,
    DkimKey,
    KeyState,
    Role,
    Sender,
    Tenant,
    TenantStatus,
    User,
)
from relay.core.store.base import (
    KEEP_CHANGES,
    Changed,
    ChangeKind,
    Notification,
    StoreChanges,
    StoreError,
    StoreSnapshot,
    WebSession,
)

# Each entry moves the schema one version up; applied in order inside one transaction.
# Never edit a released migration: add the next one, here and (in PostgreSQL's dialect) in
# relay/core/store/postgres.py's PG_MIGRATIONS; tests/test_store_pg.py checks both give the same tables and columns.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta VALUES ('generation', 0);
    CREATE TABLE users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, domain TEXT NOT NULL,
        return_path_label TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        last_validated_at TEXT, verified_at TEXT);
    CREATE TABLE dkim_keys (
        tenant TEXT NOT NULL REFERENCES tenants(id), selector TEXT NOT NULL, state TEXT NOT NULL,
        public_key TEXT NOT NULL, key_file TEXT NOT NULL, created_at TEXT NOT NULL, remove_after TEXT,
        PRIMARY KEY (tenant, selector));
    CREATE TABLE clients (
        name TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, all_tenants INTEGER NOT NULL,
        created_at TEXT NOT NULL);
    CREATE TABLE client_tenants (
        client TEXT NOT NULL REFERENCES clients(name), tenant TEXT NOT NULL,
        PRIMARY KEY (client, tenant));
    CREATE TABLE client_networks (
        client TEXT NOT NULL REFERENCES clients(name), network TEXT NOT NULL,
        PRIMARY KEY (client, network));
    CREATE TABLE checks (
        tenant TEXT NOT NULL REFERENCES tenants(id), purpose TEXT NOT NULL, type TEXT NOT NULL,
        name TEXT NOT NULL, status TEXT NOT NULL, expected TEXT NOT NULL, found TEXT NOT NULL,
        diagnosis TEXT NOT NULL, required INTEGER NOT NULL, checked_at TEXT NOT NULL);
    CREATE INDEX checks_tenant ON checks(tenant);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, tenant TEXT, outcome TEXT NOT NULL, detail TEXT NOT NULL);
    CREATE INDEX audit_tenant ON audit(tenant);
    """,
    # 2: the lifecycle. `failing_since` starts RELAY_GRACE; a lease lets exactly one process (of many
    # workers or instances) run a given job, such as one tenant's re-validation; notifications is a
    # transactional outbox for RELAY_NOTIFY_URL, written in the same transaction as the status change.
    """
    ALTER TABLE tenants ADD COLUMN failing_since TEXT;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TEXT NOT NULL);
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL, delivered_at TEXT, last_error TEXT NOT NULL DEFAULT '');
    CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
    """,
    # 3: users scoped to some tenants (none: every tenant), sign-in passwords and admin API tokens,
    # each stored only as a salted scrypt hash; a token is named by its prefix, never by its secret.
    """
    ALTER TABLE users ADD COLUMN password_hash TEXT;
    CREATE TABLE user_tenants (
        user_name TEXT NOT NULL REFERENCES users(name), tenant TEXT NOT NULL REFERENCES tenants(id),
        PRIMARY KEY (user_name, tenant));
    CREATE TABLE tokens (
        prefix TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name),
        token_hash TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
    CREATE INDEX tokens_user ON tokens(user_name);
    """,
    # 4: the admin web server's sign-in: sessions (only a hash of the cookie is kept, so a copy of the
    # store signs nobody in) and recent failed sign-ins per user name and per client address, which
    # slow down the next attempt; kept here so that several `relay-admin serve` instances agree.
    """
    CREATE TABLE web_sessions (
        id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name),
        csrf_token TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL);
    CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);
    CREATE TABLE signin_failures (key TEXT NOT NULL, time TEXT NOT NULL);
    CREATE INDEX signin_failures_key ON signin_failures(key, time);
    """,
    # 5: the change log: one row per generation bump, written in the bump's own transaction, naming
    # the tenant or client it changed, so a running relay reads only what moved (`read_changes`)
    # instead of every tenant. Generations before this migration have no row: a relay that holds one
    # of them reads a full snapshot. The oldest rows are pruned as new ones come (KEEP_CHANGES).
    """
    CREATE TABLE changes (generation INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _req_dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


class SqliteStore:
    """SQLite backend (WAL, so the relay reads while the CLI writes)."""

    def __init__(self, path: Path, *, keep_changes: int = KEEP_CHANGES) -> None:
        if keep_changes < 1:
            raise ValueError("keep_changes must be at least 1: the newest generation's change is always kept")
        self._keep_changes = keep_changes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # The store holds secret hashes, sessions and tokens: readable by its owner only.
                # SQLite gives the -wal and -shm files the same mode as the database file.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from exc
        self._lock = threading.RLock()
        self._depth = 0
        self._migrate()

    def close(self) -> None:
        # Under the lock: a reload running in a worker thread finishes its query first. Closing a
        # sqlite3 connection while another thread is inside it can crash the interpreter.
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store has schema version {version}, newer than this program's {SCHEMA_VERSION}"
            )
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for index in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[index].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {index + 1}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all; nesting joins the outer transaction."""
        with self._lock:
            if self._depth == 0:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StoreError(f"the store is not writable: {exc}") from exc
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"the store could not commit: {exc}") from exc

    def _write(self, sql: str, params: tuple[Any, ...] = (), *, served: Changed | None) -> int:
        """Run one write. `served` names the tenant or client a write of what the relay serves changed:
        the generation moves and the change log says what for. None for rows the relay does not serve
        from (audit, checks, leases, notifications), so they never make a relay worker look at all."""
        with self.transaction():
            try:
                cursor = self._db.execute(sql, params)
                if served is not None:
                    self._bump(served)
                return cursor.rowcount
            except sqlite3.Error as exc:  # translated here, at the backend's one boundary
                raise StoreError(f"the store refused a write: {exc}") from exc

    def _bump(self, served: Changed) -> None:
        """Move the generation and log what for, inside the caller's transaction: a relay never sees
        a generation without its change row (or the reverse). One row per generation, so `read_changes`
        knows by counting whether the log still covers a relay's generation."""
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        self._db.execute("INSERT INTO changes (generation, kind, key) SELECT value, ?, ? FROM meta "
                         "WHERE key = 'generation'", (served.kind.value, served.key))
        self._db.execute("DELETE FROM changes WHERE generation <= "
                         "(SELECT value FROM meta WHERE key = 'generation') - ?", (self._keep_changes,))

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"the store could not be read: {exc}") from exc

    def generation(self) -> int:
        return int(self._rows("SELECT value FROM meta WHERE key = 'generation'")[0][0])

    # users: the relay does not serve them, so their writes leave the generation alone
    def add_user(self, user: User) -> None:
        with self.transaction():
            self._write(
                "INSERT INTO users (name, role, created_at, password_hash) VALUES (?, ?, ?, ?)",
                (user.name, user.role.value, _ts(user.created_at), user.password_hash),
                served=None,
            )
            for tenant in user.tenants:
                self._write("INSERT INTO user_tenants (user_name, tenant) VALUES (?, ?)",
                            (user.name, tenant), served=None)

    def get_user(self, name: str) -> User | None:
        rows = self._rows("SELECT * FROM users WHERE name = ?", (name,))
        return self._user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        return [self._user(row) for row in self._rows("SELECT * FROM users ORDER BY name")]

    def _user(self, row: sqlite3.Row) -> User:
        tenants = self._rows("SELECT tenant FROM user_tenants WHERE user_name = ? ORDER BY tenant",
                             (row["name"],))
        return User(name=row["name"], role=Role(row["role"]), created_at=_req_dt(row["created_at"]),
                    tenants=tuple(r[0] for r in tenants), password_hash=row["password_hash"])

    # tenants
    def save_tenant(self, tenant: Tenant) -> None:
        s = tenant.sender
        self._write(
            """INSERT INTO tenants (id, name, email, domain, return_path_label, status,
                   created_at, updated_at, last_validated_at, verified_at, failing_since)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
                   domain = excluded.domain, return_path_label = excluded.return_path_label,
                   status = excluded.status, updated_at = excluded.updated_at,
                   last_validated_at = excluded.last_validated_at, verified_at = excluded.verified_at,
                   failing_since = excluded.failing_since""",
            (
                tenant.id, s.name, s.email, s.domain, s.return_path_label, tenant.status.value,
                _ts(tenant.created_at), _ts(tenant.updated_at),
                _ts(tenant.last_validated_at), _ts(tenant.verified_at), _ts(tenant.failing_since),
            ),
            served=Changed.tenant(tenant.id),
        )

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = self._rows("SELECT * FROM tenants WHERE id = ?", (tenant_id,))
        return self._tenant(rows[0]) if rows else None

    def list_tenants(self) -> list[Tenant]:
        return [self._tenant(row) for row in self._rows("SELECT * FROM tenants ORDER BY id")]

    @staticmethod
    def _tenant(row: sqlite3.Row) -> Tenant:
        try:
            status = TenantStatus(row["status"])
        except ValueError as exc:  # a status this program does not know: written by a newer one
            raise StoreError(f"tenant {row['id']!r} has an unknown status {row['status']!r}") from exc
        return Tenant(
            id=row["id"],
            sender=Sender(
                name=row["name"], email=row["email"], domain=row["domain"],
                return_path_label=row["return_path_label"],
            ),
            status=status,
            created_at=_req_dt(row["created_at"]),
            updated_at=_req_dt(row["updated_at"]),
            last_validated_at=_dt(row["last_validated_at"]),
            verified_at=_dt(row["verified_at"]),
            failing_since=_dt(row["failing_since"]),
        )

    # DKIM keys
    def add_key(self, key: DkimKey) -> None:
        self._write(
            """INSERT INTO dkim_keys (tenant, selector, state, public_key, key_file, created_at,
                   remove_after) VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (
                key.tenant, key.selector, key.state.value, key.public_key_b64, key.key_file,
                _ts(key.created_at), _ts(key.remove_after),
            ),
            served=Changed.tenant(key.tenant),
        )

    def list_keys(self, tenant_id: str | None = None) -> list[DkimKey]:
        if tenant_id is None:
            rows = self._rows("SELECT * FROM dkim_keys ORDER BY tenant, created_at")
        else:
            rows = self._rows(
                "SELECT * FROM dkim_keys WHERE tenant = ? ORDER BY created_at", (tenant_id,)
            )
        return [self._key(row) for row in rows]

    @staticmethod
    def _key(row: sqlite3.Row) -> DkimKey:
        return DkimKey(
            tenant=row["tenant"], selector=row["selector"], state=KeyState(row["state"]),
            public_key_b64=row["public_key"], key_file=row["key_file"],
            created_at=_req_dt(row["created_at"]), remove_after=_dt(row["remove_after"]),
        )

    def set_key_state(
        self, tenant_id: str, selector: str, state: KeyState, remove_after: datetime | None = None
    ) -> None:
        self._write(
            "UPDATE dkim_keys SET state = ?, remove_after = ? WHERE tenant = ? AND selector = ?",
            (state.value, _ts(remove_after), tenant_id, selector),
            served=Changed.tenant(tenant_id),
        )

    def delete_key(self, tenant_id: str, selector: str) -> None:
        self._write("DELETE FROM dkim_keys WHERE tenant = ? AND selector = ?", (tenant_id, selector),
                    served=Changed.tenant(tenant_id))

    # clients
    def add_client(self, client: Client) -> None:
        served = Changed.client(client.name)
        with self.transaction():
            self._write(
                "INSERT INTO clients (name, secret_hash, all_tenants, created_at) VALUES (?, ?, ?, ?)",
                (client.name, client.secret_hash, int(client.all_tenants), _ts(client.created_at)),
                served=served,
            )
            for tenant in client.tenants:
                self._write("INSERT INTO client_tenants VALUES (?, ?)", (client.name, tenant), served=served)
            for network in client.networks:
                self._write("INSERT INTO client_networks VALUES (?, ?)", (client.name, network), served=served)

    def delete_client(self, name: str) -> bool:
        """Remove a client with its scope and networks (its credentials stop working at the next
        reload of every relay); False when there is no such client."""
        served = Changed.client(name)
        with self.transaction():
            self._write("DELETE FROM client_tenants WHERE client = ?", (name,), served=served)
            self._write("DELETE FROM client_networks WHERE client = ?", (name,), served=served)
            return self._write("DELETE FROM clients WHERE name = ?", (name,), served=served) == 1

    def get_client(self, name: str) -> Client | None:
        rows = self._rows("SELECT * FROM clients WHERE name = ?", (name,))
        return self._client(rows[0]) if rows else None

    def list_clients(self) -> list[Client]:
        return [self._client(row) for row in self._rows("SELECT * FROM clients ORDER BY name")]

    def _client(self, row: sqlite3.Row) -> Client:
        name = row["name"]
        tenants = self._rows("SELECT tenant FROM client_tenants WHERE client = ? ORDER BY tenant", (name,))
        networks = self._rows("SELECT network FROM client_networks WHERE client = ? ORDER BY network", (name,))
        return Client(
            name=name, secret_hash=row["secret_hash"], all_tenants=bool(row["all_tenants"]),
            tenants=tuple(r[0] for r in tenants), networks=tuple(r[0] for r in networks),
            created_at=_req_dt(row["created_at"]),
        )

    # validation results: the latest complete set per tenant replaces the previous one
    def save_checks(self, tenant_id: str, checks: list[CheckResult]) -> None:
        with self.transaction():
            self._write("DELETE FROM checks WHERE tenant = ?", (tenant_id,), served=None)
            for c in checks:
                self._write(
                    """INSERT INTO checks (tenant, purpose, type, name, status, expected, found,
                           diagnosis, required, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        tenant_id, c.purpose, c.type, c.name, c.status.value, c.expected,
                        json.dumps(list(c.found)), c.diagnosis, int(c.required), _ts(c.checked_at),
                    ),
                    served=None,
                )

    def latest_checks(self, tenant_id: str) -> list[CheckResult]:
        rows = self._rows("SELECT * FROM checks WHERE tenant = ? ORDER BY rowid", (tenant_id,))
        return [
            CheckResult(
                purpose=row["purpose"], type=row["type"], name=row["name"],
                status=CheckStatus(row["status"]), expected=row["expected"],
                found=tuple(json.loads(row["found"])), diagnosis=row["diagnosis"],
                checked_at=_req_dt(row["checked_at"]), required=bool(row["required"]),
            )
            for row in rows
        ]

    # audit log: append-only
    def add_audit(self, entry: AuditEntry) -> None:
        self._write(
            "INSERT INTO audit (time, actor, action, tenant, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (_ts(entry.time), entry.actor, entry.action, entry.tenant, entry.outcome, entry.detail),
            served=None,
        )

    def list_audit(self, tenant_id: str | None = None) -> list[AuditEntry]:
        if tenant_id is None:
            rows = self._rows("SELECT * FROM audit ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM audit WHERE tenant = ? ORDER BY id", (tenant_id,))
        return [
            AuditEntry(
                id=row["id"], time=_req_dt(row["time"]), actor=row["actor"], action=row["action"],
                tenant=row["tenant"], outcome=row["outcome"], detail=row["detail"],
            )
            for row in rows
        ]

    # leases: one holder at a time per name, until it expires (a crashed holder frees it by time)
    def acquire_lease(self, name: str, holder: str, until: datetime, now: datetime) -> bool:
        """Take or renew `name` for `holder` until `until`; False while another holder has it."""
        changed = self._write(
            """INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
               WHERE leases.holder = excluded.holder OR leases.expires_at <= ?""",
            (name, holder, _ts(until), _ts(now)),
            served=None,
        )
        return changed == 1

    def release_lease(self, name: str, holder: str) -> None:
        self._write("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder), served=None)

    # notifications: a transactional outbox for RELAY_NOTIFY_URL
    def add_notification(self, payload: str, now: datetime) -> int:
        with self.transaction():
            self._write("INSERT INTO notifications (created_at, payload, next_attempt_at) VALUES (?, ?, ?)",
                        (_ts(now), payload, _ts(now)), served=None)
            return int(self._rows("SELECT last_insert_rowid()")[0][0])

    def due_notifications(self, now: datetime, limit: int = 20) -> list[Notification]:
        rows = self._rows(
            """SELECT * FROM notifications WHERE state = 'queued' AND next_attempt_at <= ?
               ORDER BY id LIMIT ?""", (_ts(now), limit))
        return [
            Notification(id=row["id"], created_at=_req_dt(row["created_at"]), payload=row["payload"],
                         attempts=row["attempts"], next_attempt_at=_req_dt(row["next_attempt_at"]),
                         last_error=row["last_error"])
            for row in rows
        ]

    def notification_delivered(self, notification_id: int, now: datetime) -> None:
        self._write("""UPDATE notifications SET state = 'delivered', delivered_at = ?, attempts = attempts + 1
                       WHERE id = ?""",
                    (_ts(now), notification_id), served=None)

    def notification_failed(self, notification_id: int, error: str, retry_at: datetime | None) -> None:
        """Count a failed attempt; `retry_at=None` gives up (kept, with its last error, for the record)."""
        if retry_at is None:
            self._write("""UPDATE notifications SET attempts = attempts + 1, last_error = ?,
                               state = 'abandoned' WHERE id = ?""",
                        (error, notification_id), served=None)
        else:
            self._write("""UPDATE notifications SET attempts = attempts + 1, last_error = ?,
                               next_attempt_at = ? WHERE id = ?""",
                        (error, _ts(retry_at), notification_id), served=None)

    def set_client_secret(self, name: str, secret_hash: str) -> bool:
        """Replace a client's stored secret hash (its scope is untouched); False when there is no such client.

        Bumps the generation: a running relay must see the new hash to accept the new secret.
        """
        return self._write("UPDATE clients SET secret_hash = ? WHERE name = ?", (secret_hash, name),
                           served=Changed.client(name)) == 1

    # the lifecycle's own columns, written without touching the sender (no lost `tenant set`)
    def save_lifecycle(
        self, tenant_id: str, *, status: TenantStatus, failing_since: datetime | None,
        verified_at: datetime | None, last_validated_at: datetime | None,
    ) -> None:
        """Store a validation's result; the generation moves only when the status, which the relay
        serves, changes (a timestamp alone must not make every relay worker rebuild its snapshot)."""
        with self.transaction():
            rows = self._rows("SELECT status FROM tenants WHERE id = ?", (tenant_id,))
            if not rows:
                raise StoreError(f"tenant {tenant_id!r} is not in the store")
            self._write(
                """UPDATE tenants SET status = ?, failing_since = ?, verified_at = ?,
                       last_validated_at = ? WHERE id = ?""",
                (status.value, _ts(failing_since), _ts(verified_at), _ts(last_validated_at), tenant_id),
                served=Changed.tenant(tenant_id) if rows[0]["status"] != status.value else None,
            )

    def queued_notification(self, notification_id: int) -> Notification | None:
        """One notification while it still waits for delivery (None once delivered or given up)."""
        rows = self._rows("SELECT * FROM notifications WHERE id = ? AND state = 'queued'",
                          (notification_id,))
        return Notification(id=rows[0]["id"], created_at=_req_dt(rows[0]["created_at"]),
                            payload=rows[0]["payload"], attempts=rows[0]["attempts"],
                            next_attempt_at=_req_dt(rows[0]["next_attempt_at"]),
                            last_error=rows[0]["last_error"]) if rows else None


    # what a running relay serves from, read as one consistent whole
    @contextmanager
    def read_transaction(self) -> Iterator[None]:
        """Every read inside sees one snapshot of the store (one WAL read transaction), never a write
        committed meanwhile; for reads only. Inside `transaction()` it joins that one."""
        with self._lock:  # no other thread's statement may run inside this connection's transaction
            if self._depth == 0:
                try:
                    self._db.execute("BEGIN")  # deferred: the snapshot is taken at the first SELECT
                except sqlite3.Error as exc:
                    raise StoreError(f"the store could not be read: {exc}") from exc
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._end_read()

    def _end_read(self) -> None:
        """End a read transaction (nothing was written: there is nothing to lose)."""
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"the store could not be read: {exc}") from exc

    def read_snapshot(self) -> StoreSnapshot:
        """Generation, tenants, keys and clients as of one moment: a tenant's new sender is never
        paired with its old keys (or the reverse) by a change committed between two SELECTs."""
        with self.read_transaction():
            return StoreSnapshot(generation=self.generation(), tenants=self.list_tenants(),
                                 keys=self.list_keys(), clients=self.list_clients())

    def read_changes(self, since: int) -> StoreChanges | None:
        """What changed after generation `since`, as of one moment (one read transaction, as
        `read_snapshot`: a tenant's new sender is never paired with its old keys); None when the log
        does not hold every change after `since` (pruned, written before the log existed, or by an
        older program that writes none) or `since` is ahead of the store (a backup put in its place):
        read the full snapshot then."""
        with self.read_transaction():
            generation = self.generation()
            # One row per generation (the primary key): the log covers `since` only if it holds every
            # generation after it. Pruning removes the oldest; a program from before the log (an old
            # `relay-admin` during a rolling upgrade) bumps without a row, maybe between two rows.
            if since > generation or self._rows("SELECT count(*) FROM changes WHERE generation > ?",
                                                (since,))[0][0] != generation - since:
                return None
            changed = "SELECT key FROM changes WHERE kind = ? AND generation > ?"
            tenant_ids = {row[0] for row in self._rows(changed, (ChangeKind.TENANT.value, since))}
            names = {row[0] for row in self._rows(changed, (ChangeKind.CLIENT.value, since))}
            # Subqueries, not IN (?, ?, ...): no bound on how many ids one change set may name.
            tenants = [self._tenant(row) for row in self._rows(
                f"SELECT * FROM tenants WHERE id IN ({changed}) ORDER BY id", (ChangeKind.TENANT.value, since))]
            keys = [self._key(row) for row in self._rows(
                f"SELECT * FROM dkim_keys WHERE tenant IN ({changed}) ORDER BY tenant, created_at",
                (ChangeKind.TENANT.value, since))]
            clients = [self._client(row) for row in self._rows(
                f"SELECT * FROM clients WHERE name IN ({changed}) ORDER BY name", (ChangeKind.CLIENT.value, since))]
            return StoreChanges(
                generation=generation, tenants=tenants, keys=keys, clients=clients,
                removed_tenants=sorted(tenant_ids - {tenant.id for tenant in tenants}),
                removed_clients=sorted(names - {client.name for client in clients}),
            )

    # sign-in: passwords and admin API tokens, only ever as hashes
    def set_password_hash(self, name: str, password_hash: str) -> bool:
        """Replace a user's password hash; False when there is no such user."""
        return self._write("UPDATE users SET password_hash = ? WHERE name = ?",
                           (password_hash, name), served=None) == 1

    def add_token(self, token: ApiToken) -> None:
        self._write(
            "INSERT INTO tokens (prefix, user_name, token_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
            (token.prefix, token.user, token.token_hash, _ts(token.created_at), _ts(token.revoked_at)),
            served=None,
        )

    def tokens_with_prefix(self, prefix: str) -> list[ApiToken]:
        rows = self._rows("SELECT * FROM tokens WHERE prefix = ?", (prefix,))
        return [
            ApiToken(prefix=row["prefix"], user=row["user_name"], token_hash=row["token_hash"],
                     created_at=_req_dt(row["created_at"]), revoked_at=_dt(row["revoked_at"]))
            for row in rows
        ]

    def revoke_token(self, prefix: str, now: datetime) -> int:
        """End the token(s) with `prefix` at `now`; how many were still live."""
        return self._write("UPDATE tokens SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                           (_ts(now), prefix), served=None)


    # the admin web server's sessions and failed sign-ins: nothing the relay serves (no generation bump)
    def add_web_session(self, session: WebSession) -> None:
        self._write(
            """INSERT INTO web_sessions (id_hash, user_name, csrf_token, created_at, expires_at)
               VALUES (?, ?, ?, ?, ?)""",
            (session.id_hash, session.user, session.csrf_token, _ts(session.created_at),
             _ts(session.expires_at)),
            served=None,
        )

    def get_web_session(self, id_hash: str) -> WebSession | None:
        rows = self._rows("SELECT * FROM web_sessions WHERE id_hash = ?", (id_hash,))
        if not rows:
            return None
        row = rows[0]
        return WebSession(id_hash=row["id_hash"], user=row["user_name"], csrf_token=row["csrf_token"],
                          created_at=_req_dt(row["created_at"]), expires_at=_req_dt(row["expires_at"]))

    def delete_web_session(self, id_hash: str) -> None:
        self._write("DELETE FROM web_sessions WHERE id_hash = ?", (id_hash,), served=None)

    def delete_expired_web_sessions(self, now: datetime) -> int:
        return self._write("DELETE FROM web_sessions WHERE expires_at <= ?", (_ts(now),), served=None)

    def add_signin_failure(self, key: str, time: datetime, *, forget_before: datetime) -> None:
        """Count a failed sign-in for `key` (`user:NAME`, `ip:ADDRESS`); older ones are forgotten."""
        with self.transaction():
            self._write("DELETE FROM signin_failures WHERE time < ?", (_ts(forget_before),), served=None)
            self._write("INSERT INTO signin_failures (key, time) VALUES (?, ?)", (key, _ts(time)),
                        served=None)

    def signin_failures(self, key: str, since: datetime) -> list[datetime]:
        rows = self._rows("SELECT time FROM signin_failures WHERE key = ? AND time >= ? ORDER BY time",
                          (key, _ts(since)))
        return [_req_dt(row["time"]) for row in rows]

    def clear_signin_failures(self, key: str) -> None:
        self._write("DELETE FROM signin_failures WHERE key = ?", (key,), served=None)
