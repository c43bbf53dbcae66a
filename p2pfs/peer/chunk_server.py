"""The peer's server: answers PEER_REQUEST_CHUNK from the files it holds and echoes PEER_PING_PONG.

Chunks are looked up by published name in the peer's library, never by a path taken from a request.
Requests on one connection are answered in order, so a downloader can pipeline several.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import Mapping

from p2pfs.collection.index import ManifestIndex, MemberSpan
from p2pfs.collection.store import CollectionStore
from p2pfs.net import Connection, env_seconds
from p2pfs.observe.stats import TransferStats
from p2pfs.peer.storage import ChunkFile, StorageError
from p2pfs.peer.superseed import SuperSeeder
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
        #: test-only: seconds to wait before each chunk reply (emulates a slow or distant holder)
        self.delay = delay
        #: the process's upload cap (--max-upload-rate), shared with its other chunk servers; None: none
        self.upload = upload
        #: sends every chunk of a file this peer published once before any twice (see superseed)
        self.super_seeder: SuperSeeder | None = SuperSeeder() if super_seed else None
        self._connection_ids = itertools.count(1)
        #: the peer's transfer counters (bytes sent here, received by its downloads), read by /metrics
        self.transfers = TransferStats()
        self._connection_id: dict[Connection, int] = {}

    def idle_timeout(self, conn: Connection) -> float | None:
        return IDLE_TIMEOUT

    def on_close(self, conn: Connection) -> None:
        self._connection_id.pop(conn, None)

    async def handle(self, conn: Connection, message: m.AnyMessage) -> None:
        if not isinstance(message, m.PeerRequestChunk):
            await super().handle(conn, message)
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        connection_id = self._connection_id.get(conn)
        if connection_id is None:
            connection_id = self._connection_id[conn] = next(self._connection_ids)
        await self._send_chunk(conn, message, connection_id)

    async def _send_chunk(self, conn: Connection, request: m.PeerRequestChunk, connection_id: int) -> None:
        shared = self.library.get(request.filename)
        chunk = request.chunknum
        if self.super_seeder is not None and shared is not None and shared.origin:
            if request.substitute:
                chunk = self.super_seeder.choose(shared.name, shared.chunk_count, chunk, connection_id)
            else:
                self.super_seeder.sent(shared.name, shared.chunk_count, chunk, connection_id)
        reply = self._chunk_reply(shared, request.filename, chunk)
        if isinstance(reply, m.Error):
            conn.send(reply)
            return
        digest, data = reply
        if self.upload is not None:
            # paced before it is sent: the chunk's bytes are paid for at the cap (p2pfs.ratelimit)
            await self.upload.take(len(data))
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
