"""Super-seeding: the origin seeder sends every chunk once before it sends any chunk twice.

In a swarm the origin's uplink is the scarce resource: the whole file must leave it at least once, and
the distribution cannot finish before it has (the F/u_seeder term of the Kumar-Ross bound). Downloaders
pick rarest first, but they learn what the others fetch only when it is registered, so at the start
several of them ask the origin for the same chunk. When a request allows it (`substitute`, an extension
of PEER_REQUEST_CHUNK), the origin answers a chunk it already sent to another connection with a chunk it
has not sent yet; the downloaders get the repeated one from each other. Once every chunk has left, or
for a requester that asks again for a chunk it was sent, requests are answered as asked.

Pure bookkeeping (no sockets, no clock), like the picker.
"""

from __future__ import annotations

import random

from p2pfs.peer.picker import IndexedSet


class _FileState:
    __slots__ = ("sent_to", "unsent")

    def __init__(self, chunk_count: int) -> None:
        #: the connection each chunk was first sent to (0: not sent yet)
        self.sent_to = [0] * chunk_count
        self.unsent = IndexedSet()
        for chunk in range(chunk_count):
            self.unsent.add(chunk)


class SuperSeeder:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self._files: dict[str, _FileState] = {}
        #: files whose every chunk has been sent at least once: answered as asked from now on
        self._done: set[str] = set()
        #: chunks sent in place of the one asked for
        self.substituted = 0

    def choose(self, name: str, chunk_count: int, chunk: int, requester: int) -> int:
        """The chunk to send to `requester` (a nonzero connection id) that asked for `chunk` of `name`."""
        if name in self._done or not 0 <= chunk < chunk_count:
            return chunk
        state = self._files.get(name)
        if state is None:
            state = self._files[name] = _FileState(chunk_count)
        first = state.sent_to[chunk]
        if first == 0 or first == requester or not state.unsent:
            send = chunk  # never sent, or this requester lost it, or everything has left once already
        else:
            send = state.unsent.choice(self.rng)
            self.substituted += 1
        self._mark(name, state, send, requester)
        return send

    def sent(self, name: str, chunk_count: int, chunk: int, requester: int) -> None:
        """`chunk` was sent as asked to a request that allowed no substitute: it has left the origin, so
        it is never substituted in place of another (a downloader that fetched a collection's manifest
        chunks plainly must not be sent them again as substitutes)."""
        if name in self._done or not 0 <= chunk < chunk_count:
            return
        state = self._files.get(name)
        if state is None:
            state = self._files[name] = _FileState(chunk_count)
        self._mark(name, state, chunk, requester)

    def _mark(self, name: str, state: _FileState, chunk: int, requester: int) -> None:
        if state.sent_to[chunk] == 0:
            state.sent_to[chunk] = requester
            state.unsent.discard(chunk)
            if not state.unsent:
                del self._files[name]
                self._done.add(name)

    def forget(self, name: str) -> None:
        """The file is no longer served (or was published again): start over."""
        self._files.pop(name, None)
        self._done.discard(name)

    def unsent(self, name: str, chunk_count: int) -> int:
        """Chunks of `name` not sent to anyone yet."""
        if name in self._done:
            return 0
        state = self._files.get(name)
        return chunk_count if state is None else len(state.unsent)
