"""Hashing a local file's chunks on several threads, with progress.

Used to publish a file, to check an existing DEST before a `get`, to compare a local copy with the
published one (`p2pfs verify`) and to check the chunks an interrupted download kept. SHA-256 and
`os.preadv` release the GIL, so THREADS threads keep THREADS cores busy beside the event loop. Each
thread takes the next run of BLOCK chunks in file order, so reads stay nearly sequential on a disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

#: Threads that hash at once (two keep both cores of a small machine busy; the download's verify
#: threads use the same number).
THREADS = 2
#: Chunks a thread takes at a time: long enough runs for read-ahead, short enough to share the work.
BLOCK = 16
#: Seconds between progress reports.
PROGRESS_INTERVAL = 0.1

#: reads chunk `c` into a buffer of its length; returns how many bytes it read
Reader = Callable[[int, memoryview], int]


class ChunkHasher:
    """The SHA-256 (hex) of chunks of an open file; a chunk that cannot be read whole (the file is
    shorter than it should be, or changed) gets None."""

    def __init__(
        self,
        fd: int,
        filesize: int,
        chunk_size: int,
        chunks: Sequence[int] | None = None,
        reader: Reader | None = None,
    ) -> None:
        self.fd = fd
        #: reads a chunk into a buffer, returning the bytes read (default: pread at chunk * chunk_size)
        self.reader = reader
        self.filesize = filesize
        self.chunk_size = chunk_size
        count = -(-filesize // chunk_size)
        self.chunks: Sequence[int] = range(count) if chunks is None else chunks
        self.digests: dict[int, str | None] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._done_bytes: list[int] = []
        #: set to make the workers stop at their next chunk (a cancelled hash)
        self.stopped = False

    @property
    def total_bytes(self) -> int:
        return (
            sum(self._length(c) for c in self.chunks) if not isinstance(self.chunks, range) else self.filesize
        )

    @property
    def bytes_done(self) -> int:
        return sum(self._done_bytes)

    def _length(self, chunk: int) -> int:
        return max(0, min(self.chunk_size, self.filesize - chunk * self.chunk_size))

    def _take(self) -> Sequence[int]:
        with self._lock:
            start = self._next
            self._next = min(start + BLOCK, len(self.chunks))
        return self.chunks[start : self._next]

    def work(self) -> None:
        """One thread's share: hash runs of chunks until none is left (blocking)."""
        with self._lock:
            slot = len(self._done_bytes)
            self._done_bytes.append(0)
        buf = bytearray(self.chunk_size)
        view = memoryview(buf)
        while not self.stopped and (run := self._take()):
            for chunk in run:
                length = self._length(chunk)
                try:
                    if self.reader is not None:
                        got = self.reader(chunk, view[:length])
                    else:
                        got = os.preadv(self.fd, [view[:length]], chunk * self.chunk_size)
                except OSError:
                    got = -1
                self.digests[chunk] = hashlib.sha256(view[:length]).hexdigest() if got == length else None
                self._done_bytes[slot] += length

    def run(self) -> dict[int, str | None]:
        """Hash every chunk in this thread (blocking)."""
        self.work()
        return self.digests


async def hash_chunks(
    fd: int,
    filesize: int,
    chunk_size: int,
    chunks: Sequence[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int = THREADS,
    reader: Reader | None = None,
) -> dict[int, str | None]:
    """Hash `chunks` (default: all) of the open file `fd` on `threads` threads; `on_progress(bytes_done,
    total_bytes)` is called on the event loop about every PROGRESS_INTERVAL and once at the end. A
    cancellation stops the threads at their next chunk."""
    hasher = ChunkHasher(fd, filesize, chunk_size, chunks, reader)
    total = hasher.total_bytes
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="p2pfs-hash")
    try:
        workers = [loop.run_in_executor(executor, hasher.work) for _ in range(max(1, threads))]
        pending: set[asyncio.Future[None]] = set(workers)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=PROGRESS_INTERVAL)
            if on_progress is not None:
                on_progress(hasher.bytes_done, total)
        for worker in workers:
            worker.result()  # (a bug in a worker is raised here, not lost)
    finally:
        hasher.stopped = True
        executor.shutdown(wait=True)
    return hasher.digests


@dataclass
class Comparison:
    """A local copy of a published file, hashed against the publisher's chunk hashes (`p2pfs verify`)."""

    name: str
    path: str
    content_id: str
    filesize: int
    local_size: int
    chunk_count: int
    #: chunk numbers whose local bytes do not hash to the publisher's (missing bytes included)
    differing: list[int] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return self.local_size == self.filesize and not self.differing


async def compare(
    fd: int,
    local_size: int,
    name: str,
    path: str,
    filesize: int,
    chunk_size: int,
    expected: Sequence[str],
    content_id: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Hash the open local copy `fd` chunk by chunk as the published file is cut (`filesize`,
    `chunk_size`) and name the chunks that differ from `expected` (a chunk past the copy's end differs)."""
    digests = await hash_chunks(fd, filesize, chunk_size, on_progress=on_progress)
    differing = [c for c in range(len(expected)) if digests.get(c) != expected[c]]
    return Comparison(name, path, content_id, filesize, local_size, len(expected), differing)
