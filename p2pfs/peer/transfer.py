"""The transfer engine: downloads one file from its holders.

It asks the tracker where the chunks are, pings every holder for its RTT, then keeps each reachable
holder busy with a window of pipelined PEER_REQUEST_CHUNKs (sized by `window`), choosing chunks with the
`picker`. Raw chunk bytes are read from the socket straight into a pooled buffer; worker threads hash
them (SHA-256 releases the GIL) and write the verified ones to `DEST.part` while the event loop goes on
receiving. Only then is a chunk marked held and registered with the tracker; `DEST.part` becomes `DEST`
only when every chunk is verified. A holder that dies or
times out gives its chunks back to the pool; locations are refreshed from the tracker while downloading.

Hostile holders cost little: at most MAX_HOLDERS connections are open at once (the best candidates
first, see `picker.choose_holders`); a holder that sends a corrupt chunk, a chunk it was not asked for,
or one useless substitute after another is dropped and not asked again during this download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from p2pfs.address import Address
from p2pfs.chunkset import ChunkSet
from p2pfs.errors import (
    FileNotPublished,
    NoSourceForChunk,
    P2PFSError,
    PeerUnavailable,
    ProtocolError,
    TrackerUnavailable,
)
from p2pfs.net import Connection, ConnectionClosed, connect, describe_os_error, env_seconds
from p2pfs.observe.stats import TransferStats
from p2pfs.peer import destination, hashing, storage
from p2pfs.peer.partfile import PartFile
from p2pfs.peer.picker import Candidate, Picker, choose_holders
from p2pfs.peer.storage import ChunkFile
from p2pfs.peer.tracker_client import TrackerClient
from p2pfs.peer.window import ThroughputMeter, initial_window, request_window
from p2pfs.protocol import hashes
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.ratelimit import RateLimit
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
#: beside the event loop; as many as hash a local file, see p2pfs.peer.hashing).
VERIFY_THREADS = hashing.THREADS
#: Receive buffers per download, in bytes: chunks being read or waiting for a verify thread. Bounds the
#: memory a download uses whatever the file size (at least 3 buffers, whatever the chunk size).
BUFFER_BYTES = 8 << 20
#: Most holders a download is connected to (or connecting to) at once. Each costs a socket, a window of
#: up to window.MAX_WINDOW requests and a bitmap of its chunks; 32 holders already fill any downlink
#: (a handful fill 1 Gbit/s on a LAN), and a file with thousands of holders must not open thousands of
#: sockets (BitTorrent clients cap a torrent at 50-80 peers for the same reasons). The others wait as
#: candidates, connected when a slot frees or when a connected holder has nothing left that we need.
MAX_HOLDERS = 32
#: Most holders known but not connected whose chunks are remembered (a bitmap each: 32 KiB for the
#: largest file, so 8 MiB at most). Others are left out; the tracker lists them again at the next refresh.
MAX_CANDIDATES = 256
#: A holder whose replies are this many useless substitutes in a row (a chunk we already had, sent in
#: place of the one asked for) is dropped for this download: an honest super-seeder substitutes only
#: chunks nobody has had yet, so a few in a row are a bug or an attack, and every one wastes a request.
USELESS_REPLY_LIMIT = 4
#: A holder told us "busy" (PEER_BUSY): it is asked again after its `retryafter` x a factor drawn in
#: [1, this), so the downloaders it refused do not all come back at the same instant.
RETRY_JITTER = 1.5
#: A holder answering nothing but PEER_BUSY for this long is dropped like one that does not answer
#: (a holder that is always busy would otherwise keep the chunks only it has out of reach for ever).
BUSY_TIMEOUT = CHUNK_TIMEOUT


class Part(Protocol):
    """What the engine needs of a download on disk (PartFile for a file, collection.part for a tree)."""

    candidates: dict[int, str]

    @property
    def shared(self) -> ChunkFile: ...

    def resume_chunks(self) -> list[int]: ...

    def keep_resumed(self, digests: dict[int, str | None], expected: list[str] | None) -> list[int]: ...

    def record(self, chunk: int, digest: str) -> None: ...


class UnloggedPart:
    """A Part with no state log: nothing is resumed, nothing recorded (a private fetch, or a mount's
    cache, whose chunk files are their own record)."""

    def __init__(self, shared: ChunkFile) -> None:
        self._shared = shared
        self.candidates: dict[int, str] = {}

    @property
    def shared(self) -> ChunkFile:
        return self._shared

    def resume_chunks(self) -> list[int]:
        return []

    def keep_resumed(self, digests: dict[int, str | None], expected: list[str] | None) -> list[int]:
        return []

    def record(self, chunk: int, digest: str) -> None:
        pass


@dataclass
class Progress:
    name: str
    filesize: int
    chunk_count: int
    chunks_done: int
    bytes_done: int
    holders: int
    sources: Counter[Address]
    #: "download"; "check" while an existing DEST is hashed; "resume" while kept chunks are hashed again
    #: (bytes_done then counts the bytes hashed so far, of `filesize` or of the kept chunks)
    stage: str = "download"


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
    #: DEST already held these bytes (hashed against the publisher's): nothing was fetched
    already: bool = False
    #: files of a collection (None: a plain file)
    files: int | None = None

    @property
    def mib_per_s(self) -> float:
        return self.filesize / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


class Misbehaving(ProtocolError):
    """A holder broke the protocol in a way an honest one never does: dropped, and not asked again
    during this download."""


class CorruptChunk(Misbehaving):
    """A holder sent bytes that do not match the chunk's hash."""


class UnaskedChunk(Misbehaving):
    """A holder answered a request with another chunk though the request did not allow a substitute."""


class UselessHolder(Misbehaving):
    """A holder sent USELESS_REPLY_LIMIT substitutes in a row that we already had."""


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
    #: its latest replies in a row that were useless substitutes (see USELESS_REPLY_LIMIT)
    useless: int = 0
    #: chunks it answered with ERROR: asked again (the tracker may list them again), a second ERROR for
    #: the same chunk drops the holder, so a holder that cannot read a chunk cannot keep a download busy
    refused: set[int] = field(default_factory=set)
    #: it answered PEER_BUSY: nothing is asked of it before this time (time.monotonic())
    busy_until: float = 0.0
    #: when its run of PEER_BUSY replies began (None: its last answer was a chunk), see BUSY_TIMEOUT
    busy_since: float | None = None
    #: requests sent and not answered yet
    outstanding: int = 0


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
        force: bool = False,
        serve: bool = True,
        rate_limit: RateLimit | None = None,
        transfers: TransferStats | None = None,
    ) -> None:
        #: the peer's transfer counters (p2pfs.observe): bytes received, chunks verified, holders dropped...
        self.transfers = transfers if transfers is not None else TransferStats()
        #: the process's download cap (--max-download-rate): each request waits for its chunk's tokens
        self.rate_limit = rate_limit
        #: replace a DEST that holds other bytes (never anything but a regular file)
        self.force = force
        #: serve and register the chunks as they are verified (False: a private fetch, such as a
        #: collection's manifest for `ls NAME`, or the chunks around one member)
        self.serve = serve
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
        #: holders connected (at most MAX_HOLDERS, with those connecting)
        self._holders: dict[Address, _Holder] = {}
        self._connecting: dict[Address, asyncio.Task[None]] = {}
        #: chunks of the holders we know but are not connected to (candidates, and those connecting)
        self._known: dict[Address, ChunkSet] = {}
        #: candidates that may have something we need (the others had nothing when last looked at)
        self._hopeful: set[Address] = set()
        #: (throughput, RTT) measured of holders we were connected to, to rank them as candidates again
        self._measured: dict[Address, tuple[float | None, float]] = {}
        #: holders that published the file from their own copy: only they may send substitutes
        self._publishers: set[Address] = set()
        self._dead: dict[Address, float] = {}
        #: workers of retired holders, still finishing their cancellation (awaited when the download ends)
        self._retiring: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._picker: Picker[Address] = Picker(0)
        self._file: ChunkFile | None = None
        self._part: Part | None = None
        #: the publisher's hash of every chunk (None: a seed-only publisher gave none)
        self.expected: list[str] | None = None
        #: holders that misbehaved (see Misbehaving): never asked again during this download
        self._banned: set[Address] = set()
        self._bytes_done = 0
        #: set when the download ends: workers stop at their next step even if a cancellation was lost
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None
        self._pool: BufferPool | None = None
        #: chunks a verify thread has claimed for writing (the first verified copy wins)
        self._claimed: set[int] = set()
        self._claim_lock = threading.Lock()
        #: chunks with a copy handed to a verify thread and not settled yet (read on the event loop only)
        self._incoming: set[int] = set()
        #: verifications not yet settled (awaited before the file is closed: a thread may be writing)
        self._verifying: set[asyncio.Future[_Verified]] = set()
        #: set when the download cannot go on whatever the holders do (a chunk cannot be written)
        self._failure: P2PFSError | None = None
        self._content_id: str | None = None
        #: this fetch wants only some of the chunks (no substitutes are asked for): the others, skipped
        self._partial = False
        self._skipped = ChunkSet(0)
        #: copies of chunks received after a verified copy was written (end game, substitutes)
        self.duplicates = 0
        #: a stream (see `stream`): the fetch never ends by itself, `want` says what to fetch
        self._streaming = False
        self._on_unavailable: Callable[[list[int]], None] | None = None
        #: (chunks, urgent) wanted before the stream was ready for them
        self._early_wants: list[tuple[list[int], bool]] = []
        self._stream_ready = False
        #: a look at the candidates after PEER_BUSY replies, at most one per REFRESH_INTERVAL_MIN
        self._busy_rebalance: asyncio.TimerHandle | None = None

    async def locate(self) -> tuple[m.ReplyFileLocation, int, int, int]:
        """Ask the tracker where the file is (and to push news of it): (reply, filesize, chunk count,
        chunk size), checked against each other and against the content id."""
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
        expected = hashes.split(location.chunkhashes) if location.chunkhashes else None
        if expected is not None and len(expected) != chunk_count:
            raise ProtocolError(f"tracker gave {len(expected)} chunk hashes for {chunk_count} chunks")
        if location.chunkhashes and location.contentid not in (None, hashes.content_id(location.chunkhashes)):
            raise ProtocolError(f"tracker gave chunk hashes that do not match the content id of {self.name!r}")
        self.expected = expected
        return location, filesize, chunk_count, chunk_size

    async def run(self) -> DownloadResult:
        """Download one file to DEST (see p2pfs.peer.destination); a collection is handed to its driver."""
        started = time.monotonic()
        if "/" in self.name:  # NAME/REL/PATH: one member of a collection
            from p2pfs.collection.member import download_member, split_member

            member = split_member(self.name)
            assert member is not None
            return await download_member(self, member[0], member[1], started)
        location, filesize, chunk_count, chunk_size = await self.locate()
        if location.collection is not None:
            from p2pfs.collection.download import download_collection

            return await download_collection(self, location, filesize, chunk_count, chunk_size, started)
        dest, existing = destination.resolve(self.dest, self.name)
        if existing is not None:
            held = await self._check_existing(dest, existing.st_size, filesize, chunk_size)
            if held is not None:
                self.library[self.name] = held
                return DownloadResult(
                    self.name,
                    dest,
                    filesize,
                    chunk_count,
                    time.monotonic() - started,
                    content_id=location.contentid,
                    already=True,
                )
        part = PartFile.open(dest, self.name, filesize, chunk_size, location.contentid)
        ok = False
        resumable = location.contentid is not None  # see PartFile: unverified files are never resumed
        try:
            resumed = await self.fetch(part, location, resumable)
            part.finish()
            ok = True
        finally:
            if not ok:
                self.library.pop(self.name, None)
                if (part.shared.have or part.candidates) and resumable:
                    part.keep_for_resume()
                else:
                    part.discard()
        log.info("%s: %d chunks, %d duplicate copies received", self.name, chunk_count, self.duplicates)
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

    async def fetch(
        self, part: Part, location: m.ReplyFileLocation, resumable: bool, skip: Iterable[int] = ()
    ) -> list[int]:
        """The engine: fetch every chunk of `part.shared` that is neither held nor in `skip`, from the
        holders the tracker lists (and pushes), and serve them meanwhile. Chunks the part's log names are
        hashed again first; returns those kept. Raises NoSourceForChunk (or another P2PFSError)."""
        shared = part.shared
        chunk_count = shared.chunk_count
        self._file = shared
        self._part = part
        self._closing = False
        self._holders, self._connecting, self._known, self._hopeful = {}, {}, {}, set()
        self._pool = BufferPool(shared.chunk_size, max(3, BUFFER_BYTES // shared.chunk_size))
        self._executor = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="p2pfs-verify")
        resumed: list[int] = []
        try:
            if part.candidates:
                digests = await hashing.hash_chunks(
                    shared.fd,
                    shared.filesize,
                    shared.chunk_size,
                    part.resume_chunks(),
                    self.hash_progress("resume", chunk_count),
                    reader=shared.read_into,
                )
                resumed = part.keep_resumed(digests, self.expected)
            self._claimed = set(shared.have)
            self._bytes_done += sum(shared.chunk_length(c) for c in resumed)
            if self.serve:
                self.library[self.name] = shared  # serve chunks while still downloading
            if resumed and self.serve:
                log.info("resuming %s: %d of %d chunks already verified", self.name, len(resumed), chunk_count)
                self.tracker.register_chunks(self.name, resumed)
            self._skipped = ChunkSet.from_numbers(chunk_count, skip)
            self._partial = bool(self._skipped)
            self._picker = Picker(chunk_count, have=set(shared.have).union(self._skipped))
            # the tracker pushes news since the location request; they are applied from now on (the
            # reply covered what came before)
            self.tracker.watch(self.name, self._on_update)
            if self._streaming:
                self._set_publishers(location.publishers)
                self._add_holders(location.holder_runs())
                self._stream_ready = True
                early, self._early_wants = self._early_wants, []
                for chunks, urgent in early:
                    self.want(chunks, urgent)
                await self._stream_all()
            elif not self._picker.complete:
                self._set_publishers(location.publishers)
                self._add_holders(location.holder_runs())
                try:
                    await self._download_all()
                except NoSourceForChunk as exc:
                    if not (shared.have and resumable):
                        raise
                    kept = f"; {len(shared.have)} verified chunks kept in {shared.path}: run it again to resume"
                    raise NoSourceForChunk(exc.filename, exc.missing, kept) from None
            return resumed
        finally:
            self._stream_ready = False
            self.tracker.unwatch(self.name)
            await self._close_holders()
            self._executor.shutdown(wait=True)

    async def _check_existing(
        self, dest: Path, size: int, filesize: int, chunk_size: int
    ) -> ChunkFile | None:
        """DEST is a regular file already: if its bytes are the published ones, return it opened as a held
        file (nothing to fetch); if not, refuse unless --force (then None: download and replace it)."""
        expected = self.expected
        if expected is None:
            if self.force:
                return None
            raise storage.StorageError(
                f"{dest} exists, and {self.name!r} was published without chunk hashes to compare it with; "
                "--force replaces it"
            )
        if size != filesize:
            if self.force:
                return None
            raise storage.StorageError(
                f"{dest} exists with other content ({size} bytes; {self.name!r} has {filesize}); --force replaces it"
            )
        held = storage.open_held(dest, self.name, filesize, chunk_size)
        try:
            digests = await hashing.hash_chunks(
                held.fd, filesize, chunk_size, on_progress=self.hash_progress("check", held.chunk_count)
            )
            differ = [c for c in range(held.chunk_count) if digests.get(c) != expected[c]]
            if not differ:
                storage.set_published_digests(held, digests)
                held.origin = False
                return held
        except BaseException:
            held.close()
            raise
        held.close()
        if self.force:
            return None
        raise storage.StorageError(
            f"{dest} exists with other content ({len(differ)} of {held.chunk_count} chunks differ); "
            "--force replaces it"
        )

    def hash_progress(self, stage: str, chunk_count: int) -> Callable[[int, int], None] | None:
        on_progress = self.on_progress
        if on_progress is None:
            return None
        name = self.name

        def report(done: int, total: int) -> None:
            on_progress(Progress(name, total, chunk_count, 0, done, 0, Counter(), stage))

        return report

    async def _fileinfo_from_list(self) -> tuple[int, int]:
        info = (await self.tracker.file_list()).filelist.get(self.name)
        if info is None:
            raise FileNotPublished(f"{self.name!r} is not listed by the tracker")
        return info

    # -- a stream: chunks fetched as they are wanted (the mount) --------------------------------
    async def stream(
        self, part: Part, location: m.ReplyFileLocation, on_unavailable: Callable[[list[int]], None]
    ) -> None:
        """A fetch that wants nothing at first and never ends by itself (cancel it to stop): `want`
        names the chunks to fetch, as they are needed. Holders stay connected and measured between
        wants, so a stream of reads pays for connecting and ramping up windows once. Wanted chunks that
        no holder has, even after asking the tracker again, go to `on_unavailable` and are no longer
        wanted. Chunks `part` already holds are never fetched."""
        self._streaming = True
        self._on_unavailable = on_unavailable
        await self.fetch(part, location, False, skip=range(part.shared.chunk_count))

    def want(self, chunks: Iterable[int], urgent: bool = False) -> None:
        """A stream should fetch `chunks` (`urgent`: somebody waits for them: before any other)."""
        shared = self._file
        if not self._stream_ready or shared is None:
            self._early_wants.append((list(chunks), urgent))
            return
        wanted = [c for c in chunks if 0 <= c < shared.chunk_count and c not in shared.have]
        with self._claim_lock:  # (a chunk held once and evicted since is written again when it comes)
            for chunk in wanted:
                if chunk not in self._incoming:
                    self._claimed.discard(chunk)
        for chunk in wanted:
            self._skipped.discard(chunk)
        if self._picker.want(wanted, urgent) or urgent:
            self._hopeful.update(self._known)  # (candidates that had nothing for us may have these)
            self._rebalance()
            self._notify()

    async def _stream_all(self) -> None:
        picker = self._picker
        last_refresh = time.monotonic()
        interval = min(REFRESH_INTERVAL_MIN, self.refresh_interval)
        while not self._closing:
            if self._failure is not None:
                raise self._failure
            if picker.complete:  # nothing wanted now
                await self._changed.wait()
                continue
            if not picker.can_progress():
                self._rebalance()
            if not picker.can_progress() and not self._connecting:
                if self._verifying:
                    await asyncio.wait(list(self._verifying))
                    continue
                if not await self._refresh() and not self._connecting and not picker.can_progress():
                    lost = picker.skip(picker.missing())
                    for chunk in lost:
                        self._skipped.add(chunk)
                    if lost and self._on_unavailable is not None:
                        self._on_unavailable(lost)
                last_refresh = time.monotonic()
                continue
            timeout = max(0.0, last_refresh + interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            if not picker.complete and time.monotonic() - last_refresh >= interval:
                news = await self._refresh()
                last_refresh = time.monotonic()
                interval = REFRESH_INTERVAL_MIN if news else min(interval * 2, self.refresh_interval)

    # -- coordination --------------------------------------------------------------------------
    async def _download_all(self) -> None:
        picker = self._picker
        last_refresh = time.monotonic()
        interval = min(REFRESH_INTERVAL_MIN, self.refresh_interval)
        while not picker.complete:
            if self._failure is not None:
                raise self._failure
            if not picker.can_progress():
                self._rebalance()  # (connected holders have nothing for us: try candidates that may)
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
        if self._failure is not None:  # (the last chunk's settling may have failed)
            raise self._failure

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
        self._set_publishers(location.publishers)
        return self._add_holders(location.holder_runs())

    def _on_update(self, update: m.ReplyFileLocation) -> None:
        """News pushed by the tracker (holders and chunks registered since its last update)."""
        if self._closing or update.contentid != self._content_id:
            return  # (a different file published under the same name since we started)
        try:
            self._add_holders(update.holder_runs(), complete=False)
        except Exception as exc:  # (called by the tracker client's reader: a bug must stop us, not it)
            log.exception("cannot apply an update of %s", self.name)
            self._fail(exc)

    def _set_publishers(self, publishers: list[str] | None) -> None:
        found: set[Address] = set()
        for text in publishers or ():
            try:
                found.add(Address.parse(text))
            except ValueError:
                log.warning("tracker listed a bad publisher address %r", text)
        self._publishers = found

    def _add_holders(self, holder_runs: dict[str, list[tuple[int, int]]], complete: bool = True) -> bool:
        """Record availability (each holder's chunks as runs); connect new holders while there is room.
        True if anything was new. `complete`: holder_runs is the tracker's whole view (not an update), so
        it also says what the tracker is missing of ours."""
        news = False
        now = time.monotonic()
        size = self._picker.chunk_count
        if complete:
            self._reregister_missing(holder_runs)
        for text, runs in holder_runs.items():
            try:
                address = Address.parse(text)
            except ValueError:
                log.warning("tracker listed a bad holder address %r", text)
                continue
            if address == self.self_address or not runs or address in self._banned:
                continue
            if address in self._holders:
                if self._picker.add_holder_runs(address, runs):
                    news = True
                continue
            known = self._known.get(address)
            if known is not None:
                before = len(known)
                known.add_runs(runs)
                gained = len(known) > before
            elif now - self._dead.get(address, -1e9) > RETRY_DEAD_AFTER and self._room_for_candidate():
                known = ChunkSet.from_runs(size, runs)
                gained = bool(known)
                if gained:
                    self._known[address] = known
            else:
                continue
            if gained:
                news = True
                if address not in self._connecting:
                    self._hopeful.add(address)
        if news:
            self._rebalance()
            self._notify()
        return news

    def _room_for_candidate(self) -> bool:
        """Whether one more candidate's chunks may be remembered (forgetting one that had nothing for us
        if need be)."""
        if len(self._known) < MAX_CANDIDATES:
            return True
        for address in self._known:
            if address not in self._hopeful and address not in self._connecting:
                del self._known[address]
                return True
        return False

    def _reregister_missing(self, holder_runs: dict[str, list[tuple[int, int]]]) -> None:
        """If the tracker lists fewer of our chunks than we hold (it restarted, or our registrations
        arrived before the file was listed again), register the missing ones in one batch."""
        have = self._picker.have
        if not have or self.self_address is None or not self.serve:
            return
        if self._partial:  # (the picker counts the chunks this fetch skips as had: they are not held)
            have = have.difference(self._skipped)
        listed = ChunkSet.from_runs(have.size, holder_runs.get(str(self.self_address), ()))
        missing = have.difference(listed)
        if missing:
            self.tracker.register_chunks(self.name, missing.numbers())

    # -- which holders we are connected to -----------------------------------------------------
    def _rebalance(self) -> None:
        """Connect the best candidates while fewer than MAX_HOLDERS holders are connected or connecting,
        and in place of connected holders that have nothing left that we need (see choose_holders)."""
        if self._closing or not self._hopeful:
            return
        picker = self._picker
        free = MAX_HOLDERS - len(self._holders) - len(self._connecting)
        idle = [address for address in self._holders if picker.needed(address) == 0]
        # a holder that said busy (and waits for its retry) may give its connection to a candidate; not a
        # publisher: it holds chunks nobody else has, and holds a downloader off to spread them (BEP 16)
        now = time.monotonic()
        idle += [
            a
            for a, h in self._holders.items()
            if h.busy_until > now and not h.outstanding and a not in idle and a not in self._publishers
        ]
        if free <= 0 and not idle:
            return
        coverage = picker.coverage().union_of(self._known[a] for a in self._connecting if a in self._known)
        candidates: list[Candidate[Address]] = []
        for address in list(self._hopeful):
            chunks = self._known[address]
            needed = picker.wanted(chunks)
            if not needed:
                self._hopeful.discard(address)  # (hopeful again when the tracker says it has more)
                continue
            rate, rtt = self._measured.get(address, (None, None))
            candidates.append(Candidate(address, needed, chunks.count_not_in(coverage), rate, rtt))
        close, connect = choose_holders(free, idle, candidates, picker.rng)
        for address in close:
            self._retire(self._holders[address])
        for address in connect:
            self._hopeful.discard(address)
            self._connecting[address] = asyncio.create_task(self._connect_holder(address))

    def _retire(self, holder: _Holder) -> None:
        """Close a healthy holder that has nothing left that we need, to make room for a candidate; it
        stays a candidate (its chunks remembered) in case it gets more."""
        address = holder.address
        log.debug("holder %s has nothing left that we need; closed to make room for another", address)
        chunks = self._picker.chunks_of(address)
        self._measured[address] = (holder.meter.rate, holder.rtt)
        del self._holders[address]
        if holder.task is not None:
            holder.task.cancel()
            self._retiring.add(holder.task)
            holder.task.add_done_callback(self._retiring.discard)
        holder.conn.close()
        self._picker.remove_holder(address)
        if chunks is not None:
            self._known[address] = chunks
        self._notify()

    async def _connect_holder(self, address: Address) -> None:
        conn: Connection | None = None
        try:
            conn, rtt = await self._ping(address)
        except (TimeoutError, OSError, P2PFSError) as exc:
            log.info("holder %s unreachable: %s", address, describe_os_error(exc))
        except Exception:  # (a bug: this holder is skipped, the download goes on)
            log.exception("holder %s skipped after an internal error", address)
        finally:
            self._connecting.pop(address, None)
        chunks = self._known.pop(address, None)
        if conn is None or chunks is None or self._closing or address in self._banned:
            if conn is not None:
                conn.close()
            else:
                self._dead[address] = time.monotonic()
            self._hopeful.discard(address)
            self._rebalance()  # (a slot is free)
            self._notify()
            return
        holder = _Holder(address, conn, rtt)
        self._holders[address] = holder
        self._picker.add_holder_set(address, chunks)
        fastest = min(h.rtt for h in self._holders.values())
        for h in self._holders.values():
            if h.meter.rate is None:
                h.window = initial_window(h.rtt, fastest)
        holder.task = asyncio.create_task(self._fetch_from(holder))
        self._notify()

    async def _ping(self, address: Address) -> tuple[Connection, float]:
        """Connect to a holder and time a PEER_PING_PONG."""
        conn = await connect(address, PING_TIMEOUT, self.security, "holder")
        try:
            sent = time.monotonic()
            async with asyncio.timeout(PING_TIMEOUT):
                reply = await conn.request(m.PeerPingPong())
            if not isinstance(reply, m.PeerPingPong):
                raise ProtocolError("holder did not answer PEER_PING_PONG")
            return conn, time.monotonic() - sent
        except BaseException:
            conn.close()
            raise

    async def _close_holders(self) -> None:
        self._closing = True
        if self._busy_rebalance is not None:
            self._busy_rebalance.cancel()
            self._busy_rebalance = None
        self._notify()
        tasks: list[asyncio.Task[object]] = [h.task for h in self._holders.values() if h.task is not None]
        tasks += list(self._connecting.values())
        tasks += list(self._retiring)
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
        # (chunk, whether the request allowed a substitute, when it was sent), in request order; replies
        # come in that order
        outstanding: deque[tuple[int, bool, float]] = deque()
        try:
            while (self._streaming or not picker.complete) and not self._closing:
                # a holder whose last replies were useless substitutes gets one request at a time
                window = 1 if holder.useless else holder.window
                wait = holder.busy_until - time.monotonic()
                if wait > 0:  # it said busy: nothing more is asked of it until then
                    if not outstanding:
                        holder.meter.idle()
                        await asyncio.sleep(wait)
                        continue
                    window = 0
                while len(outstanding) < window:
                    chunk = picker.pick(holder.address)
                    if chunk is None:
                        break
                    if self.rate_limit is not None:
                        # paced before it is asked for; the wait counts in the holder's measured rate,
                        # so a capped download spreads its requests as over slow holders
                        await self.rate_limit.take(self._chunk_length(chunk))
                    if not outstanding:
                        holder.meter.start(time.monotonic())
                    # only a publisher super-seeds: nobody else is allowed to answer with another chunk
                    # (and not in a fetch of some chunks only: a substitute could be one we do not want)
                    substitute = self.raw and holder.address in self._publishers and not self._partial
                    holder.conn.send(
                        m.PeerRequestChunk(
                            filename=self.name,
                            chunknum=chunk,
                            raw=self.raw,
                            substitute=substitute,
                            busyok=self.raw,
                        )
                    )
                    outstanding.append((chunk, substitute, time.monotonic()))
                    holder.outstanding = len(outstanding)
                if not outstanding:
                    holder.meter.idle()
                    await self._changed.wait()
                    continue
                await holder.conn.drain()
                async with asyncio.timeout(CHUNK_TIMEOUT):
                    reply = await holder.conn.recv()
                chunk, substitute, sent = outstanding.popleft()
                holder.outstanding = len(outstanding)
                if isinstance(reply, m.PeerBusy):
                    self._busy(holder, chunk, reply)
                    continue
                holder.busy_since = None
                await self._receive(holder, chunk, substitute, reply)
                self.transfers.chunk_fetch_duration.observe(time.monotonic() - sent)
        except Misbehaving as exc:
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
            if (picker.complete and not self._streaming) or self._holders.get(holder.address) is not holder:
                holder.conn.close()

    def _busy(self, holder: _Holder, chunk: int, reply: m.PeerBusy) -> None:
        """The holder will not send `chunk` now (all its upload slots are taken): the chunk goes back to
        the picker for the other holders, and this one is asked again after its `retryafter`."""
        if reply.filename != self.name or reply.chunknum != chunk:
            raise ProtocolError(
                f"holder {holder.address} answered chunk {chunk} with PEER_BUSY for chunk {reply.chunknum}"
            )
        self.transfers.busy_replies_received += 1
        now = time.monotonic()
        if holder.busy_since is None:
            holder.busy_since = now
        elif now - holder.busy_since > BUSY_TIMEOUT:
            raise PeerUnavailable(f"answered only PEER_BUSY for {now - holder.busy_since:.0f} s")
        self._picker.cancelled(chunk, holder.address)
        if holder.busy_until <= now:
            holder.busy_until = now + reply.retryafter * (1 + (RETRY_JITTER - 1) * self._picker.rng.random())
        if self._busy_rebalance is None and self._hopeful:
            # (coalesced: one look at the candidates per REFRESH_INTERVAL_MIN, not one per busy reply)
            self._busy_rebalance = asyncio.get_running_loop().call_later(
                REFRESH_INTERVAL_MIN, self._rebalance_after_busy
            )
        self._notify()  # (the chunk given back may be asked of another holder now)

    def _rebalance_after_busy(self) -> None:
        self._busy_rebalance = None
        self._rebalance()

    async def _receive(self, holder: _Holder, chunk: int, substitute: bool, reply: m.AnyMessage) -> None:
        """Take one reply to a request for `chunk` (`substitute`: the request allowed another chunk in
        reply); its bytes go to a verify thread, settled by `_settle`."""
        shared, pool, executor = self._file, self._pool, self._executor
        assert shared is not None and pool is not None and executor is not None
        if isinstance(reply, m.Error):
            if chunk in holder.refused:
                raise PeerUnavailable(f"answered chunk {chunk} with ERROR twice ({reply.message})")
            holder.refused.add(chunk)
            log.info("holder %s cannot give chunk %d: %s", holder.address, chunk, reply.message)
            self._picker.failed(chunk, holder.address)
            self._notify()
            return
        if not isinstance(reply, m.PeerReplyChunk) or reply.filename != self.name:
            raise ProtocolError(f"holder {holder.address} answered chunk {chunk} with {_describe(reply)}")
        asked = chunk
        if reply.chunknum != chunk:
            # super-seeding: we said we accept another chunk (`substitute`, only asked of publishers)
            if not substitute:
                raise UnaskedChunk(
                    f"answered a request for chunk {chunk} with chunk {reply.chunknum} unasked"
                )
            if reply.chunknum >= shared.chunk_count:
                raise UnaskedChunk(
                    f"answered chunk {chunk} with chunk {reply.chunknum}, beyond the file's end"
                )
            self._picker.cancelled(chunk, holder.address)
            chunk = reply.chunknum
        # new: no copy of it is held, claimed or being verified (another copy of a chunk asked for is an
        # end-game duplicate, our own doing: it neither counts against the holder nor for it)
        new = chunk not in self._claimed and chunk not in self._incoming
        useless = not new and chunk != asked
        if new:
            holder.useless = 0
        elif useless:
            holder.useless += 1
            if holder.useless >= USELESS_REPLY_LIMIT:
                raise UselessHolder(f"sent {holder.useless} chunks in a row that we had, in place of others")
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
        self.transfers.downloaded_bytes += length
        if useless:  # read (the stream goes on) but neither hashed nor counted as throughput
            if buf is not None:
                pool.release(buf)
            return
        holder.meter.delivered(length, time.monotonic())
        if holder.meter.rate is not None:
            holder.window = request_window(holder.meter.rate, shared.chunk_size)
        if chunk in self._claimed:
            # an end-game duplicate of a chunk already verified and written: counted as the holder's
            # throughput (it sent what was asked) but not hashed again, which would only be thrown away
            self.duplicates += 1
            if buf is not None:
                pool.release(buf)
            return
        # The publisher's hash is the truth when the tracker has it; else the seed's rule: the reply's digest.
        want = self.expected[chunk] if self.expected is not None else reply.digest.lower()
        future = asyncio.get_running_loop().run_in_executor(
            executor, self._verify_and_write, chunk, data, want
        )
        self._verifying.add(future)
        self._incoming.add(chunk)
        future.add_done_callback(lambda f: self._settle(f, holder, chunk, length, buf))

    def _chunk_length(self, chunk: int) -> int:
        assert self._file is not None
        return self._file.chunk_length(chunk)

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
        self,
        future: asyncio.Future[_Verified],
        holder: _Holder,
        chunk: int,
        length: int,
        buf: bytearray | None,
    ) -> None:
        """Back on the event loop: a verified, written chunk becomes held and is announced; a corrupt one
        drops its holder. Whatever goes wrong here (the state log cannot be written, a bug) fails the
        download with one clear error: a done-callback's exception would only be logged by the loop."""
        self._verifying.discard(future)
        self._incoming.discard(chunk)
        if buf is not None:
            assert self._pool is not None
            self._pool.release(buf)
        try:
            self._settle_verified(future, holder, chunk, length)
        except Exception as exc:
            if not self._closing:
                if not isinstance(exc, (OSError, P2PFSError)):
                    log.exception("internal error while settling chunk %d of %s", chunk, self.name)
                self._fail(exc)

    def _settle_verified(
        self, future: asyncio.Future[_Verified], holder: _Holder, chunk: int, length: int
    ) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:  # the write failed (disk full, ...): the download cannot go on
            if not self._closing:
                self._fail(error)
            return
        result = future.result()
        if result is None:
            self.transfers.hash_failures += 1
            if holder.address in self._banned:
                return  # another of its pipelined chunks was already found corrupt
            # A holder that lies once is not asked again for this file; its chunks go to other holders.
            log.warning(
                "holder %s sent a corrupt chunk %d of %s; dropped for this file",
                holder.address,
                chunk,
                self.name,
            )
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
        part.record(chunk, digest)  # (StorageError if the disk is full: the chunk is then not held)
        if not self._picker.completed(chunk):
            return
        shared.mark(chunk, digest)
        self.transfers.chunks_verified += 1
        self._bytes_done += length
        self.sources[holder.address] += 1
        if self.serve:
            self.tracker.register_chunk(self.name, chunk)
        self._notify()
        self._report()

    def _fail(self, error: BaseException) -> None:
        """The download cannot go on whatever the holders do: `run` raises one clear error (the first)."""
        if self._failure is None:
            if isinstance(error, P2PFSError):
                self._failure = error
            elif isinstance(error, OSError):
                shared = self._file
                where = error.filename or (shared.path if shared is not None else self.dest)
                reason = error.strerror or str(error)
                self._failure = storage.StorageError(f"cannot write to {where}: {reason}")
            else:
                self._failure = P2PFSError(
                    f"download of {self.name!r} stopped by an internal error: {error!r}"
                )
        self._notify()

    def _drop(self, holder: _Holder) -> None:
        self.transfers.holders_dropped += 1
        if self._holders.get(holder.address) is holder:
            del self._holders[holder.address]
        self._dead[holder.address] = time.monotonic()
        holder.conn.close()
        self._picker.remove_holder(holder.address)
        self._rebalance()  # (a slot is free)
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
                len(self._file.have),
                self._bytes_done,
                len(self._holders),
                self.sources,
            )
        )


def _describe(reply: m.AnyMessage) -> str:
    return str(type(reply).__struct_config__.tag)
