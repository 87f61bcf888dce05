"""Logging of the relay and the admin web server: RELAY_LOG_FORMAT `text` (one line per record, control
characters escaped) or `json` (one JSON object per line).

Both formats carry the same records. A record may carry structured fields (`log.info(..., extra=fields(
id=..., outcome=...))`): JSON writes them as keys of its object, text writes only the message, which says
the same in words (`tx=... outcome=delivered`). A JSON line:

    {"time": "2026-11-27T11:12:11.482Z", "level": "INFO", "logger": "relay.transaction", "process": 4242,
     "message": "tx=7485694B8BE9 client=invoicing ...", "event": "transaction", "id": "7485694B8BE9", ...}

Log injection: a client chooses some of what is logged (an EHLO name, a command aiosmtpd did not
recognise, a user name, a path). Text escapes every control character in the message (CR, LF, the rest
of C0 and C1, DEL, U+2028/U+2029) as `\\r`, `\\n`, `\\xNN`, so nothing a client sends can start a line
of its own; a traceback's lines follow its record indented with `  | `. JSON escapes them by
construction (`ensure_ascii`), so every line is exactly one object.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
FIELDS = "relay_fields"  # the LogRecord attribute that holds a record's structured fields
CONTINUATION = "  | "  # starts each line of a traceback in text

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a record whose JSON object carries `values` as keys: `log.info(..., extra=fields(id=tx))`."""
    return {FIELDS: values}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape: one log line stays one line."""
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def _extra_text(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """The traceback and stack of a record (empty without), as logging.Formatter writes them."""
    parts = []
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class TextFormatter(logging.Formatter):
    """`time [pid] LEVEL logger: message`, the message's control characters escaped (module docstring)."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extra = _extra_text(record, self)
        if not extra:
            return line
        # Escaped within each line, and indented: a line of its own can only be a continuation.
        return line + "".join(f"\n{CONTINUATION}{escape_controls(part)}" for part in extra.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, process, message, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key, value in (getattr(record, FIELDS, None) or {}).items():
            entry.setdefault(key, value)  # the base keys above are never overwritten
        extra = _extra_text(record, self)
        if extra:
            entry["exc"] = extra
        # ensure_ascii: CR, LF, U+2028 and every other character that could break a line are escaped.
        return json.dumps(entry, ensure_ascii=True, default=str)


class EscapeArguments(logging.Filter):
    """For a handler whose formatter is not ours (uvicorn's, in text): escape control characters in the
    record's string arguments, where whatever a client chose (a path) is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(escape_controls(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif not record.args and isinstance(record.msg, str):
            record.msg = escape_controls(record.msg)
        return True


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _RelayHandler(logging.StreamHandler[TextIO]):
    """The root handler `configure` installs (found again, not added twice, on the next call)."""


def configure(log_format: LogFormat, *, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send every record (the root logger's) to `stream` (stderr) in `log_format`; again to switch format.

    Warnings (the `warnings` module) become records too, so nothing reaches stderr outside the format.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _RelayHandler)), None)
    if handler is None:
        handler = _RelayHandler(stream or sys.stderr)
        root.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    handler.setFormatter(formatter(log_format))
    root.setLevel(level)
    logging.captureWarnings(True)


def line(message: str, *, log_format: LogFormat, stream: TextIO, level: str = "INFO",
         logger: str = "relay", prefix: str = "relay: ", **values: Any) -> None:
    """Write one line outside logging (the banner on stdout, a start-up error before logging is set up):
    `relay: message` in text, an object like a record's in JSON."""
    if log_format == "json":
        record = logging.LogRecord(logger, logging.getLevelNamesMapping().get(level, logging.INFO), "", 0,
                                   message, None, None)
        setattr(record, FIELDS, values)
        text = JsonFormatter().format(record)
    else:
        text = prefix + escape_controls(message)
    stream.write(text + "\n")
    stream.flush()


def plural(count: int, noun: str) -> str:
    """`1 session`, `2 sessions`: counts in log lines."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
