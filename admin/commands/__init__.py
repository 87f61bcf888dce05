"""One module per `relay-admin` command group; each exposes `register(commands, common)`."""

from __future__ import annotations

from types import ModuleType

from admin.commands import clients, export, records, send_test, tenants, users, validate

COMMAND_MODULES: tuple[ModuleType, ...] = (users, tenants, records, export, validate, clients, send_test)
