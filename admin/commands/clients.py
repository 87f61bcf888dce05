"""`relay-admin client add|list|remove`: SMTP credentials (and optionally source networks) for an internal
service; who has them; and taking them away (a leaked secret, a retired service).

A user scoped to some tenants sees and removes only clients that send for those tenants alone
(`admin.roles.within_scope`); a client for all tenants is platform staff's.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from typing import Any

from admin import inputs
from admin.context import EXIT_OK, Context, UsageError
from admin.roles import within_scope
from admin.sendtest_client import SEND_TEST_CLIENT
from relay.core.credentials import hash_secret, new_secret
from relay.core.models import AuditEntry, Client, User
from relay.core.settings import Settings
from relay.core.store import utcnow

ACTION = "client.add"
LIST = "client.list"
REMOVE = "client.remove"


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    client = commands.add_parser("client", help="services that send through the relay",
                                 parents=[common])
    actions = client.add_subparsers(dest="client_command", required=True, metavar="ACTION",
                                    parser_class=type(client))
    add = actions.add_parser("add", parents=[common],
                             help="create SMTP credentials; the secret is printed once")
    add.add_argument("name", metavar="NAME", help="client name = SMTP AUTH user")
    scope = add.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", dest="tenants", action="extend", nargs="+", metavar="T",
                       help="tenant(s) this client may send for (repeatable)")
    scope.add_argument("--all-tenants", dest="all_tenants", action="store_true",
                       help="may send for every tenant (naming it in the tenant header)")
    add.add_argument("--network", dest="networks", action="extend", nargs="+", default=[],
                     metavar="CIDR", help="connections from here are this client without AUTH")
    add.set_defaults(handler=add_client)
    listing = actions.add_parser("list", parents=[common], help="the clients, their tenants and networks")
    listing.set_defaults(handler=list_clients)
    remove = actions.add_parser("remove", parents=[common],
                                help="take a client's credentials and networks away (the relay follows within seconds)")
    remove.add_argument("name", metavar="NAME", help="the client's name (its SMTP AUTH user)")
    remove.set_defaults(handler=remove_client)


def overlap(new: list[str], taken: dict[str, str]) -> tuple[str, str, str] | None:
    """Pure check: (new network, other client, its network) for the first overlap, else None.

    A connection from an address in two clients' networks would have no single identity.
    """
    for text in new:
        mine = ipaddress.ip_network(text)
        for theirs_text, owner in taken.items():
            theirs = ipaddress.ip_network(theirs_text)
            if mine.version == theirs.version and mine.overlaps(theirs):
                return text, owner, theirs_text
    return None


def _check_scope(ctx: Context, tenants: list[str], networks: list[str]) -> None:
    for tenant in tenants:
        ctx.tenant(tenant, "--tenant")
    taken = {n: c.name for c in ctx.store.list_clients() for n in c.networks}
    clash = overlap(networks, taken)
    if clash is not None:
        mine, owner, theirs = clash
        raise UsageError(f"--network: {mine} overlaps {theirs} of client {owner!r}")


def _hint(settings: Settings, client: Client) -> str:
    text = (f"hint: point the service's SMTP at {settings.listen} and authenticate (AUTH PLAIN or "
            f"LOGIN) as user {client.name!r} with this secret")
    if client.all_tenants or len(client.tenants) > 1:
        text += f"; name the tenant of each message in the {settings.tenant_header} header"
    if client.networks:
        text += f"; connections from {', '.join(client.networks)} need no AUTH"
    return text


def add_client(ctx: Context, args: argparse.Namespace) -> int:
    name = inputs.identifier(args.name, "NAME", "client name")
    if name == SEND_TEST_CLIENT:  # its secret is issued per run by send-test and known to nobody else
        raise UsageError(f"NAME: {name!r} is reserved for `relay-admin send-test`'s own credential; "
                         "choose another name")
    tenants = sorted({inputs.identifier(t, "--tenant", "tenant id") for t in args.tenants or []})
    networks = sorted({inputs.network(n) for n in args.networks})
    actor = ctx.authorize(ACTION, tenant=_audit_tenant(tenants), field="--tenant")
    if args.all_tenants:
        ctx.require_unscoped(ACTION, "add a client for all tenants")
    for tenant in tenants:  # the acting user's scope, outside the transaction: a refusal stays audited
        ctx.tenant(tenant, "--tenant")
    secret = new_secret()
    client = Client(name=name, secret_hash=hash_secret(secret), all_tenants=bool(args.all_tenants),
                    tenants=tuple(tenants), networks=tuple(networks), created_at=utcnow())
    scope = _scope_words(client)
    with ctx.store.transaction():
        if ctx.store.get_client(name) is not None:
            raise UsageError(f"NAME: client {name!r} already exists")
        _check_scope(ctx, tenants, networks)
        ctx.store.add_client(client)
        ctx.store.add_audit(AuditEntry(
            time=client.created_at, actor=actor, action=ACTION,
            tenant=_audit_tenant(tenants), outcome="done",
            detail=f"added client {name!r} for {scope}; networks {','.join(networks) or 'none'}",
        ))
    ctx.emit({"client": name, "secret": secret},
             f"client {name} added for {scope}\n"
             f"secret (shown only once, store it now): {secret}\n"
             f"{_hint(ctx.settings, client)}")
    return EXIT_OK


def _audit_tenant(tenants: Sequence[str]) -> str | None:
    """The tenant an audit entry about a client names: its only one, else none."""
    return tenants[0] if len(tenants) == 1 else None


def _visible(user: User | None, client: Client) -> bool:
    """Whether the acting user (None: refused already by `authorize`) may see and manage `client`: an
    unscoped user every client, a scoped one only clients of its own tenants (never one for all
    tenants, whose tenant list is empty)."""
    return user is not None and within_scope(user, client.tenants)


def _scope_words(client: Client) -> str:
    return "all tenants" if client.all_tenants else "tenants " + ",".join(client.tenants)


def _summary(client: Client) -> dict[str, Any]:
    """What `client list --json` says of a client: never its secret, nor the secret's hash."""
    return {"client": client.name, "all_tenants": client.all_tenants, "tenants": list(client.tenants),
            "networks": list(client.networks), "created_at": client.created_at.isoformat()}


def list_clients(ctx: Context, args: argparse.Namespace) -> int:
    ctx.authorize(LIST)
    clients = [client for client in ctx.store.list_clients() if _visible(ctx.acting_user, client)]
    lines = [f"{client.name}: {_scope_words(client)}; networks {', '.join(client.networks) or 'none'}; "
             f"added {client.created_at:%Y-%m-%d %H:%M} UTC" for client in clients]
    ctx.emit([_summary(client) for client in clients], "\n".join(lines) if lines else "no clients")
    return EXIT_OK


def remove_client(ctx: Context, args: argparse.Namespace) -> int:
    name = inputs.identifier(args.name, "NAME", "client name")
    actor = ctx.authorize(REMOVE)
    client = ctx.store.get_client(name)
    unknown = UsageError(f"NAME: no client {name!r} in the store {ctx.store_location}")
    if client is not None and not _visible(ctx.acting_user, client):
        # Audited, and answered as for a client that does not exist, as tenants outside a scope are.
        ctx.audit(REMOVE, outcome="denied", actor=actor,
                  detail=f"client {name!r} sends for {_scope_words(client)}, outside the user's scope")
        raise unknown
    with ctx.store.transaction():
        if client is None or not ctx.store.delete_client(name):
            raise unknown
        ctx.audit(REMOVE, tenant=_audit_tenant(client.tenants), actor=actor,
                  detail=f"removed client {name!r} ({_scope_words(client)}; "
                         f"networks {','.join(client.networks) or 'none'})")
    interval = ctx.settings.reload_interval
    ctx.emit({"client": name, "removed": True},
             f"client {name} removed: its secret and networks no longer send; a running relay refuses "
             f"them within {interval:g}s (RELAY_RELOAD_INTERVAL), sessions already open at their next message")
    return EXIT_OK
