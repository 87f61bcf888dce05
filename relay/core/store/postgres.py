"""The store's PostgreSQL backend (RELAY_DATABASE=postgresql://...): the `Store` methods of SQLite, over a pool.

Same behaviour as `SqliteStore`, for several relay and admin instances sharing one database:

- **Schema.** `PG_MIGRATIONS` holds, index for index, the PostgreSQL form of `relay.core.store.sqlite.MIGRATIONS`
  (typed columns: `timestamptz`, `boolean`, identity keys), so both backends count the same schema
  versions. The version lives in the one-row table `schema_version`; instances that start together
  migrate once, under the store's advisory lock.
- **Transactions.** `transaction()` takes one pooled connection for the calling thread (nesting joins
  it) and first takes the store's transaction-level advisory lock: writers run one at a time across
  every instance, as under SQLite's `BEGIN IMMEDIATE`, so a read-then-write inside a transaction
  (a compare-and-set: `save_lifecycle`, a validation result, a lease, `tenant set`) has no writer in
  between. Reads outside a transaction never wait for a writer (MVCC); `read_snapshot` reads in one
  `REPEATABLE READ` transaction.
- **Errors.** Every psycopg error becomes a `StoreError` here, the backend's one boundary: one line,
  naming the store by its URL without the password. Nothing hangs: connecting, waiting for a pooled
  connection, a statement and a lock wait each have a bound, and the pool checks a connection before
  handing it out, so after a server restart or failover the next call simply works again.
- **Changes.** A transaction that moves `generation()` also sends `NOTIFY relay_generation` (delivered
  on commit); `wait_for_change(timeout)` waits for one on a LISTEN connection of its own. Each bump
  writes its row of the change log in the same transaction; `read_changes` reads what moved since a
  generation in one `REPEATABLE READ` transaction, as `read_snapshot` does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
from relay.core.settings import redact_url
from relay.core.store.base import (
    KEEP_CHANGES,
    Changed,
    ChangeKind,
    Notification,
    StoreChanges,
    StoreError,
    StoreMissing,
    StoreSnapshot,
    WebSession,
)
from relay.core.store.sqlite import MIGRATIONS

Row = dict[str, Any]
_T = TypeVar("_T")
Conn = psycopg.Connection[DictRow]

# pg_advisory_xact_lock key of the store's one write lock (any fixed bigint: "relay" in ASCII).
WRITE_LOCK = 0x72656C6179
CHANGE_CHANNEL = "relay_generation"

# Each entry is the PostgreSQL form of the same index in relay.core.store.sqlite.MIGRATIONS: same tables and
# columns, PostgreSQL types. Never edit a released one; add the next one to both lists together.
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta VALUES ('generation', 0);
    CREATE TABLE users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL);
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, domain TEXT NOT NULL,
        return_path_label TEXT NOT NULL, status TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
        last_validated_at TIMESTAMPTZ, verified_at TIMESTAMPTZ);
    CREATE TABLE dkim_keys (
        tenant TEXT NOT NULL REFERENCES tenants(id), selector TEXT NOT NULL, state TEXT NOT NULL,
        public_key TEXT NOT NULL, key_file TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL,
        remove_after TIMESTAMPTZ, PRIMARY KEY (tenant, selector));
    CREATE TABLE clients (
        name TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, all_tenants BOOLEAN NOT NULL,
        created_at TIMESTAMPTZ NOT NULL);
    CREATE TABLE client_tenants (
        client TEXT NOT NULL REFERENCES clients(name), tenant TEXT NOT NULL,
        PRIMARY KEY (client, tenant));
    CREATE TABLE client_networks (
        client TEXT NOT NULL REFERENCES clients(name), network TEXT NOT NULL,
        PRIMARY KEY (client, network));
    CREATE TABLE checks (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- SQLite's rowid: the order written
        tenant TEXT NOT NULL REFERENCES tenants(id), purpose TEXT NOT NULL, type TEXT NOT NULL,
        name TEXT NOT NULL, status TEXT NOT NULL, expected TEXT NOT NULL, found TEXT[] NOT NULL,
        diagnosis TEXT NOT NULL, required BOOLEAN NOT NULL, checked_at TIMESTAMPTZ NOT NULL);
    CREATE INDEX checks_tenant ON checks(tenant);
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time TIMESTAMPTZ NOT NULL,
        actor TEXT NOT NULL, action TEXT NOT NULL, tenant TEXT, outcome TEXT NOT NULL,
        detail TEXT NOT NULL);
    CREATE INDEX audit_tenant ON audit(tenant);
    """,
    # 2: the lifecycle (failing_since, leases, the notification outbox).
    """
    ALTER TABLE tenants ADD COLUMN failing_since TIMESTAMPTZ;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
    CREATE TABLE notifications (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL,
        payload TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TIMESTAMPTZ NOT NULL,
        delivered_at TIMESTAMPTZ, last_error TEXT NOT NULL DEFAULT '');
    CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
    """,
    # 3: users scoped to tenants, sign-in passwords and admin API tokens (hashes only).
    """
    ALTER TABLE users ADD COLUMN password_hash TEXT;
    CREATE TABLE user_tenants (
        user_name TEXT NOT NULL REFERENCES users(name), tenant TEXT NOT NULL REFERENCES tenants(id),
        PRIMARY KEY (user_name, tenant));
    CREATE TABLE tokens (
        prefix TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name),
        token_hash TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, revoked_at TIMESTAMPTZ);
    CREATE INDEX tokens_user ON tokens(user_name);
    """,
    # 4: the admin web server's sessions and recent failed sign-ins.
    """
    CREATE TABLE web_sessions (
        id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name),
        csrf_token TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
    CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);
    CREATE TABLE signin_failures (key TEXT NOT NULL, time TIMESTAMPTZ NOT NULL);
    CREATE INDEX signin_failures_key ON signin_failures(key, time);
    """,
    # 5: the change log, one row per generation bump (see relay/core/store/sqlite.py).
    """
    CREATE TABLE changes (generation BIGINT PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);
    """,
]


def schema_version() -> int:
    """The version this program writes; the two lists must agree (tests/test_store_pg.py checks it)."""
    if len(PG_MIGRATIONS) != len(MIGRATIONS):
        raise StoreError(f"this program's PostgreSQL schema has {len(PG_MIGRATIONS)} versions but its "
                         f"SQLite schema {len(MIGRATIONS)}: relay/core/store/postgres.py lags relay/core/store/sqlite.py")
    return len(PG_MIGRATIONS)


@dataclass(frozen=True)
class Timeouts:
    """Bounds on every wait, so a server that is gone is an error within seconds, never a hang."""

    connect: int = 5  # libpq connect_timeout, whole seconds
    pool: float = 5.0  # waiting for a pooled connection (all busy, or the server unreachable)
    statement: float = 30.0
    lock: float = 10.0  # the write lock held by another instance's transaction, or a row lock
    idle_in_transaction: float = 120.0  # a crashed holder of the write lock releases it by then


def _connect_params(url: str, timeouts: Timeouts) -> dict[str, Any]:
    """libpq parameters: the URL's own win; ours fill in timeouts, keepalives and UTC."""
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"RELAY_DATABASE {redact_url(url)!r} is not a PostgreSQL URL: "
                         f"{_one_line(str(exc), url)}") from None
    ours = (f"-c statement_timeout={int(timeouts.statement * 1000)} -c lock_timeout={int(timeouts.lock * 1000)} "
            f"-c idle_in_transaction_session_timeout={int(timeouts.idle_in_transaction * 1000)} -c TimeZone=UTC")
    params["options"] = f"{ours} {params['options']}" if params.get("options") else ours
    defaults = {"connect_timeout": str(timeouts.connect), "application_name": "accounton-relay",
                "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
                "keepalives_count": "3", "tcp_user_timeout": "15000"}
    for key, value in defaults.items():
        params.setdefault(key, value)
    return params


def _one_line(message: str, url: str) -> str:
    """A driver message as one line, without the URL's password whatever libpq echoed."""
    text = " ".join(message.split())
    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return text.replace(url, redact_url(url))


class _Local(threading.local):
    """The calling thread's transaction: its connection, depth, and what happened inside."""

    conn: Conn | None = None
    depth = 0
    failed = False  # a statement failed: PostgreSQL has aborted the transaction; it cannot commit
    bumped = False  # the generation moved: tell listeners on commit
    read_only = False


class PostgresStore:
    """PostgreSQL backend; safe to share between threads (each thread's transaction has its own connection)."""

    def __init__(self, url: str, *, create: bool = True, timeouts: Timeouts = Timeouts(),
                 max_connections: int = 5, keep_changes: int = KEEP_CHANGES) -> None:
        if keep_changes < 1:
            raise ValueError("keep_changes must be at least 1: the newest generation's change is always kept")
        self._keep_changes = keep_changes
        self._url = url  # with its password: only libpq and the redaction see it
        self.location = redact_url(url)
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._params = _connect_params(url, timeouts)
        self._local = _Local()
        self._listener: Conn | None = None
        self._listener_lock = threading.Lock()
        self._migrate(create=create)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            "", connection_class=psycopg.Connection[DictRow],
            kwargs={**self._params, "autocommit": True, "row_factory": dict_row},
            min_size=1, max_size=max_connections, open=True, name="relay-store",
            check=ConnectionPool.check_connection, timeout=timeouts.pool,
            # Give up a run of failed reconnects soon: the next request starts a fresh run at once
            # instead of waiting out a long backoff after the server is back.
            reconnect_timeout=max(timeouts.pool, 2.0),
        )

    # errors: the backend's one boundary

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        if isinstance(exc, PoolTimeout):  # its own text says nothing of why
            why = (f"no connection within {self._timeouts.pool:g}s (the server cannot be reached, or all "
                   f"{self._max_connections} connections are busy)")
        else:
            why = _one_line(str(exc), self._url) or type(exc).__name__
        return StoreError(f"the store {self.location} {doing}: {why}")

    def _connect(self) -> Conn:
        try:
            return psycopg.Connection[DictRow].connect(**self._params, autocommit=True, row_factory=dict_row)
        except psycopg.Error as exc:
            raise self._error("cannot be reached", exc) from None

    # schema

    def _migrate(self, *, create: bool) -> None:
        """Bring the schema to this program's version; `create=False` wants an existing one."""
        target = schema_version()
        with self._connect() as conn:
            try:
                version = self._version(conn)
                if version is None and not create:
                    raise StoreMissing(
                        f"the store {self.location} does not exist (the database has no relay schema yet); "
                        "point RELAY_DATABASE at the existing store, or start a new one with "
                        "`relay-admin user add NAME --role owner`")
                if version is not None and version > target:
                    raise StoreError(f"the store {self.location} has schema version {version}, "
                                     f"newer than this program's {target}")
                if version == target:
                    return
                conn.execute("BEGIN")
                # Instances starting together queue here; each re-reads the version under the lock.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                version = self._version(conn)
                if version is None:
                    conn.execute("INSERT INTO schema_version VALUES (0)")
                    version = 0
                if version > target:
                    raise StoreError(f"the store {self.location} has schema version {version}, "
                                     f"newer than this program's {target}")
                for index in range(version, target):
                    conn.execute(PG_MIGRATIONS[index].encode())
                    conn.execute("UPDATE schema_version SET version = %s", (index + 1,))
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise self._error("could not be set up", exc) from None

    @staticmethod
    def _version(conn: Conn) -> int | None:
        """The schema version, or None for a database without the relay's schema."""
        if conn.execute("SELECT to_regclass('schema_version') AS t").fetchone() == {"t": None}:
            return None
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        return int(rows[0]["version"]) if rows else None

    # transactions

    def close(self) -> None:
        self._pool.close()
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    @contextmanager
    def _begin(self, begin: str, *, lock: bool) -> Iterator[None]:
        """The outermost transaction of this thread: one pooled connection, committed at the end."""
        local = self._local
        try:
            conn = self._pool.getconn()
        except psycopg.Error as exc:
            raise self._error("cannot be reached", exc) from None
        try:
            try:
                conn.execute(begin)
                if lock:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            except psycopg.Error as exc:
                raise self._error("is not writable" if lock else "could not be read", exc) from None
            local.conn, local.depth, local.failed, local.bumped = conn, 1, False, False
            local.read_only = not lock
            try:
                yield
            except BaseException:
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            self._commit(conn)
        finally:
            local.conn, local.depth = None, 0
            self._pool.putconn(conn)  # a broken connection is discarded there, not reused

    def _commit(self, conn: Conn) -> None:
        local = self._local
        try:
            if local.failed:
                conn.execute("ROLLBACK")
                raise StoreError(f"the store {self.location} rolled back a transaction whose statement failed")
            if local.bumped:
                conn.execute(f"NOTIFY {CHANGE_CHANNEL}")
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")
            raise self._error("could not commit", exc) from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all, one writer at a time across every
        instance; nesting joins the outer transaction."""
        local = self._local
        if local.depth and local.read_only:
            raise StoreError("a write transaction cannot start inside a read transaction")
        with self._joined() if local.depth else self._begin("BEGIN", lock=True):
            yield

    @contextmanager
    def read_transaction(self) -> Iterator[None]:
        """Every read inside sees one snapshot, never a write committed meanwhile; for reads only.
        Inside `transaction()` it joins that one."""
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        with self._joined() if self._local.depth else self._begin(begin, lock=False):
            yield

    @contextmanager
    def _joined(self) -> Iterator[None]:
        """A transaction inside one this thread has open: it joins that one (commits with it)."""
        self._local.depth += 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def _run(self, conn: Conn, doing: str, sql: str, params: tuple[Any, ...]) -> psycopg.Cursor[DictRow]:
        try:
            return conn.execute(sql, params)
        except psycopg.Error as exc:
            self._local.failed = True
            raise self._error(doing, exc) from None

    def _write(self, sql: str, params: tuple[Any, ...] = (), *, served: Changed | None) -> int:
        """Run one write; `served` names the tenant or client it changed, None for rows the relay does
        not serve from (see SqliteStore._write)."""
        with self.transaction():
            conn = self._local.conn
            assert conn is not None
            count = self._run(conn, "refused a write", sql, params).rowcount
            if served is not None:
                self._bump(conn, served)
            return count

    def _bump(self, conn: Conn, served: Changed) -> None:
        """Move the generation and log what for, in the caller's transaction (see SqliteStore._bump);
        under the write lock, so generations are handed out one at a time across every instance."""
        self._run(conn, "refused a write", "UPDATE meta SET value = value + 1 WHERE key = 'generation'", ())
        self._run(conn, "refused a write", "INSERT INTO changes (generation, kind, key) SELECT value, %s, %s "
                  "FROM meta WHERE key = 'generation'", (served.kind.value, served.key))
        self._run(conn, "refused a write", "DELETE FROM changes WHERE generation <= "
                  "(SELECT value FROM meta WHERE key = 'generation') - %s", (self._keep_changes,))
        self._local.bumped = True

    def _first(self, sql: str, params: tuple[Any, ...], build: Callable[[Row], _T]) -> _T | None:
        """`build` of the first row `sql` finds, or None when it finds none."""
        rows = self._rows(sql, params)
        return build(rows[0]) if rows else None

    def _column(self, column: str, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        """`column` of every row `sql` finds, in order."""
        return tuple(row[column] for row in self._rows(sql, params))

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        conn = self._local.conn
        if conn is not None:
            return self._run(conn, "could not be read", sql, params).fetchall()
        try:
            with self._pool.connection() as pooled:  # autocommit: one statement, one round trip
                return pooled.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise self._error("could not be read", exc) from None

    def generation(self) -> int:
        return int(self._rows("SELECT value FROM meta WHERE key = 'generation'")[0]["value"])

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for a committed change of `generation()`; True when one came.

        A hook for running relays (poll less, see changes at once); a lost connection is a
        `StoreError`, and the next call listens again.
        """
        with self._listener_lock:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = self._connect()
                    self._listener.execute(f"LISTEN {CHANGE_CHANNEL}")
                if not any(True for _ in self._listener.notifies(timeout=timeout, stop_after=1)):
                    return False
                for _ in self._listener.notifies(timeout=0.0):  # the changes that came meanwhile: one wake-up
                    pass
                return True
            except psycopg.Error as exc:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                raise self._error("stopped sending changes", exc) from None

    def read_snapshot(self) -> StoreSnapshot:
        """Generation, tenants, keys and clients as of one moment (one REPEATABLE READ transaction)."""
        with self.read_transaction():
            return StoreSnapshot(generation=self.generation(), tenants=self.list_tenants(),
                                 keys=self.list_keys(), clients=self.list_clients())

    def read_changes(self, since: int) -> StoreChanges | None:
        """What changed after generation `since`, as of one moment (one REPEATABLE READ transaction);
        None when the log does not hold every change after `since` (see SqliteStore.read_changes)."""
        with self.read_transaction():
            generation = self.generation()
            # Every generation after `since` must have its row (see SqliteStore.read_changes).
            if since > generation or self._rows("SELECT count(*) AS n FROM changes WHERE generation > %s",
                                                (since,))[0]["n"] != generation - since:
                return None
            changed = "SELECT key FROM changes WHERE kind = %s AND generation > %s"
            tenant_ids = set(self._column("key", changed, (ChangeKind.TENANT.value, since)))
            names = set(self._column("key", changed, (ChangeKind.CLIENT.value, since)))
            tenants = [_tenant(row) for row in self._rows(
                f"SELECT * FROM tenants WHERE id IN ({changed}) ORDER BY id", (ChangeKind.TENANT.value, since))]
            keys = [_key(row) for row in self._rows(
                f"SELECT * FROM dkim_keys WHERE tenant IN ({changed}) ORDER BY tenant, created_at, selector",
                (ChangeKind.TENANT.value, since))]
            clients = [self._client(row) for row in self._rows(
                f"SELECT * FROM clients WHERE name IN ({changed}) ORDER BY name", (ChangeKind.CLIENT.value, since))]
            return StoreChanges(
                generation=generation, tenants=tenants, keys=keys, clients=clients,
                removed_tenants=sorted(tenant_ids - {tenant.id for tenant in tenants}),
                removed_clients=sorted(names - {client.name for client in clients}),
            )

    # users: the relay does not serve them, so their writes leave the generation alone
    def add_user(self, user: User) -> None:
        with self.transaction():
            self._write("INSERT INTO users (name, role, created_at, password_hash) VALUES (%s, %s, %s, %s)",
                        (user.name, user.role.value, user.created_at, user.password_hash), served=None)
            for tenant in user.tenants:
                self._write("INSERT INTO user_tenants (user_name, tenant) VALUES (%s, %s)",
                            (user.name, tenant), served=None)

    def get_user(self, name: str) -> User | None:
        return self._first("SELECT * FROM users WHERE name = %s", (name,), self._user)

    def list_users(self) -> list[User]:
        return [self._user(row) for row in self._rows("SELECT * FROM users ORDER BY name")]

    def _user(self, row: Row) -> User:
        tenants = self._column("tenant", "SELECT tenant FROM user_tenants WHERE user_name = %s ORDER BY tenant",
                               (row["name"],))
        return User(name=row["name"], role=Role(row["role"]), created_at=row["created_at"],
                    tenants=tenants, password_hash=row["password_hash"])

    # tenants
    def save_tenant(self, tenant: Tenant) -> None:
        s = tenant.sender
        self._write(
            """INSERT INTO tenants (id, name, email, domain, return_path_label, status,
                   created_at, updated_at, last_validated_at, verified_at, failing_since)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
                   domain = excluded.domain, return_path_label = excluded.return_path_label,
                   status = excluded.status, updated_at = excluded.updated_at,
                   last_validated_at = excluded.last_validated_at, verified_at = excluded.verified_at,
                   failing_since = excluded.failing_since""",
            (tenant.id, s.name, s.email, s.domain, s.return_path_label, tenant.status.value,
             tenant.created_at, tenant.updated_at, tenant.last_validated_at, tenant.verified_at,
             tenant.failing_since),
            served=Changed.tenant(tenant.id),
        )

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._first("SELECT * FROM tenants WHERE id = %s", (tenant_id,), _tenant)

    def list_tenants(self) -> list[Tenant]:
        return [_tenant(row) for row in self._rows("SELECT * FROM tenants ORDER BY id")]

    # DKIM keys
    def add_key(self, key: DkimKey) -> None:
        self._write(
            """INSERT INTO dkim_keys (tenant, selector, state, public_key, key_file, created_at,
                   remove_after) VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            (key.tenant, key.selector, key.state.value, key.public_key_b64, key.key_file,
             key.created_at, key.remove_after),
            served=Changed.tenant(key.tenant),
        )

    def list_keys(self, tenant_id: str | None = None) -> list[DkimKey]:
        if tenant_id is None:
            rows = self._rows("SELECT * FROM dkim_keys ORDER BY tenant, created_at, selector")
        else:
            rows = self._rows("SELECT * FROM dkim_keys WHERE tenant = %s ORDER BY created_at, selector",
                              (tenant_id,))
        return [_key(row) for row in rows]

    def set_key_state(
        self, tenant_id: str, selector: str, state: KeyState, remove_after: datetime | None = None
    ) -> None:
        self._write("UPDATE dkim_keys SET state = %s, remove_after = %s WHERE tenant = %s AND selector = %s",
                    (state.value, remove_after, tenant_id, selector), served=Changed.tenant(tenant_id))

    def delete_key(self, tenant_id: str, selector: str) -> None:
        self._write("DELETE FROM dkim_keys WHERE tenant = %s AND selector = %s", (tenant_id, selector),
                    served=Changed.tenant(tenant_id))

    # clients
    def add_client(self, client: Client) -> None:
        served = Changed.client(client.name)
        with self.transaction():
            self._write("INSERT INTO clients (name, secret_hash, all_tenants, created_at) VALUES (%s, %s, %s, %s)",
                        (client.name, client.secret_hash, client.all_tenants, client.created_at), served=served)
            for tenant in client.tenants:
                self._write("INSERT INTO client_tenants VALUES (%s, %s)", (client.name, tenant), served=served)
            for network in client.networks:
                self._write("INSERT INTO client_networks VALUES (%s, %s)", (client.name, network), served=served)

    def delete_client(self, name: str) -> bool:
        """Remove a client with its scope and networks; False when there is no such client."""
        served = Changed.client(name)
        with self.transaction():
            self._write("DELETE FROM client_tenants WHERE client = %s", (name,), served=served)
            self._write("DELETE FROM client_networks WHERE client = %s", (name,), served=served)
            return self._write("DELETE FROM clients WHERE name = %s", (name,), served=served) == 1

    def get_client(self, name: str) -> Client | None:
        return self._first("SELECT * FROM clients WHERE name = %s", (name,), self._client)

    def list_clients(self) -> list[Client]:
        return [self._client(row) for row in self._rows("SELECT * FROM clients ORDER BY name")]

    def _client(self, row: Row) -> Client:
        name = row["name"]
        tenants = self._column("tenant", "SELECT tenant FROM client_tenants WHERE client = %s ORDER BY tenant",
                               (name,))
        networks = self._column("network", "SELECT network FROM client_networks WHERE client = %s ORDER BY network",
                                (name,))
        return Client(name=name, secret_hash=row["secret_hash"], all_tenants=row["all_tenants"],
                      tenants=tenants, networks=networks, created_at=row["created_at"])

    def set_client_secret(self, name: str, secret_hash: str) -> bool:
        """Replace a client's stored secret hash; False when there is no such client (bumps: the
        relay must see the new hash)."""
        return self._write("UPDATE clients SET secret_hash = %s WHERE name = %s", (secret_hash, name),
                           served=Changed.client(name)) == 1

    # validation results: the latest complete set per tenant replaces the previous one
    def save_checks(self, tenant_id: str, checks: list[CheckResult]) -> None:
        with self.transaction():
            self._write("DELETE FROM checks WHERE tenant = %s", (tenant_id,), served=None)
            for c in checks:
                self._write(
                    """INSERT INTO checks (tenant, purpose, type, name, status, expected, found,
                           diagnosis, required, checked_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                    (tenant_id, c.purpose, c.type, c.name, c.status.value, c.expected, list(c.found),
                     c.diagnosis, c.required, c.checked_at),
                    served=None,
                )

    def latest_checks(self, tenant_id: str) -> list[CheckResult]:
        rows = self._rows("SELECT * FROM checks WHERE tenant = %s ORDER BY id", (tenant_id,))
        return [
            CheckResult(purpose=row["purpose"], type=row["type"], name=row["name"],
                        status=CheckStatus(row["status"]), expected=row["expected"],
                        found=tuple(row["found"]), diagnosis=row["diagnosis"],
                        checked_at=row["checked_at"], required=row["required"])
            for row in rows
        ]

    # the lifecycle's own columns, written without touching the sender (no lost `tenant set`)
    def save_lifecycle(
        self, tenant_id: str, *, status: TenantStatus, failing_since: datetime | None,
        verified_at: datetime | None, last_validated_at: datetime | None,
    ) -> None:
        """Store a validation's result; the generation moves only when the status changes."""
        with self.transaction():  # the write lock: the status read is the one replaced
            rows = self._rows("SELECT status FROM tenants WHERE id = %s", (tenant_id,))
            if not rows:
                raise StoreError(f"tenant {tenant_id!r} is not in the store")
            self._write(
                """UPDATE tenants SET status = %s, failing_since = %s, verified_at = %s,
                       last_validated_at = %s WHERE id = %s""",
                (status.value, failing_since, verified_at, last_validated_at, tenant_id),
                served=Changed.tenant(tenant_id) if rows[0]["status"] != status.value else None,
            )

    # audit log: append-only
    def add_audit(self, entry: AuditEntry) -> None:
        self._write(
            "INSERT INTO audit (time, actor, action, tenant, outcome, detail) VALUES (%s, %s, %s, %s, %s, %s)",
            (entry.time, entry.actor, entry.action, entry.tenant, entry.outcome, entry.detail),
            served=None,
        )

    def list_audit(self, tenant_id: str | None = None) -> list[AuditEntry]:
        if tenant_id is None:
            rows = self._rows("SELECT * FROM audit ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM audit WHERE tenant = %s ORDER BY id", (tenant_id,))
        return [
            AuditEntry(id=row["id"], time=row["time"], actor=row["actor"], action=row["action"],
                       tenant=row["tenant"], outcome=row["outcome"], detail=row["detail"])
            for row in rows
        ]

    # leases: one holder at a time per name, until it expires (a crashed holder frees it by time)
    def acquire_lease(self, name: str, holder: str, until: datetime, now: datetime) -> bool:
        """Take or renew `name` for `holder` until `until`; False while another holder has it."""
        changed = self._write(
            """INSERT INTO leases (name, holder, expires_at) VALUES (%s, %s, %s)
               ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
               WHERE leases.holder = excluded.holder OR leases.expires_at <= %s""",
            (name, holder, until, now),
            served=None,
        )
        return changed == 1

    def release_lease(self, name: str, holder: str) -> None:
        self._write("DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder), served=None)

    # notifications: a transactional outbox for RELAY_NOTIFY_URL
    def add_notification(self, payload: str, now: datetime) -> int:
        with self.transaction():
            conn = self._local.conn
            assert conn is not None
            row = self._run(conn, "refused a write",
                            """INSERT INTO notifications (created_at, payload, next_attempt_at)
                               VALUES (%s, %s, %s) RETURNING id""", (now, payload, now)).fetchone()
            assert row is not None
            return int(row["id"])

    def due_notifications(self, now: datetime, limit: int = 20) -> list[Notification]:
        rows = self._rows("""SELECT * FROM notifications WHERE state = 'queued' AND next_attempt_at <= %s
                             ORDER BY id LIMIT %s""", (now, limit))
        return [_notification(row) for row in rows]

    def queued_notification(self, notification_id: int) -> Notification | None:
        """One notification while it still waits for delivery (None once delivered or given up)."""
        return self._first("SELECT * FROM notifications WHERE id = %s AND state = 'queued'", (notification_id,),
                           _notification)

    def notification_delivered(self, notification_id: int, now: datetime) -> None:
        self._write("""UPDATE notifications SET state = 'delivered', delivered_at = %s, attempts = attempts + 1
                       WHERE id = %s""", (now, notification_id), served=None)

    def notification_failed(self, notification_id: int, error: str, retry_at: datetime | None) -> None:
        """Count a failed attempt; `retry_at=None` gives up (kept, with its last error, for the record)."""
        if retry_at is None:
            self._write("""UPDATE notifications SET attempts = attempts + 1, last_error = %s,
                               state = 'abandoned' WHERE id = %s""", (error, notification_id), served=None)
        else:
            self._write("""UPDATE notifications SET attempts = attempts + 1, last_error = %s,
                               next_attempt_at = %s WHERE id = %s""",
                        (error, retry_at, notification_id), served=None)

    # sign-in: passwords and admin API tokens, only ever as hashes
    def set_password_hash(self, name: str, password_hash: str) -> bool:
        """Replace a user's password hash; False when there is no such user."""
        return self._write("UPDATE users SET password_hash = %s WHERE name = %s",
                           (password_hash, name), served=None) == 1

    def add_token(self, token: ApiToken) -> None:
        self._write(
            "INSERT INTO tokens (prefix, user_name, token_hash, created_at, revoked_at) VALUES (%s, %s, %s, %s, %s)",
            (token.prefix, token.user, token.token_hash, token.created_at, token.revoked_at),
            served=None,
        )

    def tokens_with_prefix(self, prefix: str) -> list[ApiToken]:
        rows = self._rows("SELECT * FROM tokens WHERE prefix = %s", (prefix,))
        return [ApiToken(prefix=row["prefix"], user=row["user_name"], token_hash=row["token_hash"],
                         created_at=row["created_at"], revoked_at=row["revoked_at"]) for row in rows]

    def revoke_token(self, prefix: str, now: datetime) -> int:
        """End the token(s) with `prefix` at `now`; how many were still live."""
        return self._write("UPDATE tokens SET revoked_at = %s WHERE prefix = %s AND revoked_at IS NULL",
                           (now, prefix), served=None)

    # the admin web server's sessions and failed sign-ins: nothing the relay serves (no generation bump)
    def add_web_session(self, session: WebSession) -> None:
        self._write(
            """INSERT INTO web_sessions (id_hash, user_name, csrf_token, created_at, expires_at)
               VALUES (%s, %s, %s, %s, %s)""",
            (session.id_hash, session.user, session.csrf_token, session.created_at, session.expires_at),
            served=None,
        )

    def get_web_session(self, id_hash: str) -> WebSession | None:
        rows = self._rows("SELECT * FROM web_sessions WHERE id_hash = %s", (id_hash,))
        if not rows:
            return None
        row = rows[0]
        return WebSession(id_hash=row["id_hash"], user=row["user_name"], csrf_token=row["csrf_token"],
                          created_at=row["created_at"], expires_at=row["expires_at"])

    def delete_web_session(self, id_hash: str) -> None:
        self._write("DELETE FROM web_sessions WHERE id_hash = %s", (id_hash,), served=None)

    def delete_expired_web_sessions(self, now: datetime) -> int:
        return self._write("DELETE FROM web_sessions WHERE expires_at <= %s", (now,), served=None)

    def add_signin_failure(self, key: str, time: datetime, *, forget_before: datetime) -> None:
        """Count a failed sign-in for `key` (`user:NAME`, `ip:ADDRESS`); older ones are forgotten."""
        with self.transaction():
            self._write("DELETE FROM signin_failures WHERE time < %s", (forget_before,), served=None)
            self._write("INSERT INTO signin_failures (key, time) VALUES (%s, %s)", (key, time), served=None)

    def signin_failures(self, key: str, since: datetime) -> list[datetime]:
        rows = self._rows("SELECT time FROM signin_failures WHERE key = %s AND time >= %s ORDER BY time",
                          (key, since))
        return [row["time"] for row in rows]

    def clear_signin_failures(self, key: str) -> None:
        self._write("DELETE FROM signin_failures WHERE key = %s", (key,), served=None)


def _tenant(row: Row) -> Tenant:
    try:
        status = TenantStatus(row["status"])
    except ValueError as exc:  # a status this program does not know: written by a newer one
        raise StoreError(f"tenant {row['id']!r} has an unknown status {row['status']!r}") from exc
    return Tenant(
        id=row["id"],
        sender=Sender(name=row["name"], email=row["email"], domain=row["domain"],
                      return_path_label=row["return_path_label"]),
        status=status, created_at=row["created_at"], updated_at=row["updated_at"],
        last_validated_at=row["last_validated_at"], verified_at=row["verified_at"],
        failing_since=row["failing_since"],
    )


def _key(row: Row) -> DkimKey:
    return DkimKey(tenant=row["tenant"], selector=row["selector"], state=KeyState(row["state"]),
                   public_key_b64=row["public_key"], key_file=row["key_file"],
                   created_at=row["created_at"], remove_after=row["remove_after"])


def _notification(row: Row) -> Notification:
    return Notification(id=row["id"], created_at=row["created_at"], payload=row["payload"],
                        attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
                        last_error=row["last_error"])

