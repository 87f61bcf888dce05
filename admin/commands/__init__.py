"""One module per `relay-admin` command group; each exposes `register(commands, common)`."""

from __future__ import annotations

from types import ModuleType

from admin.commands import (
    audit,
    clients,
    export,
    records,
    revalidate,
    rotate_key,
    send_test,
    serve,
    tenants,
    tokens,
    users,
    validate,
)

COMMAND_MODULES: tuple[ModuleType, ...] = (users, tenants, records, export, validate, clients, send_test,
                                        rotate_key, revalidate, audit, tokens, serve)
