"""The tracker's bookkeeping without sockets: publishing, chunk holders, and delisting when peers leave."""

from __future__ import annotations

import itertools

import pytest

from p2pfs.address import Address
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.tracker.registry import (
    MAX_PUBLISHED_CHUNKS_PER_PEER,
    ChunkSet,
    PublishRefused,
    Registry,
    UnpublishRefused,
)

P1 = Address("10.0.0.1", 8001)
P2 = Address("10.0.0.2", 8002)
P3 = Address("10.0.0.3", 8003)
KiB = 1024


def registry(*peers: Address) -> Registry:
    reg = Registry()
    for peer in peers:
        reg.add_peer(peer)
    return reg


def holders(reg: Registry, name: str) -> dict[Address, ChunkSet]:
    record = reg.locations(name)
    assert record is not None
    return record.holders


# -- publish ----------------------------------------------------------------------------------------------
def test_publish_lists_the_file_with_every_chunk_held_by_the_publisher() -> None:
    reg = registry(P1)
    record = reg.publish(P1, "a.bin", 10 * KiB + 1, 11, KiB)
    assert reg.file_list() == {"a.bin": (10 * KiB + 1, 11)}
    assert record.fileinfo == (10 * KiB + 1, 11)
    assert record.chunk_size == KiB
    assert holders(reg, "a.bin") == {P1: set(range(11))}
    assert record.availability == [1] * 11
    assert record.complete


def test_publish_without_chunk_size_assumes_the_default() -> None:
    reg = registry(P1)
    record = reg.publish(P1, "seed.bin", 10 * DEFAULT_CHUNK_SIZE, 10, None)
    assert record.chunk_size is None
    assert reg.file_list() == {"seed.bin": (10 * DEFAULT_CHUNK_SIZE, 10)}


def test_duplicate_name_is_refused_with_the_reason() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 3 * KiB, 3, KiB)
    for publisher in (P1, P2):
        with pytest.raises(PublishRefused) as info:
            reg.publish(publisher, "a.bin", 5 * KiB, 5, KiB)
        assert "a.bin" in str(info.value)
        assert "already published" in str(info.value)
    assert reg.file_list() == {"a.bin": (3 * KiB, 3)}  # the first one stands
    assert holders(reg, "a.bin") == {P1: {0, 1, 2}}


@pytest.mark.parametrize(
    ("filesize", "chunk_count", "chunk_size"),
    [(10 * KiB, 9, KiB), (10 * KiB, 11, KiB), (0, 1, KiB), (1, 0, KiB), (DEFAULT_CHUNK_SIZE + 1, 1, None)],
)
def test_inconsistent_fileinfo_is_refused(filesize: int, chunk_count: int, chunk_size: int | None) -> None:
    reg = registry(P1)
    with pytest.raises(PublishRefused) as info:
        reg.publish(P1, "bad.bin", filesize, chunk_count, chunk_size)
    assert "inconsistent" in str(info.value)
    assert str(chunk_count) in str(info.value)
    assert reg.file_list() == {}


def test_unregistered_peer_is_refused() -> None:
    reg = registry(P1)
    with pytest.raises(PublishRefused) as info:
        reg.publish(P2, "a.bin", KiB, 1, KiB)
    assert "not registered" in str(info.value)
    assert reg.file_list() == {}


def test_a_departed_peer_can_no_longer_publish() -> None:
    reg = registry(P1)
    reg.remove_peer(P1)
    with pytest.raises(PublishRefused):
        reg.publish(P1, "a.bin", KiB, 1, KiB)


def test_name_is_free_again_once_delisted() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", KiB, 1, KiB)
    assert reg.remove_peer(P1) == ["a.bin"]
    reg.publish(P2, "a.bin", 2 * KiB, 2, KiB)
    assert holders(reg, "a.bin") == {P2: {0, 1}}


# -- register_chunk ---------------------------------------------------------------------------------------
def test_register_chunk_adds_a_holder() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB)
    assert reg.register_chunk(P2, "a.bin", 2) is True
    assert reg.register_chunk(P2, "a.bin", 2) is True  # idempotent
    record = reg.locations("a.bin")
    assert record is not None
    assert record.holders == {P1: {0, 1, 2, 3}, P2: {2}}
    assert record.availability == [1, 1, 2, 1]


@pytest.mark.parametrize(("name", "chunk"), [("nope.bin", 0), ("a.bin", 4), ("a.bin", -1), ("a.bin", 10**9)])
def test_register_chunk_that_makes_no_sense_returns_false(name: str, chunk: int) -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB)
    assert reg.register_chunk(P2, name, chunk) is False
    assert holders(reg, "a.bin") == {P1: {0, 1, 2, 3}}
    assert "nope.bin" not in reg.file_list()


def test_register_chunk_from_unregistered_peer_returns_false() -> None:
    reg = registry(P1)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB)
    assert reg.register_chunk(P3, "a.bin", 0) is False
    assert P3 not in holders(reg, "a.bin")


def test_register_chunk_for_an_empty_file_returns_false() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "empty", 0, 0, KiB)
    assert reg.register_chunk(P2, "empty", 0) is False


# -- remove_peer ------------------------------------------------------------------------------------------
def test_remove_peer_delists_exactly_the_files_left_incomplete() -> None:
    reg = registry(P1, P2, P3)
    reg.publish(P1, "a.bin", 3 * KiB, 3, KiB)  # P2 gets all of it: survives
    reg.publish(P1, "b.bin", 3 * KiB, 3, KiB)  # P2 gets part of it: delisted
    reg.publish(P1, "c.bin", 2 * KiB, 2, KiB)  # nobody else: delisted
    reg.publish(P2, "d.bin", 2 * KiB, 2, KiB)  # P1 only downloaded a chunk: survives
    for chunk in range(3):
        assert reg.register_chunk(P2, "a.bin", chunk)
    assert reg.register_chunk(P2, "b.bin", 0)
    assert reg.register_chunk(P2, "b.bin", 2)
    assert reg.register_chunk(P1, "d.bin", 1)

    assert sorted(reg.remove_peer(P1)) == ["b.bin", "c.bin"]
    assert reg.file_list() == {"a.bin": (3 * KiB, 3), "d.bin": (2 * KiB, 2)}
    assert holders(reg, "a.bin") == {P2: {0, 1, 2}}
    assert holders(reg, "d.bin") == {P2: {0, 1}}
    record = reg.locations("d.bin")
    assert record is not None and record.availability == [1, 1]
    assert P1 not in reg.peers


def test_remove_peer_keeps_a_file_held_in_pieces_by_others() -> None:
    reg = registry(P1, P2, P3)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB)
    for chunk in (0, 1):
        reg.register_chunk(P2, "a.bin", chunk)
    for chunk in (2, 3):
        reg.register_chunk(P3, "a.bin", chunk)
    assert reg.remove_peer(P1) == []
    assert holders(reg, "a.bin") == {P2: {0, 1}, P3: {2, 3}}
    assert reg.remove_peer(P3) == ["a.bin"]
    assert reg.file_list() == {}


def test_remove_peer_that_holds_nothing_delists_nothing() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", KiB, 1, KiB)
    assert reg.remove_peer(P2) == []
    assert reg.remove_peer(P3) == []  # never registered
    assert reg.file_list() == {"a.bin": (KiB, 1)}


def test_remove_peer_twice_is_harmless() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", KiB, 1, KiB)
    reg.register_chunk(P2, "a.bin", 0)
    assert reg.remove_peer(P1) == []
    assert reg.remove_peer(P1) == []
    assert holders(reg, "a.bin") == {P2: {0}}


def test_chunks_registered_for_a_delisted_file_do_not_resurrect_it() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 2 * KiB, 2, KiB)
    reg.register_chunk(P2, "a.bin", 0)
    assert reg.remove_peer(P1) == ["a.bin"]
    assert reg.register_chunk(P2, "a.bin", 1) is False
    assert reg.file_list() == {}
    assert reg.remove_peer(P2) == []  # P2's stale interest in a.bin is gone


def test_empty_file_stays_listed_while_its_publisher_is_there() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "empty", 0, 0, KiB)
    assert reg.file_list() == {"empty": (0, 0)}
    assert reg.remove_peer(P2) == []
    assert reg.file_list() == {"empty": (0, 0)}
    assert reg.remove_peer(P1) == ["empty"]
    assert reg.file_list() == {}


# -- unpublish --------------------------------------------------------------------------------------------
HASHES = bytes(range(32)) * 4  # chunk hashes of a 4-chunk file, so a second publisher can join it


def test_unpublish_by_one_of_two_complete_holders_keeps_the_file_listed() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB, HASHES)
    reg.publish(P2, "a.bin", 4 * KiB, 4, KiB, HASHES)  # joins as a second complete holder
    assert reg.unpublish(P1, "a.bin") is False  # not delisted
    assert reg.file_list() == {"a.bin": (4 * KiB, 4)}
    record = reg.locations("a.bin")
    assert record is not None
    assert record.holders == {P2: {0, 1, 2, 3}}
    assert record.availability == [1, 1, 1, 1]
    assert record.publishers == {P2}
    assert P1 in reg.peers  # still registered: only its holding of a.bin is gone


def test_unpublish_by_the_only_complete_holder_delists_it_even_with_partial_holders_left() -> None:
    reg = registry(P1, P2, P3)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB)
    reg.register_chunks(P2, "a.bin", [0, 1])
    reg.register_chunks(P3, "a.bin", [1])  # nobody but P1 has chunks 2 and 3
    records, bits = reg.holder_records, reg.holder_bits
    assert reg.unpublish(P1, "a.bin") is True
    assert reg.file_list() == {}
    assert reg.locations("a.bin") is None
    assert (reg.holder_records, reg.holder_bits, reg.listed_chunks) == (records - 3, bits - 12, 0)
    # the name is free again, and the partial holders' stale records are gone with the file
    reg.publish(P2, "a.bin", 2 * KiB, 2, KiB)
    assert holders(reg, "a.bin") == {P2: {0, 1}}
    assert reg.remove_peer(P3) == []


def test_unpublish_keeps_a_file_whose_chunks_others_still_cover_in_pieces() -> None:
    reg = registry(P1, P2, P3)
    reg.publish(P1, "a.bin", 4 * KiB, 4, KiB)
    reg.register_chunks(P2, "a.bin", [0, 1])
    reg.register_chunks(P3, "a.bin", [2, 3])
    assert reg.unpublish(P1, "a.bin") is False
    assert holders(reg, "a.bin") == {P2: {0, 1}, P3: {2, 3}}
    # a partial holder may unpublish too: its chunks go, and chunks 0 and 1 are left with no holder
    assert reg.unpublish(P2, "a.bin") is True
    assert reg.file_list() == {}


def test_unpublish_of_an_empty_file_by_its_publisher_delists_it() -> None:
    reg = registry(P1)
    reg.publish(P1, "empty", 0, 0, KiB)
    assert reg.unpublish(P1, "empty") is True
    assert reg.file_list() == {}


@pytest.mark.parametrize(
    ("who", "name", "reason"),
    [
        (P2, "a.bin", "this peer does not hold 'a.bin'"),  # registered, listed file, holds none of it
        (P1, "nope.bin", "'nope.bin' is not listed"),
        (P3, "a.bin", "peer is not registered (send REQUEST_REGISTER first)"),
    ],
    ids=["not a holder", "not listed", "unregistered"],
)
def test_unpublish_of_what_the_peer_does_not_hold_is_refused(who: Address, name: str, reason: str) -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 2 * KiB, 2, KiB)
    with pytest.raises(UnpublishRefused) as info:
        reg.unpublish(who, name)
    assert str(info.value) == reason
    assert holders(reg, "a.bin") == {P1: {0, 1}}
    assert reg.file_list() == {"a.bin": (2 * KiB, 2)}


def test_unpublish_twice_is_refused_the_second_time() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 2 * KiB, 2, KiB)
    reg.register_chunks(P2, "a.bin", [0, 1])
    assert reg.unpublish(P2, "a.bin") is False
    with pytest.raises(UnpublishRefused, match="does not hold"):
        reg.unpublish(P2, "a.bin")
    assert holders(reg, "a.bin") == {P1: {0, 1}}


def test_unpublish_touches_only_the_senders_holding_of_that_file() -> None:
    reg = registry(P1, P2)
    reg.publish(P1, "a.bin", 3 * KiB, 3, KiB, HASHES[:96])
    reg.publish(P2, "a.bin", 3 * KiB, 3, KiB, HASHES[:96])
    reg.publish(P1, "b.bin", 2 * KiB, 2, KiB)
    reg.register_chunks(P2, "b.bin", [1])
    reg.publish(P2, "c.bin", KiB, 1, KiB)
    assert reg.unpublish(P2, "a.bin") is False
    assert holders(reg, "a.bin") == {P1: {0, 1, 2}}
    assert holders(reg, "b.bin") == {P1: {0, 1}, P2: {1}}
    assert holders(reg, "c.bin") == {P2: {0}}
    b = reg.locations("b.bin")
    assert b is not None and b.availability == [1, 2]
    # P2 leaving later removes what it still holds, and only that: a.bin is not counted twice
    assert reg.remove_peer(P2) == ["c.bin"]
    a = reg.locations("a.bin")
    assert a is not None and a.availability == [1, 1, 1]
    assert holders(reg, "b.bin") == {P1: {0, 1}}
    assert (reg.holder_records, reg.holder_bits) == (2, 5)


def test_a_peer_can_publish_again_what_it_unpublished() -> None:
    reg = registry(P1)
    reg.publish(P1, "a.bin", 2 * KiB, 2, KiB)
    assert reg.unpublish(P1, "a.bin") is True
    reg.publish(P1, "a.bin", 2 * KiB, 2, KiB)
    assert holders(reg, "a.bin") == {P1: {0, 1}}
    assert reg.remove_peer(P1) == ["a.bin"]
    assert (reg.holder_records, reg.holder_bits, reg.listed_chunks) == (0, 0, 0)


# -- memory bounds -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1000])
def test_chunk_set_matches_a_set(size: int) -> None:
    full = ChunkSet(size, full=True)
    assert full == set(range(size)) and list(full) == list(range(size)) and len(full) == size
    partial = ChunkSet(size)
    wanted = set(range(0, size, 3))
    for chunk in wanted:
        assert partial.add(chunk)
        assert not partial.add(chunk)
    assert partial == wanted and list(partial) == sorted(wanted) and len(partial) == len(wanted)
    assert size not in partial and -1 not in partial and "x" not in partial


def test_a_peer_cannot_publish_more_than_its_quota_of_chunks() -> None:
    reg = registry(P1, P2)
    biggest = 1 << 18
    for i in range(MAX_PUBLISHED_CHUNKS_PER_PEER // biggest):
        reg.publish(P1, f"big{i}", biggest * KiB, biggest, KiB, bytes([i]) * 32 * biggest)
    with pytest.raises(PublishRefused, match="limit"):
        reg.publish(P1, "one-more", KiB, 1, KiB)
    reg.publish(P2, "other-peer", KiB, 1, KiB)  # the quota is per peer
    assert "one-more" not in reg.file_list()


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64, 1000])
def test_chunk_set_runs_and_numbers_match_a_plain_computation(size: int) -> None:
    import random

    rng = random.Random(size)
    for density in (0.0, 0.1, 0.5, 0.9, 1.0):
        chunks = ChunkSet(size)
        wanted = {c for c in range(size) if rng.random() < density}
        for chunk in wanted:
            chunks.add(chunk)
        assert chunks.numbers() == sorted(wanted)
        runs = chunks.runs()
        assert [c for first, end in runs for c in range(first, end)] == sorted(wanted)
        assert all(first < end for first, end in runs)
        assert all(end < next_first for (_, end), (next_first, _) in itertools.pairwise(runs))  # maximal runs
    assert ChunkSet(size, full=True).runs() == ([(0, size)] if size else [])


def test_chunk_set_memo_is_dropped_when_the_set_changes() -> None:
    chunks = ChunkSet(100)
    chunks.add(5)
    calls: list[int] = []

    def make(cs: ChunkSet) -> list[int]:
        calls.append(1)
        return cs.numbers()

    assert chunks.memo("k", make) == [5] and chunks.memo("k", make) == [5] and len(calls) == 1
    assert not chunks.add(5)  # no change: the memo stays
    assert chunks.memo("k", make) == [5] and len(calls) == 1
    chunks.add(6)
    assert chunks.memo("k", make) == [5, 6] and len(calls) == 2


def test_location_reply_of_a_100_gib_file_with_100_complete_holders_stays_small() -> None:
    """The issue's case: 102,400 chunks of 1 MiB, 100 complete holders. The seed's list form is ~60 MB
    (too big for one frame); with `ranges` it is a few KB, plus the chunk hashes once (left out when the
    asker already has them)."""
    from p2pfs.protocol import framing
    from p2pfs.tracker.server import _location_reply

    chunks = 100 * 1024
    reg = Registry()
    hashes = bytes(32) * chunks
    for i in range(100):
        peer = Address(f"10.1.{i // 250}.{i % 250 + 1}", 7000 + i)
        reg.add_peer(peer)
        reg.publish(peer, "big.bin", chunks << 20, chunks, 1 << 20, hashes)
    record = reg.locations("big.bin")
    assert record is not None and len(record.holders) == 100
    refresh = len(framing.encode(_location_reply(record, ranges=True, hashes=False)))
    first = len(framing.encode(_location_reply(record, ranges=True)))
    listed = sum(len(framing.encode_body(c.numbers())) for c in record.holders.values())
    print(f"100 GiB x 100 holders: ranges {refresh} B, with hashes {first} B, seed lists {listed} B")
    assert refresh < 8_000
    assert first < refresh + 4_500_000  # the 3.2 MB of hashes in base64, once
    assert listed > 50_000_000
