"""The Excel hand-over printed: each language's file through LibreOffice to PDF, read back with poppler.

All files go through one LibreOffice call. For each PDF (`pdfinfo` for the page count, `pdftotext`
per page): every Records page carries the header row with all columns, left to right (so the sheet
is one page wide and the header repeats); the DKIM keys are printed whole in both value columns;
every instruction paragraph is printed whole (nothing cut at the right edge); the only font is
DejaVu Sans, bold included; and each page's footer names its sheet and page.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openpyxl

from admin.export_texts import LANGUAGES, ExportTexts
from relay.core import dkimkeys
from relay.core.models import CheckResult, CheckStatus, DkimKey, KeyState
from relay.core.settings import Settings
from relay.core.store import Store
from tests.conftest import CliResult
from tests.factories import ACCOUNTANT, make_tenant, settings, store  # noqa: F401 (fixtures)
from tests.office import Word, convert, font_names, page_count, page_text, page_words

Cli = Callable[..., CliResult]
FOOTER = re.compile(r"^\s*(.+?)\s+\u2013\s+\d+ / \d+\s*$")  # "&A – &P / &N"
CHECKED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def tenant_after_a_failed_check(store: Store, settings: Settings) -> list[str]:
    """`acme`, as it comes back from IT after a failed validation; returns its DKIM key."""
    _, key = make_tenant(store, settings, "acme", name="Acme Boekhouding BV",
                         email="facturen@acme.test")
    store.save_checks("acme", [
        CheckResult("dkim", "TXT", f"{key.selector}._domainkey.acme.test", CheckStatus.MISMATCH, "",
                    ("v=DKIM1; p=MIIB",), "The published key is cut off after 255 characters: "
                    "paste the whole value again, or split it into strings of at most 255 characters.",
                    CHECKED),
        CheckResult("return-path", "CNAME", "bounce.acme.test", CheckStatus.MISSING, "", (),
                    "Nothing at bounce.acme.test, but bounce.acme.test.acme.test exists: enter only "
                    "the relative host (bounce).", CHECKED),
    ])
    return [key.public_key_b64]


def tenant_during_a_key_change(store: Store, settings: Settings) -> list[str]:
    """`rot` publishing three DKIM keys (retiring, active, next): a Records sheet of two pages."""
    _, active = make_tenant(store, settings, "rot", selector="ar20250101active")
    keys = [active.public_key_b64]
    for state, selector in ((KeyState.RETIRING, "ar20240101oldkey"), (KeyState.NEXT, "ar20260101newkey")):
        public = dkimkeys.public_key_b64(dkimkeys.generate_private_key())
        remove_after = CHECKED + timedelta(days=7) if state is KeyState.RETIRING else None
        store.add_key(DkimKey("rot", selector, state, public, dkimkeys.key_path("rot", selector),
                              active.created_at + timedelta(seconds=len(keys)), remove_after))
        keys.append(public)
    return keys


def test_every_sheet_prints_one_page_wide_with_every_value_whole(
    cli: Cli, store: Store, settings: Settings, tmp_path: Path,
) -> None:
    cases = [("acme", lang, tenant_after_a_failed_check) for lang in LANGUAGES]
    cases.append(("rot", "nl", tenant_during_a_key_change))
    keys: dict[str, list[str]] = {}
    files = []
    for tenant, lang, setup in cases:
        keys[tenant] = keys.get(tenant) or setup(store, settings)
        output = tmp_path / f"{tenant}-{lang}.xlsx"
        result = cli("export", tenant, "--output", str(output), "--lang", lang, "--as", ACCOUNTANT)
        assert result.code == 0, result.err
        files.append(output)
    pdfs = convert(files, "pdf", tmp_path)
    for (tenant, lang, _), xlsx, pdf in zip(cases, files, pdfs):
        texts = LANGUAGES[lang]
        pages = sheet_pages(pdf, texts)
        assert_records_pages(pdf, pages[texts.records_sheet], texts, keys[tenant])
        assert_instructions_whole(pdf, pages[texts.instructions_sheet], xlsx, texts)
        assert font_names(pdf) <= {"DejaVuSans", "DejaVuSans-Bold"}, pdf.name
        # A tenant's three records fit on one page; three keys during a key change take more (how
        # many depends on where the keys' slashes fall), so the header row is seen repeated.
        records_pages = len(pages[texts.records_sheet])
        assert records_pages == 1 if tenant == "acme" else records_pages >= 2, (pdf.name, pages)
        footers = [page_text(pdf, n).rstrip().splitlines()[-1] for n in range(1, page_count(pdf) + 1)]
        assert all(FOOTER.match(footer) for footer in footers), (pdf.name, footers)


def sheet_pages(pdf: Path, texts: ExportTexts) -> dict[str, list[int]]:
    """Page numbers per sheet: the Records pages come first, the Instructions start with the title."""
    title = squeezed(texts.title.format(domain="").strip())
    pages = range(1, page_count(pdf) + 1)
    first = next(number for number in pages if title in squeezed(page_text(pdf, number)))
    assert first > 1, pdf.name
    return {texts.records_sheet: list(range(1, first)),
            texts.instructions_sheet: list(range(first, pages[-1] + 1))}


def body_text(pdf: Path, page: int) -> str:
    """A page's text without its footer (sheet name, page number / page count)."""
    lines = page_text(pdf, page).rstrip().splitlines()
    return "\n".join(lines[:-1] if lines and FOOTER.match(lines[-1]) else lines)


def header_lefts(words: list[Word], headers: tuple[str, ...]) -> tuple[float, list[float]]:
    """The header line's height on the page and where each column starts, left to right."""
    top = min(word.y for word in words if word.text == headers[0])
    line = sorted((word for word in words if abs(word.y - top) < 1), key=lambda word: word.x)
    lefts: list[float] = []
    for header in headers:
        first = header.split()[0]
        lefts.append(next(word.x for word in line if word.text == first and word.x > max(lefts, default=-1)))
    return top, lefts


def assert_records_pages(pdf: Path, pages: list[int], texts: ExportTexts, keys: list[str]) -> None:
    """Each page: the whole header row; all pages together: every key whole in both value columns."""
    columns: dict[int, list[Word]] = {3: [], 4: []}
    for number in pages:
        words = page_words(pdf, number)
        printed = {word.text for word in words}
        for header in texts.headers:
            assert set(header.split()) <= printed, (pdf.name, number, header)
        top, lefts = header_lefts(words, texts.headers)
        for column in columns:
            columns[column] += sorted((w for w in words if w.y > top + 1
                                       and lefts[column] - 1 <= w.x < lefts[column + 1] - 1),
                                      key=lambda word: (word.y, word.x))
    value, pieces = ("".join(word.text for word in columns[column]) for column in (3, 4))
    for key in keys:
        assert f"p={key}" in value, (pdf.name, "value column")
        assert key in pieces, (pdf.name, "zone file column")


def squeezed(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def assert_instructions_whole(pdf: Path, pages: list[int], xlsx: Path, texts: ExportTexts) -> None:
    """Every paragraph of the Instructions sheet appears in print, every word of it, in order."""
    printed = "".join(squeezed(body_text(pdf, number)) for number in pages)
    paragraphs = [str(c.value) for c in openpyxl.load_workbook(xlsx)[texts.instructions_sheet]["A"]
                  if c.value is not None]
    assert len(paragraphs) > 10
    for paragraph in paragraphs:
        assert squeezed(paragraph) in printed, (pdf.name, paragraph)
