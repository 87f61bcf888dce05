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

from admin.commands import COMMAND_MODULES
from admin.context import EXIT_STORE, EXIT_USAGE, CliError, Context
from relay.settings import SettingsError, load_settings
from relay.store import StoreError, open_store

PROG = "relay-admin"


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            database=getattr(args, "database", None), keys_dir=getattr(args, "keys_dir", None)
        )
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_STORE
    actor = getattr(args, "actor", None) or settings.admin_user or os.environ.get("RELAY_ADMIN_USER")
    context = Context(
        settings=settings, store=store, actor_name=actor,
        json_output=getattr(args, "json_output", False),
    )
    try:
        return int(args.handler(context, args))
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoreError as exc:  # transaction rolled back: nothing changed
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_STORE
    finally:
        store.close()


def run() -> NoReturn:
    sys.exit(main())
