"""The tracker server: one asyncio connection per peer; parses, dispatches to the Registry, replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import msgspec

from p2pfs.address import Address
from p2pfs.errors import FrameTooLarge
from p2pfs.net import ByteBudget, Connection, ConnectionClosed, env_seconds
from p2pfs.observe.rates import PeerRates
from p2pfs.observe.stats import TrackerStats
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import MAX_SMALL_FRAME, MAX_TRACKER_FRAME
from p2pfs.security import OPEN, Security
from p2pfs.server import FrameServer
from p2pfs.tracker import members
from p2pfs.tracker.registry import (
    NOT_REGISTERED,
    ChunkSet,
    FileRecord,
    PublishRefused,
    Registry,
    UnpublishRefused,
)
from p2pfs.tracker.store import MemoryStore, Store

log = logging.getLogger("p2pfs.tracker")

#: Most simultaneous connections; one per peer. 2,000 simulated peers must fit (the tracker benchmark),
#: and each costs a socket and a few KiB.
MAX_CONNECTIONS = 8192
#: Most connections from one source host: a quarter of the whole, so one host cannot take every slot
#: (a cluster host runs a few peers; the tracker benchmark runs 2,000 from one host).
MAX_CONNECTIONS_PER_HOST = 2048
#: Bytes that frames above MAX_SMALL_FRAME (publishes with chunk hashes) may hold at once, across all
#: connections: five of the largest. Others wait their turn, unread.
LARGE_FRAME_BUDGET = 5 * MAX_TRACKER_FRAME
#: Commas a frame above MAX_SMALL_FRAME may contain (a publish has about ten).
MAX_LARGE_FRAME_COMMAS = 256
#: Chunk numbers of a batch registration taken in one turn of the event loop (~2 ms of work).
REGISTER_SLICE = 4096
#: Seconds a connection that has not registered may stay silent (registered peers may stay silent).
UNREGISTERED_IDLE_TIMEOUT = env_seconds("P2PFS_IDLE_TIMEOUT", 60.0)
#: Files one connection may watch at once (REQUEST_FILE_LOCATION.watch); more are answered, not watched.
MAX_WATCHES_PER_CONNECTION = 64
#: News of a file are gathered for this long, then pushed to its watchers in one update, encoded once.
#: The delay grows with the number of watchers (PUSH_DELAY_PER_WATCHER each), so a swarm of thousands
#: gets a few updates a second rather than one per registration.
PUSH_DELAY = 0.02
PUSH_DELAY_PER_WATCHER = 0.0001
#: A watcher whose connection has this much unsent data gets no updates until it reads (it still polls).
PUSH_BACKLOG_LIMIT = 1 << 20


class TrackerServer(FrameServer):
    """Listens for peers; the connection to a registered peer is its presence in the swarm."""

    kind = "tracker"

    def __init__(
        self, registry: Registry | None = None, security: Security = OPEN, store: Store | None = None
    ) -> None:
        super().__init__(
            security,
            max_connections=MAX_CONNECTIONS,
            max_connections_per_host=MAX_CONNECTIONS_PER_HOST,
            max_frame=MAX_TRACKER_FRAME,
            budget=ByteBudget(LARGE_FRAME_BUDGET, MAX_SMALL_FRAME),
        )
        self.registry = registry or Registry()
        #: where the registry's state is shared with other trackers (MemoryStore: nowhere)
        self.store = store or MemoryStore()
        #: resolves collection members NAME/REL/PATH (fetching manifests from holders, as a peer would)
        self.members = members.MemberResolver(security)
        self._address_of: dict[Connection, Address] = {}
        self._connection_of: dict[Address, Connection] = {}
        #: connections watching each file, and the files each connection watches
        self._watchers: dict[str, set[Connection]] = {}
        self._watching: dict[Connection, set[str]] = {}
        #: chunks registered per file and holder since the last update was pushed
        self._news: dict[str, dict[Address, ChunkSet]] = {}
        self._push_scheduled: set[str] = set()
        self.stats: TrackerStats = TrackerStats()
        #: upload and download rates of the peers that send PEER_STATS (for the dashboard)
        self.peer_rates = PeerRates()

    async def start(self, host: str, port: int) -> Address:
        await self.store.start(self)  # (a shared store's state is loaded before the first peer comes)
        address = await super().start(host, port)
        log.info("listening on %s (%s, store %s)", address, self.security.describe(), self.store.describe())
        return address

    async def stop(self) -> None:
        await super().stop()
        await self.store.stop()

    def connected_peers(self) -> list[tuple[Address, Address]]:
        """(registered address, connection's remote address) of every registered peer."""
        return sorted((addr, conn.remote) for conn, addr in self._address_of.items())

    # -- the FrameServer hooks ---------------------------------------------------------------------------
    def idle_timeout(self, conn: Connection) -> float | None:
        # A registered peer's connection is its presence and may stay quiet for ever; any other
        # connection that goes quiet is dropped, so idle sockets cannot pile up.
        return None if conn in self._address_of else UNREGISTERED_IDLE_TIMEOUT

    def check_frame(self, conn: Connection, body: bytes | bytearray) -> str | None:
        if len(body) <= MAX_SMALL_FRAME:
            return None
        # A large frame must be a publish, whose bulk is one base64 string (the chunk hashes): a few
        # dozen commas at most. Millions of array elements or fields would cost the parser 100+ ms; a
        # C-speed count refuses them first.
        if framing.leading_type(body) != "REQUEST_PUBLISH" or body.count(b",") > MAX_LARGE_FRAME_COMMAS:
            return (
                f"frame of {len(body)} bytes refused: only a REQUEST_PUBLISH (with its type first) may exceed "
                f"{MAX_SMALL_FRAME} bytes"
            )
        return None

    def on_close(self, conn: Connection) -> None:
        self._forget(conn)
        self._unwatch_all(conn)

    async def handle(self, conn: Connection, message: m.AnyMessage) -> None:
        if isinstance(message, m.RequestChunkRegister):
            if "/" in message.filename:  # a member's chunks are its collection's
                conn.send(members.register_refused(message.filename))
                return
            await self._register_chunks(conn, message)
            return
        if isinstance(message, m.RequestFileLocation) and "/" in message.filename:
            reply: m.Message | None = await self.members.locate(self.registry, message)  # (answered, not watched)
        else:
            reply = self._dispatch(conn, message)
        if reply is not None:
            try:
                conn.send(reply)
            except FrameTooLarge as exc:
                log.warning("%s: reply not sent: %s", conn.remote, exc)
                kind = str(type(message).__struct_config__.tag)
                conn.send(m.Error(message=f"reply too large to send: {exc}", request=kind))

    def _dispatch(self, conn: Connection, message: m.AnyMessage) -> m.Message | None:
        registry = self.registry
        if isinstance(message, m.RequestRegister):
            # The recorded host is always the connection's source host (the claimed one is only checked):
            # peers reach each other where the tracker sees them come from, a wildcard needs no special
            # case, and no connection can claim another host's address.
            address = Address(conn.remote.host, message.address[1])
            holder = self._connection_of.get(address)
            if holder is not None and holder is not conn and not holder.transport.is_closing():
                log.warning("%s tried to register %s, held by a live connection", conn.remote, address)
                return m.Error(
                    message=f"address {address} is registered by another live connection", request="REQUEST_REGISTER"
                )
            self._register(conn, address)
            return m.ReplyRegister(address=(address.host, address.port))
        if isinstance(message, m.RequestFileList):
            return m.ReplyFileList(
                filelist=registry.file_list(),
                contentids=registry.content_ids() or None,
                collections=registry.collections() or None,
            )
        if isinstance(message, m.RequestFileLocation):
            record = registry.locations(message.filename)
            if record is None:
                return m.Error(message=f"file not found: {message.filename}", request="REQUEST_FILE_LOCATION")
            if message.watch:
                self._watch(conn, record.name)
            return _location_reply(record, message.ranges, hashes=message.contentid != record.content_id)
        registered = self._address_of.get(conn)
        if isinstance(message, m.RequestPublish):
            if registered is None:
                return m.ReplyPublish(result=False, message=NOT_REGISTERED)
            filesize, chunk_count = message.fileinfo
            try:
                registry.publish(
                    registered,
                    message.filename,
                    filesize,
                    chunk_count,
                    message.chunksize,
                    message.chunkhashes,
                    message.collection,
                )
            except PublishRefused as exc:
                return m.ReplyPublish(result=False, message=str(exc))
            log.info("%s published %s (%d bytes, %d chunks)", registered, message.filename, filesize, chunk_count)
            self.store.published(registered, self.registry.files[message.filename])
            if message.filename in self._watchers:  # a new complete holder joined the listed file
                self._add_news(message.filename, registered, range(chunk_count))
            return m.ReplyPublish(result=True, message="")
        if isinstance(message, m.RequestUnpublish):
            return self._unpublish(registered, message.filename)
        if isinstance(message, m.PeerStats):  # (no reply, as for REQUEST_CHUNK_REGISTER)
            if registered is not None:
                self.peer_rates.report(registered, message.uploaded, message.downloaded)
            return None
        kind = type(message).__struct_config__.tag
        return m.Error(message=f"unexpected message type {kind} for a tracker", request=str(kind))

    def _unpublish(self, registered: Address | None, name: str) -> m.ReplyUnpublish:
        """REQUEST_UNPUBLISH: the sender's own holding of `name` ends (never another peer's). Pushed updates
        cannot say a holder left: watchers learn it at their next location refresh, or from the holder's
        ERROR; news of its chunks not pushed yet are dropped, so no watcher is sent to it afterwards."""
        if registered is None:
            return m.ReplyUnpublish(filename=name, result=False, message=NOT_REGISTERED)
        try:
            delisted = self.registry.unpublish(registered, name)
        except UnpublishRefused as exc:
            return m.ReplyUnpublish(filename=name, result=False, message=str(exc))
        self.store.unpublished(registered, name, delisted)
        news = self._news.get(name)
        if news is not None:
            news.pop(registered, None)
        log.info("%s unpublished %s%s", registered, name, "; delisted it" if delisted else "")
        return m.ReplyUnpublish(filename=name, result=True)

    async def _register_chunks(self, conn: Connection, message: m.RequestChunkRegister) -> None:
        """REQUEST_CHUNK_REGISTER (no reply: the seed defines none; what makes no sense is ignored). A batch
        is taken in slices, the loop turning to other connections between them."""
        registered = self._address_of.get(conn)
        if registered is None:
            log.debug("ignored chunk registration of %s from unregistered %s", message.filename, conn.remote)
            return
        chunks = message.chunknums if message.chunknums is not None else [message.chunknum]
        name = message.filename
        for start in range(0, len(chunks), REGISTER_SLICE):
            if start:
                await asyncio.sleep(0)
                if self._address_of.get(conn) != registered:  # (left or re-registered meanwhile)
                    return
            accepted = self.registry.register_chunks(registered, name, chunks[start : start + REGISTER_SLICE])
            self.stats.count_registered(name, len(accepted))
            self.store.chunks(registered, name, accepted)
            if accepted and name in self._watchers:  # (only files somebody watches make news)
                self._add_news(name, registered, accepted)

    # -- pushed availability (REQUEST_FILE_LOCATION.watch) ---------------------------------------------
    def push_news(self, name: str, holder: Address, chunks: range | list[int]) -> None:
        """Chunks registered elsewhere (through another tracker sharing the store) reach our watchers."""
        if name in self._watchers:
            self._add_news(name, holder, chunks)

    def _watch(self, conn: Connection, name: str) -> None:
        watched = self._watching.setdefault(conn, set())
        if name in watched or len(watched) >= MAX_WATCHES_PER_CONNECTION:
            return
        watched.add(name)
        self._watchers.setdefault(name, set()).add(conn)

    def _unwatch(self, conn: Connection, name: str) -> None:
        watchers = self._watchers.get(name)
        if watchers is not None:
            watchers.discard(conn)
            if not watchers:
                del self._watchers[name]
                self._news.pop(name, None)
        watched = self._watching.get(conn)
        if watched is not None:
            watched.discard(name)

    def _unwatch_all(self, conn: Connection) -> None:
        for name in list(self._watching.pop(conn, ())):
            self._unwatch(conn, name)

    def _add_news(self, name: str, holder: Address, chunks: range | list[int]) -> None:
        record = self.registry.files.get(name)
        if record is None:
            return
        news = self._news.setdefault(name, {})
        held = news.get(holder)
        if held is None:
            held = news[holder] = ChunkSet(record.chunk_count)
        for chunk in chunks:
            held.add(chunk)
        if name not in self._push_scheduled:
            self._push_scheduled.add(name)
            delay = PUSH_DELAY + PUSH_DELAY_PER_WATCHER * len(self._watchers.get(name, ()))
            asyncio.get_running_loop().call_later(delay, self._push, name)

    def _push(self, name: str) -> None:
        """Send the gathered news of `name` to its watchers, one frame encoded once; watchers that now
        hold every chunk stop watching."""
        self._push_scheduled.discard(name)
        news = self._news.pop(name, None)
        record = self.registry.files.get(name)
        watchers = self._watchers.get(name)
        if not news or record is None or not watchers:
            return
        update = m.ReplyFileLocation(
            filename=name,
            chunkinfo={},
            chunkranges={str(holder): chunks.runs() for holder, chunks in news.items()},
            contentid=record.content_id,
            update=True,
        )
        try:
            frame = framing.encode(update)
        except FrameTooLarge:  # (news of 2^18 scattered chunks at once): watchers will poll instead
            return
        for conn in list(watchers):
            address = self._address_of.get(conn)
            held = record.holders.get(address) if address is not None else None
            if held is not None and len(held) == record.chunk_count and address not in record.publishers:
                self._unwatch(conn, name)  # a seeder of the file now: nothing left to hear (a publisher
                continue  # watching its own file hears who else holds its chunks: BEP 16's rule)
            if conn.transport.get_write_buffer_size() > PUSH_BACKLOG_LIMIT:
                continue
            with contextlib.suppress(ConnectionClosed):
                conn.send_raw(frame)

    def _register(self, conn: Connection, address: Address) -> None:
        previous = self._address_of.get(conn)
        if previous is not None and previous != address:
            self._forget(conn)
        stale = self._connection_of.get(address)
        if stale is not None and stale is not conn:
            # The address's previous connection is closing (the peer restarted): forget it now.
            log.info("%s registered again; forgetting its previous connection", address)
            self._forget(stale)
            stale.close()
        conn.keepalive()  # a peer whose host vanished is noticed, and its address freed, within ~30 s
        self._address_of[conn] = address
        self._connection_of[address] = conn
        self.registry.add_peer(address)
        self.store.registered(address)
        log.info("peer %s registered (from %s)", address, conn.remote)

    def _forget(self, conn: Connection) -> None:
        address = self._address_of.pop(conn, None)
        if address is None or self._connection_of.get(address) is not conn:
            return
        del self._connection_of[address]
        self.peer_rates.forget(address)
        if self.store.moved_away(address):  # (registered through another tracker now: not gone)
            log.info("peer %s moved to another tracker", address)
            return
        delisted = self.registry.remove_peer(address)
        self.store.left(address, delisted)
        log.info("peer %s left%s", address, f"; delisted {', '.join(delisted)}" if delisted else "")


def _location_reply(record: FileRecord, ranges: bool, hashes: bool = True) -> m.ReplyFileLocation:
    """REPLY_FILE_LOCATION for `record`, as lists (the seed's form) or as runs when the asker said it
    reads them, with the chunk hashes unless the asker has them (`hashes`). Each holder's part is encoded
    once and reused until its chunks change, and the chunk hashes once per file: a swarm asks for the
    same locations over and over."""
    form = "runs" if ranges else "numbers"
    held = {
        str(address): chunks.memo(form, _encode_runs if ranges else _encode_numbers)
        for address, chunks in record.holders.items()
        if chunks
    }
    hashes_json = None
    if record.chunk_hashes is not None and hashes:
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
        publishers=sorted(str(a) for a in record.publishers) or None,
        collection=record.collection,
    )


def _encode_numbers(chunks: ChunkSet) -> msgspec.Raw:
    return framing.raw_json(chunks.numbers())


def _encode_runs(chunks: ChunkSet) -> msgspec.Raw:
    return framing.raw_json(chunks.runs())
