"""p2pfs.peer.hashing: chunk digests on several threads, progress, and the comparison `verify` prints."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from p2pfs.peer import hashing

CHUNK = 4096


def digests_of(data: bytes) -> list[str]:
    return [hashlib.sha256(data[i : i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)]


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(CHUNK * 100 + 123)  # a short last chunk
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_every_chunk_hashed_once_whatever_the_threads(sample: tuple[Path, bytes], threads: int) -> None:
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    seen: list[tuple[int, int]] = []
    try:
        got = asyncio.run(hashing.hash_chunks(fd, len(data), CHUNK, on_progress=lambda d, t: seen.append((d, t)), threads=threads))
    finally:
        os.close(fd)
    assert [got[c] for c in range(len(got))] == digests_of(data)
    assert seen and seen[-1] == (len(data), len(data))  # the last report says all of it
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # progress never goes back


def test_a_subset_of_chunks(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    fd = os.open(path, os.O_RDONLY)
    try:
        got = asyncio.run(hashing.hash_chunks(fd, len(data), CHUNK, chunks=[3, 99, 100]))
    finally:
        os.close(fd)
    want = digests_of(data)
    assert got == {3: want[3], 99: want[99], 100: want[100]}


def test_a_chunk_past_the_end_of_a_short_file_is_none(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    os.truncate(path, CHUNK * 10 + 5)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = hashing.ChunkHasher(fd, len(data), CHUNK).run()
    finally:
        os.close(fd)
    assert got[9] == digests_of(data)[9]
    assert got[10] is None and got[100] is None


def test_compare_names_the_chunks_that_differ(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    expected = digests_of(data)
    changed = bytearray(data)
    changed[0] ^= 1
    changed[CHUNK * 5 + 7] ^= 1
    path.write_bytes(changed)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = asyncio.run(hashing.compare(fd, len(changed), "f.bin", str(path), len(data), CHUNK, expected, "cid"))
    finally:
        os.close(fd)
    assert found.differing == [0, 5] and not found.matches
    path.write_bytes(data + b"extra")  # every chunk matches, but the size does not
    fd = os.open(path, os.O_RDONLY)
    try:
        found = asyncio.run(hashing.compare(fd, len(data) + 5, "f.bin", str(path), len(data), CHUNK, expected, "cid"))
    finally:
        os.close(fd)
    assert found.differing == [] and not found.matches


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert asyncio.run(hashing.hash_chunks(fd, 0, CHUNK)) == {}
    finally:
        os.close(fd)
