"""write_atomically: the whole new file or the old one, the mode from the start, and no temp file left."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from openpyxl import Workbook

from admin.export import save_atomically
from relay.core.atomicfile import write_atomically
from relay.core.dkimkeys import write_private_key
from relay.smtp.upstream import Envelope, Outbox


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_bytes_land_under_the_name_with_mode_0600_by_default(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "key.pem"
    assert write_atomically(target, b"secret bytes") == target
    assert target.read_bytes() == b"secret bytes"
    assert mode_of(target) == 0o600
    assert names(tmp_path) == ["key.pem"]


@pytest.mark.parametrize(("mode", "umask", "expected"), [
    (0o640, 0o022, 0o640),
    (0o666, 0o022, 0o644),
    (0o666, 0o027, 0o640),  # the umask filters the mode, as for any file open(2) creates
    (0o600, 0o000, 0o600),
])
def test_mode_is_filtered_by_the_umask(tmp_path: Path, mode: int, umask: int, expected: int) -> None:
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "f", b"x", mode=mode)
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "f") == expected


def test_writer_gets_a_private_temp_file_beside_the_target(tmp_path: Path, umask_022: None) -> None:
    seen: list[tuple[str, int]] = []

    def writer(handle: BinaryIO) -> None:
        handle.write(b"part one, ")
        [temp] = [p for p in tmp_path.iterdir()]
        seen.append((temp.name, mode_of(temp)))
        handle.write(b"part two")

    write_atomically(tmp_path / "out.xlsx", writer)
    [(name, mode)] = seen
    # Same directory (the rename stays on one file system), hidden, and 0600 before any byte is in it.
    assert name.startswith(".out.xlsx.") and name.endswith(".tmp") and mode == 0o600
    assert (tmp_path / "out.xlsx").read_bytes() == b"part one, part two"
    assert names(tmp_path) == ["out.xlsx"]


def test_replace_overwrites_a_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new" and names(tmp_path) == ["f"]


class DiskFull(OSError):
    pass


def failing_writer(handle: BinaryIO) -> None:
    handle.write(b"half of the new ")
    raise DiskFull(28, "No space left on device")


def test_failure_half_way_keeps_the_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFull):
        write_atomically(target, failing_writer)
    assert target.read_bytes() == b"previous"
    assert names(tmp_path) == ["f"]


def test_failure_without_a_previous_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DiskFull):
        write_atomically(tmp_path / "f", failing_writer)
    assert names(tmp_path) == []


def test_interrupt_also_removes_the_temp_file(tmp_path: Path) -> None:
    def interrupted(handle: BinaryIO) -> None:
        handle.write(b"some")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "f", interrupted)
    assert names(tmp_path) == []


def test_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_atomically(tmp_path / "taken", b"data")  # a directory cannot be replaced by a file
    assert names(tmp_path) == ["taken"] and (tmp_path / "taken").is_dir()


def test_no_replace_refuses_an_existing_name_and_keeps_it(tmp_path: Path) -> None:
    target = tmp_path / "message.eml"
    target.write_bytes(b"accepted earlier")
    with pytest.raises(FileExistsError):
        write_atomically(target, b"another message", replace=False)
    assert target.read_bytes() == b"accepted earlier"
    assert names(tmp_path) == ["message.eml"]


def test_no_replace_writes_a_new_name(tmp_path: Path) -> None:
    write_atomically(tmp_path / "message.eml", b"body", mode=0o640, replace=False)
    assert (tmp_path / "message.eml").read_bytes() == b"body"
    assert names(tmp_path) == ["message.eml"]


def test_missing_directory_is_an_error_not_a_partial_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "absent" / "f", b"data")
    assert names(tmp_path) == []


# ---------------------------------------------------------------- the three writers keep their modes


def test_key_file_is_0600_even_under_an_open_umask(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # only serialised here
    previous = os.umask(0)
    try:
        path = write_private_key(tmp_path / "keys", "acme/ar1.pem", key)
    finally:
        os.umask(previous)
    assert mode_of(path) == 0o600 and names(path.parent) == ["ar1.pem"]


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_export_is_an_ordinary_file_under_the_umask(tmp_path: Path, umask: int, expected: int) -> None:
    previous = os.umask(umask)
    try:
        save_atomically(Workbook(), tmp_path / "acme.xlsx")
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "acme.xlsx") == expected and names(tmp_path) == ["acme.xlsx"]


def test_failed_export_keeps_the_previous_file_and_no_temp(tmp_path: Path) -> None:
    class FailingWorkbook:  # openpyxl's `save(handle)`, failing half-way like a full disk
        save = staticmethod(failing_writer)

    target = tmp_path / "acme.xlsx"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFull):
        save_atomically(FailingWorkbook(), target)  # type: ignore[arg-type]
    assert target.read_bytes() == b"previous"
    assert names(tmp_path) == ["acme.xlsx"]


async def test_outbox_message_is_0640_and_alone(tmp_path: Path, umask_022: None) -> None:
    reply = await Outbox(tmp_path).deliver(Envelope("b@acme.test", ("r@x.test",)), b"Subject: s\r\n\r\nhi\r\n")
    [path] = list(tmp_path.iterdir())
    assert reply.code == 250 and path.name in reply.text and path.suffix == ".eml"
    assert mode_of(path) == 0o640
    assert path.read_bytes() == b"Return-Path: <b@acme.test>\r\nX-Envelope-To: <r@x.test>\r\nSubject: s\r\n\r\nhi\r\n"
