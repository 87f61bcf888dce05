"""What every admin command gets: settings, the store, the acting user, output, and the error classes.

Scope is enforced here and only here, for the CLI and the web alike: a user added with `--tenant`
sees and acts on those tenants only. `Context.tenant`, `Context.authorize(..., tenant=...)` and
`Context.visible_tenants` treat a tenant outside the acting user's scope exactly as one that does not
exist (the same `TenantNotFound`, word for word), so scope never reveals another tenant; the attempt
is audited as denied.

Error tree (each is rendered as one line on stderr by `admin.cli.main`):

    CliError                exit code carried by the class
    ├── UsageError          2  bad input or usage; nothing changed
    │   └── TenantNotFound  2  no such tenant, or none in the acting user's scope (web: 404)
    ├── PermissionDenied    3  the acting user's role may not do this; audited, nothing changed
    └── StorageError        4  the keys directory cannot be written; nothing changed

(`relay.core.store.StoreError`, a missing store included, is rendered the same way with exit code 4.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

from admin.roles import management_refusal, may, refusal
from relay.core.models import AuditEntry, Tenant, User
from relay.core.settings import Settings
from relay.core.store import Store, store_location, utcnow

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
    """Bad input or usage: name the field and the problem in one line.

    `code` (e.g. `email_has_name`) and `params` (its values, already rendered as the line shows them)
    let the web page say the same in its own language; the line itself is what the CLI prints.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, code: str | None = None,
                 params: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.params: dict[str, str] = dict(params or {})


class TenantNotFound(UsageError):
    """No tenant by that name, or none the acting user may see: the same answer, by design."""

    def __init__(self, message: str, *, tenant: str, field: str) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.field = field


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
    _action: str | None = field(default=None, init=False, repr=False)  # the last one authorized

    @property
    def store_location(self) -> str:
        """The store's absolute path, for messages about what it does or does not hold."""
        return store_location(self.settings)

    def unknown_tenant(self, tenant_id: str, field: str = "TENANT") -> TenantNotFound:
        """The one wording of "no such tenant", for every command (exit 2)."""
        return TenantNotFound(f"{field}: no tenant {tenant_id!r} in the store {self.store_location}; "
                              "see `relay-admin tenant list`", tenant=tenant_id, field=field)

    @property
    def audit_actor(self) -> str:
        """The acting user's name for the audit log; `(bootstrap)` only when none was given at all."""
        return self.actor_name if self.actor_name is not None else BOOTSTRAP_ACTOR

    @property
    def acting_user(self) -> User | None:
        """The acting user as the store holds it; None without one, or for a name it does not know."""
        return self.store.get_user(self.actor_name) if self.actor_name is not None else None

    def scope(self) -> frozenset[str] | None:
        """The tenant ids the acting user sees; None for every tenant (platform staff, bootstrap)."""
        if self.actor_name is None:
            return None
        user = self.acting_user
        if user is None:
            return frozenset()  # fail closed: a user the store does not know sees nothing
        return frozenset(user.tenants) if user.scoped else None

    def in_scope(self, tenant_id: str | None) -> bool:
        """Whether the acting user sees `tenant_id` (None, no tenant: only an unscoped user)."""
        scope = self.scope()
        return scope is None or tenant_id in scope

    def visible_tenants(self) -> list[Tenant]:
        """Every tenant the acting user sees, in id order."""
        scope = self.scope()
        return [t for t in self.store.list_tenants() if scope is None or t.id in scope]

    def find_tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant if it exists and the acting user sees it, else None; nothing audited or raised."""
        return self.store.get_tenant(tenant_id) if self.in_scope(tenant_id) else None

    def tenant(self, tenant_id: str, field: str = "TENANT", *, action: str | None = None) -> Tenant:
        """The tenant named on the command line, or `unknown_tenant` (outside the scope too).

        `action` names the attempt in the audit log when it is refused (default: the last one
        authorized); a user the store does not know is refused as `authorize` refuses it.
        """
        if self.actor_name is not None:
            doing = action or self._action or "tenant"
            user = self.acting(doing, tenant_id)
            if user.scoped and tenant_id not in user.tenants:
                self._out_of_scope(doing, tenant_id, field)
        tenant = self.store.get_tenant(tenant_id)
        if tenant is None:
            raise self.unknown_tenant(tenant_id, field)
        return tenant

    def _out_of_scope(self, action: str, tenant_id: str, field: str) -> NoReturn:
        """Audit the attempt as denied, then answer exactly as for a tenant that does not exist."""
        self.audit(action, tenant=_escaped(tenant_id), outcome="denied", actor=_escaped(
            self.audit_actor), detail=_escaped(
            f"user {self.actor_name!r} has no tenant {tenant_id!r} in its scope"))
        raise self.unknown_tenant(tenant_id, field)

    def notice(self, text: str) -> None:
        """One line on stderr that is not an error (stdout stays clean for --json)."""
        self.err.write(f"{PROG}: {text}\n")

    def authorize(self, action: str, *, tenant: str | None = None, field: str = "TENANT") -> str:
        """Return the acting user's name if it may perform `action` (on `tenant`), else raise.

        The very first `user add` needs no acting user (bootstrap). A tenant outside a scoped user's
        scope, or one that does not exist, is `unknown_tenant` for it: a scoped user never creates
        one. Then the role decides. Every denial is written to the audit log before raising.
        """
        self._action = action
        if self.actor_name is None and action == "user.add" and not self.store.list_users():
            return BOOTSTRAP_ACTOR
        user = self.acting(action, tenant)
        if tenant is not None and user.scoped and (
                tenant not in user.tenants or self.store.get_tenant(tenant) is None):
            self._out_of_scope(action, tenant, field)
        if not may(user.role, action):
            self.deny(action, tenant, detail=f"user {user.name!r} ({user.role.value}) may not {action}",
                      why=refusal(action), user=user)
        return user.name

    def acting(self, action: str, tenant: str | None = None) -> User:
        """The acting user; none named is a usage error, one the store does not know is denied."""
        if self.actor_name is None:
            raise UsageError("no acting user: pass --as USER or set RELAY_ADMIN_USER")
        user = self.acting_user
        if user is None:
            self.deny(action, tenant, detail=f"unknown user {self.actor_name!r}",
                      why=f"no user {self.actor_name!r} in the store {self.store_location}")
        return user

    def require_unscoped(self, action: str, doing: str) -> None:
        """Refuse, audited, an acting user scoped to some tenants: `doing` concerns every tenant."""
        user = self.acting_user
        if user is not None and user.scoped:
            self.deny(action, None, user=user,
                      why=f"only platform staff (users added without --tenant) can {doing}",
                      detail=f"user {user.name!r} ({user.role.value}) is scoped and may not {doing}")

    def authorize_user(self, action: str, name: str, *, field: str = "NAME") -> User:
        """The user `name` if the acting user may do `action` (password, tokens) for it, else raise.

        On itself every role may; on another, `roles.management_refusal` decides: owners and admins,
        for users within their scope, an admin never for an owner.
        """
        self._action = action
        actor = self.acting(action)
        detail = f"user {actor.name!r} ({actor.role.value}) may not {action} for user {name!r}"
        if actor.name != name and not may(actor.role, action):  # before saying whether `name` exists
            self.deny(action, None, detail=detail, why=refusal(action), user=actor)
        target = actor if actor.name == name else self.store.get_user(name)
        if target is None:
            raise UsageError(f"{field}: no user {name!r} in the store {self.store_location}")
        why = management_refusal(action, actor, target)
        if why is not None:
            self.deny(action, user_audit_tenant(target), detail=detail, why=why, user=actor)
        return target

    def deny(self, action: str, tenant: str | None, *, detail: str, why: str,
             user: User | None = None) -> NoReturn:
        """Audit a denial with the machine-useful `detail`, then raise with the human `why`."""
        # Every denied attempt is audited, reading ones included: a probe is worth knowing about.
        # The name comes from argv and may hold undecodable bytes (surrogates): store it escaped.
        self.audit(action, tenant=None if tenant is None else _escaped(tenant), outcome="denied",
                   detail=_escaped(detail), actor=_escaped(self.audit_actor))
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
                actor=actor if actor is not None else self.audit_actor,
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


def _escaped(text: str) -> str:
    """Text from argv as the store can hold it: undecodable bytes (surrogates) backslash-escaped."""
    return text.encode("utf-8", "backslashreplace").decode()


def user_audit_tenant(user: User) -> str | None:
    """The tenant an entry about `user` is filed under: its one tenant, so that tenant's admins see it."""
    return user.tenants[0] if len(user.tenants) == 1 else None
