"""`relay-admin token add|revoke`: admin API tokens that act as a user, printed once, kept only hashed.

A token acts as its user, with that user's role and scope (`admin.auth.user_for_token`). Issuing or
revoking one is allowed as `user password` is: on oneself, or as an owner or admin on a user within
its scope (`admin.roles.management_refusal`).
"""

from __future__ import annotations

import argparse
from typing import Any

from admin import inputs
from admin.auth import PREFIX_LENGTH, TOKEN_SCHEME, issue_token, token_prefix
from admin.context import EXIT_OK, Context, UsageError, user_audit_tenant
from relay.core.models import ApiToken, User
from relay.core.store import utcnow

ADD = "token.add"
REVOKE = "token.revoke"


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    token = commands.add_parser("token", help="admin API tokens", parents=[common])
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION",
                                   parser_class=type(token))
    add = actions.add_parser("add", parents=[common],
                             help="issue an API token that acts as a user; printed once")
    add.add_argument("--user", required=True, metavar="NAME",
                     help="the user it acts as, with that user's role and scope")
    add.set_defaults(handler=add_token)
    revoke = actions.add_parser("revoke", parents=[common], help="end a token at once")
    revoke.add_argument("prefix", metavar="TOKEN-PREFIX",
                        help=f"the {PREFIX_LENGTH} characters after '{TOKEN_SCHEME}_' in the token")
    revoke.set_defaults(handler=revoke_token)


def _scope_words(user: User) -> str:
    return f"tenants {','.join(user.tenants)}" if user.scoped else "every tenant"


def add_token(ctx: Context, args: argparse.Namespace) -> int:
    name = inputs.identifier(args.user, "--user", "user name")
    user = ctx.authorize_user(ADD, name, field="--user")
    with ctx.store.transaction():
        try:
            token = issue_token(ctx.store, name, utcnow())
        except LookupError:  # removed since it was authorised
            raise UsageError(f"--user: no user {name!r} in the store {ctx.store_location}") from None
        prefix = token_prefix(token)
        ctx.audit(ADD, tenant=user_audit_tenant(user), detail=f"issued token {prefix} for user {name!r}")
    ctx.emit({"user": name, "token": token},
             f"token for {name} (shown only once, store it now): {token}\n"
             f"it acts as {name} ({user.role.value}, {_scope_words(user)}); "
             f"end it with `relay-admin token revoke {prefix}`")
    return EXIT_OK


def _token(ctx: Context, text: str) -> ApiToken:
    """The token a TOKEN-PREFIX names (the bare prefix, `rat_<prefix>` or the whole token)."""
    prefix = token_prefix(text)
    if prefix is None:
        raise UsageError(f"TOKEN-PREFIX: {text!r} is not a token prefix; give the {PREFIX_LENGTH} "
                         f"characters after '{TOKEN_SCHEME}_', as `token add` printed them")
    found = ctx.store.tokens_with_prefix(prefix)
    if not found:
        raise UsageError(f"TOKEN-PREFIX: no token {prefix!r} in the store {ctx.store_location}")
    return found[0]


def revoke_token(ctx: Context, args: argparse.Namespace) -> int:
    ctx.acting(REVOKE)  # a user the store does not know is refused before anything is looked up
    token = _token(ctx, args.prefix)
    user = ctx.authorize_user(REVOKE, token.user, field="TOKEN-PREFIX")
    now = utcnow()
    with ctx.store.transaction():
        revoked = ctx.store.revoke_token(token.prefix, now)
        if revoked:
            ctx.audit(REVOKE, tenant=user_audit_tenant(user),
                      detail=f"revoked token {token.prefix} of user {user.name!r}")
    when = now if revoked else token.revoked_at
    text = (f"token {token.prefix} of {user.name} revoked" if revoked
            else f"token {token.prefix} of {user.name} was already revoked")
    ctx.emit({"prefix": token.prefix, "user": user.name,
              "revoked_at": when.isoformat() if when else None}, text)
    return EXIT_OK
