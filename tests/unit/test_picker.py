"""The chunk picker over hand-built availability tables: rarest first, random ties, end game, failures."""

from __future__ import annotations

import random
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.chunkset import ChunkSet
from p2pfs.peer.picker import (
    MAX_REQUESTS_PER_CHUNK,
    Candidate,
    IndexedSet,
    Picker,
    choose_holders,
    rank_candidates,
)
from p2pfs.peer.window import ThroughputMeter, initial_window, request_window


def picker(
    chunk_count: int, table: dict[str, list[int]], seed: int = 0, have: list[int] | None = None
) -> Picker[str]:
    p: Picker[str] = Picker(chunk_count, have=have or (), rng=random.Random(seed))
    for holder, chunks in table.items():
        p.add_holder(holder, chunks)
    return p


def drain(p: Picker[str], holder: str) -> list[int]:
    """Everything `holder` is given until it has nothing (end-game duplicates included)."""
    picks: list[int] = []
    while (chunk := p.pick(holder)) is not None:
        picks.append(chunk)
        assert len(picks) <= 10 * p.chunk_count
    return picks


# -- rarest first -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_chunk_with_one_holder_is_picked_before_chunks_with_three(seed: int) -> None:
    p = picker(6, {"A": [0, 1, 2, 3, 4, 5], "B": [0, 1, 2, 3, 4], "C": [0, 1, 2, 3, 4]}, seed)
    assert p.availability(5) == 1 and p.availability(0) == 3
    assert p.pick("A") == 5


@pytest.mark.parametrize("seed", range(20))
def test_picks_follow_availability_order(seed: int) -> None:
    # availability: chunk 0..1 -> 3 holders, 2..3 -> 2 holders, 4..5 -> 1 holder
    p = picker(6, {"A": list(range(6)), "B": [0, 1, 2, 3], "C": [0, 1]}, seed)
    first_six = [p.pick("A") for _ in range(6)]
    assert set(first_six[:2]) == {4, 5}
    assert set(first_six[2:4]) == {2, 3}
    assert set(first_six[4:]) == {0, 1}


def test_rarest_among_what_the_holder_has() -> None:
    # B does not have the rarest chunk (5); it gets the rarest of its own.
    p = picker(6, {"A": [5], "B": [0, 1, 2, 3, 4], "C": [0, 1, 2, 3], "D": [0, 1, 2, 3]})
    assert p.pick("B") == 4


def test_rarity_updates_when_holders_come_and_go() -> None:
    p = picker(3, {"A": [0, 1, 2], "B": [0, 1], "C": [0, 2]})  # availability: 3, 2, 2
    p.remove_holder("B")  # availability: 2, 1, 2
    assert p.pick("A") == 1
    p.add_holder("D", [0])
    p.add_holder("E", [0])  # availability: 4, -, 2
    assert p.pick("A") == 2
    assert p.pick("A") == 0


# -- random tie-break -------------------------------------------------------------------------------------
def first_picks(table: dict[str, list[int]], chunk_count: int, holder: str, runs: int = 200) -> Counter[int]:
    return Counter(picker(chunk_count, table, seed=i).pick(holder) for i in range(runs))  # type: ignore[misc]


def test_ties_are_broken_at_random_for_a_seeder() -> None:
    counts = first_picks({"A": list(range(8))}, 8, "A")
    assert set(counts) == set(range(8))  # not always the lowest number
    assert min(counts.values()) >= 5  # and not wildly skewed


def test_ties_are_broken_at_random_for_a_partial_holder() -> None:
    # A holds 4 of 1000 chunks, all with availability 1, so random probes into the bucket mostly miss
    # and the choice among A's own chunks decides; it must not always be the lowest number.
    mine = [3, 17, 22, 999]
    table = {"A": mine, "B": [c for c in range(1000) if c not in mine]}
    counts = first_picks(table, 1000, "A")
    assert set(counts) == set(mine)
    assert min(counts.values()) >= 20  # ~50 each out of 200


def test_same_seed_same_choices() -> None:
    table = {"A": list(range(30)), "B": list(range(0, 30, 2))}
    assert drain(picker(30, table, seed=7), "A") == drain(picker(30, table, seed=7), "A")


# -- who gets what ----------------------------------------------------------------------------------------
def test_holder_only_gets_chunks_it_has() -> None:
    table = {"A": [0, 2, 4], "B": [1, 3], "C": [4, 5]}
    p = picker(6, table)
    for holder in ("C", "A", "B", "A", "C", "B", "A", "C"):
        chunk = p.pick(holder)
        assert chunk is None or chunk in table[holder]
    assert p.pick("nobody") is None


def test_holder_without_chunks_gets_nothing() -> None:
    p = picker(4, {"A": [], "B": [0, 1, 2, 3]})
    assert p.pick("A") is None
    assert not p.has_work("A")


def test_chunks_out_of_range_are_ignored() -> None:
    p: Picker[str] = Picker(3, rng=random.Random(0))
    assert p.add_holder("A", [-1, 0, 2, 3, 99]) == [0, 2]
    assert p.add_holder("A", [0, 1]) == [1]
    assert [p.availability(c) for c in range(3)] == [1, 1, 1]


def test_in_flight_chunk_is_not_given_to_another_holder_before_end_game() -> None:
    p = picker(2, {"A": [0, 1], "B": [0, 1]})
    a = p.pick("A")
    b = p.pick("B")
    assert {a, b} == {0, 1}  # B gets the other chunk, not a duplicate of A's
    assert p.in_flight() == {a: {"A"}, b: {"B"}}


def test_in_flight_chunk_is_not_duplicated_while_the_holder_has_other_work() -> None:
    p = picker(4, {"A": [0, 1, 2, 3], "B": [0]})
    assert p.pick("B") == 0
    assert sorted(p.pick("A") for _ in range(3)) == [1, 2, 3]  # type: ignore[type-var]


def test_a_holder_is_never_given_the_same_chunk_twice() -> None:
    p = picker(3, {"A": [0, 1, 2], "B": [0, 1, 2]})
    picks = drain(p, "A")
    assert sorted(picks) == [0, 1, 2]


# -- end game ---------------------------------------------------------------------------------------------
def test_end_game_duplicates_an_in_flight_chunk() -> None:
    p = picker(3, {"A": [0, 1, 2], "B": [0]})
    assert p.pick("B") == 0
    assert {p.pick("A"), p.pick("A")} == {1, 2}
    assert p.has_work("A")  # chunk 0 is missing and not in flight from A
    assert p.pick("A") is None  # A has its own requests in flight: no copies while it is busy
    assert p.completed(1) and p.completed(2)
    assert p.pick("A") == 0  # nothing unrequested left, A is idle: duplicate B's chunk
    assert p.in_flight()[0] == {"A", "B"}
    assert p.pick("A") is None  # A already asked for everything it has


def test_end_game_copies_go_one_at_a_time_to_a_holder() -> None:
    """An idle holder is given one copy, not a window of them: a second copy only once the first is done."""
    p = picker(4, {"A": [0, 1, 2, 3], "B": [0, 1], "C": [2, 3]})
    assert sorted([p.pick("B"), p.pick("B"), p.pick("C"), p.pick("C")]) == [0, 1, 2, 3]
    first = p.pick("A")
    assert first is not None and p.pick("A") is None
    assert p.completed(first)  # A's copy won
    second = p.pick("A")
    assert second is not None and second != first


def test_no_end_game_while_a_missing_chunk_has_no_holder_yet() -> None:
    """A chunk no connected holder has is still to be fetched from a holder found later: copies now would
    find that holder's peers busy with them (libtorrent's strict end game)."""
    p = picker(3, {"A": [0, 1], "B": [0, 1]})
    assert {p.pick("A"), p.pick("B")} == {0, 1}
    assert p.unavailable() == [2]
    assert p.completed(p.in_flight().popitem()[0])
    assert p.pick("A") is None and p.pick("B") is None  # chunk 2 has no holder: not the end game
    p.add_holder("C", [2])
    assert p.pick("C") == 2
    idle = "A" if "A" not in next(iter(p.in_flight().values())) else "B"
    assert p.pick(idle) is not None  # every missing chunk in flight: now the end game


def test_no_duplicates_while_another_holder_has_unrequested_chunks() -> None:
    """Mid-download, a holder with nothing new to give stays idle rather than duplicating: a chunk nobody
    fetches yet (from another holder) means this is not the end game."""
    p = picker(3, {"A": [0, 1, 2], "B": [0]})
    assert p.pick("B") == 0
    assert p.pick("B") is None  # B has only chunk 0, in flight from B itself
    first = p.pick("A")
    assert first in (1, 2)
    p2 = picker(3, {"A": [0, 1, 2], "B": [1]})
    assert p2.pick("A") is not None
    # B's only chunk may be the one A is fetching; chunks 0..2 minus A's pick are still unrequested
    before = p2.in_flight()
    got = p2.pick("B")
    assert got is None or got not in before, "a duplicate was requested while chunks were unrequested"


def test_end_game_takes_a_chunk_that_is_not_yet_duplicated() -> None:
    p = picker(2, {"B": [0], "C": [1], "A": [0, 1], "D": [0, 1], "E": [0, 1]})
    assert p.pick("B") == 0
    assert p.pick("C") == 1
    dup = p.pick("A")
    assert dup in (0, 1)
    assert len(p.in_flight()[dup]) == 2
    assert p.pick("D") == 1 - dup  # the chunk with a single requester, not a third copy of `dup`
    assert p.in_flight() == {
        0: {"A", "B"} if dup == 0 else {"B", "D"},
        1: {"C", "D"} if dup == 0 else {"A", "C"},
    }
    assert p.pick("E") is None  # every chunk is at MAX_REQUESTS_PER_CHUNK


def test_end_game_requesters_are_capped() -> None:
    holders = [f"H{i}" for i in range(MAX_REQUESTS_PER_CHUNK + 3)]
    p = picker(1, {h: [0] for h in holders})
    results = [p.pick(h) for h in holders]
    assert results[:MAX_REQUESTS_PER_CHUNK] == [0] * MAX_REQUESTS_PER_CHUNK
    assert results[MAX_REQUESTS_PER_CHUNK:] == [None] * 3
    assert len(p.in_flight()[0]) == MAX_REQUESTS_PER_CHUNK


def test_a_holder_with_nothing_to_give_is_given_what_becomes_pickable() -> None:
    """A failed pick is remembered, and forgotten as soon as a chunk of that holder is pickable again:
    given back by another holder, newly announced by it, or wanted again."""
    p = picker(4, {"A": [0], "B": [0], "C": [3]})
    assert p.pick("A") == 0
    assert p.pick("B") is None  # its only chunk is in flight from A; C's chunk 3 is unrequested
    assert p.pick("B") is None
    p.cancelled(0, "A")  # given back
    assert p.pick("B") == 0
    assert p.pick("A") is None
    p.add_holder("A", [3])  # announced
    assert p.pick("A") == 3
    q = Picker(4, have=[1], rng=random.Random(1))
    q.add_holder("A", [0, 1])
    q.add_holder("C", [2])
    assert q.pick("A") == 0
    assert q.pick("A") is None  # chunk 1 is had; C's chunk 2 is unrequested
    q.want([1])  # (a mount's read asks for it again)
    assert q.pick("A") == 1


def test_completed_is_false_for_a_duplicate() -> None:
    p = picker(1, {"A": [0], "B": [0]})
    assert p.pick("A") == 0
    assert p.pick("B") == 0
    assert p.completed(0) is True
    assert p.completed(0) is False
    assert p.complete
    assert p.in_flight() == {}
    p.cancelled(0, "A")  # the losing request is cancelled: nothing changes
    assert p.complete and p.pick("A") is None and p.pick("B") is None


def test_cancelled_returns_the_chunk_to_the_pool() -> None:
    p = picker(1, {"A": [0], "B": [0]})
    assert p.pick("A") == 0
    p.cancelled(0, "A")
    assert p.availability(0) == 2  # a cancel is no fault of the holder
    assert p.in_flight() == {}
    assert p.pick("B") == 0


def test_completed_after_availability_changed_in_flight() -> None:
    # regression: availability 1 -> 2 while in flight made completed() look up a bucket never created
    p = picker(2, {"A": [0]})
    assert p.pick("A") == 0
    p.add_holder("B", [0])
    assert p.completed(0) is True
    assert p.pick("B") is None


def test_failed_and_new_holders_while_in_flight_keep_buckets_consistent() -> None:
    p = picker(3, {"A": [0, 1, 2]})
    assert p.pick("A") is not None
    for h in ("B", "C", "D"):
        p.add_holder(h, [0, 1, 2])  # availability 1 -> 4 while one chunk is in flight
    (chunk,) = p.in_flight()
    p.failed(chunk, "A")  # back to the pool at availability 3
    assert p.availability(chunk) == 3
    assert p.pick("B") == chunk  # now rarer than the two chunks held by all four


# -- failures and departures ------------------------------------------------------------------------------
def test_failed_stops_counting_the_holder_and_frees_the_chunk() -> None:
    p = picker(2, {"A": [0, 1], "B": [0]})
    assert p.pick("B") == 0
    p.failed(0, "B")
    assert p.availability(0) == 1
    assert p.in_flight() == {}
    assert p.pick("B") is None  # B is no longer counted as having chunk 0
    assert not p.has_work("B")
    assert sorted(drain(p, "A")) == [0, 1]  # A gets it, without end-game help


def test_failed_by_one_of_two_requesters_keeps_the_other() -> None:
    p = picker(1, {"A": [0], "B": [0]})
    assert p.pick("A") == 0
    assert p.pick("B") == 0
    p.failed(0, "A")
    assert p.in_flight() == {0: {"B"}}
    assert p.availability(0) == 1
    assert p.unavailable() == []


def test_failed_by_the_only_holder_makes_the_chunk_unavailable() -> None:
    p = picker(2, {"A": [0, 1]})
    chunk = p.pick("A")
    assert chunk is not None
    p.failed(chunk, "A")
    assert p.unavailable() == [chunk]
    assert p.pick("A") == 1 - chunk


def test_remove_holder_returns_in_flight_chunks_and_lowers_availability() -> None:
    p = picker(4, {"A": [0, 1, 2, 3], "B": [0, 1, 2, 3]})
    taken = sorted([p.pick("A"), p.pick("A")])  # type: ignore[type-var]
    assert sorted(p.remove_holder("A")) == taken
    assert [p.availability(c) for c in range(4)] == [1, 1, 1, 1]
    assert p.in_flight() == {}
    assert "A" not in p.holders
    assert sorted(drain(p, "B")) == [0, 1, 2, 3]  # the returned chunks are B's to fetch, once each


def test_remove_holder_keeps_other_requesters() -> None:
    p = picker(1, {"A": [0], "B": [0]})
    p.pick("A")
    p.pick("B")
    assert p.remove_holder("A") == [0]
    assert p.in_flight() == {0: {"B"}}
    assert p.remove_holder("nobody") == []


def test_unavailable_and_can_progress() -> None:
    p = picker(4, {"A": [0, 1]})
    assert p.unavailable() == [2, 3]
    assert p.can_progress()
    a, b = p.pick("A"), p.pick("A")
    assert p.can_progress()  # requests in flight
    assert p.completed(a) and p.completed(b)  # type: ignore[arg-type]
    assert not p.can_progress()
    assert p.unavailable() == [2, 3]
    assert not p.complete
    p.add_holder("B", [3])
    assert p.can_progress()
    assert p.unavailable() == [2]


def test_no_holders_cannot_progress() -> None:
    p: Picker[str] = Picker(3, rng=random.Random(0))
    assert p.unavailable() == [0, 1, 2]
    assert not p.can_progress()


def test_empty_file_is_complete_at_once() -> None:
    p: Picker[str] = Picker(0, rng=random.Random(0))
    assert p.complete
    assert p.unavailable() == []
    assert not p.can_progress()


def test_have_chunks_are_never_handed_out() -> None:
    p = picker(5, {"A": [0, 1, 2, 3, 4], "B": [1, 3]}, have=[1, 3])
    assert p.missing() == [0, 2, 4]
    assert p.pick("B") is None
    assert sorted(drain(p, "A")) == [0, 2, 4]
    assert p.unavailable() == []
    for chunk in (0, 2, 4):
        assert p.completed(chunk)
    assert p.complete
    assert p.completed(1) is False  # already had it


# -- invariants over random tables ------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.dictionaries(st.sampled_from("ABCDE"), st.sets(st.integers(0, n - 1)), min_size=1),
            st.sets(st.integers(0, n - 1)),
            st.lists(
                st.tuples(st.sampled_from("ABCDE"), st.sampled_from(["pick", "done", "fail", "leave", "seed"])),
                max_size=40,
            ),
            st.integers(0, 2**32),
        )
    )
)
def test_picking_invariants(
    case: tuple[int, dict[str, set[int]], set[int], list[tuple[str, str]], int],
) -> None:
    n, table, have, actions, seed = case
    p: Picker[str] = Picker(n, have=have, rng=random.Random(seed))
    held = {h: set(cs) for h, cs in table.items()}
    for h, cs in table.items():
        p.add_holder(h, cs)
    for holder, action in actions:
        before = p.in_flight()
        if action == "pick":
            chunk = p.pick(holder)
            if chunk is None:
                # nothing it has is both missing and unrequested (the memo of failed picks never hides one)
                assert all(c in p.have or c in before for c in held.get(holder, set()))
                continue
            assert chunk in held.get(holder, set())
            assert chunk not in p.have and chunk not in have
            assert holder not in before.get(chunk, set())
            if chunk in before:  # a duplicate only in the end game: every missing chunk in flight,
                assert all(c in before for c in p.missing())  # (those no holder has too)
                assert not any(holder in hs for hs in before.values())  # and the holder idle
            assert len(p.in_flight()[chunk]) <= MAX_REQUESTS_PER_CHUNK
        elif action == "done" and before:
            chunk = min(before)
            assert p.completed(chunk) is True
            assert chunk not in p.in_flight()
        elif action == "fail" and before:
            chunk = min(before)
            who = min(before[chunk])
            p.failed(chunk, who)
            held[who].discard(chunk)
            assert who not in p.in_flight().get(chunk, set())
        elif action == "leave" and holder in held:
            returned = p.remove_holder(holder)
            assert sorted(returned) == sorted(c for c, hs in before.items() if holder in hs)
            del held[holder]
        elif action == "seed":  # the holder now has every chunk, told as one run (the bulk path)
            assert p.add_holder_runs(holder, [(0, n)]) == n - len(held.get(holder, set()))
            held[holder] = set(range(n))
        for c in range(n):
            assert p.availability(c) == sum(c in cs for cs in held.values())
        assert p.unavailable() == sorted(c for c in range(n) if c not in p.have and p.availability(c) == 0)
        for h, cs in held.items():
            assert p.needed(h) == len(cs - set(p.have))
            assert p.chunks_of(h) == cs
        # every missing chunk not in flight is pickable at its availability (the buckets stay exact)
        flying = p.in_flight()
        for c in p.missing():
            assert (c in flying) is (c not in p._buckets.get(p.availability(c), IndexedSet()))


# -- preference for fast holders, with windows from window.py ---------------------------------------------
CHUNK_SIZE = 1024 * 1024
STEP_SECONDS = 0.1


def simulate(seed: int, chunk_count: int = 60) -> tuple[Counter[str], dict[str, int]]:
    """Two holders with every chunk: A delivers one chunk per step, B one per five. Each keeps
    `request_window(throughput)` requests outstanding (`initial_window(rtt)` before the first delivery).
    Returns chunks won per holder, and the most requests each had outstanding once its throughput was known."""
    period = {"A": 1, "B": 5}
    rtt = {"A": 0.010, "B": 0.050}
    p = picker(chunk_count, {h: list(range(chunk_count)) for h in period}, seed)
    queue: dict[str, deque[int]] = {h: deque() for h in period}
    meter = {h: ThroughputMeter() for h in period}
    due: dict[str, int | None] = {h: None for h in period}
    won: Counter[str] = Counter()
    most_outstanding = {h: 0 for h in period}
    step = 0
    while not p.complete:
        now = step * STEP_SECONDS
        for h, every in period.items():  # deliveries
            if queue[h] and due[h] == step:
                chunk = queue[h].popleft()
                meter[h].delivered(CHUNK_SIZE, now)
                if p.completed(chunk):
                    won[h] += 1
                    for other in period:  # cancel the losing end-game copy
                        if other != h and chunk in queue[other]:
                            queue[other].remove(chunk)
                            p.cancelled(chunk, other)
                if queue[h]:
                    due[h] = step + every
                else:
                    meter[h].idle()
                    due[h] = None
        for h, every in period.items():  # keep each window full
            if not queue[h]:
                due[h] = None
            rate = meter[h].rate
            if rate is None:
                window = initial_window(rtt[h], min(rtt.values()))
            else:
                window = request_window(rate, CHUNK_SIZE)
            while len(queue[h]) < window and (picked := p.pick(h)) is not None:
                if not queue[h]:
                    meter[h].start(now)
                    due[h] = step + every
                queue[h].append(picked)
            if rate is not None:
                most_outstanding[h] = max(most_outstanding[h], len(queue[h]))
        step += 1
        assert step < 10 * chunk_count, "simulation does not finish"
    return won, most_outstanding


@pytest.mark.parametrize("seed", range(5))
def test_fast_holder_gets_most_chunks_and_slow_holder_is_not_starved(seed: int) -> None:
    won, most_outstanding = simulate(seed)
    assert won["A"] + won["B"] == 60
    assert won["A"] >= 3 * won["B"]  # A is five times as fast
    assert won["B"] >= 1  # B still contributes
    # the windows are what does it: the slow holder never hoards, the fast one keeps several in flight
    assert most_outstanding["B"] <= 1
    assert most_outstanding["A"] >= 3


def test_simulation_is_deterministic() -> None:
    assert simulate(3) == simulate(3)


# -- IndexedSet -------------------------------------------------------------------------------------------
def test_indexed_set() -> None:
    s = IndexedSet()
    for i in (5, 1, 9, 1):
        s.add(i)
    assert len(s) == 3 and s.as_set() == {1, 5, 9}
    s.discard(5)
    s.discard(42)
    assert sorted(s) == [1, 9] and 5 not in s and 9 in s
    rng = random.Random(0)
    assert {s.choice(rng) for _ in range(50)} == {1, 9}


# -- availability from runs and bitmaps ---------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.dictionaries(
                st.sampled_from("ABCD"),
                st.lists(st.tuples(st.integers(-2, n + 2), st.integers(-2, n + 2)), max_size=4),
                min_size=1,
            ),
            st.integers(0, 2**32),
        )
    )
)
def test_runs_give_the_same_availability_and_picks_as_lists(
    case: tuple[int, dict[str, list[tuple[int, int]]], int],
) -> None:
    n, table, seed = case
    by_runs: Picker[str] = Picker(n, rng=random.Random(seed))
    by_lists: Picker[str] = Picker(n, rng=random.Random(seed))
    for holder, runs in table.items():
        numbers = [c for first, end in runs for c in range(first, end)]
        assert by_runs.add_holder_runs(holder, runs) == len(by_lists.add_holder(holder, numbers))
    assert [by_runs.availability(c) for c in range(n)] == [by_lists.availability(c) for c in range(n)]
    for holder in table:
        assert by_runs.chunks_of(holder) == set(by_lists.chunks_of(holder) or ())
        # (as many chunks; the order may differ: ties are broken at random over a differently built bucket,
        # and so may the one end-game copy a holder with nothing else to give is handed)
        got, expected = drain(by_runs, holder), drain(by_lists, holder)
        assert len(got) == len(expected) and set(got) <= set(by_lists.chunks_of(holder) or ())


def test_a_seeder_joining_and_leaving_in_bulk_is_the_same_as_chunk_by_chunk() -> None:
    def state(p: Picker[str]) -> tuple[list[int], dict[int, list[int]], dict[int, set[str]]]:
        buckets = {a: sorted(b) for a, b in p._buckets.items() if len(b)}
        return [p.availability(c) for c in range(p.chunk_count)], buckets, p.in_flight()

    for partial in ([], [1, 2, 3, 4, 5], list(range(10))):
        bulk = picker(10, {"A": list(range(10))}, seed=1, have=[7])
        one_by_one = picker(10, {"A": list(range(10))}, seed=1, have=[7])
        for p in (bulk, one_by_one):
            p.add_holder("P", partial)
            p.pick("A")
        bulk.add_holder_runs("S", [(0, 10)])
        one_by_one.add_holder("S", [c for c in range(10) if c % 2] + [c for c in range(10) if not c % 2])
        assert state(bulk) == state(one_by_one)
        bulk.remove_holder("S")
        one_by_one.failed(0, "S")  # (no longer a seeder: removed chunk by chunk)
        one_by_one.remove_holder("S")
        assert state(bulk) == state(one_by_one)


def test_needed_counts_what_a_holder_has_that_we_lack() -> None:
    p = picker(6, {"A": [0, 1, 2], "B": list(range(6))}, have=[0])
    assert (p.needed("A"), p.needed("B"), p.needed("nobody")) == (2, 5, 0)
    for chunk in (1, 2):
        p.completed(chunk)
    assert (p.needed("A"), p.needed("B")) == (0, 3)  # A has nothing left for us
    p.failed(5, "B")
    assert p.needed("B") == 2 and p.chunks_of("B") == {0, 1, 2, 3, 4}
    assert p.wanted(ChunkSet.from_numbers(6, [0, 1, 4, 5])) == 2
    assert p.coverage() == {0, 1, 2, 3, 4}


def test_32_holders_of_the_largest_file_cost_a_bitmap_each_not_a_set_of_ints() -> None:
    """2^18 chunks x 32 holders as sets of ints would be ~500 MB; as bitmaps it is 32 KiB a holder."""
    import tracemalloc

    chunks = 1 << 18
    half = [(c, c + 1) for c in range(0, chunks, 64)]  # a partial holder: one chunk in 64
    tracemalloc.start()
    try:
        p: Picker[int] = Picker(chunks, rng=random.Random(0))
        p.add_holder_runs(0, [(0, chunks)])
        before = tracemalloc.get_traced_memory()[0]
        for holder in range(1, 31):
            p.add_holder_runs(holder, [(0, chunks)])  # seeders
        p.add_holder_runs(31, half)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 31 * (chunks // 8) + (1 << 20), f"{grown} bytes for 31 more holders"
    assert p.availability(0) == 32 and p.availability(1) == 31


# -- which holders to connect -----------------------------------------------------------------------------
def test_candidates_with_nothing_we_need_are_never_chosen() -> None:
    rng = random.Random(0)
    assert rank_candidates([Candidate("A", 0), Candidate("B", 3), Candidate("C", 0, rate=1e9)], rng) == ["B"]


def test_candidates_are_ranked_unique_chunks_then_throughput_then_rtt_then_unknown() -> None:
    candidates = [
        Candidate("unknown", 50),
        Candidate("slow-rtt", 5, rtt=0.2),
        Candidate("fast-rtt", 5, rtt=0.01),
        Candidate("measured-slow", 5, rate=1e6, rtt=0.01),
        Candidate("measured-fast", 5, rate=1e8, rtt=0.3),
        Candidate("only-source", 1, unique=1),
    ]
    for seed in range(10):
        ranked = rank_candidates(random.Random(seed).sample(candidates, len(candidates)), random.Random(seed))
        assert ranked == ["only-source", "measured-fast", "measured-slow", "fast-rtt", "slow-rtt", "unknown"]


def test_equal_candidates_are_ranked_at_random() -> None:
    """Downloaders of one swarm with the same view must not all crowd the same holders."""
    candidates = [Candidate(f"H{i}", 10) for i in range(8)]
    firsts = Counter(rank_candidates(candidates, random.Random(seed))[0] for seed in range(400))
    assert set(firsts) == {c.holder for c in candidates}
    assert min(firsts.values()) >= 20  # ~50 each


def test_free_slots_go_to_the_best_candidates_first() -> None:
    rng = random.Random(0)
    candidates = [Candidate(f"H{i}", 10, rate=float(i)) for i in range(40)]
    close, connect = choose_holders(32, [], candidates, rng)
    assert close == [] and connect == [f"H{i}" for i in range(39, 7, -1)]
    assert choose_holders(0, [], candidates, rng) == ([], [])
    assert choose_holders(-3, [], candidates, rng) == ([], [])  # (more connected than the cap: none)


def test_idle_holders_are_closed_only_to_make_room_for_a_candidate_that_has_something() -> None:
    rng = random.Random(0)
    idle = ["I1", "I2", "I3"]
    assert choose_holders(0, idle, [Candidate("A", 4), Candidate("B", 0)], rng) == (["I1"], ["A"])
    assert choose_holders(0, idle, [Candidate("B", 0)], rng) == ([], [])
    assert choose_holders(1, idle, [Candidate("A", 4)], rng) == ([], ["A"])  # a free slot first
    close, connect = choose_holders(1, idle, [Candidate(x, 1) for x in "ABCDE"], rng)
    assert len(connect) == 4 and close == idle  # one free slot and three idle ones


# -- a fetch that grows (the mount): want, skip, urgent ---------------------------------------------
def test_wanted_chunks_become_pickable_and_urgent_ones_come_first() -> None:
    picker: Picker[str] = Picker(8, have=range(8), rng=random.Random(1))
    picker.add_holder("a", range(8))
    assert picker.complete and picker.pick("a") is None and picker.needed("a") == 0
    assert picker.want([5, 6, 7]) == [5, 6, 7]
    assert not picker.complete and picker.needed("a") == 3
    picker.want([2], urgent=True)
    assert picker.pick("a") == 2  # before the others, whatever their availability
    assert picker.pick("a") in {5, 6, 7}
    picker.want([6], urgent=True)  # already missing: made urgent
    picks = {picker.pick("a"), picker.pick("a")}
    assert None not in picks and 6 in picks | {c for c in picker.in_flight()}


def test_skipped_chunks_are_no_longer_wanted_unless_in_flight() -> None:
    picker: Picker[str] = Picker(4, have=[0, 1, 2, 3])
    picker.add_holder("a", [0, 1])
    picker.want([0, 1, 2])
    assert picker.needed("a") == 2
    chunk = picker.pick("a")
    assert chunk in (0, 1)
    assert sorted(picker.skip([0, 1, 2])) == sorted({0, 1, 2} - {chunk})
    assert picker.needed("a") == 1  # only the chunk in flight is still wanted
    assert picker.completed(chunk)  # type: ignore[arg-type]
    assert picker.complete
