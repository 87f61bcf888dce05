"""LibreOffice and poppler as the tests' spreadsheet and printer: convert files, read PDFs back.

LibreOffice runs headless with a profile of its own under the test's temporary directory, so runs in
parallel or one after another never share (or lock) a profile, and with a timeout.
"""

from __future__ import annotations

import html
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.peers import require_binary

SOFFICE_TIMEOUT = 180  # seconds for one call, the profile's first start included
WORD = re.compile(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="[\d.]+" yMax="[\d.]+">(.*?)</word>')


def soffice_binary() -> str:
    return require_binary("soffice", "libreoffice-calc-nogui")


def convert(files: list[Path], target: str, outdir: Path, *, infilter: str | None = None) -> list[Path]:
    """Convert `files` in one LibreOffice call to format `target` (pdf, xlsx); returns the outputs."""
    command = [soffice_binary(), f"-env:UserInstallation={(outdir / 'lo-profile').as_uri()}",
               "--headless", "--norestore", "--convert-to", target, "--outdir", str(outdir)]
    if infilter is not None:
        command.append(f"--infilter={infilter}")
    result = subprocess.run([*command, *map(str, files)], capture_output=True, text=True,
                            timeout=SOFFICE_TIMEOUT, check=False)
    outputs = [outdir / f"{path.stem}.{target}" for path in files]
    missing = [path.name for path in outputs if not path.exists()]
    assert not missing, f"soffice did not write {missing}: {result.stdout}{result.stderr}"
    return outputs


def page_count(pdf: Path) -> int:
    """The page count pdfinfo reports."""
    info = _poppler("pdfinfo", str(pdf))
    match = re.search(r"^Pages:\s+(\d+)$", info, re.MULTILINE)
    assert match, info
    return int(match.group(1))


def page_text(pdf: Path, page: int) -> str:
    """One page as `pdftotext -layout` lays it out."""
    return _poppler("pdftotext", "-layout", "-f", str(page), "-l", str(page), str(pdf), "-")


@dataclass(frozen=True)
class Word:
    x: float
    y: float
    text: str


def page_words(pdf: Path, page: int) -> list[Word]:
    """One page's words with the top-left corner of each, from `pdftotext -bbox`."""
    xhtml = _poppler("pdftotext", "-bbox", "-f", str(page), "-l", str(page), str(pdf), "-")
    return [Word(float(x), float(y), html.unescape(text)) for x, y, text in WORD.findall(xhtml)]


def font_names(pdf: Path) -> set[str]:
    """The fonts `pdffonts` lists, without the subset prefix (ABCDEF+DejaVuSans -> DejaVuSans)."""
    lines = _poppler("pdffonts", str(pdf)).splitlines()[2:]
    return {line.split()[0].split("+")[-1] for line in lines if line.strip()}


def _poppler(tool: str, *args: str) -> str:
    require_binary(tool, "poppler-utils")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout
