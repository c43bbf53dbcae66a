"""One mounted file's chunks, fetched on demand through one long-lived stream of the transfer engine
(`Download.stream`): a read wants the chunks it covers (urgent: picked before any other), a sequential
stream also wants its read-ahead; the engine fetches what is wanted from the holders it keeps connected.
A read pins the chunks it covers in the cache until its bytes are copied out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from p2pfs.errors import P2PFSError, TrackerError, TrackerUnavailable
from p2pfs.mount import policy
from p2pfs.mount.cache import CachedFile
from p2pfs.peer.storage import StorageError
from p2pfs.peer.transfer import Download, UnloggedPart
from p2pfs.protocol import messages as m

log = logging.getLogger("p2pfs.mount")

#: Seconds a location reply is reused before a fetch asks the tracker again (pushed updates and the
#: engine's own refreshes keep it current while a fetch runs).
LOCATION_MAX_AGE = 5.0
#: Seconds to wait for the tracker's locations before a fetch goes on with the last known ones.
LOCATE_TIMEOUT = 2.0


class ReadFailed(P2PFSError):
    """The chunks a read covers could not be had (no holder, or not within the read timeout): EIO."""


class Fetcher:
    """Reads of one published file (`cached`), through one Download reused for every fetch (holders
    that misbehaved stay dropped, measured ones stay ranked)."""

    def __init__(
        self, dl: Download, cached: CachedFile, location: m.ReplyFileLocation, read_timeout: float
    ) -> None:
        self.dl = dl
        self.cached = cached
        self.read_timeout = read_timeout
        self._part = UnloggedPart(cached)
        self._location = location
        self._located = time.monotonic()
        self._stale = False
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        #: the chunks reads covered (each once), and how many reads there were (figures)
        self._touched: set[int] = set()
        self.reads = 0
        cached.on_chunk = self._arrived
        self._task = asyncio.create_task(self._run())
        self._checking = asyncio.create_task(self._check_left_chunks())

    # -- reads -----------------------------------------------------------------------------------
    async def read(
        self, offset: int, size: int, stream: int | None = None, ahead: range = range(0)
    ) -> bytes | bytearray:
        """`size` bytes at `offset` (fewer at the end of the file); ReadFailed if they cannot be had.
        `ahead`: chunks the stream `stream` will want next (fetched after what reads wait for)."""
        cached = self.cached
        cache = cached.cache
        chunks = policy.covering(offset, size, cached.chunk_size, cached.filesize)
        self.reads += 1
        self._touched.update(chunks)
        # Pinned from the moment they are asked for until the bytes are copied out, whatever ends the
        # read (error, timeout, cancellation): under a small --max-cache, the chunk that arrives next
        # (for this read, another one or read-ahead) would otherwise evict one this read still needs.
        cache.pin(cached, chunks)
        try:
            if ahead:
                self.dl.want(c for c in ahead if c not in cached.have)
            await self._ensure(chunks)
            try:
                data = self._assemble(offset, size, chunks)
            except FileNotFoundError:
                # (a pinned chunk is never evicted: its file was removed behind the mount's back)
                for chunk in chunks:
                    if chunk in cached.have and not cached.chunk_path(chunk).exists():
                        cached.drop(chunk)
                await self._ensure(chunks)
                try:
                    data = self._assemble(offset, size, chunks)
                except FileNotFoundError:
                    raise ReadFailed(f"chunk files of {cached.name} keep vanishing from {cached.path}") from None
            cache.touch(cached, chunks)  # (before unpinning: the evictions due then take older chunks)
            return data
        finally:
            cache.unpin(cached, chunks)

    @property
    def chunks_touched(self) -> int:
        return len(self._touched)

    def forget_stream(self, stream: int) -> None:
        """An open file was closed (its read-ahead is its own: nothing to forget here)."""

    def _assemble(self, offset: int, size: int, chunks: range) -> bytes | bytearray:
        cached = self.cached
        end = min(offset + size, cached.filesize)
        if len(chunks) == 1:
            base = chunks[0] * cached.chunk_size
            return cached.read_range(chunks[0], offset - base, end - offset)
        # (a read across chunks: each chunk file read straight into its part of one buffer, no join)
        out = bytearray(end - offset)
        with memoryview(out) as view:
            for chunk in chunks:
                base = chunk * cached.chunk_size
                lo = max(offset, base)
                hi = min(end, base + cached.chunk_length(chunk))
                cached.read_range_into(chunk, lo - base, view[lo - offset : hi - offset])
        return out

    async def _ensure(self, chunks: range) -> None:
        cached = self.cached
        left = [c for c in chunks if c not in cached.have and c in cached.on_disk]
        if left:
            await self._check(left)
        missing = [c for c in chunks if c not in cached.have]
        if not missing:
            return
        if self._closed:
            raise ReadFailed(f"{cached.name} is no longer mounted")
        loop = asyncio.get_running_loop()
        futures: list[tuple[int, asyncio.Future[None]]] = []
        for chunk in missing:
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(chunk, []).append(future)
            futures.append((chunk, future))
        self.dl.want(missing, urgent=True)
        self._wake.set()  # (starts a new stream if the last one stopped)
        try:
            async with asyncio.timeout(self.read_timeout):
                await asyncio.gather(*(f for _, f in futures))
        except TimeoutError:
            raise ReadFailed(
                f"chunks of {cached.name} not fetched within {self.read_timeout:g} s (--read-timeout)"
            ) from None
        finally:
            for chunk, future in futures:
                future.cancel()
                waiting = self._waiters.get(chunk)
                if waiting is not None:
                    with contextlib.suppress(ValueError):
                        waiting.remove(future)
                    if not waiting:
                        del self._waiters[chunk]

    def _arrived(self, chunk: int) -> None:
        for future in self._waiters.pop(chunk, ()):
            if not future.done():
                future.set_result(None)

    # -- chunks an earlier mount left ------------------------------------------------------------
    async def _check(self, chunks: list[int]) -> None:
        """Hash chunk files an earlier mount left (in a thread); keep and announce those that match."""
        cached = self.cached
        good = await asyncio.to_thread(lambda: [c for c in chunks if cached.verify_on_disk(c)])
        for chunk in chunks:
            if chunk in good:
                cached.keep_verified(chunk)
            elif chunk not in cached.have:
                cached.discard_on_disk(chunk)
        held = [c for c in good if c in cached.have]
        if held:
            self.dl.tracker.register_chunks(cached.name, held)

    async def _check_left_chunks(self) -> None:
        """In the background: every chunk an earlier mount left, verified and served again."""
        try:
            while self.cached.on_disk and not self._closed:
                batch = sorted(self.cached.on_disk)[:64]
                await self._check(batch)
        except Exception:  # (a bug here must not stop reads: those check their own chunks)
            log.exception("checking the cached chunks of %s failed", self.cached.name)

    # -- the fetching ----------------------------------------------------------------------------
    async def _run(self) -> None:
        """One stream of the engine for the file's life (`Download.stream`): holders stay connected and
        measured between reads. If it stops (the tracker lost the file, a disk error), the reads waiting
        fail and a new stream starts."""
        while not self._closed:
            try:
                location = await self._fresh_location()
                await self.dl.stream(self._part, location, self._unavailable)
            except asyncio.CancelledError:
                raise
            except (P2PFSError, OSError) as exc:
                self._stale = True
                self._fail(list(self._waiters), str(exc))
            except Exception as exc:  # (a bug: these reads fail, the mount goes on)
                log.exception("fetching chunks of %s failed", self.cached.name)
                self._stale = True
                self._fail(list(self._waiters), f"internal error: {exc!r}")
            if not self._closed:
                # (not a busy loop on a tracker that keeps refusing: the next stream starts when read)
                await self._wake.wait()
                self._wake.clear()

    def _unavailable(self, chunks: list[int]) -> None:
        """The engine found no holder for these wanted chunks, even after asking the tracker again."""
        self._stale = True
        self._fail(chunks, "no holder has them")

    def _fail(self, chunks: list[int], why: str) -> None:
        if chunks:
            log.info("cannot read chunks of %s: %s", self.cached.name, why)
        for chunk in chunks:
            for future in self._waiters.pop(chunk, ()):
                if not future.done():
                    future.set_exception(ReadFailed(f"cannot read {self.cached.name}: {why}"))

    async def _fresh_location(self) -> m.ReplyFileLocation:
        if not self._stale and time.monotonic() - self._located < LOCATION_MAX_AGE:
            return self._location
        name, content_id = self.cached.name, self._location.contentid
        try:
            async with asyncio.timeout(LOCATE_TIMEOUT):
                location = await self.dl.tracker.locations(name, watch=True, known_content_id=content_id)
        except (TimeoutError, TrackerUnavailable, TrackerError) as exc:
            log.info("locations of %s not refreshed: %s", name, exc)
            return self._location  # (the holders known last; the engine asks again itself)
        if location.contentid != content_id:
            raise StorageError(f"{name!r} was published again with other content; remount to see it")
        self._location, self._located, self._stale = location, time.monotonic(), False
        return location

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        for task in (self._task, self._checking):
            task.cancel()
        await asyncio.gather(self._task, self._checking, return_exceptions=True)
        self._fail(list(self._waiters), "unmounting")
        self.cached.on_chunk = None
