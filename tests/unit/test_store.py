"""The pure parts of the tracker's stores: Redis bitmaps of chunk sets, store URLs, the registry taking
in a file as another tracker recorded it, and the order a peer fails over in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfs.address import Address
from p2pfs.chunkset import ChunkSet
from p2pfs.peer.tracker_client import TrackerClient
from p2pfs.protocol import hashes
from p2pfs.tracker.registry import Registry
from p2pfs.tracker.store import (
    MemoryStore,
    RedisStore,
    bitmap,
    check_store,
    from_bitmap,
    open_store,
    redacted,
)

P1, P2, P3 = Address("10.0.0.1", 1), Address("10.0.0.2", 2), Address("10.0.0.3", 3)


def test_bitmap_numbers_chunks_as_setbit_does() -> None:
    # SETBIT key 0 1 sets the most significant bit of the first byte; SETBIT key 9 1 the second of byte 1
    assert bitmap(ChunkSet.from_numbers(16, [0, 9])) == bytes([0b1000_0000, 0b0100_0000])
    assert bitmap(ChunkSet(10, full=True)) == bytes([0xFF, 0b1100_0000])
    assert bitmap(ChunkSet(0)) == b""


@given(st.integers(1, 3000).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))))
def test_bitmap_round_trip(case: tuple[int, set[int]]) -> None:
    size, numbers = case
    chunks = ChunkSet.from_numbers(size, numbers)
    assert from_bitmap(size, bitmap(chunks)) == numbers


def test_from_bitmap_takes_short_and_long_strings() -> None:
    assert from_bitmap(20, b"\x80") == {0}  # (SETBIT grew it only as far as the highest bit set)
    assert from_bitmap(4, b"\xff\xff") == {0, 1, 2, 3}  # (bits past the file's chunks are ignored)
    assert from_bitmap(4, b"") == set()


@pytest.mark.parametrize("spec", ["memory", "redis://h:6379/0", "rediss://:pw@h:6380/2", "unix:///run/redis.sock"])
def test_store_specs(spec: str) -> None:
    check_store(spec)


@pytest.mark.parametrize(("spec", "reason"), [("http://h", "write memory"), ("redis://h:x", "bad store"), ("", "write memory")])
def test_bad_store_specs(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_store(spec)


def test_open_store() -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    store = open_store("redis://:pw@127.0.0.1:1/3", lease=2)
    assert isinstance(store, RedisStore) and store.lease == 2
    assert store.channel == "p2pfs:events:3"  # (pub/sub ignores databases: the channel names it)
    assert "pw" not in store.describe()


def test_redacted() -> None:
    assert redacted("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


def test_restore_lists_a_file_no_one_holds_whole() -> None:
    registry = Registry()
    chunk_hashes = bytes(32 * 4)
    holders = {P1: ChunkSet.from_numbers(4, [0, 1]), P2: ChunkSet.from_numbers(4, [1, 2, 3])}
    record = registry.restore("f", 4 * 1024, 4, 1024, chunk_hashes, None, holders, publishers=[P2, P3])
    assert record is not None and record.availability == [1, 2, 1, 1]
    assert record.content_id == hashes.content_id(chunk_hashes)
    assert record.publishers == {P2}  # (P3 holds nothing: not a publisher)
    assert registry.peers == {P1, P2}
    # taking it in again adds what is new, and nothing twice
    gained: dict[Address, list[int]] = {}
    again = {P3: ChunkSet.from_numbers(4, [0]), P2: ChunkSet.from_numbers(4, [1, 2, 3])}
    registry.restore("f", 4 * 1024, 4, 1024, chunk_hashes, None, again, gained=gained)
    assert record.availability == [2, 2, 1, 1] and registry.holder_records == 3
    assert gained == {P3: [0]}  # (what watchers have not heard of: P2's chunks were known)
    # the holders leave: delisted as always
    for peer in (P1, P2, P3):
        registry.remove_peer(peer)
    assert registry.files == {} and registry.holder_records == 0 and registry.listed_chunks == 0


def test_restore_refuses_what_is_incomplete_or_different() -> None:
    registry = Registry()
    assert registry.restore("f", 4096, 4, 1024, None, None, {P1: ChunkSet.from_numbers(4, [0, 1])}) is None
    assert registry.files == {} and registry.listed_chunks == 0 and registry.holder_records == 0
    assert registry.restore("g", 4096, 5, 1024, None, None, {P1: ChunkSet(5, full=True)}) is None  # (5 != 4)
    registry.restore("h", 4096, 4, 1024, bytes(128), None, {P1: ChunkSet(4, full=True)})
    assert registry.restore("h", 4096, 4, 1024, b"\x01" * 128, None, {P2: ChunkSet(4, full=True)}) is None
    assert set(registry.files["h"].holders) == {P1}


def test_failover_order() -> None:
    client = TrackerClient()
    a, b, c = Address("a", 1), Address("b", 2), Address("c", 3)
    client.trackers = [a, b, c]
    assert client._failover_order(a) == [b, c, a]
    assert client._failover_order(b) == [c, a, b]
    assert client._failover_order(c) == [a, b, c]
    client.trackers = [a]
    assert client._failover_order(a) == [a]
    assert client._failover_order(b) == [a, b]  # (connected by hand elsewhere: the list, then that one)
