"""The store shared by the relay and the admin side: the interface and its two backends.

Import from here; `base` holds the interface, `sqlite` and `postgres` the backends (postgres loads
psycopg only when a postgresql:// store is opened).
"""

from relay.core.store.base import (
    KEEP_CHANGES,
    Changed,
    ChangeKind,
    Notification,
    Store,
    StoreError,
    StoreMissing,
    StoreChanges,
    StoreSnapshot,
    WebSession,
    open_store,
    store_location,
    utcnow,
)
from relay.core.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore

__all__ = [
    "KEEP_CHANGES", "MIGRATIONS", "SCHEMA_VERSION", "ChangeKind", "Changed", "Notification", "SqliteStore", "Store",
    "StoreChanges", "StoreError", "StoreMissing", "StoreSnapshot", "WebSession", "open_store", "store_location",
    "utcnow",
]
