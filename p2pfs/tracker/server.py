"""The tracker server: one asyncio connection per peer; parses, dispatches to the Registry, replies."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import msgspec

from p2pfs.address import Address
from p2pfs.errors import FrameTooLarge, ProtocolError
from p2pfs.net import Connection, ConnectionClosed, env_seconds, refuse_if_full, serve
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.tracker.registry import ChunkSet, FileRecord, PublishRefused, Registry

log = logging.getLogger("p2pfs.tracker")

#: Most simultaneous connections; one per peer. 2,000 simulated peers must fit (the tracker benchmark),
#: and each costs a socket and a few KiB.
MAX_CONNECTIONS = 8192
#: Seconds a connection that has not registered may stay silent (registered peers may stay silent).
UNREGISTERED_IDLE_TIMEOUT = env_seconds("P2PFS_IDLE_TIMEOUT", 60.0)


class TrackerServer:
    """Listens for peers; the connection to a registered peer is its presence in the swarm."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        self._server: asyncio.Server | None = None
        self._address_of: dict[Connection, Address] = {}
        self._connection_of: dict[Address, Connection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self.address: Address | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self, host: str, port: int) -> Address:
        """Listen on host:port (port 0 picks a free one); return the address actually bound."""
        self._server = await serve(self._on_connect, host, port)
        sockname = self._server.sockets[0].getsockname()
        self.address = Address(host or str(sockname[0]), int(sockname[1]))
        log.info("listening on %s", self.address)
        return self.address

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._address_of) + [c for c in self._connection_of.values()]:
            conn.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._server = None

    def connected_peers(self) -> list[tuple[Address, Address]]:
        """(registered address, connection's remote address) of every registered peer."""
        return sorted((addr, conn.remote) for conn, addr in self._address_of.items())

    async def _on_connect(self, conn: Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        if await refuse_if_full(conn, len(self._handlers), MAX_CONNECTIONS):
            return
        self._handlers.add(task)
        try:
            await self._serve(conn)
        except (asyncio.CancelledError, ConnectionClosed):
            pass  # (a client that leaves before reading its replies is not an error of ours)
        except Exception:  # a bug must not take the tracker down with it
            log.exception("error while serving %s", conn.remote)
        finally:
            self._forget(conn)
            conn.close()
            self._handlers.discard(task)

    async def _serve(self, conn: Connection) -> None:
        while True:
            try:
                # A registered peer's connection is its presence and may stay quiet for ever; any other
                # connection that goes quiet is dropped, so idle sockets cannot pile up.
                idle = None if conn in self._address_of else UNREGISTERED_IDLE_TIMEOUT
                body = await conn.recv_body(idle)
            except FrameTooLarge as exc:
                log.warning("%s: %s; closing", conn.remote, exc)
                conn.send(m.Error(message=str(exc)))
                await conn.drain()
                return
            except ConnectionClosed:
                return
            try:
                message = framing.decode(body)
            except ProtocolError as exc:
                log.warning("%s: %s", conn.remote, exc)
                conn.send(m.Error(message=str(exc), request=framing.peek_type(body)))
                await conn.drain()
                continue
            if isinstance(message, m.PeerPingPong):
                conn.send_raw(framing.frame(body))  # sent back exactly as received
            else:
                reply = self._dispatch(conn, message)
                if reply is not None:
                    try:
                        conn.send(reply)
                    except FrameTooLarge as exc:
                        log.warning("%s: reply not sent: %s", conn.remote, exc)
                        kind = str(type(message).__struct_config__.tag)
                        conn.send(m.Error(message=f"reply too large to send: {exc}", request=kind))
            await conn.drain()

    def _dispatch(self, conn: Connection, message: m.AnyMessage) -> m.Message | None:
        registry = self.registry
        if isinstance(message, m.RequestRegister):
            host, port = message.address
            try:
                address = Address.of(host, port) if host.strip() else Address("", port)
            except ValueError as exc:
                return m.Error(message=f"bad address: {exc}", request="REQUEST_REGISTER")
            if address.is_wildcard:
                address = Address(conn.remote.host, port)
            self._register(conn, address)
            return m.ReplyRegister(address=(address.host, address.port))
        if isinstance(message, m.RequestFileList):
            return m.ReplyFileList(filelist=registry.file_list(), contentids=registry.content_ids() or None)
        if isinstance(message, m.RequestFileLocation):
            record = registry.locations(message.filename)
            if record is None:
                return m.Error(message=f"file not found: {message.filename}", request="REQUEST_FILE_LOCATION")
            return _location_reply(record, message.ranges)
        registered = self._address_of.get(conn)
        if isinstance(message, m.RequestPublish):
            if registered is None:
                return m.ReplyPublish(result=False, message="peer is not registered (send REQUEST_REGISTER first)")
            filesize, chunk_count = message.fileinfo
            try:
                registry.publish(
                    registered, message.filename, filesize, chunk_count, message.chunksize, message.chunkhashes
                )
            except PublishRefused as exc:
                return m.ReplyPublish(result=False, message=str(exc))
            log.info("%s published %s (%d bytes, %d chunks)", registered, message.filename, filesize, chunk_count)
            return m.ReplyPublish(result=True, message="")
        if isinstance(message, m.RequestChunkRegister):
            # The seed defines no reply; a registration that makes no sense is ignored.
            chunks = message.chunknums if message.chunknums is not None else [message.chunknum]
            for chunk in chunks:
                if registered is None or not registry.register_chunk(registered, message.filename, chunk):
                    log.debug("ignored chunk registration %s#%d from %s", message.filename, chunk, conn.remote)
            return None
        kind = type(message).__struct_config__.tag
        return m.Error(message=f"unexpected message type {kind} for a tracker", request=str(kind))

    def _register(self, conn: Connection, address: Address) -> None:
        previous = self._address_of.get(conn)
        if previous is not None and previous != address:
            self._forget(conn)
        stale = self._connection_of.get(address)
        if stale is not None and stale is not conn:
            # The same address registers again from a new connection: the peer restarted. Its old
            # connection and the chunks registered through it are gone.
            log.info("%s registered again; dropping its previous connection", address)
            self._forget(stale)
            stale.close()
        self._address_of[conn] = address
        self._connection_of[address] = conn
        self.registry.add_peer(address)
        log.info("peer %s registered (from %s)", address, conn.remote)

    def _forget(self, conn: Connection) -> None:
        address = self._address_of.pop(conn, None)
        if address is None or self._connection_of.get(address) is not conn:
            return
        del self._connection_of[address]
        delisted = self.registry.remove_peer(address)
        log.info("peer %s left%s", address, f"; delisted {', '.join(delisted)}" if delisted else "")


def _location_reply(record: FileRecord, ranges: bool) -> m.ReplyFileLocation:
    """REPLY_FILE_LOCATION for `record`, as lists (the seed's form) or as runs when the asker said it
    reads them. Each holder's part is encoded once and reused until its chunks change, and the chunk
    hashes once per file: a swarm asks for the same locations over and over."""
    form = "runs" if ranges else "numbers"
    held = {
        str(address): chunks.memo(form, _encode_runs if ranges else _encode_numbers)
        for address, chunks in record.holders.items()
        if chunks
    }
    hashes_json = None
    if record.chunk_hashes is not None:
        hashes_json = record.memo.get("chunkhashes")
        if hashes_json is None:
            hashes_json = record.memo["chunkhashes"] = framing.raw_json(record.chunk_hashes)
    # (Raw values stand where lists and bytes are declared: msgspec writes them out verbatim)
    return m.ReplyFileLocation(
        filename=record.name,
        chunkinfo={} if ranges else cast(dict[str, list[int]], held),
        fileinfo=record.fileinfo,
        chunksize=record.chunk_size,
        chunkhashes=cast(bytes | None, hashes_json),
        contentid=record.content_id,
        chunkranges=cast(dict[str, list[tuple[int, int]]], held) if ranges else None,
    )


def _encode_numbers(chunks: ChunkSet) -> msgspec.Raw:
    return framing.raw_json(chunks.numbers())


def _encode_runs(chunks: ChunkSet) -> msgspec.Raw:
    return framing.raw_json(chunks.runs())
