"""The transfer engine: downloads one file from its holders.

It asks the tracker where the chunks are, pings every holder for its RTT, then keeps each reachable
holder busy with a window of pipelined PEER_REQUEST_CHUNKs (sized by `window`), choosing chunks with the
`picker`. Raw chunk bytes are read from the socket straight into a pooled buffer; worker threads hash
them (SHA-256 releases the GIL) and write the verified ones to `DEST.part` while the event loop goes on
receiving. Only then is a chunk marked held and registered with the tracker; `DEST.part` becomes `DEST`
only when every chunk is verified. A holder that dies or
times out gives its chunks back to the pool; locations are refreshed from the tracker while downloading.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from p2pfs.address import Address
from p2pfs.errors import (
    FileNotPublished,
    NoSourceForChunk,
    P2PFSError,
    PeerUnavailable,
    ProtocolError,
    TrackerUnavailable,
)
from p2pfs.net import Connection, ConnectionClosed, connect, describe_os_error, env_seconds
from p2pfs.peer import storage
from p2pfs.peer.partfile import PartFile
from p2pfs.peer.picker import Picker
from p2pfs.peer.storage import ChunkFile
from p2pfs.peer.tracker_client import TrackerClient
from p2pfs.peer.window import ThroughputMeter, initial_window, request_window
from p2pfs.protocol import hashes
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.security import OPEN, Security

log = logging.getLogger("p2pfs.peer")

#: Seconds to wait for a holder's PEER_PING_PONG (connect included) before skipping it.
PING_TIMEOUT = env_seconds("P2PFS_PING_TIMEOUT", 3.0)
#: Seconds without any reply while requests are outstanding before a holder is considered dead.
CHUNK_TIMEOUT = env_seconds("P2PFS_CHUNK_TIMEOUT", 30.0)
#: Seconds between location refreshes, so holders that appear during a download are used soon: the
#: first refresh comes quickly (other downloaders started at the same time hold chunks within a fraction
#: of a second), then the interval doubles up to the maximum while refreshes bring nothing new.
REFRESH_INTERVAL_MIN = 0.25
REFRESH_INTERVAL = 2.0
#: A holder that failed is not tried again for this long (the tracker may still list it briefly).
RETRY_DEAD_AFTER = 10.0
#: Threads that hash and write received chunks (hashlib and os.pwrite release the GIL, so they run
#: beside the event loop; two keep both cores of a small machine busy).
VERIFY_THREADS = 2
#: Receive buffers per download, in bytes: chunks being read or waiting for a verify thread. Bounds the
#: memory a download uses whatever the file size (at least 3 buffers, whatever the chunk size).
BUFFER_BYTES = 8 << 20


@dataclass
class Progress:
    name: str
    filesize: int
    chunk_count: int
    chunks_done: int
    bytes_done: int
    holders: int
    sources: Counter[Address]


@dataclass
class DownloadResult:
    name: str
    dest: Path
    filesize: int
    chunk_count: int
    seconds: float
    #: chunks received from each holder (first copies only)
    sources: Counter[Address] = field(default_factory=Counter)
    #: the publisher's content id (None: a seed-only publisher gave no chunk hashes; verified by digests)
    content_id: str | None = None
    #: chunks kept from an earlier, interrupted attempt (verified again before being trusted)
    resumed: int = 0

    @property
    def mib_per_s(self) -> float:
        return self.filesize / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


class CorruptChunk(ProtocolError):
    """A holder sent bytes that do not match the chunk's hash."""


class BufferPool:
    """Reusable receive buffers of one chunk size, allocated on first use, at most `count` at a time."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._slots = asyncio.Semaphore(count)

    async def acquire(self) -> bytearray:
        await self._slots.acquire()
        return self._free.pop() if self._free else bytearray(self.size)

    def release(self, buf: bytearray) -> None:
        self._free.append(buf)
        self._slots.release()


#: what a verify thread found: the chunk's digest and whether this copy was written (False: it was an
#: end-game duplicate, another copy already claimed the chunk), or None: the bytes do not match
_Verified = tuple[str, bool] | None


@dataclass
class _Holder:
    address: Address
    conn: Connection
    rtt: float
    meter: ThroughputMeter = field(default_factory=ThroughputMeter)
    window: int = 1
    task: asyncio.Task[None] | None = None


class Download:
    """One download of a published file to `dest`. `run()` returns a DownloadResult or raises P2PFSError."""

    def __init__(
        self,
        tracker: TrackerClient,
        library: dict[str, ChunkFile],
        name: str,
        dest: Path,
        self_address: Address | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        raw: bool = True,
        security: Security = OPEN,
    ) -> None:
        #: ask holders for the binary fast path (they answer base64 JSON if they do not know it)
        self.raw = raw
        self.security = security
        self.tracker = tracker
        self.library = library
        self.name = name
        self.dest = dest
        self.self_address = self_address
        self.on_progress = on_progress
        self.refresh_interval = refresh_interval
        self.sources: Counter[Address] = Counter()
        self._holders: dict[Address, _Holder] = {}
        self._connecting: dict[Address, asyncio.Task[None]] = {}
        self._dead: dict[Address, float] = {}
        self._changed = asyncio.Event()
        self._picker: Picker[Address] = Picker(0)
        self._file: ChunkFile | None = None
        self._part: PartFile | None = None
        self._expected: list[str] | None = None
        #: holders that sent a corrupt chunk: never asked again during this download
        self._banned: set[Address] = set()
        self._bytes_done = 0
        #: set when the download ends: workers stop at their next step even if a cancellation was lost
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None
        self._pool: BufferPool | None = None
        #: chunks a verify thread has claimed for writing (the first verified copy wins)
        self._claimed: set[int] = set()
        self._claim_lock = threading.Lock()
        #: verifications not yet settled (awaited before the file is closed: a thread may be writing)
        self._verifying: set[asyncio.Future[_Verified]] = set()
        #: set when the download cannot go on whatever the holders do (a chunk cannot be written)
        self._failure: P2PFSError | None = None
        self._content_id: str | None = None
        #: pushed updates being applied (connecting to new holders)
        self._updating: set[asyncio.Task[bool]] = set()

    async def run(self) -> DownloadResult:
        started = time.monotonic()
        storage.check_name(self.name)
        if self.name in self.library:
            raise P2PFSError(f"{self.name!r} is already shared or being downloaded by this peer")
        try:
            location = await self.tracker.locations(self.name, watch=True)
        except TrackerUnavailable as exc:
            raise TrackerUnavailable(f"cannot download {self.name!r}: {exc}") from None
        self._content_id = location.contentid
        filesize, chunk_count = location.fileinfo or await self._fileinfo_from_list()
        chunk_size = location.chunksize or DEFAULT_CHUNK_SIZE
        if storage.chunk_count_for(filesize, chunk_size) != chunk_count:
            raise ProtocolError(f"tracker gave inconsistent fileinfo for {self.name!r}")
        dest = self.dest / self.name if self.dest.is_dir() else self.dest
        if dest.is_dir():
            raise storage.StorageError(f"cannot download to {dest}: it is a directory")
        expected = hashes.split(location.chunkhashes) if location.chunkhashes else None
        if expected is not None and len(expected) != chunk_count:
            raise ProtocolError(f"tracker gave {len(expected)} chunk hashes for {chunk_count} chunks")
        if location.chunkhashes and location.contentid not in (None, hashes.content_id(location.chunkhashes)):
            raise ProtocolError(f"tracker gave chunk hashes that do not match the content id of {self.name!r}")
        self._expected = expected
        part = PartFile.open(dest, self.name, filesize, chunk_size, location.contentid)
        self._file = shared = part.shared
        self._part = part
        self._claimed = set(shared.have)
        self._pool = BufferPool(chunk_size, max(3, BUFFER_BYTES // chunk_size))
        self._executor = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="p2pfs-verify")
        ok = False
        resumed: list[int] = []
        resumable = location.contentid is not None  # see PartFile: unverified files are never resumed
        try:
            if part.candidates:
                resumed = await asyncio.to_thread(part.verify_resumed, expected)
            self._bytes_done = sum(shared.chunk_length(c) for c in resumed)
            self.library[self.name] = shared  # serve chunks while still downloading
            if resumed:
                log.info("resuming %s: %d of %d chunks already verified", self.name, len(resumed), chunk_count)
                self.tracker.register_chunks(self.name, resumed)
            self._picker = Picker(chunk_count, have=shared.have)
            # the tracker pushes news since the request above; they are applied from now on (the reply
            # covered what came before)
            self.tracker.watch(self.name, self._on_update)
            if not self._picker.complete:
                await self._add_holders(location.holder_chunks())
                try:
                    await self._download_all()
                except NoSourceForChunk as exc:
                    if not (shared.have and resumable):
                        raise
                    kept = f"; {len(shared.have)} verified chunks kept in {shared.path}: run it again to resume"
                    raise NoSourceForChunk(exc.filename, exc.missing, kept) from None
            part.finish()
            ok = True
        finally:
            self.tracker.unwatch(self.name)
            await self._close_holders()
            self._executor.shutdown(wait=True)
            if not ok:
                self.library.pop(self.name, None)
                if shared.have and resumable:
                    part.keep_for_resume()
                else:
                    part.discard()
        return DownloadResult(
            self.name,
            dest,
            filesize,
            chunk_count,
            time.monotonic() - started,
            self.sources,
            location.contentid,
            len(resumed),
        )

    async def _fileinfo_from_list(self) -> tuple[int, int]:
        info = (await self.tracker.file_list()).filelist.get(self.name)
        if info is None:
            raise FileNotPublished(f"{self.name!r} is not listed by the tracker")
        return info

    # -- coordination --------------------------------------------------------------------------
    async def _download_all(self) -> None:
        picker = self._picker
        last_refresh = time.monotonic()
        interval = min(REFRESH_INTERVAL_MIN, self.refresh_interval)
        while not picker.complete:
            if self._failure is not None:
                raise self._failure
            if not picker.can_progress() and not self._connecting:
                if self._verifying:  # chunks received from a holder that has gone may still complete
                    await asyncio.wait(list(self._verifying))
                    continue
                # Nothing can move with what we know: ask the tracker once more before giving up.
                if not await self._refresh() and not self._connecting and not picker.can_progress():
                    raise NoSourceForChunk(self.name, picker.missing())
                last_refresh = time.monotonic()
                continue
            timeout = max(0.0, last_refresh + interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # (not wait_for: see net.Connection._read)
                    await self._changed.wait()
            if not picker.complete and time.monotonic() - last_refresh >= interval:
                news = await self._refresh()
                last_refresh = time.monotonic()
                interval = REFRESH_INTERVAL_MIN if news else min(interval * 2, self.refresh_interval)

    async def _refresh(self) -> bool:
        """Ask the tracker for fresh locations; True if it told us anything new."""
        try:
            location = await self.tracker.locations(self.name, watch=True, known_content_id=self._content_id)
        except (TrackerUnavailable, FileNotPublished) as exc:
            log.debug("location refresh for %s failed: %s", self.name, exc)
            return False
        if location.contentid != self._content_id:
            log.info("%s is now listed with other content; ignoring its new holders", self.name)
            return False
        return await self._add_holders(location.holder_chunks())

    def _on_update(self, update: m.ReplyFileLocation) -> None:
        """News pushed by the tracker (holders and chunks registered since its last update)."""
        if self._closing or update.contentid != self._content_id:
            return  # (a different file published under the same name since we started)
        task = asyncio.create_task(self._add_holders(update.holder_chunks(), complete=False))
        self._updating.add(task)
        task.add_done_callback(self._updating.discard)

    async def _add_holders(self, chunkinfo: dict[str, list[int]], complete: bool = True) -> bool:
        """Record availability; ping and start workers for new holders. True if anything was new.
        `complete`: chunkinfo is the tracker's whole view (not an update), so it also says what the
        tracker is missing of ours."""
        news = False
        now = time.monotonic()
        new: dict[Address, list[int]] = {}
        if complete:
            self._reregister_missing(chunkinfo)
        for text, chunks in chunkinfo.items():
            try:
                address = Address.parse(text)
            except ValueError:
                log.warning("tracker listed a bad holder address %r", text)
                continue
            if address == self.self_address or not chunks or address in self._banned:
                continue
            if address in self._holders:
                if self._picker.add_holder(address, chunks):
                    news = True
            elif address not in self._connecting and now - self._dead.get(address, -1e9) > RETRY_DEAD_AFTER:
                new[address] = chunks
        if new:
            news = True
            tasks = {a: asyncio.create_task(self._connect_holder(a, c)) for a, c in new.items()}
            self._connecting.update(tasks)
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        if news:
            self._notify()
        return news

    def _reregister_missing(self, chunkinfo: dict[str, list[int]]) -> None:
        """If the tracker lists fewer of our chunks than we hold (it restarted, or our registrations
        arrived before the file was listed again), register the missing ones in one batch."""
        shared = self._file
        if shared is None or not shared.have or self.self_address is None:
            return
        listed = set(chunkinfo.get(str(self.self_address), ()))
        missing = sorted(shared.have - listed)
        if missing:
            self.tracker.register_chunks(self.name, missing)

    async def _connect_holder(self, address: Address, chunks: list[int]) -> None:
        try:
            conn = await connect(address, PING_TIMEOUT, self.security, "holder")
            try:
                sent = time.monotonic()
                async with asyncio.timeout(PING_TIMEOUT):
                    reply = await conn.request(m.PeerPingPong())
                rtt = time.monotonic() - sent
                if not isinstance(reply, m.PeerPingPong):
                    raise ProtocolError("holder did not answer PEER_PING_PONG")
            except BaseException:
                conn.close()
                raise
        except (TimeoutError, OSError, P2PFSError) as exc:
            log.info("holder %s unreachable: %s", address, describe_os_error(exc))
            self._dead[address] = time.monotonic()
            return
        finally:
            self._connecting.pop(address, None)
        holder = _Holder(address, conn, rtt)
        self._holders[address] = holder
        self._picker.add_holder(address, chunks)
        fastest = min(h.rtt for h in self._holders.values())
        for h in self._holders.values():
            if h.meter.rate is None:
                h.window = initial_window(h.rtt, fastest)
        holder.task = asyncio.create_task(self._fetch_from(holder))
        self._notify()

    async def _close_holders(self) -> None:
        self._closing = True
        self._notify()
        tasks: list[asyncio.Task[object]] = [h.task for h in self._holders.values() if h.task is not None]
        tasks += list(self._connecting.values())
        tasks += list(self._updating)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for holder in self._holders.values():
            holder.conn.close()
        self._holders.clear()
        # A verify thread may still be writing into the file: let it finish before the file is closed.
        while self._verifying:
            await asyncio.wait(list(self._verifying))

    # -- one holder ----------------------------------------------------------------------------
    async def _fetch_from(self, holder: _Holder) -> None:
        picker = self._picker
        outstanding: list[int] = []  # in request order; replies come in the same order
        try:
            while not picker.complete and not self._closing:
                while len(outstanding) < holder.window:
                    chunk = picker.pick(holder.address)
                    if chunk is None:
                        break
                    if not outstanding:
                        holder.meter.start(time.monotonic())
                    holder.conn.send(
                        m.PeerRequestChunk(filename=self.name, chunknum=chunk, raw=self.raw, substitute=self.raw)
                    )
                    outstanding.append(chunk)
                if not outstanding:
                    holder.meter.idle()
                    await self._changed.wait()
                    continue
                await holder.conn.drain()
                async with asyncio.timeout(CHUNK_TIMEOUT):
                    reply = await holder.conn.recv()
                chunk = outstanding.pop(0)
                await self._receive(holder, chunk, reply)
        except CorruptChunk as exc:
            # A holder that lies once is not asked again for this file; its chunks go to other holders.
            log.warning("holder %s %s; dropped for this file", holder.address, exc)
            self._banned.add(holder.address)
            self._drop(holder)
        except (TimeoutError, ConnectionClosed, PeerUnavailable, ProtocolError, OSError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            log.info("holder %s dropped: %s", holder.address, reason)
            self._drop(holder)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave chunks stuck "in flight" to a dead worker
            log.exception("holder %s dropped after an internal error", holder.address)
            self._drop(holder)
        finally:
            if picker.complete or self._holders.get(holder.address) is not holder:
                holder.conn.close()

    async def _receive(self, holder: _Holder, chunk: int, reply: m.AnyMessage) -> None:
        """Take one reply to a chunk request; its bytes go to a verify thread, settled by `_settle`."""
        shared, pool, executor = self._file, self._pool, self._executor
        assert shared is not None and pool is not None and executor is not None
        if isinstance(reply, m.Error):
            log.info("holder %s cannot give chunk %d: %s", holder.address, chunk, reply.message)
            self._picker.failed(chunk, holder.address)
            self._notify()
            return
        if not isinstance(reply, m.PeerReplyChunk) or reply.filename != self.name:
            raise ProtocolError(f"holder {holder.address} answered chunk {chunk} with {_describe(reply)}")
        if reply.chunknum != chunk:
            # super-seeding: we said we accept another chunk (`substitute`, asked with the fast path)
            if not self.raw or reply.chunknum >= shared.chunk_count:
                raise ProtocolError(f"holder {holder.address} answered chunk {chunk} with chunk {reply.chunknum}")
            self._picker.cancelled(chunk, holder.address)
            chunk = reply.chunknum
        length = shared.chunk_length(chunk)
        buf: bytearray | None = None
        if reply.rawlength is not None:
            if not self.raw:
                raise ProtocolError(f"holder {holder.address} sent raw bytes that were not asked for")
            if reply.rawlength != length:
                raise CorruptChunk(f"sent a corrupt chunk {chunk} of {self.name}")  # (wrong length)
            buf = await pool.acquire()
            try:
                await holder.conn.recv_raw_into(memoryview(buf)[:length])
            except BaseException:
                pool.release(buf)
                raise
            data: bytes | memoryview = memoryview(buf)[:length]
        else:
            assert reply.data is not None
            data = reply.data
            if len(data) != length:
                raise CorruptChunk(f"sent a corrupt chunk {chunk} of {self.name}")  # (wrong length)
        holder.meter.delivered(length, time.monotonic())
        if holder.meter.rate is not None:
            holder.window = request_window(holder.meter.rate, shared.chunk_size)
        # The publisher's hash is the truth when the tracker has it; else the seed's rule: the reply's digest.
        want = self._expected[chunk] if self._expected is not None else reply.digest.lower()
        future = asyncio.get_running_loop().run_in_executor(executor, self._verify_and_write, chunk, data, want)
        self._verifying.add(future)
        future.add_done_callback(lambda f: self._settle(f, holder, chunk, length, buf))

    def _verify_and_write(self, chunk: int, data: bytes | memoryview, want: str) -> _Verified:
        """In a verify thread: hash the chunk and, if it is the first good copy, write it in place."""
        shared = self._file
        assert shared is not None
        digest = hashlib.sha256(data).hexdigest()
        if digest != want:
            return None
        with self._claim_lock:
            first = chunk not in self._claimed
            self._claimed.add(chunk)
        if first:
            shared.write_at(chunk, data)
        return digest, first

    def _settle(
        self, future: asyncio.Future[_Verified], holder: _Holder, chunk: int, length: int, buf: bytearray | None
    ) -> None:
        """Back on the event loop: a verified, written chunk becomes held and is announced; a corrupt one
        drops its holder."""
        self._verifying.discard(future)
        if buf is not None:
            assert self._pool is not None
            self._pool.release(buf)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:  # the write failed (disk full, ...): the download cannot go on
            if not self._closing:
                self._fail(error)
            return
        result = future.result()
        if result is None:
            if holder.address in self._banned:
                return  # another of its pipelined chunks was already found corrupt
            # A holder that lies once is not asked again for this file; its chunks go to other holders.
            log.warning("holder %s sent a corrupt chunk %d of %s; dropped for this file", holder.address, chunk, self.name)
            self._banned.add(holder.address)
            if holder.task is not None:
                holder.task.cancel()
            self._drop(holder)
            return
        digest, written = result
        if not written or self._closing:
            return  # an end-game duplicate (the first copy was written), or the download is over
        shared, part = self._file, self._part
        assert shared is not None and part is not None
        self._picker.completed(chunk)
        shared.mark(chunk, digest)
        part.record(chunk, digest)
        self._bytes_done += length
        self.sources[holder.address] += 1
        self.tracker.register_chunk(self.name, chunk)
        self._notify()
        self._report()

    def _fail(self, error: BaseException) -> None:
        shared = self._file
        where = shared.path if shared is not None else self.dest
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        self._failure = storage.StorageError(f"cannot write to {where}: {reason}")
        self._notify()

    def _drop(self, holder: _Holder) -> None:
        if self._holders.get(holder.address) is holder:
            del self._holders[holder.address]
        self._dead[holder.address] = time.monotonic()
        holder.conn.close()
        self._picker.remove_holder(holder.address)
        self._notify()

    def _notify(self) -> None:
        # Wake everyone waiting now; later waiters take the fresh event (no lost or stale wake-ups, since
        # nobody awaits between checking their condition and waiting).
        self._changed.set()
        self._changed = asyncio.Event()

    def _report(self) -> None:
        if self.on_progress is None or self._file is None:
            return
        self.on_progress(
            Progress(
                self.name,
                self._file.filesize,
                self._file.chunk_count,
                len(self._picker.have),
                self._bytes_done,
                len(self._holders),
                self.sources,
            )
        )


def _describe(reply: m.AnyMessage) -> str:
    return str(type(reply).__struct_config__.tag)
