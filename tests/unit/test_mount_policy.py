"""The mount's pure policy: chunks a read covers, read-ahead per stream, fair interleaving, the LRU
budget, and the size of one fetch."""

from __future__ import annotations

from p2pfs.mount import policy
from p2pfs.mount.policy import LeastRecentlyRead, ReadAhead, covering, interleave

MiB = 1 << 20


def test_covering() -> None:
    assert covering(0, 10, 100, 1000) == range(1)
    assert covering(95, 10, 100, 1000) == range(2)
    assert covering(100, 100, 100, 1000) == range(1, 2)
    assert covering(950, 100, 100, 1000) == range(9, 10)  # clipped to the end
    assert covering(1000, 10, 100, 1000) == range(0)
    assert covering(5, 0, 100, 1000) == range(0)
    assert covering(0, 10, 100, 0) == range(0)


def test_random_reads_read_nothing_ahead() -> None:
    ra = ReadAhead(MiB, 1024 * MiB)
    for offset in (500 * MiB, 3 * MiB, 900 * MiB, 100 * MiB, 700 * MiB):
        assert ra.on_read(offset, 64 * 1024, 0.0) == range(0)
    assert not ra.sequential


def test_sequential_reads_start_a_window_that_grows_and_asks_each_chunk_once() -> None:
    ra = ReadAhead(MiB, 1024 * MiB, min_window=8 * MiB, max_window=64 * MiB)
    step = 128 * 1024
    asked: list[int] = []
    offset = 0
    assert ra.on_read(offset, step, 0.0) == range(0)  # one read is not a pattern yet
    windows = []
    for _ in range(8 * 200):
        offset += step
        got = ra.on_read(offset, step, 0.0)
        asked += list(got)
        windows.append(ra.window)
    assert ra.sequential
    assert asked == sorted(set(asked)), "each chunk is asked for once, in order"
    assert asked[0] == 1 and asked[-1] > offset // MiB
    assert windows[0] == 0 and windows[1] == 8 * MiB and max(windows) == 64 * MiB  # grew to the cap, not beyond
    assert all(c * MiB < offset + ra.window + MiB for c in asked)  # never beyond the window


def test_window_follows_the_measured_speed_and_a_seek_resets_it() -> None:
    ra = ReadAhead(MiB, 1024 * MiB, min_window=4 * MiB, max_window=64 * MiB)
    step = MiB
    now = 0.0
    for i in range(10):
        ra.on_read(i * step, step, now)
        now += 0.1  # 10 MiB/s read speed: a 1 s window of ~10 MiB
    assert ra.rate is not None and 8 * MiB < ra.rate < 12 * MiB
    assert ra.window >= 8 * MiB
    assert ra.on_read(700 * MiB, step, now) == range(0)  # a seek: random again
    assert ra.window == 0 and not ra.sequential


def test_read_ahead_stops_at_the_end_of_the_file() -> None:
    ra = ReadAhead(MiB, 10 * MiB + 5, min_window=64 * MiB, max_window=64 * MiB)
    ra.on_read(0, MiB, 0.0)
    assert ra.on_read(MiB, MiB, 0.0) == range(0)  # (two reads in a row could be chance)
    assert ra.on_read(2 * MiB, MiB, 0.0) == range(3, 11)


def test_interleave_takes_from_every_stream_in_turn() -> None:
    a, b, c = list(range(10)), list(range(100, 103)), [5, 6, 200]
    taken = interleave([a, b, c], 8)
    assert taken == [0, 100, 5, 1, 101, 6, 2, 102]
    assert a == list(range(3, 10)) and b == [] and c == [200]
    assert interleave([[1, 1, 2]], 5) == [1, 2]  # each chunk once


def test_lru_evicts_least_recently_read_first_and_never_a_pinned_chunk() -> None:
    lru: LeastRecentlyRead[str] = LeastRecentlyRead(budget=3)
    assert lru.add("a", 1) == [] and lru.add("b", 1) == [] and lru.add("c", 1) == []
    lru.touch("a")
    assert lru.add("d", 1) == ["b"]
    lru.pin(["c"])
    assert lru.add("e", 1) == ["a"]  # c is pinned: the next oldest goes
    assert lru.add("f", 1) == ["d"]
    assert lru.unpin(["c"]) == []  # within budget
    lru.budget = 1
    assert lru.add("g", 1) == ["c", "e", "f"]
    assert len(lru) == 1 and lru.size == 1 and "g" in lru
    lru.remove("g")
    assert lru.size == 0


def test_batch_size_follows_the_fetch_speed() -> None:
    assert policy.batch_chunks(None, MiB) == policy.MIN_BATCH // MiB
    assert policy.batch_chunks(1e12, MiB) == policy.MAX_BATCH // MiB
    assert policy.batch_chunks(100 * MiB, MiB) == int(100 * policy.BATCH_SECONDS)
    assert policy.batch_chunks(None, 64 * MiB) == 1
