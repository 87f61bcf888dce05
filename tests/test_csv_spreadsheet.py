"""`records --format csv` opened the way a spreadsheet user opens it: LibreOffice Calc, per separator.

What LibreOffice makes of each column (CSV import with the usual defaults, that is quoted fields are
not forced to text): type, name, host, value, purpose and state stay text, the DKIM value whole in
one cell even though it holds `;`; `required` stays the text `yes`/`no` (a quoted `"true"` would
become the boolean TRUE, shown as WAAR or VRAI in Dutch or French settings); a retiring key's
`remove_after` (`2026-12-07 12:00 UTC`) stays text, not a date that loses its time zone; the TTL
becomes the number 3600, which shows as 3600 and means the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
from openpyxl.cell.cell import Cell, MergedCell

from admin.render import CSV_FIELDS
from relay.core.models import KeyState
from relay.core.settings import Settings
from relay.core.store import Store
from tests.conftest import CliResult
from tests.factories import ACCOUNTANT, make_tenant, settings, store  # noqa: F401 (fixtures)
from tests.office import convert

Cli = Callable[..., CliResult]
# LibreOffice's CSV filter options: separator (ASCII code), text delimiter 34 ("), charset 76
# (UTF-8), first line 1.
REMOVE_AFTER = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SEPARATORS = {",": ("comma", "CSV:44,34,76,1"), ";": ("semicolon", "CSV:59,34,76,1")}


def test_libreoffice_opens_every_field_in_its_own_text_cell(cli: Cli, store: Store,
                                                             settings: Settings, tmp_path: Path) -> None:
    _, key = make_tenant(store, settings, "acme")
    store.add_key(replace(key, selector="arold", state=KeyState.RETIRING, key_file="acme/arold.pem",
                          remove_after=REMOVE_AFTER))
    result = cli("records", "acme", "--json", "--as", ACCOUNTANT)
    assert result.code == 0, result.err
    expected = json.loads(result.out)
    for sep, (name, infilter) in SEPARATORS.items():
        csv_file = tmp_path / f"acme-{name}.csv"
        result = cli("records", "acme", "--format", "csv", "--sep", sep, "--as", ACCOUNTANT)
        assert result.code == 0, result.err
        csv_file.write_bytes(result.out.encode("utf-8"))
        (xlsx,) = convert([csv_file], "xlsx", tmp_path, infilter=infilter)
        ws = openpyxl.load_workbook(xlsx).worksheets[0]
        rows = [list(row) for row in ws.iter_rows()]
        assert [cell.value for cell in rows[0]] == list(CSV_FIELDS), sep
        assert len(rows) == len(expected) + 1 and ws.max_column == len(CSV_FIELDS), sep
        for row, record in zip(rows[1:], expected):
            assert_row(row, record, sep)


def assert_row(row: list[Cell | MergedCell], record: dict[str, object], sep: str) -> None:
    """One record's row as LibreOffice opened it: text where text, the TTL a number."""
    values = [cell.value for cell in row]
    host = str(record["name"]).removesuffix(".acme.test")
    state = record.get("state")
    remove_after = "2026-12-07 12:00 UTC" if state == KeyState.RETIRING.value else None
    assert values == [record["type"], record["name"], host, record["value"], 3600, record["purpose"],
                      "yes" if record["required"] else "no", state, remove_after], sep
    text_columns = [cell for index, cell in enumerate(row) if index != 4 and cell.value is not None]
    assert all(cell.data_type == "s" for cell in text_columns), sep
    if state == KeyState.ACTIVE.value:
        assert str(values[3]).startswith("v=DKIM1; k=rsa; p=MII"), sep  # whole, `;` and all
