"""`relay-admin user add|password`: people, their roles and scope, and their sign-in passwords.

`user add NAME --role R [--tenant T ...]`: with `--tenant` the user sees and acts on those tenants
only (a customer's own admin or accountant); without, on every tenant (platform staff). The very
first user needs no acting user (bootstrap). `user password NAME` reads the new password from stdin
(prompted, twice, on a terminal) and keeps only its salted scrypt hash (`admin.auth`).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any, TextIO

from admin import inputs
from admin.auth import hash_password, password_problem
from admin.context import (
    BOOTSTRAP_ACTOR,
    EXIT_OK,
    Context,
    UsageError,
    user_audit_tenant,
)
from admin.roles import OWNER_GRANT_REFUSAL, SCOPED_GRANT_REFUSAL
from relay.core.models import AuditEntry, Role, User
from relay.core.store import utcnow

ACTION = "user.add"
PASSWORD_ACTION = "user.password"


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    user = commands.add_parser("user", help="manage users", parents=[common])
    actions = user.add_subparsers(dest="user_command", required=True, metavar="ACTION",
                                  parser_class=type(user))
    add = actions.add_parser("add", parents=[common], help="add a user with a role")
    add.add_argument("name", metavar="NAME", help="user name (a-z, 0-9, '.', '_', '-')")
    add.add_argument("--role", required=True, choices=[r.value for r in Role],
                     help="owner and admin change things; accountant may only look")
    add.add_argument("--tenant", dest="tenants", action="extend", nargs="+", default=[], metavar="T",
                     help="only these existing tenants (a customer's own admin or accountant); "
                          "default: every tenant (platform staff); never for an owner")
    add.set_defaults(handler=add_user, may_create_store=may_create_store)
    password = actions.add_parser("password", parents=[common],
                                  help="set a user's sign-in password, read from stdin")
    password.add_argument("name", metavar="NAME", help="the user (yourself, or one you manage)")
    password.set_defaults(handler=set_password)


def may_grant(actor_role: Role, new_role: Role) -> bool:
    """Pure rule: an admin may add admins and accountants; only an owner may create an owner."""
    return new_role is not Role.OWNER or actor_role is Role.OWNER


def _scope(args: argparse.Namespace, role: Role) -> tuple[str, ...]:
    """The `--tenant` ids, sorted and once each; an owner is never scoped."""
    tenants = tuple(sorted({inputs.identifier(t, "--tenant", "tenant id") for t in args.tenants}))
    if tenants and role is Role.OWNER:
        raise UsageError("--tenant: an owner is never scoped; add a customer's own user as admin or "
                         "accountant, or leave out --tenant")
    return tenants


def _check_first(role: Role, tenants: tuple[str, ...]) -> None:
    if role is Role.ACCOUNTANT:
        # An accountant cannot add users, so a first accountant would lock everyone out.
        raise UsageError("--role: the first user must be an owner or admin")
    if tenants:
        raise UsageError("--tenant: the first user cannot be scoped: there are no tenants yet; "
                         "add it without --tenant")


def may_create_store(args: argparse.Namespace, actor: str | None) -> bool:
    """Only a bootstrap starts a new store, and only once its input is known to be good."""
    name = inputs.identifier(args.name, "NAME", "user name")
    if actor not in (None, name):  # an acting user cannot exist in a store that does not
        return False
    role = Role(args.role)
    _check_first(role, _scope(args, role))
    return True


def _bootstrap(ctx: Context, name: str, role: Role, tenants: tuple[str, ...]) -> bool:
    """The very first user needs no acting user (SPEC.md); naming that same user is fine too."""
    if ctx.store.list_users() or ctx.actor_name not in (None, name):
        return False
    _check_first(role, tenants)
    return True


def _authorize_add(ctx: Context, name: str, role: Role, tenants: tuple[str, ...]) -> str:
    """Role, then scope: an admin never adds an owner, and adds users only within its own scope."""
    actor = ctx.authorize(ACTION)
    acting = ctx.acting(ACTION)
    who = f"user {actor!r} ({acting.role.value})"
    if not may_grant(acting.role, role):
        ctx.deny(ACTION, None, user=acting, why=OWNER_GRANT_REFUSAL,
                 detail=f"{who} may not add an owner ({name!r})")
    if acting.scoped and not tenants:
        ctx.deny(ACTION, None, user=acting, why=SCOPED_GRANT_REFUSAL,
                 detail=f"{who} is scoped and may not add {name!r} for every tenant")
    for tenant in tenants:  # outside the scope, or missing: the unknown-tenant answer, audited
        ctx.tenant(tenant, "--tenant")
    return actor


def _added(user: User) -> str:
    scope = f" for tenants {','.join(user.tenants)}" if user.tenants else ""
    return f"{user.role.value}{scope}"


def add_user(ctx: Context, args: argparse.Namespace) -> int:
    name = inputs.identifier(args.name, "NAME", "user name")
    role = Role(args.role)
    tenants = _scope(args, role)
    if _bootstrap(ctx, name, role, tenants):
        actor = BOOTSTRAP_ACTOR
    else:
        actor = _authorize_add(ctx, name, role, tenants)
    user = User(name=name, role=role, created_at=utcnow(), tenants=tenants)
    with ctx.store.transaction():
        if actor == BOOTSTRAP_ACTOR and ctx.store.list_users():  # another bootstrap won the race
            raise UsageError("no acting user: pass --as USER or set RELAY_ADMIN_USER")
        if ctx.store.get_user(name) is not None:
            raise UsageError(f"NAME: user {name!r} already exists")
        for tenant in tenants:  # still there at commit time
            ctx.tenant(tenant, "--tenant")
        ctx.store.add_user(user)
        ctx.store.add_audit(AuditEntry(time=user.created_at, actor=actor, action=ACTION,
                                       tenant=user_audit_tenant(user), outcome="done",
                                       detail=f"added user {name!r} as {_added(user)}"))
    ctx.emit({"user": name, "role": role.value, "tenants": list(tenants),
              "created_at": user.created_at.isoformat()},
             f"user {name} added as {_added(user)}")
    return EXIT_OK


def read_password(name: str, stdin: TextIO) -> str:
    """The new password: prompted twice on a terminal (getpass), else one line of `stdin`."""
    if stdin.isatty():
        first = getpass.getpass(f"new password for {name}: ")
        if getpass.getpass("the same again: ") != first:
            raise UsageError("password: the two entries differ; nothing changed")
        return first
    return stdin.readline().removesuffix("\n").removesuffix("\r")


def set_password(ctx: Context, args: argparse.Namespace) -> int:
    name = inputs.identifier(args.name, "NAME", "user name")
    target = ctx.authorize_user(PASSWORD_ACTION, name)  # before asking: a refused user types nothing
    password = read_password(name, sys.stdin)
    problem = password_problem(password)
    if problem is not None:
        raise UsageError(f"password: {problem}; nothing changed")
    password_hash = hash_password(password)
    with ctx.store.transaction():
        if not ctx.store.set_password_hash(name, password_hash):
            raise UsageError(f"NAME: no user {name!r} in the store {ctx.store_location}")
        ctx.audit(PASSWORD_ACTION, tenant=user_audit_tenant(target),
                  detail=f"set the password of user {name!r}")
    ctx.emit({"user": name, "password": "set"}, f"password of {name} set")
    return EXIT_OK
