"""The mount's pure policy: chunks a read covers, read-ahead per stream and its limit within the cache
budget, and the LRU budget with the chunks reads in progress pin."""

from __future__ import annotations

from p2pfs.mount import policy
from p2pfs.mount.policy import LeastRecentlyRead, ReadAhead, covering, window_limit

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
    assert (
        windows[0] == 0 and windows[1] == 8 * MiB and max(windows) == 64 * MiB
    )  # grew to the cap, not beyond
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


def test_a_pin_outlives_an_add_and_its_release_evicts_what_is_due() -> None:
    lru: LeastRecentlyRead[int] = LeastRecentlyRead(budget=2)
    lru.pin([0, 1, 2])  # a read covering three chunks, none cached yet
    assert lru.add(0, 1) == [] and lru.add(1, 1) == []
    assert lru.add(2, 1) == [], "a chunk a read in progress needs is never evicted"
    assert lru.size == 3  # over budget by what is pinned
    assert lru.add(3, 1) == [3]  # read-ahead arriving meanwhile: the only chunk that may go
    assert lru.unpin([0, 1, 2]) == [0]  # the read is over: back within budget at once, oldest first
    assert lru.size == 2 and 1 in lru and 2 in lru


def test_pins_nest_and_an_unpin_of_what_was_never_pinned_is_harmless() -> None:
    lru: LeastRecentlyRead[str] = LeastRecentlyRead(budget=1)
    lru.pin(["a"])
    lru.pin(["a"])  # two reads of the same chunk
    assert lru.add("a", 1) == [] and lru.add("b", 1) == ["b"]
    assert lru.unpin(["a"]) == []  # the other read still needs it
    assert lru.add("c", 1) == ["c"]
    assert lru.unpin(["a", "zzz"]) == []  # within budget: a alone
    assert lru.add("d", 1) == ["a"]  # no pin left


def test_window_limit_shares_half_the_budget_and_is_never_below_one_chunk() -> None:
    assert window_limit(1024 * MiB, 1, MiB) == 512 * MiB
    assert window_limit(1024 * MiB, 4, MiB) == 128 * MiB
    assert window_limit(1024 * MiB, 0, MiB) == 512 * MiB  # (no stream counted: as one)
    assert window_limit(2 * MiB, 1, MiB) == MiB
    assert window_limit(2 * MiB, 3, MiB) == MiB  # one chunk each, whatever the budget
    assert window_limit(0, 1, 64 * 1024) == 64 * 1024
    for streams in range(1, 9):
        limit = window_limit(64 * MiB, streams, MiB)
        assert streams * limit <= 64 * MiB * policy.READ_AHEAD_SHARE or limit == MiB


def sequential_reads(ra: ReadAhead, step: int, count: int, limit: int | None) -> list[range]:
    return [ra.on_read(i * step, step, 0.0, limit) for i in range(count)]


def test_read_ahead_stays_within_its_limit() -> None:
    chunk = 64 * 1024
    ra = ReadAhead(chunk, 16 * chunk)
    got = sequential_reads(ra, chunk, 16, limit=chunk)
    assert got[:2] == [range(0), range(0)]
    for i, ahead in enumerate(got[2:], start=2):
        # reading chunk i, at most the next chunk is fetched ahead (and each once)
        assert list(ahead) == ([i + 1] if i + 1 < 16 else []), (i, ahead)
    assert ra.window == chunk
    # unaligned reads: the chunks ahead overlap the window's bytes, so never more than it holds
    ra = ReadAhead(chunk, 64 * chunk)
    asked: list[int] = []
    for i in range(200):
        offset = i * 20000
        ahead = ra.on_read(offset, 20000, 0.0, 3 * chunk)
        asked += ahead
        end = offset + 20000
        assert all(c * chunk < end + 3 * chunk for c in ahead), (offset, ahead)
        assert not asked or max(asked) - end // chunk <= 3, (offset, asked[-3:])
    assert asked == sorted(set(asked))


def test_a_smaller_limit_shrinks_a_grown_window() -> None:
    ra = ReadAhead(MiB, 1024 * MiB, min_window=8 * MiB, max_window=64 * MiB)
    sequential_reads(ra, MiB, 100, limit=None)
    assert ra.window == 64 * MiB
    ra.on_read(100 * MiB, MiB, 0.0, 4 * MiB)  # another stream opened: this one's share shrank
    assert ra.window == 4 * MiB
    ahead = ra.on_read(101 * MiB, MiB, 0.0, 4 * MiB)
    assert ahead == range(0)  # (already asked for up to its old window: nothing more yet)


def test_chunks_fetched_ahead_outlive_the_chunks_already_read() -> None:
    lru: LeastRecentlyRead[int] = LeastRecentlyRead(budget=4)
    # a sequential reader: chunk n read while n + 1 and n + 2 are fetched ahead (half the budget)
    assert lru.add(0, 1, unread=True) == [] and lru.add(1, 1, unread=True) == []
    evicted: list[int] = []
    for n in range(10):
        lru.touch(n)
        evicted += lru.add(n + 2, 1, unread=True)
    assert evicted == list(range(8)), "only chunks already read are evicted, oldest first"
    assert 10 in lru and 11 in lru  # the next two, not read yet
    # in plain LRU order, the chunk just read would have outlived the next one fetched ahead
    plain: LeastRecentlyRead[int] = LeastRecentlyRead(budget=2)
    plain.add(1, 1)
    plain.add(2, 1)  # (fetched ahead, as if read)
    plain.touch(1)
    assert plain.add(3, 1) == [2]


def test_unread_chunks_beyond_the_read_ahead_share_go_first() -> None:
    lru: LeastRecentlyRead[str] = LeastRecentlyRead(budget=4)
    lru.add("read", 1)
    for key in ("a", "b", "c"):  # a window left behind by a stream that sought elsewhere
        lru.add(key, 1, unread=True)
    assert lru.add("d", 1, unread=True) == ["a"]  # 4 unread > half the budget: the oldest unread goes
    lru.pin(["b"])
    assert lru.add("e", 1, unread=True) == ["c"]
    assert lru.add("f", 1) == ["d"]
    assert "read" in lru and len(lru) == 4 and lru.size == 4
    lru.touch("e")  # read now: it leaves the unread ones
    assert lru.add("g", 1) == ["read"]


def test_a_chunk_a_read_waits_for_counts_as_read_when_it_comes() -> None:
    lru: LeastRecentlyRead[int] = LeastRecentlyRead(budget=2)
    lru.add(0, 1)
    lru.add(1, 1)
    lru.pin([2])  # read of chunk 2, with chunk 3 fetched ahead
    assert lru.add(2, 1, unread=True) == [0]
    assert lru.add(3, 1, unread=True) == [1], "read-ahead within its share stays"
    lru.touch(2)
    assert lru.unpin([2]) == []
