"""What a mount fetches and keeps, as pure bookkeeping (no clock, socket, disk or FUSE): the chunks a
read covers, per-open-file read-ahead, fair interleaving of several streams, and the least-recently-read
order that bounds the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

MiB = 1 << 20
#: Read-ahead starts with this much once a stream reads sequentially (a few chunks: enough to hide one
#: request's round trip while the speed is not known yet).
MIN_WINDOW = 16 * MiB
#: ...and grows to at most this much (tens of MiB: ~0.3 s at 1.6 Gbit/s; more only holds cache space).
MAX_WINDOW = 64 * MiB
#: Once measured, the window holds this many seconds of the stream's read speed.
WINDOW_SECONDS = 1.0
#: A read that starts within this many bytes of where the previous one ended is still "sequential":
#: the kernel splits a large read into 128 KiB requests and may hand them over slightly out of order.
SEQUENTIAL_SLACK = 1 * MiB
#: Sequential reads in a row before read-ahead starts (one read at the next offset could be chance).
SEQUENTIAL_AFTER = 2
#: A stream's read speed is measured over its sequential run once the run is this long (seconds).
RATE_MIN_SECONDS = 0.05


def covering(offset: int, size: int, chunk_size: int, filesize: int) -> range:
    """The chunk numbers that hold bytes [offset, offset + size) of a file (clipped to its end)."""
    end = min(offset + size, filesize)
    if size <= 0 or offset >= end:
        return range(0)
    return range(offset // chunk_size, -(-end // chunk_size))


class ReadAhead:
    """One open file's read pattern. `on_read` says which chunks to fetch ahead of a read: none for
    random reads; for a sequential stream a window that starts at MIN_WINDOW, doubles each time the
    reader has read a window's worth, and holds WINDOW_SECONDS of the measured read speed (at most
    MAX_WINDOW). Each chunk is returned once (until the stream seeks elsewhere)."""

    def __init__(
        self,
        chunk_size: int,
        filesize: int,
        min_window: int = MIN_WINDOW,
        max_window: int = MAX_WINDOW,
    ) -> None:
        self.chunk_size = chunk_size
        self.filesize = filesize
        self.min_window = min(min_window, max_window)
        self.max_window = max_window
        self.window = 0
        #: bytes/s this stream reads at (None until two sequential reads were timed)
        self.rate: float | None = None
        self._end = -1
        self._run = 0
        self._ahead = 0  # chunks below this number were already asked for by read-ahead
        self._run_start = (0.0, 0)
        self._grown_at = 0

    @property
    def sequential(self) -> bool:
        return self._run >= SEQUENTIAL_AFTER

    def on_read(self, offset: int, size: int, now: float) -> range:
        """A read of `size` bytes at `offset` at time `now` (seconds): the chunks to fetch ahead of it."""
        count = -(-self.filesize // self.chunk_size)
        near = self._end >= 0 and abs(offset - self._end) <= SEQUENTIAL_SLACK
        if near:
            self._run += 1
        else:
            self._run = 0
            self.window = 0
            self.rate = None
            self._ahead = 0
            self._run_start = (now, offset)
        self._end = max(offset + size, self._end if near else 0)
        started, start_offset = self._run_start
        if near and now - started >= RATE_MIN_SECONDS:
            # over the whole run: the kernel hands over reads in bursts, so gaps between two say little
            self.rate = (self._end - start_offset) / (now - started)
        if not self.sequential:
            return range(0)
        if self.window == 0:
            self.window = self.min_window
            self._grown_at = self._end
        elif self._end - self._grown_at >= self.window:  # a whole window read: the stream goes on
            self.window = min(self.max_window, self.window * 2)
            self._grown_at = self._end
        if self.rate is not None:
            self.window = max(self.window, min(self.max_window, int(self.rate * WINDOW_SECONDS)))
        first = max(self._ahead, -(-self._end // self.chunk_size))
        last = min(count, (self._end + self.window) // self.chunk_size + 1)
        if first >= last:
            return range(0)
        self._ahead = last
        return range(first, last)

def interleave(queues: Sequence[list[int]], limit: int) -> list[int]:
    """Up to `limit` chunk numbers taken round-robin from the front of each queue (removed from them),
    each number once: several streams share the fetches fairly, none starves behind a long read-ahead."""
    taken: list[int] = []
    seen: set[int] = set()
    positions = [0] * len(queues)
    progress = True
    while len(taken) < limit and progress:
        progress = False
        for i, queue in enumerate(queues):
            while positions[i] < len(queue):
                chunk = queue[positions[i]]
                positions[i] += 1
                if chunk not in seen:
                    seen.add(chunk)
                    taken.append(chunk)
                    progress = True
                    break
            if len(taken) >= limit:
                break
    for i, queue in enumerate(queues):
        del queue[: positions[i]]
    return taken


class LeastRecentlyRead(Generic[K]):
    """Cached chunks (any hashable key) with their sizes, least recently read first, within a byte
    budget. `add` returns the keys to evict to make room; pinned keys (being read now) are never among
    them, so the cache may exceed its budget by what is pinned."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._order: OrderedDict[K, int] = OrderedDict()
        self._pins: dict[K, int] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def add(self, key: K, nbytes: int) -> list[K]:
        """`key` is cached now (most recently read); the keys to evict, oldest first."""
        old = self._order.pop(key, None)
        if old is not None:
            self.size -= old
        self._order[key] = nbytes
        self.size += nbytes
        return self._overflow()

    def touch(self, key: K) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: K) -> None:
        nbytes = self._order.pop(key, None)
        if nbytes is not None:
            self.size -= nbytes

    def pin(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, keys: Iterable[K]) -> list[K]:
        """Release pins; the keys to evict now that they may go."""
        for key in keys:
            left = self._pins.get(key, 0) - 1
            if left > 0:
                self._pins[key] = left
            else:
                self._pins.pop(key, None)
        return self._overflow()

    def _overflow(self) -> list[K]:
        evicted: list[K] = []
        if self.size <= self.budget:
            return evicted
        for key in list(self._order):
            if self.size <= self.budget:
                break
            if key in self._pins:
                continue
            self.size -= self._order.pop(key)
            evicted.append(key)
        return evicted


#: A fetch through the engine takes at most about this long (at the measured speed), so a read that
#: arrives meanwhile, from another stream, waits for no more than that before its chunks are asked for.
BATCH_SECONDS = 0.25
#: Bounds of one fetch, in bytes (at least a few chunks: each fetch costs a ping per holder).
MIN_BATCH = 16 * MiB
MAX_BATCH = 32 * MiB


def batch_chunks(rate: float | None, chunk_size: int) -> int:
    """How many chunks one fetch may ask for, given the fetch speed measured so far (bytes/s)."""
    nbytes = MIN_BATCH if rate is None else max(MIN_BATCH, min(MAX_BATCH, int(rate * BATCH_SECONDS)))
    return max(1, nbytes // chunk_size)
