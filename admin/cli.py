"""`relay-admin`: argument parsing, settings, the store, and rendering errors as exit codes.

Each command lives in its own module under `admin.commands` and registers its sub-parser; this
module only wires them together.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from admin import inputs
from admin.commands import COMMAND_MODULES
from admin.context import EXIT_STORE, EXIT_USAGE, PROG, CliError, Context
from relay.core.settings import Settings, SettingsError, load_settings
from relay.core.store import Store, StoreError, StoreMissing, open_store, store_location


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: {message}\n")


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS keeps a value given before the command from being reset by the sub-parser's default,
    # so `relay-admin --json records acme` and `relay-admin records acme --json` both work.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--as", dest="actor", metavar="USER", default=argparse.SUPPRESS,
                        help="acting user (default: RELAY_ADMIN_USER)")
    common.add_argument("--json", dest="json_output", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output on stdout")
    common.add_argument("--database", default=argparse.SUPPRESS, metavar="URL",
                        help="override RELAY_DATABASE")
    common.add_argument("--keys-dir", dest="keys_dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="override RELAY_KEYS_DIR")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = OneLineParser(prog=PROG, parents=[common],
                           description="Set up tenants' senders, DNS records, clients and users.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=OneLineParser)
    for module in COMMAND_MODULES:
        module.register(commands, common)
    return parser


def _fail(exc: Exception, exit_code: int) -> int:
    print(f"{PROG}: {exc}", file=sys.stderr)
    return exit_code


def _open_store(settings: Settings, args: argparse.Namespace, actor: str | None) -> Store:
    """The existing store; only a command that may start one (the very first `user add`) creates it.

    RELAY_DATABASE may be relative: creating a store wherever the command happens to run would
    answer every later question from an empty store, so any other command says it is missing.
    """
    try:
        return open_store(settings, create=False)
    except StoreMissing as exc:
        may_create = getattr(args, "may_create_store", None)
        if may_create is None:
            raise
        if not may_create(args, actor):  # a bootstrap, but by an acting user that cannot exist yet
            raise StoreMissing(f"{exc}, without --as or RELAY_ADMIN_USER (user {actor!r} cannot act "
                               "in a store that does not exist yet)") from None
    store = open_store(settings)
    print(f"{PROG}: created a new store at {store_location(settings)}", file=sys.stderr)
    return store


def _acting_user(args: argparse.Namespace, settings: Settings) -> str | None:
    """`--as USER`, else RELAY_ADMIN_USER, checked as a user name; None when neither is given.

    An empty or malformed name is bad input (exit 2), never the bootstrap: it would be audited as
    `(bootstrap)`, or with a line feed in it as a forged second audit line.
    """
    if hasattr(args, "actor"):  # given, even as '': argparse.SUPPRESS leaves it out otherwise
        return inputs.identifier(args.actor, "--as", "user name")
    named = settings.admin_user if settings.admin_user is not None else os.environ.get("RELAY_ADMIN_USER")
    return None if named is None else inputs.identifier(named, "RELAY_ADMIN_USER", "user name")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            database=getattr(args, "database", None), keys_dir=getattr(args, "keys_dir", None)
        )
    except SettingsError as exc:
        return _fail(exc, EXIT_USAGE)
    try:
        actor = _acting_user(args, settings)
        store = _open_store(settings, args, actor)
    except CliError as exc:  # the bootstrap's own input checks, made before creating anything
        return _fail(exc, exc.exit_code)
    except StoreError as exc:
        return _fail(exc, EXIT_STORE)
    context = Context(
        settings=settings, store=store, actor_name=actor,
        json_output=getattr(args, "json_output", False),
    )
    try:
        return int(args.handler(context, args))
    except CliError as exc:
        return _fail(exc, exc.exit_code)
    except StoreError as exc:  # transaction rolled back: nothing changed
        return _fail(exc, EXIT_STORE)
    finally:
        store.close()


def run() -> NoReturn:
    sys.exit(main())
