"""What a mount fetches and keeps, as pure bookkeeping (no clock, socket, disk or FUSE): the chunks a
read covers, per-open-file read-ahead (its window within a share of the cache budget), and the
least-recently-read order that bounds the cache, with the chunks reads in progress need pinned.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
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
#: The share of the cache budget the read-ahead windows of all open streams may take together. The rest
#: holds what readers are reading and have just read: a window as large as the cache would evict the
#: chunks its reader is about to read (fetched ahead, then evicted by chunks fetched further ahead).
READ_AHEAD_SHARE = 0.5


def covering(offset: int, size: int, chunk_size: int, filesize: int) -> range:
    """The chunk numbers that hold bytes [offset, offset + size) of a file (clipped to its end)."""
    end = min(offset + size, filesize)
    if size <= 0 or offset >= end:
        return range(0)
    return range(offset // chunk_size, -(-end // chunk_size))


def window_limit(budget: int, streams: int, chunk_size: int) -> int:
    """The most bytes one stream may read ahead when `streams` streams read ahead at once within a cache
    of `budget` bytes: an equal part of READ_AHEAD_SHARE of the budget, and never less than one chunk
    (read-ahead of less would be none at all)."""
    return max(chunk_size, int(budget * READ_AHEAD_SHARE) // max(1, streams))


class ReadAhead:
    """One open file's read pattern. `on_read` says which chunks to fetch ahead of a read: none for
    random reads; for a sequential stream a window that starts at MIN_WINDOW, doubles each time the
    reader has read a window's worth, and holds WINDOW_SECONDS of the measured read speed (at most
    MAX_WINDOW, and at most the `limit` given with the read: see `window_limit`). The chunks returned
    overlap the window's bytes past the read, so they are at most ceil(window / chunk size). Each chunk
    is returned once (until the stream seeks elsewhere)."""

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

    def on_read(self, offset: int, size: int, now: float, limit: int | None = None) -> range:
        """A read of `size` bytes at `offset` at time `now` (seconds): the chunks to fetch ahead of it,
        within `limit` bytes past the read (None: MAX_WINDOW only)."""
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
        if limit is not None:  # (applied each read: the limit shrinks as other streams start)
            self.window = min(self.window, max(1, limit))
        first = max(self._ahead, -(-self._end // self.chunk_size))
        last = min(count, -(-(self._end + self.window) // self.chunk_size))
        if first >= last:
            return range(0)
        self._ahead = last
        return range(first, last)


class LeastRecentlyRead(Generic[K]):
    """Cached chunks (any hashable key) with their sizes, least recently read first, within a byte
    budget. `add` returns the keys to evict to make room; pinned keys (being read now) are never among
    them, so the cache may exceed its budget by what is pinned.

    A chunk added `unread` (fetched, by read-ahead say) waits apart until it is read (`touch`): room is
    made from the chunks read already, so read-ahead is not evicted before its reader gets to it (in
    plain LRU order, the chunk a sequential reader has just finished with would outlive the next one).
    Unread chunks go first only once they are more than one and take more than READ_AHEAD_SHARE of the
    budget (a stream sought elsewhere and left its window), or when nothing else can go."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        #: read since they came, least recently read first
        self._read: OrderedDict[K, int] = OrderedDict()
        #: not read since they came, oldest first
        self._unread: OrderedDict[K, int] = OrderedDict()
        self._unread_size = 0
        self._pins: dict[K, int] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._read or key in self._unread

    def __len__(self) -> int:
        return len(self._read) + len(self._unread)

    def add(self, key: K, nbytes: int, unread: bool = False) -> list[K]:
        """`key` is cached now (most recently read, or `unread`: fetched, not read yet); the keys to
        evict, oldest first."""
        self.remove(key)
        if unread and key not in self._pins:  # (pinned: a read waits for it, it is read as it comes)
            self._unread[key] = nbytes
            self._unread_size += nbytes
        else:
            self._read[key] = nbytes
        self.size += nbytes
        return self._overflow()

    def touch(self, key: K) -> None:
        """`key` was read now."""
        nbytes = self._unread.pop(key, None)
        if nbytes is not None:
            self._unread_size -= nbytes
            self._read[key] = nbytes
        elif key in self._read:
            self._read.move_to_end(key)

    def remove(self, key: K) -> None:
        nbytes = self._read.pop(key, None)
        if nbytes is None:
            nbytes = self._unread.pop(key, None)
            if nbytes is None:
                return
            self._unread_size -= nbytes
        self.size -= nbytes

    def pin(self, keys: Iterable[K]) -> None:
        """Keep `keys` (cached or not yet) from eviction until as many `unpin`s; pins nest."""
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
        while self.size > self.budget:
            # (one unread chunk is never stale: a window is at least one chunk, whatever the budget)
            stale = len(self._unread) > 1 and self._unread_size > self.budget * READ_AHEAD_SHARE
            first, then = (self._unread, self._read) if stale else (self._read, self._unread)
            found = self._oldest_unpinned(first) or self._oldest_unpinned(then)
            if not found:
                break  # (everything left is pinned)
            self.remove(found[0])
            evicted.append(found[0])
        return evicted

    def _oldest_unpinned(self, order: OrderedDict[K, int]) -> tuple[K] | None:
        for key in order:  # (pinned keys are the few chunks reads in progress cover)
            if key not in self._pins:
                return (key,)
        return None
