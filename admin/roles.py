"""Who may do what: every admin action, the roles allowed to perform it, and how a refusal is worded."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.models import Role, User

_EVERYONE = frozenset(Role)
_CHANGERS = frozenset({Role.OWNER, Role.ADMIN})


@dataclass(frozen=True)
class Rule:
    """The roles allowed to perform an action, and the action as a person says it."""

    roles: frozenset[Role]
    doing: str  # completes "only owners and admins can ..."
    instead: str = ""  # what a refused role can do instead, when there is something


# Reading and exporting are open to every role; anything that changes state is not for accountants.
RULES: dict[str, Rule] = {
    "user.add": Rule(_CHANGERS, "add users"),
    "tenant.set": Rule(_CHANGERS, "change a tenant's sender",
                       "accountants can view the sender but not change it"),
    "tenant.show": Rule(_EVERYONE, "view a tenant"),
    "tenant.list": Rule(_EVERYONE, "list the tenants"),
    "records": Rule(_EVERYONE, "view a tenant's DNS records"),
    "export": Rule(_EVERYONE, "export a tenant's DNS records"),
    "validate": Rule(_CHANGERS, "validate a tenant's DNS (it may change the tenant's status)",
                     "accountants can see the last validation with `relay-admin tenant show`"),
    "revalidate": Rule(_CHANGERS, "re-validate tenants' DNS (it may change their status)",
                       "accountants can see the last validation with `relay-admin tenant show`"),
    "client.add": Rule(_CHANGERS, "add clients"),
    "client.list": Rule(_EVERYONE, "list the clients"),
    "client.remove": Rule(_CHANGERS, "remove clients"),
    "send-test": Rule(_CHANGERS, "send a test message"),
    "key.rotate": Rule(_CHANGERS, "rotate a tenant's DKIM key",
                       "accountants can see the keys and their states with `relay-admin tenant show`"),
    "audit": Rule(_EVERYONE, "read the audit log"),
    # On another user; on itself every role may (`management_refusal`).
    "user.password": Rule(_CHANGERS, "set another user's password", "every user can set its own"),
    "token.add": Rule(_CHANGERS, "issue API tokens for another user",
                      "every user can issue tokens for itself"),
    "token.revoke": Rule(_CHANGERS, "revoke another user's API tokens",
                         "every user can revoke its own"),
}
PERMISSIONS: dict[str, frozenset[Role]] = {action: rule.roles for action, rule in RULES.items()}

# Not an action of its own: part of `user.add`, decided by `admin.commands.users.may_grant`.
OWNER_GRANT_REFUSAL = "only an owner can add an owner"
SCOPED_GRANT_REFUSAL = ("an admin of some tenants adds users only for those tenants; "
                        "name them with --tenant")
OWNER_MANAGE_REFUSAL = "only an owner can manage an owner's password and tokens"
SCOPED_MANAGE_REFUSAL = "an admin of some tenants manages only users of those same tenants"

_PLURAL = {Role.OWNER: "owners", Role.ADMIN: "admins", Role.ACCOUNTANT: "accountants"}


def may(role: Role, action: str) -> bool:
    """Whether `role` may perform `action`."""
    return role in RULES[action].roles


def within_scope(actor: User, tenants: tuple[str, ...]) -> bool:
    """Whether a user scoped to `tenants` (none: every tenant) sees nothing `actor` does not."""
    return not actor.scoped or (bool(tenants) and set(tenants) <= set(actor.tenants))


def management_refusal(action: str, actor: User, target: User) -> str | None:
    """Why `actor` may not do `action` (password, tokens) for `target`, or None when it may.

    Itself always; another user only as an owner or admin, never an admin over an owner (that would
    hand it the owner's sign-in), and only a user whose tenants are all in the actor's scope.
    """
    if actor.name == target.name:
        return None
    if not may(actor.role, action):
        return refusal(action)
    if target.role is Role.OWNER and actor.role is not Role.OWNER:
        return OWNER_MANAGE_REFUSAL
    if not within_scope(actor, target.tenants):
        return SCOPED_MANAGE_REFUSAL
    return None


def _who(roles: frozenset[Role]) -> str:
    if roles == _EVERYONE:
        return "every role"
    names = [_PLURAL[role] for role in Role if role in roles]  # in the enum's order, most power first
    return "only " + (" and ".join(names) if names else "nobody")


def refusal(action: str) -> str:
    """Why an action is refused, in words: "only owners and admins can add clients"."""
    rule = RULES[action]
    sentence = f"{_who(rule.roles)} can {rule.doing}"
    return f"{sentence}; {rule.instead}" if rule.instead else sentence
