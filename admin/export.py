"""The Excel hand-over for a tenant's IT provider: the sender, the records, and instructions (openpyxl).

Every cell is written as text: a spreadsheet must never turn a value into a formula, number or date
(DNS.md, "Excel turns a value into a formula or date").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from admin.export_texts import ExportTexts
from admin.records import DnsRecord
from admin.inputs import unicode_domain
from admin.render import zone_value
from relay.atomicfile import write_atomically
from relay.models import CheckResult, KeyState, Sender

BULLET = "\u2022 "
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
FORMULA_LEADS = ("=", "+", "-", "@")
MIN_WIDTH, MAX_WIDTH = 8, 60
INSTRUCTIONS_WIDTH = 110
HEADER_ROW = 6  # below the sender block (up to 4 rows) and one empty row
LINE_HEIGHT = 15  # points per line of 11-point text, for rows whose text wraps


def put_text(ws: Worksheet, row: int, column: int, value: str, *, bold: bool = False) -> None:
    """Write `value` as a literal text cell, whatever it starts with; "" leaves the cell empty."""
    if not value:
        return
    cell = ws.cell(row=row, column=column)
    cell.value = value
    # openpyxl marks strings starting with `=` as formulas on assignment; force plain text back.
    cell.data_type = "s"
    cell.number_format = "@"
    if value.startswith(FORMULA_LEADS):
        cell.quotePrefix = True  # Excel's own "this is text" flag, kept when the cell is edited
    if bold:
        cell.font = Font(bold=True)


def _check_key(purpose: str, name: str) -> tuple[str, str]:
    return purpose, name.rstrip(".").lower()


def _status_cells(record: DnsRecord, checks: dict[tuple[str, str], CheckResult],
                  texts: ExportTexts) -> tuple[str, str]:
    check = checks.get(_check_key(record.purpose, record.name))
    if check is None:
        return "", ""
    when = check.checked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return texts.statuses.get(check.status.value, check.status.value), when


def _purpose_cell(record: DnsRecord, texts: ExportTexts) -> str:
    label = texts.purposes[record.purpose]
    return f"{label} ({texts.states[record.state.value]})" if record.state is not None else label


def record_row(record: DnsRecord, checks: dict[tuple[str, str], CheckResult],
               texts: ExportTexts) -> list[str]:
    """One record as the Records sheet shows it, in the column order of `texts.headers`."""
    status, when = _status_cells(record, checks, texts)
    return [
        record.type, record.relative_name, record.name, record.value, zone_value(record),
        str(record.ttl), _purpose_cell(record, texts), texts.yes if record.required else texts.no,
        status, when,
    ]


def sender_rows(sender: Sender, texts: ExportTexts) -> list[tuple[str, str]]:
    """Name, E-mail address, Domain (each label + value), and the Unicode domain for an IDN."""
    name_label, email_label, domain_label, unicode_label = texts.sender_labels
    rows = [(name_label, sender.name), (email_label, sender.email), (domain_label, sender.domain)]
    shown = unicode_domain(sender.domain)
    if shown != sender.domain:
        rows.append((unicode_label, shown))
    return rows


def fill_records_sheet(ws: Worksheet, sender: Sender, records: Sequence[DnsRecord],
                       checks: Sequence[CheckResult], texts: ExportTexts) -> None:
    for row, (label, value) in enumerate(sender_rows(sender, texts), start=1):
        put_text(ws, row, 1, label, bold=True)
        put_text(ws, row, 2, value)
    for column, header in enumerate(texts.headers, start=1):
        put_text(ws, HEADER_ROW, column, header, bold=True)
        ws.cell(row=HEADER_ROW, column=column).fill = HEADER_FILL
    by_key = {_check_key(c.purpose, c.name): c for c in checks}
    for row, record in enumerate(records, start=HEADER_ROW + 1):
        for column, value in enumerate(record_row(record, by_key, texts), start=1):
            put_text(ws, row, column, value)
    ws.freeze_panes = f"A{HEADER_ROW + 1}"  # the sender block and the header stay in view
    _fit_columns(ws)


def _fit_columns(ws: Worksheet) -> None:
    """Readable widths from the data, within bounds; the headers wrap instead of widening a column."""
    for column in range(1, ws.max_column + 1):
        values = [str(ws.cell(row=row, column=column).value or "") for row in range(1, ws.max_row + 1)
                  if row != HEADER_ROW]
        header = str(ws.cell(row=HEADER_ROW, column=column).value or "")
        longest_word = max((len(word) for word in header.split()), default=0)
        longest = max([len(value) for value in values] + [longest_word])
        ws.column_dimensions[get_column_letter(column)].width = max(MIN_WIDTH, min(MAX_WIDTH, longest + 2))
    for cell in ws[HEADER_ROW]:
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    ws.row_dimensions[HEADER_ROW].height = 3 * LINE_HEIGHT


def instruction_paragraphs(sender: Sender, records: Sequence[DnsRecord],
                           texts: ExportTexts) -> list[tuple[str, bool]]:
    """The Instructions sheet as (paragraph, is_heading), filled in for this tenant's names."""
    domain = unicode_domain(sender.domain)
    dkims = [r for r in records if r.purpose == "dkim"]
    dkim = next((r for r in dkims if r.state is KeyState.ACTIVE), dkims[0] if dkims else None)
    return_path = next((r for r in records if r.purpose == "return-path"), None)
    example = dkim or return_path or records[0]
    fields = {
        "name": sender.name, "email": sender.email, "domain": domain,
        "records_sheet": texts.records_sheet, "host_header": texts.headers[1],
        "value_header": texts.headers[3], "split_header": texts.headers[4],
        "host": example.relative_name, "full": example.name,
        "doubled": f"{example.name}.{sender.domain}",
    }
    paragraphs: list[tuple[str, bool]] = [
        (texts.title.format(**fields), True),
        (texts.intro.format(**fields), False),
        (texts.untouched.format(**fields), False),
        ("", False),
        (texts.per_record_heading, True),
    ]
    for record in records:
        paragraphs.append((_record_template(record, texts).format(
            **{**fields, "host": record.relative_name, "target": record.value}), False))
    paragraphs += [("", False), (texts.mistakes_heading, True)]
    for template in (texts.mistake_double_domain, texts.mistake_quotes, texts.mistake_split):
        paragraphs.append((BULLET + template.format(**fields), False))
    if return_path is not None:
        paragraphs.append((BULLET + texts.mistake_cloudflare.format(
            **{**fields, "host": return_path.relative_name}), False))
    paragraphs += [("", False), (texts.finish_heading, True), (texts.validate.format(**fields), False)]
    return paragraphs


def _record_template(record: DnsRecord, texts: ExportTexts) -> str:
    if record.purpose == "dkim":
        state = record.state.value if record.state is not None else "active"
        return {"next": texts.dkim_next, "retiring": texts.dkim_retiring}.get(state, texts.dkim)
    return texts.return_path if record.purpose == "return-path" else texts.dmarc


def fill_instructions_sheet(ws: Worksheet, paragraphs: Sequence[tuple[str, bool]]) -> None:
    ws.column_dimensions["A"].width = INSTRUCTIONS_WIDTH
    for row, (text, heading) in enumerate(paragraphs, start=1):
        if not text:
            continue
        put_text(ws, row, 1, text, bold=heading)
        ws.cell(row=row, column=1).alignment = Alignment(wrap_text=True, vertical="top")
        # Not every spreadsheet grows a wrapped row by itself: give it room for its lines.
        lines = -(-len(text) // (INSTRUCTIONS_WIDTH - 10))
        ws.row_dimensions[row].height = lines * LINE_HEIGHT


def build_workbook(sender: Sender, records: Sequence[DnsRecord], checks: Sequence[CheckResult],
                   texts: ExportTexts) -> Workbook:
    workbook = Workbook()
    records_ws = workbook.active
    assert isinstance(records_ws, Worksheet)
    records_ws.title = texts.records_sheet
    fill_records_sheet(records_ws, sender, records, checks, texts)
    fill_instructions_sheet(workbook.create_sheet(texts.instructions_sheet),
                            instruction_paragraphs(sender, records, texts))
    workbook.properties.creator = "accounton-relay"
    return workbook


def save_atomically(workbook: Workbook, target: Path) -> None:
    """Temp file in the target's directory, fsync, rename: a failure leaves no half-written file."""
    # 0666 less the umask: a hand-over file is an ordinary file, not a secret.
    write_atomically(target, workbook.save, mode=0o666)
