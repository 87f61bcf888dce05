"""Who may do what: every admin action and the roles allowed to perform it."""

from __future__ import annotations

from relay.models import Role

_EVERYONE = frozenset(Role)
_CHANGERS = frozenset({Role.OWNER, Role.ADMIN})

# Reading and exporting are open to every role; anything that changes state is not for accountants.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "user.add": _CHANGERS,
    "tenant.set": _CHANGERS,
    "tenant.show": _EVERYONE,
    "tenant.list": _EVERYONE,
    "records": _EVERYONE,
    "export": _EVERYONE,
    "validate": _CHANGERS,
    "client.add": _CHANGERS,
    "send-test": _CHANGERS,
    "audit": _EVERYONE,
}


def may(role: Role, action: str) -> bool:
    return role in PERMISSIONS[action]
