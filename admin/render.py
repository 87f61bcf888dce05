"""Render a tenant's DNS records as a table, JSON, a BIND zone snippet or CSV (pure text out)."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Sequence
from datetime import datetime

from admin.inputs import unicode_domain
from relay.core.models import KeyState
from relay.domains.records import DnsRecord, human_time, key_note, removable

FORMATS = ("table", "json", "bind", "csv")

# RFC 1035 3.3.14: a TXT record is a sequence of <character-string>s of at most 255 octets each.
TXT_CHUNK = 255

COMMENT_WIDTH = 100

CSV_FIELDS = ("type", "name", "host", "value", "ttl", "purpose", "required", "state", "remove_after")
# `,` by default; `;` for spreadsheets whose list separator is `;` (Dutch, Belgian, French settings).
CSV_SEPARATORS = (",", ";")


def domain_label(domain: str) -> str:
    """`xn--bcher-kva.test (bücher.test)` for an IDN, the plain domain otherwise."""
    shown = unicode_domain(domain)
    return domain if shown == domain else f"{domain} ({shown})"


def split_txt(value: str, limit: int = TXT_CHUNK) -> list[str]:
    """Cut `value` into pieces of at most `limit` UTF-8 octets, never inside a character.

    Receivers join the pieces with nothing in between (RFC 6376 3.6.2.2), so the cut points
    carry no meaning; an empty value is one empty string.
    """
    pieces: list[str] = []
    current, size = "", 0
    for char in value:
        width = len(char.encode("utf-8"))
        if size + width > limit:
            pieces.append(current)
            current, size = "", 0
        current += char
        size += width
    pieces.append(current)
    return pieces


def quote_txt(piece: str) -> str:
    """One zone-file <character-string>: quoted, `"` and `\\` escaped, other bytes as `\\DDD` (RFC 1035 5.1)."""
    out = []
    for byte in piece.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def zone_value(record: DnsRecord) -> str:
    """The record data as a zone file wants it: quoted <=255-octet strings, or an absolute target."""
    if record.type == "TXT":
        return " ".join(quote_txt(piece) for piece in split_txt(record.value))
    return record.value.rstrip(".") + "."


def records_json(records: Sequence[DnsRecord], now: datetime | None = None) -> list[dict[str, object]]:
    """SPEC.md `records --json`: {type,name,value,ttl,purpose,required}, plus `state` on DKIM keys,
    `remove_after` on retiring ones and a `note` on next and retiring ones (judged at `now`)."""
    return [record.as_json(now) for record in records]


def render_json(records: Sequence[DnsRecord], now: datetime | None = None) -> str:
    return json.dumps(records_json(records, now), indent=2, ensure_ascii=False) + "\n"


def purpose_label(record: DnsRecord) -> str:
    return f"{record.purpose} ({record.state.value})" if record.state is not None else record.purpose


def render_table(records: Sequence[DnsRecord], *, zone: str, now: datetime | None = None) -> str:
    """Aligned columns for a terminal; the value comes last and whole, so it can be copied.

    A key change in progress adds a line per next or retiring key below: what to do with it.
    """
    header = ("PURPOSE", "TYPE", "NAME", "TTL", "REQUIRED", "VALUE")
    rows = [header] + [
        (purpose_label(r), r.type, r.name, str(r.ttl), "yes" if r.required else "no", r.value)
        for r in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = [f"Zone: {domain_label(zone)}", ""]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[-1]]))
    notes = [(r, key_note(r.state, r.remove_after, now)) for r in records]
    if any(note for _, note in notes):
        lines += ["", "Key change:"]
        lines += [f"  {r.name} ({r.state}): {note}" for r, note in notes if note]
    return "\n".join(lines) + "\n"


def render_csv(records: Sequence[DnsRecord], *, sep: str = ",") -> str:
    """RFC 4180: every field quoted (so the DKIM value's `;` never splits it), CRLF line ends.

    `required` is `yes`/`no`, not `true`/`false`: spreadsheets turn the latter into booleans even
    when quoted (shown as WAAR/VRAI in Dutch and French ones). The TTL still opens as a number.
    `remove_after` (retiring keys) is written `2026-12-07 12:00 UTC`, which stays text too.
    """
    if sep not in CSV_SEPARATORS:
        raise ValueError(f"unknown CSV separator {sep!r}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=sep, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    for r in records:
        writer.writerow([
            r.type, r.name, r.relative_name, r.value, str(r.ttl), r.purpose,
            "yes" if r.required else "no", r.state.value if r.state is not None else "",
            human_time(r.remove_after) if r.remove_after is not None else "",
        ])
    return buffer.getvalue()


def _key_reason(record: DnsRecord, now: datetime | None) -> str:
    """What a DKIM key's record is for in its state, and what to do with it."""
    if record.state is KeyState.NEXT:
        return "next: publish now, the relay switches to it once validated"
    if record.state is KeyState.RETIRING:
        if record.remove_after is None:
            return "retiring: still verifies mail signed before the key change; keep it for now"
        when = human_time(record.remove_after)
        if now is not None and removable(record.remove_after, now):
            return f"retiring: safe to remove since {when}"
        return f"retiring: keep until {when}, then remove"
    if record.state is KeyState.ACTIVE:
        return "receivers verify the DKIM signature on every message from this domain with it"
    return "receivers verify DKIM signatures with it"


def record_reason(record: DnsRecord, now: datetime | None = None) -> str:
    """Why the record is there, and whether it is required: the comment above it in a zone file."""
    need = "Required." if record.required else "Optional."
    if record.purpose == "dkim":
        selector = record.name.split(".", 1)[0]
        state = f", {record.state.value}" if record.state is KeyState.ACTIVE else ""
        return f"DKIM public key (selector {selector}{state}): {_key_reason(record, now)}. {need}"
    if record.purpose == "return-path":
        return (
            f"Return path: the envelope sender's domain (where bounces go); it points at the platform "
            f"so bounces come back to us and SPF passes without touching the domain's own SPF. {need}"
        )
    return (
        f"DMARC policy (advice): publish only if {record.name} does not exist yet; never replace or "
        f"duplicate an existing DMARC record. {need}"
    )


def render_bind(records: Sequence[DnsRecord], *, zone: str, now: datetime | None = None) -> str:
    """A zone snippet: `$ORIGIN`, names relative to it, a `;` comment before each record."""
    origin = zone.rstrip(".") + "."
    hosts = [r.relative_name for r in records]  # `@` for the origin itself
    width = max((len(host) for host in hosts), default=1)
    lines = [
        f"; DNS records for {domain_label(zone.rstrip('.'))}, generated by accounton-relay.",
        "; Add them to this domain's zone; its existing records (MX, SPF, website) stay as they are.",
        f"$ORIGIN {origin}",
    ]
    for record, host in zip(records, hosts):
        lines.append("")
        lines.extend(textwrap.wrap(record_reason(record, now), COMMENT_WIDTH,
                                   initial_indent="; ", subsequent_indent="; "))
        lines.extend(_zone_lines(record, host.ljust(width)))
    return "\n".join(lines) + "\n"


def _zone_lines(record: DnsRecord, host: str) -> list[str]:
    prefix = f"{host} {record.ttl} IN {record.type:<5} "
    if record.type != "TXT":
        return [prefix + zone_value(record)]
    pieces = [quote_txt(piece) for piece in split_txt(record.value)]
    if len(pieces) == 1:
        return [prefix + pieces[0]]
    # Parentheses let one record span lines (RFC 1035 5.1), one string per line for readability.
    indent = " " * (len(prefix) + 2)
    lines = [f"{prefix}( {pieces[0]}"]
    lines.extend(f"{indent}{piece}" for piece in pieces[1:-1])
    lines.append(f"{indent}{pieces[-1]} )")
    return lines


def render(records: Sequence[DnsRecord], fmt: str, *, zone: str, sep: str = ",",
           now: datetime | None = None) -> str:
    """Dispatch on one of FORMATS; `sep` is the CSV field separator, `now` judges retiring keys."""
    if fmt == "json":
        return render_json(records, now)
    if fmt == "bind":
        return render_bind(records, zone=zone, now=now)
    if fmt == "csv":
        return render_csv(records, sep=sep)
    if fmt == "table":
        return render_table(records, zone=zone, now=now)
    raise ValueError(f"unknown format {fmt!r}")
