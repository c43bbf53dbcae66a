"""The chunk picker: which chunk to ask which holder for next. Pure bookkeeping over availability counts.

Policy (libtorrent's, simplified):
- rarest first: among the chunks a holder can give that nobody is fetching yet, take one with the fewest
  live holders; ties are broken at random, so downloaders of one swarm fetch different chunks;
- end game: once every chunk any holder can give is requested (only chunks in flight are missing), an
  idle holder may duplicate a chunk already in flight from another holder (at most
  MAX_REQUESTS_PER_CHUNK in total) so a slow holder cannot hold the last chunks hostage; the first copy
  to arrive wins. Before that, a holder with nothing unrequested to give stays idle: duplicates in mid
  download would spend upload capacity the swarm needs (a quarter of it, measured in `make swarm`);
- a holder that fails a chunk (error, wrong digest) is no longer counted as having it.

How many requests each holder gets is `window.request_window`'s business; this module never sees a
clock, a socket or a disk.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)

#: A chunk is requested from at most this many holders at once (only in the end game is it more than 1).
MAX_REQUESTS_PER_CHUNK = 2

#: Random probes into a bucket before falling back to a set intersection, for holders with few chunks.
_PROBES = 8


class IndexedSet:
    """A set of ints with O(1) add, discard and uniform random choice."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._pos: dict[int, int] = {}

    def add(self, item: int) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: int) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def choice(self, rng: random.Random) -> int:
        return self._items[rng.randrange(len(self._items))]

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def as_set(self) -> set[int]:
        return set(self._pos)


class Picker(Generic[H]):
    """Availability of one file's chunks across its holders, and which chunks are held or in flight."""

    def __init__(self, chunk_count: int, have: Iterable[int] = (), rng: random.Random | None = None) -> None:
        self.chunk_count = chunk_count
        self.rng = rng or random.Random()
        self.have: set[int] = set(have)
        self._availability = [0] * chunk_count
        self._holders: dict[H, set[int]] = {}
        #: chunks in flight -> the holders they are requested from
        self._requested: dict[int, set[H]] = {}
        #: pickable chunks (missing, not in flight) by availability; bucket 0 = no live holder
        self._buckets: dict[int, IndexedSet] = {0: IndexedSet()}
        for chunk in range(chunk_count):
            if chunk not in self.have:
                self._buckets[0].add(chunk)

    # -- state queries ------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return len(self.have) >= self.chunk_count

    @property
    def holders(self) -> list[H]:
        return list(self._holders)

    def availability(self, chunk: int) -> int:
        return self._availability[chunk]

    def missing(self) -> list[int]:
        return [c for c in range(self.chunk_count) if c not in self.have]

    def in_flight(self) -> dict[int, set[H]]:
        return {c: set(hs) for c, hs in self._requested.items()}

    def unavailable(self) -> list[int]:
        """Missing chunks that no live holder has (the download cannot finish without new holders)."""
        return sorted(c for c in range(self.chunk_count) if c not in self.have and self._availability[c] == 0)

    def has_work(self, holder: H) -> bool:
        """Whether `holder` has a missing chunk that is not already in flight from it."""
        chunks = self._holders.get(holder, set())
        return any(c not in self.have and holder not in self._requested.get(c, ()) for c in chunks)

    def can_progress(self) -> bool:
        """Something is in flight, or some live holder has a missing chunk."""
        if self._requested:
            return True
        return any(len(bucket) for avail, bucket in self._buckets.items() if avail > 0)

    # -- holders -------------------------------------------------------------------------------
    def add_holder(self, holder: H, chunks: Iterable[int]) -> list[int]:
        """A holder appears or announces more chunks; returns the chunks that are new for it."""
        held = self._holders.setdefault(holder, set())
        gained = [c for c in chunks if 0 <= c < self.chunk_count and c not in held]
        for chunk in gained:
            held.add(chunk)
            self._set_availability(chunk, self._availability[chunk] + 1)
        return gained

    def remove_holder(self, holder: H) -> list[int]:
        """A holder is gone; its in-flight chunks return to the pool (and are returned)."""
        held = self._holders.pop(holder, set())
        for chunk in held:
            self._set_availability(chunk, self._availability[chunk] - 1)
        returned = [c for c, hs in self._requested.items() if holder in hs]
        for chunk in returned:
            self._unrequest(chunk, holder)
        return returned

    # -- the picking ---------------------------------------------------------------------------
    def pick(self, holder: H) -> int | None:
        """The next chunk to request from `holder`, marked as in flight; None if it has nothing to give."""
        held = self._holders.get(holder)
        if not held:
            return None
        unrequested = sorted(a for a, b in self._buckets.items() if a > 0 and len(b))
        for avail in unrequested:
            chunk = self._choose(self._buckets[avail], held)
            if chunk is not None:
                self._buckets[avail].discard(chunk)
                self._requested[chunk] = {holder}
                return chunk
        if unrequested:
            return None  # other holders have chunks nobody fetches yet: not the end game, no duplicates
        return self._end_game(holder, held)

    def _choose(self, bucket: IndexedSet, held: set[int]) -> int | None:
        if len(held) >= self.chunk_count:  # a seeder: any chunk of the bucket
            return bucket.choice(self.rng)
        for _ in range(min(_PROBES, len(bucket))):
            chunk = bucket.choice(self.rng)
            if chunk in held:
                return chunk
        candidates = bucket.as_set() & held if len(bucket) < len(held) else {c for c in held if c in bucket}
        if not candidates:
            return None
        return self.rng.choice(sorted(candidates))

    def _end_game(self, holder: H, held: set[int]) -> int | None:
        best: int | None = None
        best_count = MAX_REQUESTS_PER_CHUNK
        for chunk, requesters in self._requested.items():
            if holder not in requesters and chunk in held and len(requesters) < best_count:
                best, best_count = chunk, len(requesters)
        if best is not None:
            self._requested[best].add(holder)
        return best

    # -- outcomes ------------------------------------------------------------------------------
    def completed(self, chunk: int) -> bool:
        """A verified copy of `chunk` is stored; False if we already had it (a duplicate)."""
        if chunk in self.have:
            return False
        self.have.add(chunk)
        self._requested.pop(chunk, None)
        self._bucket(self._availability[chunk]).discard(chunk)
        return True

    def failed(self, chunk: int, holder: H) -> None:
        """`holder` did not deliver a good `chunk` (error reply, wrong digest): stop counting on it for it."""
        held = self._holders.get(holder)
        if held is not None and chunk in held:
            held.discard(chunk)
            self._set_availability(chunk, self._availability[chunk] - 1)
        self._unrequest(chunk, holder)

    def cancelled(self, chunk: int, holder: H) -> None:
        """A request that will not be answered, through no fault of the chunk (e.g. a duplicate)."""
        self._unrequest(chunk, holder)

    def _unrequest(self, chunk: int, holder: H) -> None:
        requesters = self._requested.get(chunk)
        if requesters is None:
            return
        requesters.discard(holder)
        if not requesters:
            del self._requested[chunk]
            if chunk not in self.have:
                self._bucket(self._availability[chunk]).add(chunk)

    def _set_availability(self, chunk: int, value: int) -> None:
        old = self._availability[chunk]
        self._availability[chunk] = value
        if chunk in self.have or chunk in self._requested:
            return
        self._bucket(old).discard(chunk)
        self._bucket(value).add(chunk)

    def _bucket(self, avail: int) -> IndexedSet:
        bucket = self._buckets.get(avail)
        if bucket is None:
            bucket = self._buckets[avail] = IndexedSet()
        return bucket
