"""ChunkSet against a plain set of ints: every operation, runs clipped to the file, and what it costs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.chunkset import ChunkSet
from p2pfs.tracker.registry import ChunkSet as RegistryChunkSet

Op = tuple[str, int, int]


def runs_of(numbers: set[int]) -> list[tuple[int, int]]:
    """Maximal runs [first, end) of `numbers`, computed the plain way."""
    runs: list[tuple[int, int]] = []
    for number in sorted(numbers):
        if runs and runs[-1][1] == number:
            runs[-1] = (runs[-1][0], number + 1)
        else:
            runs.append((number, number + 1))
    return runs


def test_the_registry_still_exports_the_same_class() -> None:
    assert RegistryChunkSet is ChunkSet


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 70).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(
                    st.sampled_from(["add", "discard", "runs", "update"]),
                    st.integers(-3, n + 3),
                    st.integers(-3, n + 20),
                ),
                max_size=30,
            ),
        )
    )
)
def test_chunk_set_behaves_like_a_set(case: tuple[int, list[Op]]) -> None:
    size, ops = case
    chunks = ChunkSet(size)
    model: set[int] = set()
    for op, a, b in ops:
        if op == "add" and 0 <= a < size:
            assert chunks.add(a) is (a not in model)
            model.add(a)
        elif op == "discard":
            assert chunks.discard(a) is (a in model)
            model.discard(a)
        elif op == "runs":
            chunks.add_runs([(a, b), (b, a)])  # (one of the two is empty, or both)
            model |= set(range(max(a, 0), min(b, size))) | set(range(max(b, 0), min(a, size)))
        elif op == "update":
            other = ChunkSet.from_numbers(size, range(a, b, 3))
            gained = chunks.update(other)
            wanted = {c for c in range(a, b, 3) if 0 <= c < size}
            assert gained == wanted - model
            model |= wanted
        assert len(chunks) == len(model)
        assert chunks == model
        assert chunks.numbers() == sorted(model) == list(chunks)
        assert chunks.runs() == runs_of(model)
    other = ChunkSet.from_numbers(size, range(0, size, 2))
    evens = set(range(0, size, 2))
    assert chunks.count_not_in(other) == len(model - evens)
    assert chunks.difference(other) == model - evens
    assert chunks.union_of([other]) == model | evens
    assert chunks.complement() == set(range(size)) - model
    assert chunks.copy() == chunks and chunks.copy() is not chunks
    assert all(c not in chunks for c in (-1, size, "x"))


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 17, 1000])
def test_add_runs_matches_adding_each_chunk(size: int) -> None:
    for first, end in itertools.product(range(-2, size + 3, max(1, size // 7)), repeat=2):
        by_runs = ChunkSet.from_runs(size, [(first, end)])
        assert by_runs == set(range(max(first, 0), min(end, size)))
        assert len(by_runs) == len(set(range(max(first, 0), min(end, size))))


def test_a_run_over_the_whole_file_is_the_full_set() -> None:
    size = 1 << 18
    whole = ChunkSet.from_runs(size, [(0, size)])
    assert whole == ChunkSet(size, full=True) and len(whole) == size
    assert whole.runs() == [(0, size)]
    assert ChunkSet.from_runs(size, [(0, 10 * size)]) == whole  # clipped to the file


def test_memo_is_dropped_by_every_change() -> None:
    chunks = ChunkSet(64)
    calls: list[int] = []

    def make(cs: ChunkSet) -> int:
        calls.append(1)
        return len(cs)

    changes = [
        lambda: chunks.add(1),
        lambda: chunks.discard(1),
        lambda: chunks.add_runs([(3, 9)]),
        lambda: chunks.update(ChunkSet.from_numbers(64, [40])),
    ]
    for change in changes:
        before = chunks.memo("n", make)
        assert chunks.memo("n", make) == before  # (kept while nothing changes)
        change()
        assert chunks.memo("n", make) != before
    assert len(calls) == 1 + len(changes)
    chunks.memo("n", make)
    chunks.add_runs([(3, 9)])  # nothing new... the memo may be recomputed, but must stay right
    chunks.discard(63)  # not there: no change
    assert chunks.memo("n", make) == len(chunks)


def test_sets_of_different_sizes_compare_by_content() -> None:
    assert ChunkSet.from_numbers(7, [0, 3]) == ChunkSet.from_numbers(8, [0, 3])
    assert ChunkSet.from_numbers(8, [0, 3]) != ChunkSet.from_numbers(8, [0, 4])
