"""Upload slots: a holder sends chunks to at most a few downloaders at once and tells the others it is
busy, so in a wide swarm a chunk leaves a holder whole and soon (and can be re-served at once) instead
of every requester getting 1/N of the uplink and nobody completing anything for a long time.

Pure bookkeeping, like the picker: connections are opaque keys, `now` is passed in, nothing is sent.
The chunk server asks `admit` before it answers a request and reports each reply with `sent`; a request
refused gets a busy reply carrying `retry_after`, and the downloader asks another holder meanwhile.

The chunk server (p2pfs.peer.chunk_server) and the swarm simulator (bench/sim, Policy.slots) drive this
class; a busy reply is PEER_BUSY on the wire, sent only to requests that say they accept it (`busyok`):
the others wait in line (docs/PROTOCOL.md section 7, *Upload slots*).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)

#: One slot gets at least a chunk per this many seconds: K = rate x SLOT_SECONDS / chunk size. Longer
#: and a chunk takes long to become re-servable (the N = 100 stall); much shorter and a slot's reply
#: cannot amortise the round trip between a busy reply and the retry that refills the slot.
SLOT_SECONDS = 0.5
#: Two slots at least: one slow downloader (a thin downlink) must not hold the whole uplink.
MIN_SLOTS = 2
#: Beyond this TCP flows on one uplink only share it thinner (16 x 1 MiB in 0.5 s is ~270 Mbit/s).
MAX_SLOTS = 16
#: Before the uplink is measured: BitTorrent's default unchoke count.
INITIAL_SLOTS = 4
#: Chunks a connection is sent before its slot may pass to a connection waiting for one. Several, so a
#: downloader's pipelined window is served; few, so the origin's chunks spread over many downloaders.
GRANT_CHUNKS = 2
#: A slot whose connection has had no request for this long goes to a waiting connection (its
#: downloader found the chunks elsewhere or has nothing left to ask); a few round trips.
IDLE_GRACE = 0.25
#: Bounds of the retry delay told to a refused request.
RETRY_MIN = 0.05
RETRY_MAX = 2.0


def slot_count(rate: float | None, chunk_size: int) -> int:
    """Slots for an uplink measured at `rate` payload bytes/s (None: not measured yet) sending chunks of
    `chunk_size` bytes: each slot gets a chunk per SLOT_SECONDS at least."""
    if rate is None or rate <= 0:
        return INITIAL_SLOTS
    return max(MIN_SLOTS, min(MAX_SLOTS, math.floor(rate * SLOT_SECONDS / max(chunk_size, 1))))


@dataclass(frozen=True)
class Send:
    """Answer the request now: the connection holds a slot."""


@dataclass(frozen=True)
class Queued:
    """Hold the request: the connection is next in line for a slot (`sent` or `expire` names it)."""


@dataclass(frozen=True)
class Busy:
    """Refuse the request with a busy reply: ask again after `retry_after` seconds (or elsewhere)."""

    retry_after: float


Admission = Send | Queued | Busy
SEND = Send()
QUEUED = Queued()


class _Slot:
    __slots__ = ("granted", "idle_since", "sending")

    def __init__(self, granted: int) -> None:
        #: chunks left of its grant (at 0 the slot passes on if anyone waits)
        self.granted = granted
        self.sending = 0
        #: when its last reply finished with no request behind it (None: it has one)
        self.idle_since: float | None = None


class UploadSlots(Generic[C]):
    """Which connections a holder sends to now: at most `slots`, each for a grant of `grant_chunks`
    chunks; up to `queue_limit` more wait in line (a slot never idles while a request waits), the rest
    are refused with a retry delay."""

    def __init__(
        self,
        slots: int = INITIAL_SLOTS,
        chunk_size: int = 1 << 20,
        grant_chunks: int = GRANT_CHUNKS,
        queue_limit: int | None = None,
        idle_grace: float = IDLE_GRACE,
    ) -> None:
        self.slots = max(1, slots)
        self.chunk_size = chunk_size
        self.grant_chunks = max(1, grant_chunks)
        #: None: as many as there are slots (each freed slot has its next connection ready)
        self.queue_limit = queue_limit
        self.idle_grace = idle_grace
        #: payload bytes/s of the uplink, when measured (sizes the slots and the retry delay)
        self.rate: float | None = None
        self._held: dict[C, _Slot] = {}
        self._waiting: deque[C] = deque()
        #: requests refused so far
        self.refused = 0

    # -- sizing ------------------------------------------------------------------------------------
    def measured(self, rate: float) -> None:
        """The uplink's payload rate is now known (bytes/s): slots follow `slot_count`. Slots already
        granted beyond the new count are kept until their grants end."""
        self.rate = rate
        self.slots = slot_count(rate, self.chunk_size)

    @property
    def _limit(self) -> int:
        return self.slots if self.queue_limit is None else self.queue_limit

    def holds_slot(self, conn: C) -> bool:
        return conn in self._held

    def waiting(self) -> int:
        return len(self._waiting)

    # -- requests ----------------------------------------------------------------------------------
    def admit(self, conn: C, now: float, refuse: bool = True) -> Admission:
        """A request from `conn` is next to answer on its connection. `refuse`: it may be refused (False:
        its asker knows no busy reply, so it waits in line however long the line is)."""
        slot = self._held.get(conn)
        if slot is not None:
            slot.sending += 1
            slot.idle_since = None
            return SEND
        if conn in self._waiting:
            return QUEUED
        if not self._waiting:
            # (an idle slot beyond a shrunk count may be free for it now; with connections waiting, the
            # slots freed go to them, and only the caller's `expire` at next_expiry may hand them over,
            # since whoever gets one must be told to start)
            self.expire(now)
        if len(self._held) < self.slots and not self._waiting:
            self._grant(conn).sending += 1
            return SEND
        if len(self._waiting) < self._limit or not refuse:
            self._waiting.append(conn)
            return QUEUED
        self.refused += 1
        return Busy(self.retry_after())

    def start(self, conn: C) -> None:
        """A queued request of `conn` starts now (it was named by `sent`, `expire` or `close`)."""
        slot = self._held[conn]
        slot.sending += 1
        slot.idle_since = None

    def sent(self, conn: C, now: float, more: bool) -> list[C]:
        """A reply to `conn` has left; `more`: another request of it is already waiting to be answered.
        Returns the queued connections that hold a slot now (start their request with `start`)."""
        slot = self._held.get(conn)
        if slot is None:
            return []
        slot.sending = max(0, slot.sending - 1)
        slot.granted -= 1
        if slot.granted <= 0 and self._waiting and not slot.sending:
            del self._held[conn]  # (its next request waits in line or is refused, like anyone's)
            return self._promote()
        if slot.granted <= 0:
            slot.granted = self.grant_chunks  # nobody waits: keep sending rather than idle
        if not more and not slot.sending:
            slot.idle_since = now
        return self._promote()

    def close(self, conn: C) -> list[C]:
        """`conn` closed: its slot or its place in line is free. Returns connections that hold a slot now."""
        self._held.pop(conn, None)
        if conn in self._waiting:
            self._waiting.remove(conn)
        return self._promote()

    def expire(self, now: float) -> list[C]:
        """Take back the slots idle for `idle_grace` when connections wait (or when the slot count
        shrank). Returns connections that hold a slot now. Call it at `next_expiry`."""
        for conn, slot in list(self._held.items()):
            # (the same sum as next_expiry's, so expire at that time frees the slot despite rounding)
            if slot.sending or slot.idle_since is None or slot.idle_since + self.idle_grace > now:
                continue
            if self._waiting or len(self._held) > self.slots:
                del self._held[conn]
        return self._promote()

    def next_expiry(self) -> float | None:
        """When `expire` may next free a slot for a waiting connection (None: no need to call it)."""
        if not self._waiting:
            return None
        times = [s.idle_since for s in self._held.values() if s.idle_since is not None and not s.sending]
        return min(times) + self.idle_grace if times else None

    def retry_after(self) -> float:
        """Seconds a refused requester should wait before asking again: about the time for one more
        grant to end and the line ahead of it to be served (unknown rate: SLOT_SECONDS per chunk)."""
        if self.rate:
            per_chunk = self.chunk_size * self.slots / self.rate
        else:
            per_chunk = SLOT_SECONDS
        turns = (len(self._waiting) + 1) / self.slots
        return min(RETRY_MAX, max(RETRY_MIN, per_chunk * self.grant_chunks * turns))

    # -- inside ------------------------------------------------------------------------------------
    def _grant(self, conn: C) -> _Slot:
        slot = self._held[conn] = _Slot(self.grant_chunks)
        return slot

    def _promote(self) -> list[C]:
        promoted: list[C] = []
        while self._waiting and len(self._held) < self.slots:
            conn = self._waiting.popleft()
            self._grant(conn)
            promoted.append(conn)
        return promoted


class UplinkMeter:
    """The holder's uplink payload rate, from what it sends while it always has something to send: bytes
    handed to the kernel over spans of at least INTERVAL seconds during which some reply was being sent,
    averaged over the last few spans. A span broken by a moment with nothing to send does not count (the
    uplink was not the limit). Feeds `UploadSlots.measured`. Time is passed in."""

    #: Shortest span measured: long against a chunk's time on the wire, so the kernel's send buffer
    #: (which takes the first few MiB at once) weighs little.
    INTERVAL = 1.0
    #: Weight of the newest span.
    ALPHA = 0.3

    def __init__(self) -> None:
        self.rate: float | None = None
        self._since: float | None = None
        self._bytes = 0

    def busy(self, now: float) -> None:
        """A reply starts while none was being sent: a span starts (if none is running)."""
        if self._since is None:
            self._since, self._bytes = now, 0

    def idle(self) -> None:
        """Nothing is being sent now: the running span is dropped."""
        self._since = None

    def sent(self, nbytes: int, now: float) -> float | None:
        """A reply of `nbytes` has left. Returns the new rate when a span ended (None: no new figure)."""
        if self._since is None:
            return None
        self._bytes += nbytes
        span = now - self._since
        if span < self.INTERVAL:
            return None
        sample = self._bytes / span
        self.rate = sample if self.rate is None else (1 - self.ALPHA) * self.rate + self.ALPHA * sample
        self._since, self._bytes = now, 0
        return self.rate
