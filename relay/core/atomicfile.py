"""Write a file atomically: readers see the old file or the whole new one, never a part of it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(
    path: Path,
    data: bytes | Callable[[BinaryIO], None],
    *,
    mode: int = 0o600,
    replace: bool = True,
) -> Path:
    """Write `data` (bytes, or a writer called with the open binary file) to `path`, atomically.

    A temp file in the same directory (so the rename stays on one file system) is created with
    O_EXCL and `mode` (filtered by the umask, as open(2) does), written, fsynced, then renamed over
    `path`, and the directory fsynced so the new name survives a crash. With `replace=False` an
    existing `path` is never overwritten: the rename is a hard link, which fails with
    FileExistsError. On any failure the temp file is removed and a previous `path` is left intact.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            temp.unlink()
        _fsync_directory(path.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
