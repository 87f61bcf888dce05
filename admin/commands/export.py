"""`relay-admin export TENANT --output FILE.xlsx [--lang nl|en|fr]`: the Excel hand-over for IT."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from admin.context import EXIT_OK, Context, UsageError
from admin.export import save_atomically
from admin.export_texts import DEFAULT_LANGUAGE, LANGUAGES
from admin.services import export_workbook


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "export", parents=[common], help="write the Excel hand-over file for a tenant's IT",
        description="Write the sender, its DNS records and instructions to an .xlsx file.",
    )
    parser.add_argument("tenant", metavar="TENANT")
    parser.add_argument("--output", required=True, metavar="FILE.xlsx", help="file to write")
    parser.add_argument("--lang", choices=tuple(LANGUAGES), default=DEFAULT_LANGUAGE,
                        help=f"language of the file (default: {DEFAULT_LANGUAGE})")
    parser.set_defaults(handler=run)


def output_path(text: str) -> Path:
    """The file to write, checked before any work: an .xlsx name in a directory that exists."""
    path = Path(os.path.abspath(text))
    if path.suffix.lower() != ".xlsx":
        raise UsageError(f"--output: {text!r} must end in .xlsx")
    if not path.parent.is_dir():
        raise UsageError(f"--output: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise UsageError(f"--output: {text!r} is a directory")
    return path


def run(ctx: Context, args: argparse.Namespace) -> int:
    tenant, workbook = export_workbook(ctx, args.tenant, args.lang)
    target = output_path(args.output)
    try:
        save_atomically(workbook, target)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {str(target)!r}: {exc.strerror or exc}") from None
    ctx.emit({"tenant": tenant.id, "output": str(target), "lang": args.lang}, str(target))
    return EXIT_OK
