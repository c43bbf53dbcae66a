"""DEST.part and its state log with real files in tmp_path: never opened through a symbolic link, and a
state log that cannot be written is one clear StorageError."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from p2pfs.peer.partfile import PartFile, state_path
from p2pfs.peer.storage import StorageError, part_path

CHUNK = 1024
CONTENT_ID = "c" * 64


@pytest.mark.parametrize("linked", ["part", "state"])
def test_a_symlink_at_the_part_or_its_state_is_refused_and_nothing_is_written_through_it(
    tmp_path: Path, linked: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    dest = tmp_path / "out.bin"
    link = part_path(dest) if linked == "part" else state_path(dest)
    link.symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link") as info:
        PartFile.open(dest, "out.bin", 10 * CHUNK, CHUNK, CONTENT_ID)
    assert str(link) in str(info.value) and "\n" not in str(info.value)
    assert victim.read_bytes() == b"precious\n"
    assert link.is_symlink()
    if linked == "part":  # the state log created for the attempt does not stay behind
        assert not state_path(dest).exists()


def test_a_symlink_to_a_missing_file_is_refused_too(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    target = tmp_path / "would-be-created"
    part_path(dest).symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        PartFile.open(dest, "out.bin", 10 * CHUNK, CHUNK, CONTENT_ID)
    assert not target.exists()


def test_a_state_log_that_cannot_be_written_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out.bin"
    part = PartFile.open(dest, "out.bin", 10 * CHUNK, CHUNK, CONTENT_ID)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(StorageError, match=r"cannot write to .*out\.bin\.part\.state: No space left on device"):
            part.record(0, "a" * 64)
    finally:
        monkeypatch.undo()
        part.discard()
    assert not part_path(dest).exists() and not state_path(dest).exists()
