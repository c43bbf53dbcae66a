"""The tracker's answer for a collection member `NAME/REL/PATH` (docs/PROTOCOL.md §14, "One member"), so
a program that speaks only the seed protocol can fetch one member as a plain file.

The tracker has a collection's chunk hashes but not its manifest: it fetches the manifest's chunks from a
holder over the chunk protocol (with the swarm's Security, as a peer would), verifies each against the
chunk hashes, checks the manifest with the downloader's rules, and keeps a `ManifestIndex` of it in a
cache bounded in bytes (least recently used out first). One fetch per collection is in flight; askers
meanwhile wait for it. A fetch that fails answers "file not found" and is tried again only after a
back-off, so a collection whose holders serve nothing good costs a fetch now and then, not one per ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import OrderedDict

from p2pfs.address import Address
from p2pfs.collection.index import ManifestIndex, MemberSpan
from p2pfs.collection.manifest import ManifestError
from p2pfs.collection.store import padded
from p2pfs.errors import P2PFSError, ProtocolError
from p2pfs.net import ConnectionClosed, connect, env_seconds
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE, DIGEST_SIZE
from p2pfs.security import OPEN, Security
from p2pfs.tracker.registry import FileRecord, Registry

log = logging.getLogger("p2pfs.tracker")

#: Bytes of resolved manifests kept (the manifest itself plus 16 bytes a file member): a collection of
#: a million files has a manifest of ~60 MB, so a few of the largest fit. A manifest larger than this
#: is not fetched at all (its members are not resolved).
MANIFEST_CACHE_BYTES = 256 << 20
#: Holders asked, one after the other, before a fetch is given up.
HOLDERS_TRIED = 3
#: Seconds the manifest's chunks may take to arrive (from all the holders tried), plus one second per
#: MIN_FETCH_RATE bytes of manifest.
FETCH_TIMEOUT = env_seconds("P2PFS_REQUEST_TIMEOUT", 10.0)
MIN_FETCH_RATE = 4 << 20
#: Manifest chunks asked for at once on a holder connection.
PIPELINE = 8
#: After a failed fetch, the next is tried no sooner than this many seconds, doubling to RETRY_MAX.
RETRY_MIN = 1.0
RETRY_MAX = 60.0
#: Manifest fetches in flight at once, over all collections (each holds up to a manifest in memory).
MAX_FETCHES = 4
#: Failed collections remembered (for their back-off); the oldest are forgotten first.
MAX_FAILURES = 4096


class FetchFailed(P2PFSError):
    """No holder gave a manifest that verifies and passes the checks."""


def not_found(name: str) -> m.Error:
    """The reply to a location request for what is not listed (a file, or a member of none)."""
    return m.Error(message=f"file not found: {name}", request="REQUEST_FILE_LOCATION")


def register_refused(name: str) -> m.Error:
    """The answer to REQUEST_CHUNK_REGISTER of a member: its chunks are the collection's."""
    collection = name.partition("/")[0]
    return m.Error(
        message=f"members are registered through their collection: register chunks of {collection}",
        request="REQUEST_CHUNK_REGISTER",
    )


class MemberResolver:
    """Answers REQUEST_FILE_LOCATION for `NAME/REL/PATH` from the registry and the manifests it fetches."""

    def __init__(
        self,
        security: Security = OPEN,
        cache_bytes: int = MANIFEST_CACHE_BYTES,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.security = security
        self.cache_bytes = cache_bytes
        self.timeout = timeout
        #: content id -> index of its manifest, least recently used first
        self._cache: OrderedDict[str, ManifestIndex] = OrderedDict()
        self._cost: dict[str, int] = {}
        self.cached_bytes = 0
        #: content id -> the fetch in flight
        self._fetches: dict[str, asyncio.Task[ManifestIndex]] = {}
        #: content id -> (monotonic time before which no new fetch is tried, the back-off that gave it)
        self._failed: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._slots = asyncio.Semaphore(MAX_FETCHES)
        #: fetches started (for tests and logs: a failed collection is not fetched on every ask)
        self.fetches = 0

    async def locate(
        self, registry: Registry, request: m.RequestFileLocation
    ) -> m.ReplyFileLocation | m.Error:
        """The reply for `request.filename` = NAME/REL/PATH: the member's own fileinfo and, per holder of the
        collection, the member chunks whose bytes it holds; "file not found" for anything else (no such
        collection or member, a directory, a link, a manifest that cannot be had)."""
        name, _, path = request.filename.partition("/")
        record = registry.locations(name)
        if record is None or record.collection is None or record.content_id is None:
            return not_found(request.filename)
        index = await self.index(record)
        member = index.find(path) if index is not None else None
        if registry.locations(name) is not record:  # (delisted, or listed anew, while the manifest came)
            return not_found(request.filename)
        if index is None or member is None or record.collection is None:
            return not_found(request.filename)
        chunk_size = record.chunk_size or DEFAULT_CHUNK_SIZE
        span = MemberSpan.of(member, record.collection.manifestsize, chunk_size)
        held = {}
        for address, chunks in record.holders.items():
            runs = span.held_runs(chunks)
            if runs:
                held[str(address)] = runs
        # (no chunkhashes or contentid: they are the collection's, not the member's)
        return m.ReplyFileLocation(
            filename=request.filename,
            chunkinfo={}
            if request.ranges
            else {h: [c for a, b in r for c in range(a, b)] for h, r in held.items()},
            fileinfo=(member.size, span.chunk_count),
            chunksize=record.chunk_size,
            chunkranges=held if request.ranges else None,
        )

    async def index(self, record: FileRecord) -> ManifestIndex | None:
        """The index of the collection's manifest: cached, or fetched now (None if that fails, or failed
        recently)."""
        key = record.content_id
        assert key is not None
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        task = self._fetches.get(key)
        if task is None:
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() < failed[0]:
                return None
            task = self._fetches[key] = asyncio.get_running_loop().create_task(self._fetch(record))
            task.add_done_callback(lambda t: self._settled(key, t))
            self.fetches += 1
        try:
            return await asyncio.shield(task)
        except Exception:  # noqa: BLE001 - FetchFailed, a timeout; anything else is logged once, by _settled
            return None

    def _settled(self, key: str, task: asyncio.Task[ManifestIndex]) -> None:
        self._fetches.pop(key, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._failed.pop(key, None)
            self._keep(key, task.result())
            return
        if not isinstance(exc, (FetchFailed, asyncio.TimeoutError)):
            log.error("manifest fetch of %s failed: %r", key[:12], exc)
        previous = self._failed.pop(key, None)
        delay = min(previous[1] * 2, RETRY_MAX) if previous is not None else RETRY_MIN
        self._failed[key] = (time.monotonic() + delay, delay)
        while len(self._failed) > MAX_FAILURES:
            self._failed.popitem(last=False)

    def _keep(self, key: str, index: ManifestIndex) -> None:
        cost = index.cost + index.manifest_bytes
        if cost > self.cache_bytes:
            return
        self._cache[key] = index
        self._cost[key] = cost
        self.cached_bytes += cost
        while self.cached_bytes > self.cache_bytes:
            old, _ = self._cache.popitem(last=False)
            self.cached_bytes -= self._cost.pop(old)

    async def _fetch(self, record: FileRecord) -> ManifestIndex:
        """The manifest of `record` from the first holder (of up to HOLDERS_TRIED, in random order) that
        serves all its chunks correctly; FetchFailed if none does."""
        info, hashes = record.collection, record.chunk_hashes
        assert info is not None and hashes is not None
        chunk_size = record.chunk_size or DEFAULT_CHUNK_SIZE
        size = info.manifestsize
        count = padded(size, chunk_size) // chunk_size
        if size > self.cache_bytes or count > record.chunk_count:
            raise FetchFailed(f"the manifest of {record.name} is too large to resolve members ({size} bytes)")
        holders = [a for a, chunks in record.holders.items() if all(c in chunks for c in range(count))]
        random.shuffle(holders)
        if not holders:
            raise FetchFailed(f"no holder of the manifest of {record.name}")
        async with self._slots:
            got: tuple[bytes, Address] | None = None
            try:  # (the time allowed grows with the manifest: a million members is ~60 MB)
                async with asyncio.timeout(self.timeout + size / MIN_FETCH_RATE):
                    for address in holders[:HOLDERS_TRIED]:
                        try:
                            data = await self._fetch_from(
                                address, record.name, size, count, chunk_size, record.filesize, hashes
                            )
                        except (OSError, ConnectionClosed, ProtocolError, P2PFSError) as exc:
                            log.warning("manifest of %s not had from %s: %s", record.name, address, exc)
                            continue
                        got = data, address
                        break
            except TimeoutError:
                log.warning("manifest of %s not had in time", record.name)
            if got is None:
                raise FetchFailed(f"no holder served the manifest of {record.name}")
            data, address = got
            # (no time limit: checking a million members is seconds of CPU, in a thread, done once)
            try:
                index = await asyncio.to_thread(ManifestIndex.from_bytes, data)
            except ManifestError as exc:  # (it verified: the publisher's own manifest is bad)
                raise FetchFailed(f"refused the manifest of {record.name}: {exc}") from None
        if padded(size, chunk_size) + index.size != record.filesize:
            raise FetchFailed(f"refused the manifest of {record.name}: its members do not add up to its size")
        log.info("resolved the manifest of %s (%d files) from %s", record.name, len(index), address)
        return index

    async def _fetch_from(
        self,
        address: Address,
        name: str,
        size: int,
        count: int,
        chunk_size: int,
        filesize: int,
        hashes: bytes,
    ) -> bytes:
        """Manifest chunks 0..count-1 of `name` from the chunk server at `address`, each verified against
        the collection's chunk hashes; the manifest's `size` bytes. ProtocolError for a wrong answer."""
        conn = await connect(address, security=self.security, peer="holder")
        try:
            data = bytearray(count * chunk_size)
            asked = 0
            for chunk in range(count):
                while asked < count and asked < chunk + PIPELINE:
                    conn.send(m.PeerRequestChunk(filename=name, chunknum=asked, raw=True))
                    asked += 1
                await conn.drain()
                reply = await conn.recv()
                if isinstance(reply, m.Error):
                    raise ProtocolError(f"chunk {chunk} refused: {reply.message}")
                if not isinstance(reply, m.PeerReplyChunk) or reply.chunknum != chunk:
                    raise ProtocolError(f"chunk {chunk} answered with something else")
                length = min(chunk_size, filesize - chunk * chunk_size)
                view = memoryview(data)[chunk * chunk_size : chunk * chunk_size + length]
                if reply.rawlength is not None:
                    if reply.rawlength != length:
                        raise ProtocolError(f"chunk {chunk} has {reply.rawlength} bytes, not {length}")
                    await conn.recv_raw_into(view)
                else:
                    assert reply.data is not None
                    if len(reply.data) != length:
                        raise ProtocolError(f"chunk {chunk} has {len(reply.data)} bytes, not {length}")
                    view[:] = reply.data
                if hashlib.sha256(view).digest() != hashes[chunk * DIGEST_SIZE : (chunk + 1) * DIGEST_SIZE]:
                    raise ProtocolError(f"chunk {chunk} does not match the collection's chunk hashes")
            return bytes(data[:size])
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()
