"""The Excel hand-over for a tenant's IT provider: the sender, the records, and instructions (openpyxl).

Every cell is written as text: a spreadsheet must never turn a value into a formula, number or date
(DNS.md, "Excel turns a value into a formula or date"). Both sheets are laid out to be printed or
saved as PDF as they are: landscape, one page wide, the records' header row on every page, long
values wrapped, one font family throughout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.utils.indexed_list import IndexedList
from openpyxl.worksheet.header_footer import HeaderFooterItem
from openpyxl.worksheet.page import PageMargins
from openpyxl.worksheet.properties import PageSetupProperties
from openpyxl.worksheet.worksheet import Worksheet

from admin.export_texts import ExportTexts
from admin.inputs import unicode_domain
from admin.render import split_txt
from relay.core.atomicfile import write_atomically
from relay.core.models import CheckResult, KeyState, Sender
from relay.core.store import utcnow
from relay.domains.records import DnsRecord, human_time, removable

# DejaVu Sans ships with Debian (fonts-dejavu-core, which LibreOffice depends on). Without a name,
# LibreOffice renders bold cells in a serif face; family 2 ("swiss") lets Excel on a machine without
# DejaVu pick a sans-serif instead. No `scheme`: that would make Excel use the theme's font instead.
FONT_NAME = "DejaVu Sans"
BODY_FONT = Font(name=FONT_NAME, size=10, family=2)
BOLD_FONT = Font(name=FONT_NAME, size=10, family=2, bold=True)
TITLE_FONT = Font(name=FONT_NAME, size=13, family=2, bold=True)
VALUE_FONT = Font(name=FONT_NAME, size=9, family=2)  # the ~410-character DKIM key, wrapped

BULLET = "\u2022 "
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
GRID = Border(*(Side(style="thin", color="A6A6A6"),) * 4)
FORMULA_LEADS = ("=", "+", "-", "@")
HEADER_ROW = 6  # below the sender block (up to 4 rows) and one empty row
INSTRUCTIONS_WIDTH = 120

# Row heights. LibreOffice keeps a row at its stored height even when its wrapped text needs more,
# and cuts off (also in print) whatever does not fit: so each row gets the height of its tallest
# text, measured here. One unit of column width is one digit of the 10-point default font (6.35 pt).
# Widths are DejaVu Sans advances in ems, rounded up per group (measured from LibreOffice's PDF),
# so that a row comes out a little too tall rather than too short; bold is wider.
UNIT_POINTS, CELL_PADDING = 6.35, 5.0
LINE_SPACING, ROW_PADDING = 1.2, 4.0
BOLD_WIDER = 1.15
EM_WIDTHS = {
    **dict.fromkeys("ijlIJ'|!", 0.30), **dict.fromkeys("frt/;:.,()[] -\u00a0", 0.42),
    **dict.fromkeys("ABCDEGHKNOQRUVXZ", 0.80), **dict.fromkeys("mwMW@+=%&", 1.0),
}
OTHER_EM = 0.64  # the other letters, digits and accented letters
# Where LibreOffice may end a line (Unicode line breaking): after a space, a slash or a hyphen.
LINE_BREAK = re.compile(r"(?<=[ /-])")


@dataclass(frozen=True)
class Column:
    """One Records column: its width in characters, and whether it holds long values (smaller font)."""

    width: int
    long_value: bool = False


# Eleven columns in 169 units: fitted to the width of landscape A4, 10-point text prints at about
# 7.5 points. Long values wrap inside narrow columns, so a DKIM row grows tall, not wide.
COLUMNS = (
    Column(12),  # Type, and the sender block's labels above it (they wrap)
    Column(27),  # Host: the DKIM host (selector + ._domainkey, 27 characters) on one line
    Column(16),  # Full name
    Column(20, long_value=True),  # Value
    Column(20, long_value=True),  # Value for zone files
    Column(6),  # TTL
    Column(12),  # Purpose
    Column(11),  # Required
    Column(12),  # Last validation
    Column(22),  # Diagnosis
    Column(11),  # Validated at: date and time on two lines
)


def put_text(ws: Worksheet, row: int, column: int, value: str, *, font: Font = BODY_FONT,
             wrap: bool = False) -> float:
    """Write `value` as a literal text cell, whatever it starts with; "" leaves the cell empty.

    Returns the height in points the text needs, wrapped at the column's width when `wrap`.
    """
    cell = ws.cell(row=row, column=column)
    cell.font = font
    cell.alignment = Alignment(wrap_text=wrap, vertical="top")
    if not value:
        return 0.0
    cell.value = value
    # openpyxl marks strings starting with `=` as formulas on assignment; force plain text back.
    cell.data_type = "s"
    cell.number_format = "@"
    if value.startswith(FORMULA_LEADS):
        cell.quotePrefix = True  # Excel's own "this is text" flag, kept when the cell is edited
    width = ws.column_dimensions[get_column_letter(column)].width if wrap else None
    return text_height(value, width, font)


def text_height(text: str, width: float | None, font: Font) -> float:
    """Points of row height `text` needs in a column `width` units wide (None: not wrapped)."""
    size = float(font.sz or BODY_FONT.sz or 10)
    lines = len(text.split("\n"))
    if width is not None:
        room = width * UNIT_POINTS - CELL_PADDING
        scale = size * (BOLD_WIDER if font.b else 1.0)
        lines = sum(wrapped_lines(line, room / scale) for line in text.split("\n"))
        # Where a key breaks depends on where its slashes fall, and a line or two more than the
        # estimate is possible (seen with real keys): room for one more line in every eight.
        lines += lines // 8
    return lines * size * LINE_SPACING + ROW_PADDING


def wrapped_lines(text: str, room: float) -> int:
    """Lines one paragraph wraps to in `room` ems, filled the way LibreOffice fills them."""
    lines, used = 1, 0.0
    for piece in LINE_BREAK.split(text):
        width = sum(EM_WIDTHS.get(char, OTHER_EM) for char in piece)
        if used and used + width > room:
            lines, used = lines + 1, 0.0
        if width <= room:
            used += width
            continue
        for char in piece:  # a piece longer than a line (a key) is broken between any characters
            char_width = EM_WIDTHS.get(char, OTHER_EM)
            if used + char_width > room:
                lines, used = lines + 1, 0.0
            used += char_width
    return lines


def use_font_everywhere(workbook: Workbook, font: Font) -> None:
    """Make `font` the workbook's default: the Normal style, empty cells and cells typed in later."""
    # openpyxl has no public setter for it: font 0 and the Normal style are Calibri with the theme
    # scheme. Replaced before any cell is styled; test_export reads styles.xml back to catch a change.
    workbook._fonts = IndexedList([font])  # type: ignore[attr-defined]
    workbook._named_styles["Normal"].font = font  # type: ignore[attr-defined]


def _check_key(purpose: str, name: str) -> tuple[str, str]:
    return purpose, name.rstrip(".").lower()


def _check_cells(record: DnsRecord, checks: dict[tuple[str, str], CheckResult],
                 texts: ExportTexts) -> tuple[str, str, str]:
    """Status word, diagnosis (the fix, in English) and time of the record's last validation."""
    check = checks.get(_check_key(record.purpose, record.name))
    if check is None:
        return "", "", ""
    when = check.checked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return texts.statuses.get(check.status.value, check.status.value), check.diagnosis, when


def _purpose_cell(record: DnsRecord, texts: ExportTexts, now: datetime) -> str:
    """The purpose, and for a DKIM key its state and what to do: publish now, keep until, may go."""
    label = texts.purposes[record.purpose]
    if record.state is None:
        return label
    state = texts.states[record.state.value]
    if record.state is KeyState.NEXT:
        state += ": " + texts.key_publish_now
    elif record.state is KeyState.RETIRING and record.remove_after is not None:
        todo = texts.key_removable_since if removable(record.remove_after, now) else texts.key_keep_until
        state += ": " + todo.format(until=human_time(record.remove_after))
    return f"{label} ({state})"


def zone_pieces(record: DnsRecord) -> str:
    """The value for a zone file, one line per piece and without quotes (the instructions say where
    quotes go): <=255-octet strings of a TXT record (RFC 1035 3.3.14), or the absolute target."""
    if record.type == "TXT":
        return "\n".join(split_txt(record.value))
    return record.value.rstrip(".") + "."


def record_row(record: DnsRecord, checks: dict[tuple[str, str], CheckResult],
               texts: ExportTexts, now: datetime) -> list[str]:
    """One record as the Records sheet shows it, in the column order of `texts.headers`."""
    status, diagnosis, when = _check_cells(record, checks, texts)
    return [
        record.type, record.relative_name, record.name, record.value, zone_pieces(record),
        str(record.ttl), _purpose_cell(record, texts, now), texts.yes if record.required else texts.no,
        status, diagnosis, when,
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
                       checks: Sequence[CheckResult], texts: ExportTexts, now: datetime) -> None:
    """The sender block, then one row per record under a header row; each cell text, wrapped."""
    for column, spec in enumerate(COLUMNS, start=1):
        ws.column_dimensions[get_column_letter(column)].width = spec.width
    for row, (label, value) in enumerate(sender_rows(sender, texts), start=1):
        set_height(ws, row, [put_text(ws, row, 1, label, font=BOLD_FONT, wrap=True),
                             put_text(ws, row, 2, value)])
    set_height(ws, HEADER_ROW, [
        _table_cell(ws, HEADER_ROW, column, header, BOLD_FONT, fill=HEADER_FILL)
        for column, header in enumerate(texts.headers, start=1)])
    by_key = {_check_key(c.purpose, c.name): c for c in checks}
    for row, record in enumerate(records, start=HEADER_ROW + 1):
        set_height(ws, row, [
            _table_cell(ws, row, column, value, VALUE_FONT if spec.long_value else BODY_FONT)
            for column, (spec, value) in enumerate(zip(COLUMNS, record_row(record, by_key, texts, now)),
                                                    start=1)])
    ws.freeze_panes = f"A{HEADER_ROW + 1}"  # the sender block and the header stay in view
    set_up_printing(ws, title_rows=f"{HEADER_ROW}:{HEADER_ROW}")


def _table_cell(ws: Worksheet, row: int, column: int, value: str, font: Font, *,
                fill: PatternFill | None = None) -> float:
    """A wrapped, framed cell of the records table; returns the height it needs."""
    height = put_text(ws, row, column, value, font=font, wrap=True)
    cell = ws.cell(row=row, column=column)
    cell.border = GRID
    if fill is not None:
        cell.fill = fill
    return height


def set_height(ws: Worksheet, row: int, heights: Sequence[float]) -> None:
    """Room for the row's tallest text: LibreOffice does not grow a row of wrapped text by itself."""
    ws.row_dimensions[row].height = round(max(heights), 1)


def set_up_printing(ws: Worksheet, *, title_rows: str | None = None) -> None:
    """Landscape A4, one page wide and as many tall as needed, `title_rows` repeated on every page."""
    ws.page_setup.orientation = ws.ORIENTATION_LANDSCAPE
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0  # 0: any number of pages tall
    ws.page_margins = PageMargins(left=0.3, right=0.3, top=0.5, bottom=0.6, header=0.2, footer=0.3)
    ws.print_title_rows = title_rows
    footer = HeaderFooterItem()
    footer.center.text = "&A  \u2013  &P / &N"  # sheet name, page number / page count
    footer.center.font = f"{FONT_NAME},Regular"
    footer.center.size = 8
    ws.HeaderFooter.oddFooter = footer


def instruction_paragraphs(sender: Sender, records: Sequence[DnsRecord], texts: ExportTexts,
                           now: datetime) -> list[tuple[str, bool]]:
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
        "purpose_header": texts.headers[6], "status_header": texts.headers[8], "diagnosis_header": texts.headers[9],
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
        until = human_time(record.remove_after) if record.remove_after is not None else ""
        paragraphs.append((_record_template(record, texts, now).format(
            **{**fields, "host": record.relative_name, "target": record.value, "until": until}), False))
    if any(r.state in (KeyState.NEXT, KeyState.RETIRING) for r in dkims):
        paragraphs += [("", False), (texts.rotation_heading, True),
                       (texts.rotation.format(**fields), False)]
    paragraphs += [("", False), (texts.mistakes_heading, True)]
    for template in (texts.mistake_double_domain, texts.mistake_quotes, texts.mistake_split):
        paragraphs.append((BULLET + template.format(**fields), False))
    if return_path is not None:
        paragraphs.append((BULLET + texts.mistake_cloudflare.format(
            **{**fields, "host": return_path.relative_name}), False))
    paragraphs += [("", False), (texts.finish_heading, True), (texts.validate.format(**fields), False),
                   (texts.results.format(**fields), False)]
    return paragraphs


def _record_template(record: DnsRecord, texts: ExportTexts, now: datetime) -> str:
    if record.purpose != "dkim":
        return texts.return_path if record.purpose == "return-path" else texts.dmarc
    if record.state is KeyState.NEXT:
        return texts.dkim_next
    if record.state is not KeyState.RETIRING:
        return texts.dkim
    if record.remove_after is None:
        return texts.dkim_retiring
    return texts.dkim_retired if removable(record.remove_after, now) else texts.dkim_retiring_until


def fill_instructions_sheet(ws: Worksheet, paragraphs: Sequence[tuple[str, bool]]) -> None:
    """One wrapped paragraph per row in one wide column; the first row is the title."""
    ws.column_dimensions["A"].width = INSTRUCTIONS_WIDTH
    for row, (text, heading) in enumerate(paragraphs, start=1):
        if text:
            font = TITLE_FONT if row == 1 else BOLD_FONT if heading else BODY_FONT
            set_height(ws, row, [put_text(ws, row, 1, text, font=font, wrap=True)])
    set_up_printing(ws)


def build_workbook(sender: Sender, records: Sequence[DnsRecord], checks: Sequence[CheckResult],
                   texts: ExportTexts, *, now: datetime | None = None) -> Workbook:
    """Both sheets, in `texts`' language, ready to save; `now` judges whether a retiring key may go."""
    now = now or utcnow()
    workbook = Workbook()
    use_font_everywhere(workbook, BODY_FONT)
    records_ws = workbook.active
    assert isinstance(records_ws, Worksheet)
    records_ws.title = texts.records_sheet
    fill_records_sheet(records_ws, sender, records, checks, texts, now)
    fill_instructions_sheet(workbook.create_sheet(texts.instructions_sheet),
                            instruction_paragraphs(sender, records, texts, now))
    workbook.properties.creator = "accounton-relay"
    return workbook


def save_atomically(workbook: Workbook, target: Path) -> None:
    """Temp file in the target's directory, fsync, rename: a failure leaves no half-written file."""
    # 0666 less the umask: a hand-over file is an ordinary file, not a secret.
    write_atomically(target, workbook.save, mode=0o666)
