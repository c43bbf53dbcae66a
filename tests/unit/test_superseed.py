"""Super-seeding bookkeeping without sockets: every chunk leaves once before any leaves twice."""

from __future__ import annotations

import random

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
