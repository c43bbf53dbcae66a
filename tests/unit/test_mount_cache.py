"""The mount's chunk cache on a real directory (no FUSE, no network): chunks a read has pinned stay on
disk and served while the budget is exceeded, the evictions held back happen when the pins go, and an
evicted chunk is neither held nor readable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from p2pfs.mount.cache import CachedFile, ChunkCache
from p2pfs.peer.storage import StorageError

CHUNK = 1024


def chunk_bytes(chunk: int) -> bytes:
    return bytes([chunk % 251]) * CHUNK


def opened(tmp_path: Path, budget_chunks: int, chunk_count: int = 16) -> tuple[ChunkCache, CachedFile]:
    cache = ChunkCache(tmp_path / "cache", budget_chunks * CHUNK)
    cache.open()
    expected = [hashlib.sha256(chunk_bytes(c)).hexdigest() for c in range(chunk_count)]
    return cache, cache.file("f.bin", "cid", chunk_count * CHUNK, CHUNK, expected)


def arrive(cached: CachedFile, chunk: int) -> None:
    """As the transfer engine delivers a verified chunk: written (in a verify thread), then marked."""
    data = chunk_bytes(chunk)
    cached.write_at(chunk, data)
    cached.mark(chunk, hashlib.sha256(data).hexdigest())


def on_disk(cached: CachedFile) -> set[int]:
    return {int(p.name) for p in cached.path.iterdir() if p.name.isdigit()}


def test_pinned_chunks_survive_arrivals_over_budget_and_go_when_unpinned(tmp_path: Path) -> None:
    cache, cached = opened(tmp_path, budget_chunks=2)
    read = range(3)  # a read covering three chunks, under a budget of two
    cache.pin(cached, read)
    for chunk in read:
        arrive(cached, chunk)
    assert cached.have == {0, 1, 2} and on_disk(cached) == {0, 1, 2}
    arrive(cached, 3)  # read-ahead arriving while the read is in progress: only it may go
    assert cached.have == {0, 1, 2} and on_disk(cached) == {0, 1, 2}
    data = b"".join(cached.read_range(c, 0, CHUNK) for c in read)  # the read copies its bytes out
    assert data == b"".join(chunk_bytes(c) for c in read)
    cache.touch(cached, read)
    cache.unpin(cached, read)
    assert cached.have == {1, 2} and on_disk(cached) == {1, 2}  # within budget again, oldest out
    assert cache.lru.size == 2 * CHUNK
    with pytest.raises(StorageError, match="left the cache"):
        cached.read_chunk(0)  # (what the chunk server answers with an error)


def test_without_pins_the_next_arrival_evicts_the_oldest(tmp_path: Path) -> None:
    _, cached = opened(tmp_path, budget_chunks=2)
    for chunk in range(3):
        arrive(cached, chunk)
    assert cached.have == {1, 2} and on_disk(cached) == {1, 2}
    with pytest.raises(FileNotFoundError):
        cached.read_range(0, 0, CHUNK)


def test_two_reads_pinning_one_chunk_keep_it_until_both_are_over(tmp_path: Path) -> None:
    cache, cached = opened(tmp_path, budget_chunks=1)
    cache.pin(cached, range(5, 6))
    cache.pin(cached, range(5, 7))
    arrive(cached, 5)
    arrive(cached, 6)
    cache.unpin(cached, range(5, 7))
    assert cached.have == {5}  # 6 went (unpinned, over budget); 5 is still pinned by the first read
    arrive(cached, 7)
    assert cached.have == {5}
    cache.unpin(cached, range(5, 6))
    assert cached.have == {5} and cache.lru.size == CHUNK  # (nothing else to take its place)
    arrive(cached, 8)
    assert cached.have == {8} and on_disk(cached) == {8}


def test_a_chunk_evicted_while_being_hashed_is_not_held_again(tmp_path: Path) -> None:
    _, cached = opened(tmp_path, budget_chunks=4)
    for chunk in (0, 1):
        arrive(cached, chunk)
    # a remount: it starts from what the directory holds, not verified yet
    again = ChunkCache(tmp_path / "cache", 4 * CHUNK)
    again.open()
    expected = cached.expected
    left = again.file("f.bin", "cid", 16 * CHUNK, CHUNK, expected)
    assert left.on_disk == {0, 1} and not left.have
    assert left.verify_on_disk(0) and left.verify_on_disk(1)  # (in a thread, in the mount)
    left.drop(1)  # evicted meanwhile (its file is gone)
    left.keep_verified(0)
    left.keep_verified(1)
    assert left.have == {0} and not os.path.exists(left.chunk_path(1))
