"""`relay-admin serve`: the admin web server (JSON API, OpenAPI document, settings page) on uvicorn.

It listens on RELAY_ADMIN_LISTEN (or `--listen`), with HTTPS when RELAY_ADMIN_TLS_CERT and
RELAY_ADMIN_TLS_KEY are set. The socket is bound here, before uvicorn starts, so that port 0 works
and the first line on stdout is the address actually bound (`http://127.0.0.1:8025/`): a script or
test reads it. Everything else (uvicorn's log, the access log) goes to stderr. No acting user: people
sign in on the page, programs with a token.

RELAY_LOG_FORMAT=json (relay.core.logs) makes every line it writes a JSON object: the address line
(`{"message": "http://...", "url": "http://..."}`), uvicorn's log, the access log (with `client`,
`method`, `path` and `status` as keys) and the application's own records. In text, control characters a
client put in a path are escaped.
"""

from __future__ import annotations

import argparse
import copy
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from admin.context import EXIT_OK, Context, UsageError
from admin.web.app import create_app
from relay.core import logs
from relay.core.settings import HostPort, parse_host_port


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "serve", parents=[common], help="run the admin web server (API and settings page)",
        description="Serve the JSON API under /api/v1, its OpenAPI document at /api/openapi.json and "
                    "the settings page at /tenants/TENANT/settings. The first line on stdout is the "
                    "address it listens on.")
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="override RELAY_ADMIN_LISTEN (port 0: any free port)")
    parser.set_defaults(handler=run)


def bind(address: HostPort, field: str) -> socket.socket:
    """A listening TCP socket on `address` (IPv4 or IPv6), or a one-line UsageError naming `field`."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"{field}: cannot listen on {address}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)  # connections wait in the queue until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise UsageError(f"{field}: cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def url(sock: socket.socket, https: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if https else 'http'}://{shown}:{port}/"


class PathOnly(logging.Filter):
    """The access log names the path, never the query: a token pasted into a URL stays out of logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


class AccessFields(logging.Filter):
    """An access-log record's parts as keys of its JSON object (relay.core.logs.fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            setattr(record, logs.FIELDS, {"event": "http", "client": args[0], "method": args[1], "path": args[2],
                                          "status": args[4]})
        return True


def _log_config(log_format: logs.LogFormat = "text") -> dict[str, Any]:
    """uvicorn's logging, with the access log on stderr too (stdout carries the address only), in
    RELAY_LOG_FORMAT: uvicorn's own formatters (arguments escaped) for text, relay.logs' for JSON."""
    config = copy.deepcopy(LOGGING_CONFIG)
    filters = config.setdefault("filters", {})
    filters["path_only"] = {"()": f"{__name__}.PathOnly"}
    filters["escape"] = {"()": "relay.core.logs.EscapeArguments"}
    filters["access_fields"] = {"()": f"{__name__}.AccessFields"}
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    if log_format == "json":
        config["formatters"] = {name: {"()": "relay.core.logs.JsonFormatter"} for name in ("default", "access")}
        config["handlers"]["access"]["filters"] = ["path_only", "access_fields"]
    else:
        config["handlers"]["access"]["filters"] = ["path_only", "escape"]
        config["handlers"]["default"]["filters"] = ["escape"]
    return config


def run(ctx: Context, args: argparse.Namespace) -> int:
    if args.listen is not None:
        try:
            address = parse_host_port(args.listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None
        field = "--listen"
    else:
        address, field = ctx.settings.admin_listen, "RELAY_ADMIN_LISTEN"
    settings = ctx.settings
    https = settings.admin_tls_cert is not None
    sock = bind(address, field)
    app = create_app(settings, ctx.store)
    config = uvicorn.Config(
        app, log_config=_log_config(settings.log_format), proxy_headers=True, server_header=False,
        ssl_certfile=str(settings.admin_tls_cert) if https else None,
        ssl_keyfile=str(settings.admin_tls_key) if settings.admin_tls_key else None,
        lifespan="off",
    )
    # After uvicorn's dictConfig: the application's own records (relay.admin.web, ...) on stderr too.
    logs.configure(settings.log_format)
    where = url(sock, https)
    if settings.log_format == "json":
        logs.line(where, log_format="json", stream=ctx.out, logger="relay.admin.serve", url=where)
    else:
        ctx.out.write(where + "\n")
        ctx.out.flush()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK
