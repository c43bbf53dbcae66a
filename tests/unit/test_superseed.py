"""Super-seeding bookkeeping without sockets: every chunk leaves once before any leaves twice."""

from __future__ import annotations

import random

from p2pfs.peer import superseed
from p2pfs.peer.superseed import SuperSeeder


def test_a_chunk_already_sent_elsewhere_is_replaced_by_an_unsent_one() -> None:
    s = SuperSeeder(random.Random(1))
    assert s.choose("f", 4, 0, requester=1) == 0
    other = s.choose("f", 4, 0, requester=2)  # chunk 0 went to connection 1: send something new
    assert other in (1, 2, 3)
    assert s.substituted == 1
    assert s.unsent("f", 4) == 2


def test_every_chunk_is_sent_once_before_any_twice() -> None:
    s = SuperSeeder(random.Random(2))
    count = 50
    rng = random.Random(3)
    sent = [s.choose("f", count, rng.randrange(count), requester=i + 1) for i in range(count)]
    assert sorted(sent) == list(range(count))  # 50 requests, many colliding: 50 different chunks
    assert s.unsent("f", count) == 0
    assert s.choose("f", count, 7, requester=5) == 7  # all sent once: answered as asked


def test_a_requester_asking_again_gets_what_it_asked_for() -> None:
    s = SuperSeeder()
    assert s.choose("f", 3, 1, requester=4) == 1
    assert s.choose("f", 3, 1, requester=4) == 1  # it lost it (a broken transfer): send it again
    assert s.substituted == 0


def test_files_are_independent_and_forget_starts_over() -> None:
    s = SuperSeeder(random.Random(0))
    assert s.choose("a", 2, 0, requester=1) == 0
    assert s.choose("b", 2, 0, requester=2) == 0  # another file: chunk 0 of "b" was never sent
    assert s.choose("a", 2, 0, requester=2) == 1
    s.forget("a")
    assert s.unsent("a", 2) == 2
    assert s.choose("a", 2, 0, requester=2) == 0
    assert s.choose("a", 2, 5, requester=2) == 5  # out of range: left to the server to refuse


def test_a_chunk_sent_as_asked_is_never_substituted_later() -> None:
    # A collection's manifest chunks are fetched without `substitute`; a later request that allows one
    # must not be answered with them (the requester has them: four such replies drop the holder).
    seeder = SuperSeeder(random.Random(1))
    for chunk in range(3):
        seeder.sent("c", 10, chunk, requester=1)
    seeder.choose("c", 10, 5, requester=2)  # chunk 5 leaves
    substitutes = {seeder.choose("c", 10, 5, requester=1) for _ in range(6)}
    assert substitutes.isdisjoint({0, 1, 2})


# -- BEP 16's rule: a requester whose new chunks reach no other holder is held off ----------------------
def test_a_requester_whose_chunks_are_nowhere_else_is_held_off_until_one_is_seen_elsewhere() -> None:
    s = SuperSeeder(random.Random(1))
    s.watch("f")
    limit = max(superseed.MAX_UNSPREAD, -(-superseed.UNSPREAD_BUDGET // 2))
    given = [s.choose("f", 100, c, requester=1) for c in range(limit)]
    assert s.choose("f", 100, 50, requester=2) == 50  # (a second requester: somebody to forward to)
    assert s.choose("f", 100, limit, requester=1) is None and s.held_off == 1
    first = given[0]
    assert first is not None
    s.seen("f", 100, "10.0.0.1:1", [first])  # at the requester itself: not elsewhere yet
    assert s.choose("f", 100, limit, requester=1) is None
    s.seen("f", 100, "10.0.0.2:1", [first])  # at a second holder: spread
    assert s.choose("f", 100, limit, requester=1) == limit
    assert s.choose("f", 100, first, requester=1) == first  # (asking again for its own: as asked)


def test_the_hold_off_ends_after_the_timeout_or_with_the_connection() -> None:
    s = SuperSeeder(random.Random(2))
    s.watch("f")
    s.choose("f", 100, 99, requester=2, now=0.0)
    for c in range(20):
        if s.choose("f", 100, c, requester=1, now=0.0) is None:
            break
    assert s.choose("f", 100, 30, requester=1, now=1.0) is None
    assert s.choose("f", 100, 30, requester=1, now=superseed.UNSPREAD_TIMEOUT) == 30
    s.closed(2)  # the only other requester is gone: nobody to forward to, nothing held off
    assert all(s.choose("f", 100, c, requester=1, now=6.0) is not None for c in range(40, 60))


def test_no_hold_off_for_a_lone_requester_or_an_unwatched_file() -> None:
    s = SuperSeeder(random.Random(3))
    s.watch("w")
    assert all(s.choose("w", 50, c, requester=1) == c for c in range(50))  # (alone: everything)
    assert all(s.choose("u", 50, c, requester=1 + c % 2) is not None for c in range(50))  # (not watched)
    assert s.held_off == 0


def test_forget_stops_watching() -> None:
    s = SuperSeeder(random.Random(4))
    s.watch("f")
    s.forget("f")
    assert all(s.choose("f", 50, c, requester=1 + c % 2) is not None for c in range(50))
