"""The chunk picker: which chunk to ask which holder for next. Pure bookkeeping over availability counts.

Policy (libtorrent's, simplified):
- rarest first: among the chunks a holder can give that nobody is fetching yet, take one with the fewest
  live holders; ties are broken at random, so downloaders of one swarm fetch different chunks;
- end game: once every missing chunk is requested (only chunks in flight are missing), a holder with
  nothing in flight may duplicate one chunk in flight from another holder (at most
  MAX_REQUESTS_PER_CHUNK in total, one copy at a time per holder: libtorrent's strict end game) so a
  slow holder cannot hold the last chunks hostage; the first copy to arrive wins. Before that, a holder with nothing unrequested to give stays idle: duplicates in mid
  download would spend upload capacity the swarm needs (a quarter of it, measured in `make swarm`);
- a holder that fails a chunk (error, wrong digest) is no longer counted as having it.

Availability is kept as one ChunkSet (a bitmap) per holder, so many holders of a huge file cost 32 KiB
each, not a set of ints each; a holder's chunks can be added as runs without listing them.

Which of more holders than a download connects to at once to connect first is `choose_holders`'s
business (pure too). How many requests each holder gets is `window.request_window`'s business; this
module never sees a clock, a socket or a disk.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from p2pfs.chunkset import ChunkSet

H = TypeVar("H", bound=Hashable)

#: A chunk is requested from at most this many holders at once (only in the end game is it more than 1).
MAX_REQUESTS_PER_CHUNK = 2

#: Random probes into a bucket before falling back to a set intersection, for holders with few chunks.
_PROBES = 8


class IndexedSet:
    """A set of ints with O(1) add, discard and uniform random choice."""

    __slots__ = ("_items", "_pos")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self._items: list[int] = list(dict.fromkeys(items))
        self._pos: dict[int, int] = dict(zip(self._items, range(len(self._items)), strict=True))

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
        self.have = ChunkSet.from_numbers(chunk_count, have)
        self._availability = [0] * chunk_count
        self._holders: dict[H, ChunkSet] = {}
        #: how many chunks each holder has that we do not (0: it has nothing left for us)
        self._needed: dict[H, int] = {}
        #: chunks in flight -> the holders they are requested from
        self._requested: dict[int, set[H]] = {}
        #: pickable chunks (missing, not in flight) by availability; bucket 0 = no live holder
        self._buckets: dict[int, IndexedSet] = {0: IndexedSet(self.have.complement().numbers())}
        #: missing chunks somebody waits for now (a read of a mount): picked before any other
        self._urgent: set[int] = set()
        #: holders whose last pick found nothing unrequested: their next pick returns None at once until
        #: one of their chunks is pickable again (back from flight, wanted again, newly announced). A
        #: downloader asks its idle holders again after every event, and most of those picks fail.
        self._nothing: set[H] = set()

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
        return self.have.complement().numbers()

    def in_flight(self) -> dict[int, set[H]]:
        return {c: set(hs) for c, hs in self._requested.items()}

    def unavailable(self) -> list[int]:
        """Missing chunks that no live holder has (the download cannot finish without new holders)."""
        return sorted(c for c in self.missing() if self._availability[c] == 0)

    def has_work(self, holder: H) -> bool:
        """Whether `holder` has a missing chunk that is not already in flight from it."""
        chunks = self._holders.get(holder)
        if chunks is None:
            return False
        return any(c not in self.have and holder not in self._requested.get(c, ()) for c in chunks)

    def can_progress(self) -> bool:
        """Something is in flight, or some live holder has a missing chunk."""
        if self._requested:
            return True
        return any(len(bucket) for avail, bucket in self._buckets.items() if avail > 0)

    def chunks_of(self, holder: H) -> ChunkSet | None:
        """The chunks `holder` is counted as having (None: not a holder)."""
        return self._holders.get(holder)

    def needed(self, holder: H) -> int:
        """How many chunks `holder` has that we do not (0: nothing left for us, whatever is in flight)."""
        return self._needed.get(holder, 0)

    def wanted(self, chunks: ChunkSet) -> int:
        """How many of `chunks` (say, of a holder not added) we do not have."""
        return chunks.count_not_in(self.have)

    def coverage(self) -> ChunkSet:
        """The chunks we have or some holder has (a bitmap union: no per-chunk work)."""
        return self.have.union_of(self._holders.values())

    # -- holders -------------------------------------------------------------------------------
    def add_holder(self, holder: H, chunks: Iterable[int]) -> list[int]:
        """A holder appears or announces more chunks; returns the chunks that are new for it."""
        held = self._held(holder)
        count = self.chunk_count
        gained = [c for c in chunks if 0 <= c < count and held.add(c)]
        self._gained(holder, gained, sum(1 for c in gained if c not in self.have))
        return gained

    def add_holder_runs(self, holder: H, runs: Iterable[tuple[int, int]]) -> int:
        """`add_holder` for chunks given as runs [first, end) (clipped to the file); returns how many
        chunks are new for the holder, without listing them."""
        return self.add_holder_set(holder, ChunkSet.from_runs(self.chunk_count, runs))

    def add_holder_set(self, holder: H, chunks: ChunkSet) -> int:
        """`add_holder` for a ChunkSet of this file's size; returns how many chunks are new for the holder."""
        gained = self._held(holder).update(chunks)
        count = len(gained)
        if count == self.chunk_count:  # (a seeder: availability moves in bulk when it can)
            self._gained(holder, range(count), count - len(self.have), everything=True)
        elif count:
            self._gained(holder, gained.numbers(), gained.count_not_in(self.have))
        return count

    def _held(self, holder: H) -> ChunkSet:
        held = self._holders.get(holder)
        if held is None:
            held = self._holders[holder] = ChunkSet(self.chunk_count)
            self._needed[holder] = 0
        return held

    def _gained(self, holder: H, gained: Iterable[int], needed: int, everything: bool = False) -> None:
        """Count `holder` in the availability of the chunks it `gained` (`everything`: all of them)."""
        if not (everything and self._shift_all(+1)):
            availability = self._availability
            for chunk in gained:
                self._set_availability(chunk, availability[chunk] + 1)
        self._needed[holder] += needed
        self._nothing.discard(holder)

    def _shift_all(self, step: int) -> bool:
        """A seeder joins (+1) or leaves (-1): if every pickable chunk has the same availability, move
        them all at once (one bucket relabelled, one list pass) instead of chunk by chunk; False if not."""
        filled = [avail for avail, bucket in self._buckets.items() if len(bucket)]
        if len(filled) > 1 or (filled and filled[0] + step < 0):
            return False
        self._availability = [a + step for a in self._availability]
        self._nothing.clear()
        if filled:
            avail = filled[0]
            moved = self._buckets.pop(avail)
            self._buckets.pop(avail + step, None)  # (empty)
            self._buckets[avail + step] = moved
            self._buckets.setdefault(0, IndexedSet())
        return True

    def remove_holder(self, holder: H) -> list[int]:
        """A holder is gone; its in-flight chunks return to the pool (and are returned)."""
        held = self._holders.pop(holder, None)
        self._needed.pop(holder, None)
        self._nothing.discard(holder)
        if held is not None and not (len(held) == self.chunk_count and self._shift_all(-1)):
            availability = self._availability
            for chunk in held:
                self._set_availability(chunk, availability[chunk] - 1)
        returned = [c for c, hs in self._requested.items() if holder in hs]
        for chunk in returned:
            self._unrequest(chunk, holder)
        return returned

    # -- what is wanted (a fetch of some chunks that grows: a mount) -----------------------------
    def want(self, chunks: Iterable[int], urgent: bool = False) -> list[int]:
        """Chunks counted as had (the ones a fetch of some chunks skips) become missing, to be picked by
        availability like the others; `urgent`: before any other (also those already missing). Returns
        the chunks that became missing."""
        added: list[int] = []
        count = self.chunk_count
        for chunk in chunks:
            if not 0 <= chunk < count:
                continue
            if self.have.discard(chunk):
                added.append(chunk)
                self._bucket(self._availability[chunk]).add(chunk)
                self._pickable_again(chunk)
                if self._availability[chunk]:
                    for holder, held in self._holders.items():
                        if chunk in held:
                            self._needed[holder] += 1
            if urgent and chunk not in self.have:
                self._urgent.add(chunk)
        return added

    def skip(self, chunks: Iterable[int]) -> list[int]:
        """Missing chunks that are not in flight are no longer wanted (counted as had, as `want`'s
        reverse); returns those skipped."""
        skipped: list[int] = []
        for chunk in chunks:
            if not 0 <= chunk < self.chunk_count or chunk in self.have or chunk in self._requested:
                continue
            self.have.add(chunk)
            self._urgent.discard(chunk)
            self._bucket(self._availability[chunk]).discard(chunk)
            if self._availability[chunk]:
                for holder, held in self._holders.items():
                    if chunk in held:
                        self._needed[holder] -= 1
            skipped.append(chunk)
        return skipped

    # -- the picking ---------------------------------------------------------------------------
    def pick(self, holder: H) -> int | None:
        """The next chunk to request from `holder`, marked as in flight; None if it has nothing to give."""
        held = self._holders.get(holder)
        held_count = len(held) if held is not None else 0
        if not held_count:
            return None
        assert held is not None
        if self._urgent:
            for first in sorted(self._urgent):
                if first in self.have:
                    self._urgent.discard(first)
                elif first in held and first not in self._requested:
                    self._urgent.discard(first)
                    self._bucket(self._availability[first]).discard(first)
                    self._requested[first] = {holder}
                    return first
        if holder in self._nothing and self._unrequested_left():
            return None  # (nothing it has became pickable since its last pick found nothing)
        unrequested = sorted(a for a, b in self._buckets.items() if a > 0 and len(b))
        for avail in unrequested:
            chunk = self._choose(self._buckets[avail], held, held_count)
            if chunk is not None:
                self._buckets[avail].discard(chunk)
                self._requested[chunk] = {holder}
                return chunk
        if unrequested:
            self._nothing.add(holder)
            return None  # other holders have chunks nobody fetches yet: not the end game, no duplicates
        return self._end_game(holder, held)

    def _pickable_again(self, chunk: int) -> None:
        """`chunk` is pickable again: the holders that have it may be given something now."""
        if self._nothing:
            holders = self._holders
            self._nothing = {h for h in self._nothing if chunk not in holders[h]}

    def _unrequested_left(self) -> bool:
        """Some live holder has a missing chunk nobody fetches yet (so this is not the end game)."""
        return any(avail > 0 and len(bucket) for avail, bucket in self._buckets.items())

    def _choose(self, bucket: IndexedSet, held: ChunkSet, held_count: int) -> int | None:
        if held_count >= self.chunk_count:  # a seeder: any chunk of the bucket
            return bucket.choice(self.rng)
        for _ in range(min(_PROBES, len(bucket))):
            chunk = bucket.choice(self.rng)
            if chunk in held:
                return chunk
        if len(bucket) < held_count:
            candidates = [c for c in bucket if c in held]
        else:
            candidates = [c for c in held if c in bucket]
        if not candidates:
            return None
        return self.rng.choice(sorted(candidates))

    def _end_game(self, holder: H, held: ChunkSet) -> int | None:
        """A second request for a chunk in flight elsewhere, fewest requesters first, as libtorrent's
        strict end game: only once no missing chunk is left unrequested (none that no connected holder
        has either: a holder found for it later would otherwise find every one busy with copies), and
        only to a holder with nothing else in flight (one copy at a time, not a window of them)."""
        if len(self._buckets[0]):
            return None
        best: int | None = None
        best_count = MAX_REQUESTS_PER_CHUNK
        for chunk, requesters in self._requested.items():
            if holder in requesters:
                return None
            if chunk in held and len(requesters) < best_count:
                best, best_count = chunk, len(requesters)
        if best is not None:
            self._requested[best].add(holder)
        return best

    # -- outcomes ------------------------------------------------------------------------------
    def completed(self, chunk: int) -> bool:
        """A verified copy of `chunk` is stored; False if we already had it (a duplicate)."""
        if not 0 <= chunk < self.chunk_count or not self.have.add(chunk):
            return False
        self._urgent.discard(chunk)
        if self._requested.pop(chunk, None) is None:  # (a chunk in flight is in no bucket)
            self._bucket(self._availability[chunk]).discard(chunk)
        holding = self._availability[chunk]
        if holding:  # (a download has a few dozen holders at most: a short loop)
            needed = self._needed
            if holding == len(needed):  # every holder has it (the common case: seeders)
                for holder in needed:
                    needed[holder] -= 1
            else:
                for holder, held in self._holders.items():
                    if chunk in held:
                        needed[holder] -= 1
        return True

    def failed(self, chunk: int, holder: H) -> None:
        """`holder` did not deliver a good `chunk` (error reply, wrong digest): stop counting on it for it."""
        held = self._holders.get(holder)
        if held is not None and held.discard(chunk):
            self._set_availability(chunk, self._availability[chunk] - 1)
            if chunk not in self.have:
                self._needed[holder] -= 1
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
                self._pickable_again(chunk)

    def _set_availability(self, chunk: int, value: int) -> None:
        old = self._availability[chunk]
        self._availability[chunk] = value
        if chunk in self.have or chunk in self._requested:
            return
        self._bucket(old).discard(chunk)
        self._bucket(value).add(chunk)
        if old == 0 and value > 0:
            self._pickable_again(chunk)

    def _bucket(self, avail: int) -> IndexedSet:
        bucket = self._buckets.get(avail)
        if bucket is None:
            bucket = self._buckets[avail] = IndexedSet()
        return bucket


# -- which holders to connect ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate(Generic[H]):
    """A holder we know of but are not connected to, as `choose_holders` weighs it."""

    holder: H
    #: chunks it has that we do not
    needed: int
    #: of those, chunks no connected holder has (only it, or other candidates, can give them)
    unique: int = 0
    #: bytes/s it delivered, and its ping RTT, when we were connected to it before (None: never measured)
    rate: float | None = None
    rtt: float | None = None


def rank_candidates(candidates: Iterable[Candidate[H]], rng: random.Random) -> list[H]:
    """Candidates that have something we need, best first: those with chunks no connected holder has;
    then by what we measured of them: the fastest measured throughput, then the lowest RTT, then those
    never measured; then those with more chunks for us; ties at random, so the downloaders of a swarm
    do not all crowd the same holders."""

    def key(c: Candidate[H]) -> tuple[bool, int, float, int, float]:
        if c.rate is not None:
            tier, value = 0, -c.rate
        elif c.rtt is not None:
            tier, value = 1, c.rtt
        else:
            tier, value = 2, 0.0
        return (c.unique == 0, tier, value, -c.needed, rng.random())

    return [c.holder for c in sorted((c for c in candidates if c.needed > 0), key=key)]


def choose_holders(
    free: int, idle: Sequence[H], candidates: Iterable[Candidate[H]], rng: random.Random
) -> tuple[list[H], list[H]]:
    """(holders to close, holders to connect): `free` connection slots are open, `idle` connected holders
    have nothing left that we need. The best candidates take the free slots, then the idle holders' slots
    (an idle holder is closed only to make room for a candidate that has something for us)."""
    free = max(0, free)
    connect = rank_candidates(candidates, rng)[: free + len(idle)]
    close = list(idle[: max(0, len(connect) - free)])
    return close, connect
