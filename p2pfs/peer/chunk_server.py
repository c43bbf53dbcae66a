"""The peer's server: answers PEER_REQUEST_CHUNK from the files it holds and echoes PEER_PING_PONG.

Chunks are looked up by published name in the peer's library, never by a path taken from a request.
Requests on one connection are answered in order, so a downloader can pipeline several.

Upload slots (p2pfs.peer.slots): chunks go to a few connections at a time, each for a short grant, so
a chunk leaves whole and soon rather than every requester getting a sliver of the uplink. A request
beyond the slots waits in a short line; beyond that, a request that accepts it (`busyok`) is answered
PEER_BUSY at once, and any other waits in line. A slot whose reply does not drain in a few times its
expected time is taken back, so a downloader that reads slowly (or not at all) cannot hold one.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping

from p2pfs.collection.index import ManifestIndex, MemberSpan
from p2pfs.collection.store import CollectionStore
from p2pfs.net import Connection, env_seconds
from p2pfs.observe.stats import TransferStats
from p2pfs.peer.slots import Busy, Queued, UplinkMeter, UploadSlots
from p2pfs.peer.storage import ChunkFile, StorageError
from p2pfs.peer.superseed import HOLD_OFF_RETRY, SuperSeeder
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import MAX_CHUNK_SERVER_FRAME
from p2pfs.ratelimit import RateLimit
from p2pfs.security import OPEN, Security
from p2pfs.server import FrameServer

log = logging.getLogger("p2pfs.peer")

#: Most simultaneous downloader connections one peer serves (each downloader uses one per holder).
MAX_CONNECTIONS = 1024
#: Most of them from one host (a host runs a few downloaders, each with one connection per holder).
MAX_CONNECTIONS_PER_HOST = 512
#: Seconds a downloader's connection may stay silent before it is closed.
IDLE_TIMEOUT = env_seconds("P2PFS_IDLE_TIMEOUT", 60.0)
#: A slot's reply may take this many times its expected time (a chunk at the uplink's rate shared by the
#: slots) to drain before its slot goes to another connection (the reply itself is still sent).
SLOW_DRAIN_FACTOR = 4.0
#: ... and never less than this many seconds (an unmeasured uplink, a burst of scheduling delay).
SLOW_DRAIN_MIN = 1.0


class ChunkServer(FrameServer):
    kind = "peer"

    def __init__(
        self,
        library: Mapping[str, ChunkFile],
        delay: float = 0.0,
        raw: bool = True,
        super_seed: bool = True,
        security: Security = OPEN,
        upload: RateLimit | None = None,
        upload_slots: int | None = None,
    ) -> None:
        super().__init__(
            security,
            max_connections=MAX_CONNECTIONS,
            max_connections_per_host=MAX_CONNECTIONS_PER_HOST,
            max_frame=MAX_CHUNK_SERVER_FRAME,
        )
        self.library = library
        #: answer `raw` requests with the binary fast path (False: always the seed's base64 JSON)
        self.raw = raw
        #: test-only: seconds to wait before each chunk reply, holding its upload slot (emulates a slow
        #: or distant holder)
        self.delay = delay
        #: the process's upload cap (--max-upload-rate), shared with its other chunk servers; None: none
        self.upload = upload
        #: sends every chunk of a file this peer published once before any twice (see superseed)
        self.super_seeder: SuperSeeder | None = SuperSeeder() if super_seed else None
        self._connection_ids = itertools.count(1)
        #: the peer's transfer counters (bytes sent here, received by its downloads), read by /metrics
        self.transfers = TransferStats()
        self._connection_id: dict[Connection, int] = {}
        #: who is sent chunks now (None: everyone at once, as before upload slots); `upload_slots`: None
        #: sizes them from the measured uplink, 0 turns them off, N > 0 fixes them at N
        self.slots: UploadSlots[Connection] | None = None
        if upload_slots is None:
            self.slots = UploadSlots()
        elif upload_slots > 0:
            self.slots = UploadSlots(slots=upload_slots)
        self._fixed_slots = upload_slots is not None
        self.uplink = UplinkMeter()
        #: replies being sent (their bytes handed over, not yet drained)
        self._sending = 0
        #: connections whose request waits in line, woken when UploadSlots gives them a slot
        self._parked: dict[Connection, asyncio.Event] = {}
        self._expiry: asyncio.TimerHandle | None = None

    def idle_timeout(self, conn: Connection) -> float | None:
        return IDLE_TIMEOUT

    def on_close(self, conn: Connection) -> None:
        connection_id = self._connection_id.pop(conn, None)
        if connection_id is not None and self.super_seeder is not None:
            self.super_seeder.closed(connection_id)
        self._parked.pop(conn, None)
        if self.slots is not None:
            self._promote(self.slots.close(conn))

    # -- upload slots ----------------------------------------------------------------------------
    def _promote(self, conns: Iterable[Connection]) -> None:
        """Connections UploadSlots gave a slot to: their waiting request goes now."""
        assert self.slots is not None
        for conn in conns:
            event = self._parked.pop(conn, None)
            if event is None:  # (gone meanwhile: its slot passes on)
                self._promote(self.slots.close(conn))
                continue
            self.slots.start(conn)
            event.set()
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        """Take back idle slots when they expire, if anyone waits (UploadSlots.next_expiry)."""
        assert self.slots is not None
        due = self.slots.next_expiry()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        assert self.slots is not None
        self._promote(self.slots.expire(time.monotonic()))

    async def _admit(self, conn: Connection, request: m.PeerRequestChunk) -> bool:
        """Wait for a slot for `conn`'s request; False: it was answered PEER_BUSY instead."""
        assert self.slots is not None
        admission = self.slots.admit(conn, time.monotonic(), refuse=request.busyok)
        if isinstance(admission, Busy):
            self.transfers.busy_replies += 1
            conn.send(
                m.PeerBusy(
                    filename=request.filename,
                    chunknum=request.chunknum,
                    retryafter=round(admission.retry_after, 3),
                )
            )
            return False
        if isinstance(admission, Queued):
            event = self._parked.setdefault(conn, asyncio.Event())
            self._schedule_expiry()
            await event.wait()
        return True

    async def _drain(self, conn: Connection, nbytes: int) -> bool:
        """Wait until a reply of `nbytes` has drained; True if its slot was taken back meanwhile (it
        drained slowly: the slot went to another connection)."""
        slots = self.slots
        if slots is None:
            await conn.drain()
            return False
        rate = self.uplink.rate
        expected = nbytes * slots.slots / rate if rate else 0.0
        drain = asyncio.ensure_future(conn.drain())
        try:
            done, _ = await asyncio.wait({drain}, timeout=max(SLOW_DRAIN_MIN, SLOW_DRAIN_FACTOR * expected))
            if done:
                drain.result()
                return False
            log.info("%s reads slowly: its upload slot goes to another connection", conn.remote)
            self._promote(slots.close(conn))
            await drain
            return True
        finally:
            if not drain.done():
                drain.cancel()

    async def handle(self, conn: Connection, message: m.AnyMessage) -> None:
        if not isinstance(message, m.PeerRequestChunk):
            await super().handle(conn, message)
            return
        connection_id = self._connection_id.get(conn)
        if connection_id is None:
            connection_id = self._connection_id[conn] = next(self._connection_ids)
        await self._send_chunk(conn, message, connection_id)

    async def _send_chunk(self, conn: Connection, request: m.PeerRequestChunk, connection_id: int) -> None:
        slots = self.slots
        if slots is None:
            await self._reply(conn, request, connection_id)
            return
        if not await self._admit(conn, request):
            return
        released = False
        try:
            released = await self._reply(conn, request, connection_id)
        finally:
            if not released:
                self._promote(slots.sent(conn, time.monotonic(), more=False))

    async def _reply(self, conn: Connection, request: m.PeerRequestChunk, connection_id: int) -> bool:
        """Send the chunk asked for (or a super-seeding substitute, or ERROR) and wait for it to drain.
        True if its upload slot was taken back while it drained (see _drain)."""
        if self.delay:  # (inside the upload slot: a slow holder keeps its slots busy for longer)
            await asyncio.sleep(self.delay)
        shared = self.library.get(request.filename)
        chunk = request.chunknum
        if self.super_seeder is not None and shared is not None and shared.origin:
            now = time.monotonic()
            if request.substitute:
                chosen = self.super_seeder.choose(shared.name, shared.chunk_count, chunk, connection_id, now)
                if chosen is None and request.busyok:  # (BEP 16: what it was given is at no other holder yet)
                    self.transfers.busy_replies += 1
                    conn.send(m.PeerBusy(filename=request.filename, chunknum=chunk, retryafter=HOLD_OFF_RETRY))
                    return False
                if chosen is None:  # (it cannot be told busy: answered as asked)
                    self.super_seeder.sent(shared.name, shared.chunk_count, chunk, connection_id, now)
                else:
                    chunk = chosen
            else:
                self.super_seeder.sent(shared.name, shared.chunk_count, chunk, connection_id, now)
        reply = self._chunk_reply(shared, request.filename, chunk)
        if isinstance(reply, m.Error):
            conn.send(reply)
            return False
        digest, data = reply
        if self.upload is not None:
            # paced before it is sent: the chunk's bytes are paid for at the cap (p2pfs.ratelimit)
            await self.upload.take(len(data))
        if self.slots is not None and shared is not None:
            self.slots.chunk_size = shared.chunk_size
        if self._sending == 0:
            self.uplink.busy(time.monotonic())
        self._sending += 1
        try:
            self._send_reply(conn, request, chunk, digest, data)
            released = await self._drain(conn, len(data))
        finally:
            self._sending -= 1
        rate = self.uplink.sent(len(data), time.monotonic())
        if self._sending == 0:
            self.uplink.idle()
        if rate is not None and self.slots is not None:
            if self._fixed_slots:
                self.slots.rate = rate  # (the retry delay still follows the uplink)
            else:
                self.slots.measured(rate)
        return released

    def _send_reply(
        self, conn: Connection, request: m.PeerRequestChunk, chunk: int, digest: str, data: bytes
    ) -> None:
        if request.raw and self.raw:
            # the binary fast path: a small header frame, then the chunk's bytes as they are
            conn.send(
                m.PeerReplyChunk(
                    filename=request.filename, chunknum=chunk, digest=digest, rawlength=len(data)
                )
            )
            conn.send_raw(data)
        else:
            conn.send(
                m.PeerReplyChunk(
                    filename=request.filename, chunknum=chunk, digest=digest, data=data
                )
            )
        self.transfers.uploaded_bytes += len(data)

    def _chunk_reply(self, shared: ChunkFile | None, filename: str, chunk: int) -> m.Error | tuple[str, bytes]:
        if shared is None:
            if "/" in filename:  # a collection's member NAME/REL/PATH, served as a plain file
                return _member_reply(self.library, filename, chunk)
            return m.Error(message=f"file not shared here: {filename}", request="PEER_REQUEST_CHUNK")
        if chunk not in shared.have:
            return m.Error(message=f"chunk {chunk} of {filename} not held here", request="PEER_REQUEST_CHUNK")
        try:
            data = shared.read_chunk(chunk)
        except (OSError, StorageError) as exc:
            log.error("cannot read chunk %d of %s: %s", chunk, shared.path, exc)
            return m.Error(message=f"cannot read chunk {chunk} of {filename}", request="PEER_REQUEST_CHUNK")
        return shared.digests[chunk], data


def _member_reply(library: Mapping[str, ChunkFile], filename: str, chunk: int) -> m.Error | tuple[str, bytes]:
    """Chunk `chunk` of the member `NAME/REL/PATH` (its own chunks, docs/PROTOCOL.md §14): the member's
    bytes, read from the collection NAME when this peer holds every collection chunk they lie in."""
    name, _, path = filename.partition("/")
    store = library.get(name)
    if not isinstance(store, CollectionStore) or store.index is None:  # (no tree yet: no member is known)
        return m.Error(message=f"file not shared here: {filename}", request="PEER_REQUEST_CHUNK")
    member = ManifestIndex.of_members(store.fd, store.index).find(path)
    if member is None:
        return m.Error(message=f"file not shared here: {filename}", request="PEER_REQUEST_CHUNK")
    span = MemberSpan.of(member, store.manifest_size, store.chunk_size)
    if chunk >= span.chunk_count or not all(c in store.have for c in span.covering(chunk)):
        return m.Error(message=f"chunk {chunk} of {filename} not held here", request="PEER_REQUEST_CHUNK")
    try:
        data = store.read_range(*span.byte_range(chunk))
    except (OSError, StorageError) as exc:
        log.error("cannot read chunk %d of %s: %s", chunk, filename, exc)
        return m.Error(message=f"cannot read chunk {chunk} of {filename}", request="PEER_REQUEST_CHUNK")
    return hashlib.sha256(data).hexdigest(), data
