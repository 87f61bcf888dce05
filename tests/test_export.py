"""`relay-admin export`: the .xlsx hand-over reopened with openpyxl, cell by cell, in nl, en and fr."""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import idna
import openpyxl
import pytest
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from admin.export_texts import LANGUAGES, ExportTexts
from relay.core.models import CheckResult, CheckStatus, Role
from relay.core.settings import Settings
from relay.core.store import Store
from tests.conftest import CliResult
from tests.factories import ACCOUNTANT, make_tenant, settings, store  # noqa: F401 (fixtures)

Cli = Callable[..., CliResult]
HEADER_ROW = 6


def export(cli: Cli, tenant: str, output: Path, *args: str) -> CliResult:
    return cli("export", tenant, "--output", str(output), *args, "--as", ACCOUNTANT)


def records_json(cli: Cli, tenant: str) -> list[dict[str, Any]]:
    result = cli("records", tenant, "--json", "--as", ACCOUNTANT)
    assert result.code == 0, result.err
    data: list[dict[str, Any]] = json.loads(result.out)
    return data


def written_cells(wb: openpyxl.Workbook) -> Iterator[Any]:
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            yield from (cell for cell in row if cell.value is not None)


def expected_row(record: dict[str, Any], texts: ExportTexts, domain: str) -> list[str | None]:
    purpose = texts.purposes[record["purpose"]]
    if "state" in record:
        purpose += f" ({texts.states[record['state']]})"
    host = record["name"].removesuffix("." + domain)
    return [record["type"], host, record["name"], record["value"], "<split>", str(record["ttl"]),
            purpose, texts.yes if record["required"] else texts.no, None, None, None]


def joined_zone_value(text: str, rdtype: str) -> str:
    """The 'for zone files' cell as the instructions say to use it: each line a string between
    double quotes (a TXT record), or the absolute target; parsed as a zone file would, as one string."""
    assert '"' not in text  # the cell shows no quotes: the instructions say where they go
    zone_text = " ".join(f'"{line}"' for line in text.split("\n")) if rdtype == "TXT" else text
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), zone_text)
    if rdtype == "TXT":
        strings = rdata.strings  # type: ignore[attr-defined]
        assert len(strings) == text.count("\n") + 1 and all(len(piece) <= 255 for piece in strings)
        return b"".join(strings).decode()
    assert text.endswith(".")
    return str(rdata.target.to_text(omit_final_dot=True))  # type: ignore[attr-defined]


@pytest.mark.parametrize("lang", ["nl", "en", "fr"])
def test_workbook_cell_by_cell(cli: Cli, store: Store, settings: Settings, tmp_path: Path,
                               lang: str) -> None:
    make_tenant(store, settings, "acme", name="=SUM(A1)", email="facturen@acme.test")
    output = tmp_path / f"acme-{lang}.xlsx"
    result = export(cli, "acme", output, "--lang", lang)
    assert (result.code, result.err, result.out) == (0, "", f"{output}\n")
    texts = LANGUAGES[lang]
    wb = openpyxl.load_workbook(output)
    assert wb.sheetnames == [texts.records_sheet, texts.instructions_sheet]
    ws = wb[texts.records_sheet]
    assert [[c.value for c in row] for row in ws.iter_rows(min_row=1, max_row=5, max_col=2)] == [
        [texts.sender_labels[0], "=SUM(A1)"], [texts.sender_labels[1], "facturen@acme.test"],
        [texts.sender_labels[2], "acme.test"], [None, None], [None, None]]
    assert [c.value for c in ws[HEADER_ROW]] == list(texts.headers)
    assert all(c.font.b for c in ws[HEADER_ROW]) and ws.freeze_panes == f"A{HEADER_ROW + 1}"
    records = records_json(cli, "acme")
    rows = [[c.value for c in row] for row in ws.iter_rows(min_row=HEADER_ROW + 1)]
    assert len(rows) == len(records) == 3
    for row, record in zip(rows, records):
        assert joined_zone_value(str(row[4]), record["type"]) == record["value"]
        assert row[:4] + ["<split>"] + row[5:] == expected_row(record, texts, "acme.test")
    assert len(str(rows[0][4]).split("\n")) == 2  # RFC 8301: a 2048-bit key needs two strings
    for cell in written_cells(wb):
        assert (cell.data_type, cell.number_format) == ("s", "@"), cell.coordinate
    widths = [ws.column_dimensions[get_column_letter(c)].width for c in range(1, len(texts.headers) + 1)]
    assert all(6 <= width <= 30 for width in widths) and sum(widths) <= 175
    assert_instructions(wb[texts.instructions_sheet], texts, records)


def assert_instructions(ws: Worksheet, texts: ExportTexts, records: list[dict[str, Any]]) -> None:
    text = "\n".join(str(c.value) for c in ws["A"] if c.value is not None)
    dkim_host = records[0]["name"].removesuffix(".acme.test")
    for needle in (dkim_host, "bounce", "_dmarc", "bounces.relay.test", "255", "DNS only",
                   f"{records[0]['name']}.acme.test", texts.headers[1], texts.records_sheet):
        assert needle in text
    assert texts.title.format(domain="acme.test") == ws["A1"].value and ws["A1"].font.b
    # Quotes only where they belong: around each piece in a zone file, said in the one paragraph.
    quoted = [str(c.value) for c in ws["A"] if c.value is not None and '"' in str(c.value)]
    assert len(quoted) == 1 and texts.headers[4] in quoted[0] and "BIND" in quoted[0]
    assert texts.headers[8] in text and texts.headers[9] in text  # where the fix is, after a check
    for other in LANGUAGES.values():  # the chosen language's texts, not another's
        assert (other.mistakes_heading in text) == (other is texts)


@pytest.mark.parametrize("name", ["=SUM(A1)", "+31 20 555 0100", "-1 Acme", "@home"])
def test_formula_like_values_stay_literal_text(cli: Cli, store: Store, settings: Settings,
                                               tmp_path: Path, name: str) -> None:
    make_tenant(store, settings, "acme", name=name)
    output = tmp_path / "out.xlsx"
    assert export(cli, "acme", output, "--lang", "en").code == 0
    ws = openpyxl.load_workbook(output)["Records"]
    assert (ws["B1"].value, ws["B1"].data_type, ws["B1"].quotePrefix) == (name, "s", True)
    with zipfile.ZipFile(output) as archive:
        sheets = [n for n in archive.namelist() if n.startswith("xl/worksheets/")]
        assert sheets and not any(b"<f>" in archive.read(n) for n in sheets)


def test_idn_domain_shown_both_ways(cli: Cli, store: Store, settings: Settings, tmp_path: Path) -> None:
    domain = idna.encode("bücher.test", uts46=True).decode()
    make_tenant(store, settings, "bm", name="Bücher GmbH", domain=domain)
    output = tmp_path / "bm.xlsx"
    assert export(cli, "bm", output, "--lang", "fr").code == 0
    texts = LANGUAGES["fr"]
    ws = openpyxl.load_workbook(output)[texts.records_sheet]
    assert [(ws.cell(r, 1).value, ws.cell(r, 2).value) for r in (3, 4)] == [
        (texts.sender_labels[2], domain), (texts.sender_labels[3], "bücher.test")]
    assert ws.cell(HEADER_ROW + 2, 3).value == f"bounce.{domain}"


FIX = "Nothing at bounce.acme.test, but bounce.acme.test.acme.test exists: enter only the relative host."


@pytest.mark.parametrize("lang", ["nl", "en", "fr"])
def test_last_validation_status_diagnosis_and_time(cli: Cli, store: Store, settings: Settings,
                                                   tmp_path: Path, lang: str) -> None:
    _, key = make_tenant(store, settings, "acme")
    checked = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    store.save_checks("acme", [
        CheckResult("dkim", "TXT", f"{key.selector}._domainkey.acme.test", CheckStatus.OK, "", (), "",
                    checked),
        CheckResult("return-path", "CNAME", "bounce.acme.test", CheckStatus.MISSING, "", (), FIX,
                    checked),
        CheckResult("dmarc", "TXT", "_dmarc.acme.test", CheckStatus.WARNING, "", (),
                    "-1 DMARC records: publish the advised one.", checked, required=False),
    ])
    output = tmp_path / "out.xlsx"
    assert export(cli, "acme", output, "--lang", lang).code == 0
    texts = LANGUAGES[lang]
    ws = openpyxl.load_workbook(output)[texts.records_sheet]
    assert [c.value for c in ws[HEADER_ROW]][8:] == list(texts.headers[8:])
    found = [[ws.cell(r, c).value for c in (9, 10, 11)] for r in range(HEADER_ROW + 1, HEADER_ROW + 4)]
    when = "2025-03-04 05:06 UTC"
    assert found == [[texts.statuses["ok"], None, when], [texts.statuses["missing"], FIX, when],
                     [texts.statuses["warning"], "-1 DMARC records: publish the advised one.", when]]
    assert ws.cell(HEADER_ROW + 3, 10).data_type == "s" and ws.cell(HEADER_ROW + 3, 10).quotePrefix


def test_json_output_and_dutch_by_default(cli: Cli, store: Store, settings: Settings,
                                          tmp_path: Path) -> None:
    make_tenant(store, settings, "acme")
    output = tmp_path / "out.xlsx"
    result = export(cli, "acme", output, "--json")
    assert result.code == 0
    assert json.loads(result.out) == {"tenant": "acme", "output": str(output), "lang": "nl"}
    assert openpyxl.load_workbook(output).sheetnames == ["DNS-records", "Instructies"]


def test_rewrite_replaces_the_file_and_leaves_no_temp_files(cli: Cli, store: Store, settings: Settings,
                                                            tmp_path: Path) -> None:
    make_tenant(store, settings, "acme")
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    output = output_dir / "acme.xlsx"
    output.write_bytes(b"old")
    assert export(cli, "acme", output, "--lang", "en").code == 0
    assert openpyxl.load_workbook(output).sheetnames == ["Records", "Instructions"]
    assert [p.name for p in output_dir.iterdir()] == ["acme.xlsx"]


@pytest.mark.parametrize("args", [
    ("acme", "--output", "{d}/missing/out.xlsx"),
    ("acme", "--output", "{d}/out.xls"),
    ("acme", "--output", "{d}/out.csv"),
    ("acme", "--output", "{d}/dir.xlsx"),
    ("acme", "--output", "{d}/out.xlsx", "--lang", "de"),
    ("nobody", "--output", "{d}/out.xlsx"),
])
def test_bad_input_is_exit_2_one_line_nothing_written(cli: Cli, store: Store, settings: Settings,
                                                      tmp_path: Path, args: tuple[str, ...]) -> None:
    make_tenant(store, settings, "acme")
    target = tmp_path / "target"
    (target / "dir.xlsx").mkdir(parents=True)
    result = cli("export", *(a.format(d=target) for a in args), "--as", ACCOUNTANT)
    assert (result.code, result.out) == (2, "")
    assert result.err.count("\n") == 1 and result.err.startswith("relay-admin: ")
    assert [p.name for p in target.iterdir()] == ["dir.xlsx"]


def test_accountant_may_run_records_and_export(cli: Cli, store: Store, settings: Settings,
                                               tmp_path: Path) -> None:
    make_tenant(store, settings, "acme")
    assert store.get_user(ACCOUNTANT).role is Role.ACCOUNTANT  # type: ignore[union-attr]
    assert cli("records", "acme", "--as", ACCOUNTANT).code == 0
    assert export(cli, "acme", tmp_path / "a.xlsx").code == 0


@pytest.mark.parametrize("lang", ["nl", "en", "fr"])
def test_print_settings_and_one_font_everywhere(cli: Cli, store: Store, settings: Settings,
                                                tmp_path: Path, lang: str) -> None:
    make_tenant(store, settings, "acme")
    output = tmp_path / "out.xlsx"
    assert export(cli, "acme", output, "--lang", lang).code == 0
    texts = LANGUAGES[lang]
    wb = openpyxl.load_workbook(output)
    for ws in wb.worksheets:  # landscape A4, one page wide, as many pages tall as needed
        setup = ws.page_setup
        assert (setup.orientation, setup.paperSize, setup.fitToWidth, setup.fitToHeight) == (
            "landscape", 9, 1, 0), ws.title
        fit = ws.sheet_properties.pageSetUpPr
        assert fit is not None and fit.fitToPage, ws.title
        assert {cell.font.name for row in ws.iter_rows() for cell in row} == {"DejaVu Sans"}, ws.title
    records = wb[texts.records_sheet]
    assert records.print_title_rows == f"${HEADER_ROW}:${HEADER_ROW}"
    table = [cell for row in records.iter_rows(min_row=HEADER_ROW) for cell in row]
    assert all(cell.alignment.wrap_text for cell in table)
    assert all(cell.alignment.wrap_text for cell in wb[texts.instructions_sheet]["A"] if cell.value)
    # The default font too (the Normal style, empty cells, cells typed in later): no theme font.
    with zipfile.ZipFile(output) as archive:
        styles = archive.read("xl/styles.xml").decode()
    fonts = re.findall(r"<font>.*?</font>", styles)
    assert fonts and all('<name val="DejaVu Sans" />' in font for font in fonts)
    assert "<scheme" not in styles


LITERAL_DUTCH = ("aanvaarden haar", "zoals ze is", "hoogstens", "kon niet controleren",
                 "waarvoor elk record dient", "er wordt niets vervangen")


def test_dutch_reads_as_written_by_a_dutch_it_provider() -> None:
    text = str(dataclasses.asdict(LANGUAGES["nl"])).lower()
    assert [phrase for phrase in LITERAL_DUTCH if phrase in text] == []


def test_french_keeps_punctuation_with_its_word() -> None:
    """A no-break space before : ; ? ! and inside « »: a wrapped line never starts with one."""
    for field in dataclasses.fields(ExportTexts):
        value = getattr(LANGUAGES["fr"], field.name)
        if isinstance(value, str):
            assert not re.search(r" [:;?!»]|« ", value), field.name
