"""What every admin command gets: settings, the store, the acting user, output, and the error classes.

Error tree (each is rendered as one line on stderr by `admin.cli.main`):

    CliError              exit code carried by the class
    ├── UsageError        2  bad input or usage (an unknown tenant too); nothing changed
    ├── PermissionDenied  3  the acting user's role may not do this; audited, nothing changed
    └── StorageError      4  the keys directory cannot be written; nothing changed

(`relay.store.StoreError`, a missing store included, is rendered the same way with exit code 4.)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

from admin.roles import may, refusal
from relay.models import AuditEntry, Tenant, User
from relay.settings import Settings
from relay.store import Store, store_location, utcnow

PROG = "relay-admin"

EXIT_OK = 0
EXIT_NEGATIVE = 1  # done, but the answer is no (validate: not verified)
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_STORE = 4  # beyond SPEC: the store could not be opened or written; nothing changed

BOOTSTRAP_ACTOR = "(bootstrap)"


class CliError(Exception):
    exit_code = EXIT_USAGE


class UsageError(CliError):
    """Bad input or usage: name the field and the problem in one line."""

    exit_code = EXIT_USAGE


class PermissionDenied(CliError):
    """The acting user may not do this: the message says why in words, the audit keeps the action id."""

    exit_code = EXIT_DENIED


class StorageError(CliError):
    """Files next to the store (the DKIM keys) cannot be written: name the absolute path."""

    exit_code = EXIT_STORE


@dataclass
class Context:
    settings: Settings
    store: Store
    actor_name: str | None
    json_output: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def store_location(self) -> str:
        """The store's absolute path, for messages about what it does or does not hold."""
        return store_location(self.settings)

    def unknown_tenant(self, tenant_id: str, field: str = "TENANT") -> UsageError:
        """The one wording of "no such tenant", for every command (exit 2)."""
        return UsageError(f"{field}: no tenant {tenant_id!r} in the store {self.store_location}; "
                          "see `relay-admin tenant list`")

    def tenant(self, tenant_id: str, field: str = "TENANT") -> Tenant:
        """The tenant named on the command line, or `unknown_tenant`."""
        tenant = self.store.get_tenant(tenant_id)
        if tenant is None:
            raise self.unknown_tenant(tenant_id, field)
        return tenant

    def notice(self, text: str) -> None:
        """One line on stderr that is not an error (stdout stays clean for --json)."""
        self.err.write(f"{PROG}: {text}\n")

    def authorize(self, action: str, *, tenant: str | None = None) -> str:
        """Return the acting user's name if their role may perform `action`, else raise.

        The very first `user add` needs no acting user (bootstrap). Denials of changing actions
        are written to the audit log before raising.
        """
        if self.actor_name is None:
            if action == "user.add" and not self.store.list_users():
                return BOOTSTRAP_ACTOR
            raise UsageError("no acting user: pass --as USER or set RELAY_ADMIN_USER")
        user: User | None = self.store.get_user(self.actor_name)
        if user is None:
            self.deny(action, tenant, detail=f"unknown user {self.actor_name!r}",
                      why=f"no user {self.actor_name!r} in the store {self.store_location}")
        elif not may(user.role, action):
            self.deny(action, tenant, detail=f"user {user.name!r} ({user.role.value}) may not {action}",
                      why=refusal(action), user=user)
        return self.actor_name

    def deny(self, action: str, tenant: str | None, *, detail: str, why: str,
             user: User | None = None) -> NoReturn:
        """Audit a denial with the machine-useful `detail`, then raise with the human `why`."""
        # Every denied attempt is audited, reading ones included: a probe is worth knowing about.
        # The name comes from argv and may hold undecodable bytes (surrogates): store it escaped.
        actor = (self.actor_name or BOOTSTRAP_ACTOR).encode("utf-8", "backslashreplace").decode()
        self.audit(action, tenant=tenant, outcome="denied", detail=detail.encode(
            "utf-8", "backslashreplace").decode(), actor=actor)
        who = f" for {user.name} ({user.role.value})" if user is not None else ""
        raise PermissionDenied(f"permission denied{who}: {why}")

    def audit(
        self,
        action: str,
        *,
        tenant: str | None = None,
        outcome: str = "done",
        detail: str = "",
        actor: str | None = None,
    ) -> None:
        self.store.add_audit(
            AuditEntry(
                time=utcnow(),
                actor=actor or self.actor_name or BOOTSTRAP_ACTOR,
                action=action,
                tenant=tenant,
                outcome=outcome,
                detail=detail,
            )
        )

    def emit(self, data: Any, text: str) -> None:
        """Print `data` as JSON with --json, else the human text."""
        if self.json_output:
            self.out.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        else:
            self.out.write(text if text.endswith("\n") or not text else text + "\n")
