"""The peer's server: answers PEER_REQUEST_CHUNK from the files it holds and echoes PEER_PING_PONG.

Chunks are looked up by published name in the peer's library, never by a path taken from a request.
Requests on one connection are answered in order, so a downloader can pipeline several.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Mapping

from p2pfs.address import Address
from p2pfs.errors import FrameTooLarge, ProtocolError
from p2pfs.net import Connection, ConnectionClosed, env_seconds, refuse_if_full, serve
from p2pfs.peer.storage import ChunkFile, StorageError
from p2pfs.peer.superseed import SuperSeeder
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m

log = logging.getLogger("p2pfs.peer")

#: Most simultaneous downloader connections one peer serves (each downloader uses one per holder).
MAX_CONNECTIONS = 1024
#: Seconds a downloader's connection may stay silent before it is closed.
IDLE_TIMEOUT = env_seconds("P2PFS_IDLE_TIMEOUT", 60.0)


class ChunkServer:
    def __init__(
        self, library: Mapping[str, ChunkFile], delay: float = 0.0, raw: bool = True, super_seed: bool = True
    ) -> None:
        self.library = library
        #: answer `raw` requests with the binary fast path (False: always the seed's base64 JSON)
        self.raw = raw
        #: test-only: seconds to wait before each chunk reply (emulates a slow or distant holder)
        self.delay = delay
        self.address: Address | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: chunks served, by (file name, downloader's remote host)
        self.served: Counter[tuple[str, str]] = Counter()
        #: sends every chunk of a file this peer published once before any twice (see superseed)
        self.super_seeder: SuperSeeder | None = SuperSeeder() if super_seed else None
        self._connection_ids = itertools.count(1)

    async def start(self, host: str, port: int) -> Address:
        self._server = await serve(self._on_connect, host, port)
        sockname = self._server.sockets[0].getsockname()
        self.address = Address(host or str(sockname[0]), int(sockname[1]))
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _on_connect(self, conn: Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        if await refuse_if_full(conn, len(self._handlers), MAX_CONNECTIONS):
            return
        self._handlers.add(task)
        try:
            await self._serve(conn)
        except (asyncio.CancelledError, ConnectionClosed):
            pass
        except Exception:  # a bug in serving one downloader must not stop the others
            log.exception("error while serving %s", conn.remote)
        finally:
            conn.close()
            self._handlers.discard(task)

    async def _serve(self, conn: Connection) -> None:
        connection_id = next(self._connection_ids)
        while True:
            try:
                body = await conn.recv_body(IDLE_TIMEOUT)
            except FrameTooLarge as exc:
                log.warning("%s: %s; closing", conn.remote, exc)
                conn.send(m.Error(message=str(exc)))
                await conn.drain()
                return
            try:
                message = framing.decode(body)
            except ProtocolError as exc:
                log.warning("%s: %s", conn.remote, exc)
                conn.send(m.Error(message=str(exc), request=framing.peek_type(body)))
            else:
                if isinstance(message, m.PeerPingPong):
                    conn.send_raw(framing.frame(body))  # sent back exactly as received
                elif isinstance(message, m.PeerRequestChunk):
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    self._send_chunk(conn, message, connection_id)
                else:
                    kind = type(message).__struct_config__.tag
                    conn.send(
                        m.Error(message=f"unexpected message type {kind} for a peer", request=str(kind))
                    )
            await conn.drain()

    def _send_chunk(self, conn: Connection, request: m.PeerRequestChunk, connection_id: int) -> None:
        shared = self.library.get(request.filename)
        chunk = request.chunknum
        if request.substitute and self.super_seeder is not None and shared is not None and shared.origin:
            chunk = self.super_seeder.choose(shared.name, shared.chunk_count, chunk, connection_id)
        reply = self._chunk_reply(shared, request.filename, chunk, conn.remote)
        if isinstance(reply, m.Error):
            conn.send(reply)
            return
        digest, data = reply
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

    def _chunk_reply(
        self, shared: ChunkFile | None, filename: str, chunk: int, remote: Address
    ) -> m.Error | tuple[str, bytes]:
        if shared is None:
            return m.Error(message=f"file not shared here: {filename}", request="PEER_REQUEST_CHUNK")
        if chunk not in shared.have:
            return m.Error(message=f"chunk {chunk} of {filename} not held here", request="PEER_REQUEST_CHUNK")
        try:
            data = shared.read_chunk(chunk)
        except (OSError, StorageError) as exc:
            log.error("cannot read chunk %d of %s: %s", chunk, shared.path, exc)
            return m.Error(message=f"cannot read chunk {chunk} of {filename}", request="PEER_REQUEST_CHUNK")
        self.served[(filename, remote.host)] += 1
        return shared.digests[chunk], data
