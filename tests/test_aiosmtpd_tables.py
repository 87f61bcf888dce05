"""aiosmtpd's per-connection command and AUTH tables, built from a per-class list of names while
`SMTP.__init__` runs (relay/smtp/aiosmtpd_adapter.py): they must come out exactly as a stock aiosmtpd
builds them, and `dir()` must be whole again afterwards. A new aiosmtpd that builds its tables some
other way fails here."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from relay.smtp.aiosmtpd_adapter import AdaptedSMTP, HandlerNames


class Handler:
    def helper(self) -> None:  # not a hook: left out of the tables
        return None

    async def handle_RCPT(self, *args: Any) -> str:
        return "250 OK"

    async def auth_XTOKEN(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)


class Commands:
    """A command and an AUTH mechanism of our own, as a subclass adds them."""

    async def smtp_XCLIENT(self, arg: str) -> None:
        return None

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)


class NamedHandler(HandlerNames, Handler):
    pass


class Stock(Commands, SMTP):
    pass


class Adapted(Commands, AdaptedSMTP):
    pass


def tables(protocol: SMTP) -> tuple[dict[str, str], dict[str, tuple[str, bool]]]:
    commands = {name: method.__name__ for name, method in protocol._smtp_methods.items()}
    auth = {name: (impl.method.__name__, impl.is_builtin) for name, impl in protocol._auth_methods.items()}
    return commands, auth


async def test_the_tables_are_those_a_stock_aiosmtpd_builds() -> None:
    asyncio.get_running_loop()  # SMTP() takes the running loop
    stock, adapted = Stock(Handler()), Adapted(Handler())
    assert tables(adapted) == tables(stock)
    commands, auth = tables(adapted)
    assert "XCLIENT" in commands and "EHLO" in commands
    assert {"CRAM-MD5", "XTOKEN", "LOGIN", "PLAIN"} <= set(auth)
    assert adapted._handle_hooks.keys() == stock._handle_hooks.keys() == {"RCPT"}
    with_names = Adapted(NamedHandler())
    assert tables(with_names) == tables(stock), "a handler listing its hook names once per class"
    assert with_names._handle_hooks.keys() == {"RCPT"}
    assert set(vars(NamedHandler)["_hook_names"]) == {"handle_RCPT", "auth_XTOKEN"}
    # Listed once for the class (not once per connection), and the next connection builds from it.
    assert {"smtp_XCLIENT", "auth_CRAM__MD5", "smtp_EHLO"} <= set(vars(Adapted)["_command_names"])
    second = Adapted(Handler())
    assert tables(second) == tables(stock)


async def test_dir_is_whole_again_once_built() -> None:
    asyncio.get_running_loop()
    adapted = Adapted(Handler())
    names = set(dir(adapted))
    assert set(dir(Stock(Handler()))) <= names, "every name a stock instance lists"
    assert {"reader", "split_path", "push", "_handle_hooks"} <= names, "not only the commands"
