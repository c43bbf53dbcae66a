"""Super-seeding: the origin seeder sends every chunk once before it sends any chunk twice.

In a swarm the origin's uplink is the scarce resource: the whole file must leave it at least once, and
the distribution cannot finish before it has (the F/u_seeder term of the Kumar-Ross bound). Downloaders
pick rarest first, but they learn what the others fetch only when it is registered, so at the start
several of them ask the origin for the same chunk. When a request allows it (`substitute`, an extension
of PEER_REQUEST_CHUNK), the origin answers a chunk it already sent to another connection with a chunk it
has not sent yet; the downloaders get the repeated one from each other. Once every chunk has left, or
for a requester that asks again for a chunk it was sent, requests are answered as asked.

BEP 16's rule, for a file whose holders the origin hears of (`watch`, then `seen` with the tracker's
pushed updates): a requester is given a chunk nobody had only while fewer than MAX_UNSPREAD of those it
was given are still at no other holder; beyond that `choose` says hold off (the chunk server answers
PEER_BUSY), so a slow uplink does not end up holding the only copies while a fast one could forward
them. A chunk counts as elsewhere once a second holder (not a publisher) is seen with it, or after
UNSPREAD_TIMEOUT (news lost, or nobody else to forward to).

Pure bookkeeping (no sockets, no clock), like the picker.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable

from p2pfs.peer.picker import IndexedSet

#: Chunks nobody else had that a requester may hold before it is given another (BEP 16 says one; the
#: requests a downloader pipelines, and the tracker's push delay, need a few) ...
MAX_UNSPREAD = 2
#: ... or its share of this many across the requesters, if more: with few downloaders the seeder's uplink
#: would otherwise idle while its chunks make the round trip to a second holder (1+2 in bench/sim: 1.30x
#: the bound with 2 each, 1.07x with this).
UNSPREAD_BUDGET = 8
#: Seconds after which a chunk sent counts as elsewhere though no second holder was seen with it.
UNSPREAD_TIMEOUT = 5.0
#: A requester held off is told to ask again after this long (PEER_BUSY.retryafter).
HOLD_OFF_RETRY = 0.1


class _FileState:
    __slots__ = ("first_holder", "requesters", "sent_to", "spread", "unsent", "unspread")

    def __init__(self, chunk_count: int) -> None:
        #: the connection each chunk was first sent to (0: not sent yet)
        self.sent_to = [0] * chunk_count
        self.unsent = IndexedSet()
        for chunk in range(chunk_count):
            self.unsent.add(chunk)
        #: (watched files) the first holder seen with each chunk, and the chunks seen at two holders
        self.first_holder: dict[int, Hashable] = {}
        self.spread = bytearray(chunk_count)
        #: (watched files) per requester, the chunks it was given first and not seen elsewhere yet, and when
        self.unspread: dict[int, dict[int, float]] = {}
        #: the connections that asked for it (a lone downloader is never held off: nobody to forward to)
        self.requesters: set[int] = set()


class SuperSeeder:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self._files: dict[str, _FileState] = {}
        #: files whose every chunk has been sent at least once: answered as asked from now on
        self._done: set[str] = set()
        #: files whose holders we hear of (BEP 16's rule applies)
        self._watched: set[str] = set()
        #: chunks sent in place of the one asked for, and requests told to hold off
        self.substituted = 0
        self.held_off = 0

    def choose(self, name: str, chunk_count: int, chunk: int, requester: int, now: float = 0.0) -> int | None:
        """The chunk to send to `requester` (a nonzero connection id) that asked for `chunk` of `name`;
        None: hold off (BEP 16's rule, watched files only): ask again later, or another holder."""
        if name in self._done or not 0 <= chunk < chunk_count:
            return chunk
        state = self._state(name, chunk_count)
        first = state.sent_to[chunk]
        if first == requester or (first != 0 and not state.unsent):
            send = chunk  # this requester lost it, or everything has left once already
        elif name in self._watched and self._holds_too_many(state, requester, now):
            self.held_off += 1
            return None
        elif first == 0:
            send = chunk  # never sent
        else:
            send = state.unsent.choice(self.rng)
            self.substituted += 1
        self._mark(name, state, send, requester, now)
        return send

    def sent(self, name: str, chunk_count: int, chunk: int, requester: int, now: float = 0.0) -> None:
        """`chunk` was sent as asked to a request that allowed no substitute: it has left the origin, so
        it is never substituted in place of another (a downloader that fetched a collection's manifest
        chunks plainly must not be sent them again as substitutes)."""
        if name in self._done or not 0 <= chunk < chunk_count:
            return
        self._mark(name, self._state(name, chunk_count), chunk, requester, now)

    # -- BEP 16: what the tracker says the holders have ------------------------------------------------
    def watch(self, name: str) -> None:
        """News of `name`'s holders will come (`seen`): apply BEP 16's rule to it."""
        self._watched.add(name)

    def seen(self, name: str, chunk_count: int, holder: Hashable, chunks: Iterable[int]) -> None:
        """The tracker says `holder` (not a publisher) has `chunks` of `name`."""
        if name in self._done or name not in self._watched:
            return
        state = self._state(name, chunk_count)
        first_holder, spread, sent_to = state.first_holder, state.spread, state.sent_to
        for chunk in chunks:
            if not 0 <= chunk < chunk_count or spread[chunk]:
                continue
            first = first_holder.setdefault(chunk, holder)
            if first == holder:
                continue
            spread[chunk] = 1
            del first_holder[chunk]
            pending = state.unspread.get(sent_to[chunk])
            if pending is not None:
                pending.pop(chunk, None)

    def _holds_too_many(self, state: _FileState, requester: int, now: float) -> bool:
        state.requesters.add(requester)
        if len(state.requesters) < 2:
            return False  # a lone downloader: nobody to forward to
        pending = state.unspread.get(requester)
        limit = max(MAX_UNSPREAD, -(-UNSPREAD_BUDGET // len(state.requesters)))
        if not pending or len(pending) < limit:
            return False
        for chunk, when in list(pending.items()):
            if when + UNSPREAD_TIMEOUT <= now:
                del pending[chunk]
        return len(pending) >= limit

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _state(self, name: str, chunk_count: int) -> _FileState:
        state = self._files.get(name)
        if state is None:
            state = self._files[name] = _FileState(chunk_count)
        return state

    def _mark(self, name: str, state: _FileState, chunk: int, requester: int, now: float) -> None:
        if state.sent_to[chunk] == 0:
            state.sent_to[chunk] = requester
            state.unsent.discard(chunk)
            if name in self._watched and not state.spread[chunk]:
                state.unspread.setdefault(requester, {})[chunk] = now
                state.requesters.add(requester)
            if not state.unsent:
                del self._files[name]
                self._done.add(name)

    def closed(self, requester: int) -> None:
        """`requester`'s connection is gone: what it was given no longer holds anything up."""
        for state in self._files.values():
            state.unspread.pop(requester, None)
            state.requesters.discard(requester)

    def forget(self, name: str) -> None:
        """The file is no longer served (or was published again): start over."""
        self._files.pop(name, None)
        self._done.discard(name)
        self._watched.discard(name)

    def unsent(self, name: str, chunk_count: int) -> int:
        """Chunks of `name` not sent to anyone yet."""
        if name in self._done:
            return 0
        state = self._files.get(name)
        return chunk_count if state is None else len(state.unsent)
