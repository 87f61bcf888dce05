"""`relay-admin user add NAME --role owner|admin|accountant`: people and their roles, with bootstrap."""

from __future__ import annotations

import argparse
from typing import Any

from admin import inputs
from admin.context import BOOTSTRAP_ACTOR, EXIT_OK, Context, UsageError
from admin.roles import OWNER_GRANT_REFUSAL
from relay.models import AuditEntry, Role, User
from relay.store import utcnow

ACTION = "user.add"


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    user = commands.add_parser("user", help="manage users", parents=[common])
    actions = user.add_subparsers(dest="user_command", required=True, metavar="ACTION",
                                  parser_class=type(user))
    add = actions.add_parser("add", parents=[common], help="add a user with a role")
    add.add_argument("name", metavar="NAME", help="user name (a-z, 0-9, '.', '_', '-')")
    add.add_argument("--role", required=True, choices=[r.value for r in Role],
                     help="owner and admin change things; accountant may only look")
    add.set_defaults(handler=add_user, may_create_store=may_create_store)


def may_grant(actor_role: Role, new_role: Role) -> bool:
    """Pure rule: an admin may add admins and accountants; only an owner may create an owner."""
    return new_role is not Role.OWNER or actor_role is Role.OWNER


def _check_first_role(role: Role) -> None:
    if role is Role.ACCOUNTANT:
        # An accountant cannot add users, so a first accountant would lock everyone out.
        raise UsageError("--role: the first user must be an owner or admin")


def may_create_store(args: argparse.Namespace, actor: str | None) -> bool:
    """Only a bootstrap starts a new store, and only once its input is known to be good."""
    name = inputs.identifier(args.name, "NAME", "user name")
    if actor not in (None, name):  # an acting user cannot exist in a store that does not
        return False
    _check_first_role(Role(args.role))
    return True


def _bootstrap(ctx: Context, name: str, role: Role) -> bool:
    """The very first user needs no acting user (SPEC.md); naming that same user is fine too."""
    if ctx.store.list_users() or ctx.actor_name not in (None, name):
        return False
    _check_first_role(role)
    return True


def add_user(ctx: Context, args: argparse.Namespace) -> int:
    name = inputs.identifier(args.name, "NAME", "user name")
    role = Role(args.role)
    if _bootstrap(ctx, name, role):
        actor = BOOTSTRAP_ACTOR
    else:
        actor = ctx.authorize(ACTION)
        acting = ctx.store.get_user(actor)
        if acting is not None and not may_grant(acting.role, role):
            ctx.deny(ACTION, None, user=acting, why=OWNER_GRANT_REFUSAL,
                     detail=f"user {actor!r} ({acting.role.value}) may not add an owner ({name!r})")
    now = utcnow()
    with ctx.store.transaction():
        if actor == BOOTSTRAP_ACTOR and ctx.store.list_users():  # another bootstrap won the race
            raise UsageError("no acting user: pass --as USER or set RELAY_ADMIN_USER")
        if ctx.store.get_user(name) is not None:
            raise UsageError(f"NAME: user {name!r} already exists")
        ctx.store.add_user(User(name=name, role=role, created_at=now))
        ctx.store.add_audit(AuditEntry(time=now, actor=actor, action=ACTION, tenant=None,
                                       outcome="done", detail=f"added user {name!r} as {role.value}"))
    ctx.emit({"user": name, "role": role.value, "created_at": now.isoformat()},
             f"user {name} added as {role.value}")
    return EXIT_OK
