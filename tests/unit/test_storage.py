"""Chunks on disk, with real files in tmp_path: hashing for publish, and the `.part` file of a download."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pfs.peer.storage import (
    PART_SUFFIX,
    ChunkFile,
    StorageError,
    check_chunk_size,
    check_name,
    create_part,
    discard_part,
    finish_part,
    open_for_publish,
    part_path,
)
from p2pfs.protocol.limits import MAX_CHUNK_SIZE, MAX_FILENAME_BYTES, MIN_CHUNK_SIZE

CHUNK = MIN_CHUNK_SIZE  # 1 KiB keeps the files small


@pytest.fixture
def opened() -> Iterator[list[ChunkFile]]:
    """ChunkFiles a test opened; closed at the end so no descriptor leaks between tests."""
    files: list[ChunkFile] = []
    yield files
    for f in files:
        f.close()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def make(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- open_for_publish -------------------------------------------------------------------------------------
def test_publish_hashes_every_chunk(tmp_path: Path, opened: list[ChunkFile]) -> None:
    data = payload(3 * CHUNK + 100)
    shared = open_for_publish(make(tmp_path / "a.bin", data), CHUNK)
    opened.append(shared)
    assert shared.name == "a.bin"
    assert shared.filesize == len(data)
    assert shared.chunk_count == 4
    assert shared.have == {0, 1, 2, 3}
    assert shared.complete
    expected = {i: hashlib.sha256(data[i * CHUNK : (i + 1) * CHUNK]).hexdigest() for i in range(4)}
    assert shared.digests == expected


def test_last_chunk_is_short(tmp_path: Path, opened: list[ChunkFile]) -> None:
    data = payload(2 * CHUNK + 7)
    shared = open_for_publish(make(tmp_path / "a.bin", data), CHUNK)
    opened.append(shared)
    assert [shared.chunk_length(i) for i in range(3)] == [CHUNK, CHUNK, 7]
    assert shared.read_chunk(2) == data[2 * CHUNK :]
    assert b"".join(shared.read_chunk(i) for i in range(3)) == data


def test_exact_multiple_has_no_empty_last_chunk(tmp_path: Path, opened: list[ChunkFile]) -> None:
    data = payload(2 * CHUNK)
    shared = open_for_publish(make(tmp_path / "a.bin", data), CHUNK)
    opened.append(shared)
    assert shared.chunk_count == 2
    assert shared.chunk_length(1) == CHUNK
    assert set(shared.digests) == {0, 1}


def test_empty_file_has_no_chunks(tmp_path: Path, opened: list[ChunkFile]) -> None:
    shared = open_for_publish(make(tmp_path / "empty", b""), CHUNK)
    opened.append(shared)
    assert shared.filesize == 0
    assert shared.chunk_count == 0
    assert shared.digests == {} and shared.have == set()
    assert shared.complete


def test_publish_under_another_name(tmp_path: Path, opened: list[ChunkFile]) -> None:
    shared = open_for_publish(make(tmp_path / "local.bin", b"x"), CHUNK, name="shared.bin")
    opened.append(shared)
    assert shared.name == "shared.bin"
    assert shared.path == tmp_path / "local.bin"


def test_missing_file_is_a_clear_storage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(StorageError) as info:
        open_for_publish(missing, CHUNK)
    assert "not found" in str(info.value)
    assert str(missing) in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(StorageError) as info:
        open_for_publish(tmp_path / "dir", CHUNK)
    assert "not a" in str(info.value)


@pytest.mark.parametrize("chunk_size", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1])
def test_bad_chunk_size_is_refused(tmp_path: Path, chunk_size: int) -> None:
    with pytest.raises(StorageError) as info:
        open_for_publish(make(tmp_path / "a.bin", b"x"), chunk_size)
    assert "chunk size" in str(info.value)
    assert check_chunk_size(MIN_CHUNK_SIZE) == MIN_CHUNK_SIZE
    assert check_chunk_size(MAX_CHUNK_SIZE) == MAX_CHUNK_SIZE


def test_publish_refuses_a_bad_name_before_opening(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        open_for_publish(make(tmp_path / "a.bin", b"x"), CHUNK, name="../a.bin")


def test_publish_does_not_leak_a_descriptor_on_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(StorageError):
            open_for_publish(tmp_path / "dir", CHUNK)
    assert len(os.listdir("/proc/self/fd")) == before


# -- check_name -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "/abs", "dir/", "a\\b", "a\x00b", "a" * (MAX_FILENAME_BYTES + 1), "é" * 128],
)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(StorageError) as info:
        check_name(name)
    assert "invalid file name" in str(info.value)


@pytest.mark.parametrize(
    "name", ["a", "...", ".hidden", "movie.mkv", "a" * MAX_FILENAME_BYTES, "é" * 127, "日本"]
)
def test_check_name_accepts_plain_names(name: str) -> None:
    assert check_name(name) == name


# -- .part files ------------------------------------------------------------------------------------------
def test_part_path() -> None:
    assert part_path(Path("/d/out.bin")) == Path("/d/out.bin" + PART_SUFFIX)


def test_chunks_written_in_any_order_produce_the_exact_file(tmp_path: Path) -> None:
    data = payload(4 * CHUNK + 33, seed=1)
    dest = tmp_path / "out.bin"
    part = create_part(dest, "out.bin", len(data), CHUNK)
    try:
        assert part.path == tmp_path / ("out.bin" + PART_SUFFIX)
        assert part.path.stat().st_size == len(data)  # sized up front
        assert not dest.exists()
        for chunk in (4, 0, 2, 3, 1):
            piece = data[chunk * CHUNK : (chunk + 1) * CHUNK]
            part.write_chunk(chunk, piece, hashlib.sha256(piece).hexdigest())
            assert part.read_chunk(chunk) == piece  # served while downloading
        assert part.complete
        assert part.digests[4] == hashlib.sha256(data[4 * CHUNK :]).hexdigest()
        finish_part(part, dest)
        assert part.path == dest
    finally:
        part.close()
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_write_accepts_a_memoryview(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    part = create_part(dest, "out.bin", 10, CHUNK)
    try:
        part.write_chunk(0, memoryview(b"0123456789"), "d")
        finish_part(part, dest)
    finally:
        part.close()
    assert dest.read_bytes() == b"0123456789"


def test_finish_replaces_an_existing_destination(tmp_path: Path) -> None:
    dest = make(tmp_path / "out.bin", b"old contents that are longer")
    part = create_part(dest, "out.bin", 3, CHUNK)
    try:
        part.write_chunk(0, b"new", "d")
        finish_part(part, dest)
    finally:
        part.close()
    assert dest.read_bytes() == b"new"


def test_create_part_truncates_a_stale_part(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    make(part_path(dest), b"stale" * 1000)
    part = create_part(dest, "out.bin", 10, CHUNK)
    try:
        assert part.path.stat().st_size == 10
        assert part.have == set()
    finally:
        part.close()


def test_empty_download(tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    part = create_part(dest, "empty", 0, CHUNK)
    try:
        assert part.chunk_count == 0 and part.complete
        finish_part(part, dest)
    finally:
        part.close()
    assert dest.read_bytes() == b""


def test_discard_part_removes_the_part(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    part = create_part(dest, "out.bin", 2 * CHUNK, CHUNK)
    part.write_chunk(0, b"x" * CHUNK, "d")
    discard_part(part)
    assert part.fd == -1
    assert not part_path(dest).exists()
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
    discard_part(part)  # twice is harmless


def test_create_part_in_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        create_part(tmp_path / "no" / "such" / "out.bin", "out.bin", 10, CHUNK)
    assert "cannot create" in str(info.value)


def test_part_file_space_is_reserved_up_front(tmp_path: Path) -> None:
    """DEST.part gets its blocks at creation (posix_fallocate), so a full disk shows before the transfer."""
    size = 3 * 1024 * 1024 + 5
    part = create_part(tmp_path / "big.bin", "big.bin", size, 1024 * 1024)
    try:
        st = os.stat(part.path)
        assert st.st_size == size
        assert st.st_blocks * 512 >= size, "the .part file is sparse: space was not reserved"
    finally:
        part.close()


# -- never through a symbolic link; a durable rename ------------------------------------------------------
def test_create_part_refuses_a_symlink_and_writes_nothing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    dest = tmp_path / "out.bin"
    part_path(dest).symlink_to(victim)
    for keep in (False, True):
        with pytest.raises(StorageError, match="symbolic link") as info:
            create_part(dest, "out.bin", 10 * CHUNK, CHUNK, keep=keep)
        assert "\n" not in str(info.value)
    assert victim.read_bytes() == b"precious\n"  # neither truncated nor resized nor written
    assert part_path(dest).is_symlink()


def test_finish_syncs_the_directory_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename of DEST.part to DEST is durable only once the directory is synced."""
    import stat

    dest = tmp_path / "out.bin"
    part = create_part(dest, "out.bin", CHUNK, CHUNK)
    part.write_chunk(0, payload(CHUNK), "")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append("rename")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    try:
        finish_part(part, dest)
    finally:
        part.close()
    assert events == ["fsync file", "rename", "fsync dir"]
    assert dest.read_bytes() == payload(CHUNK)


def test_a_directory_that_cannot_be_synced_does_not_fail_the_finished_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno
    import stat

    dest = tmp_path / "out.bin"
    part = create_part(dest, "out.bin", CHUNK, CHUNK)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        finish_part(part, dest)  # the file is in place: a warning, not an error
    finally:
        part.close()
    assert dest.exists() and not part_path(dest).exists()
    assert "cannot sync directory" in caplog.text
