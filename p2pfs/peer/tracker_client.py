"""The peer's long-lived connection to the tracker: requests matched to replies in order.

The tracker answers every request except REQUEST_CHUNK_REGISTER, in the order it received them, so
replies are matched to a FIFO of waiting futures. An ERROR naming REQUEST_CHUNK_REGISTER answers no one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from p2pfs.address import Address
from p2pfs.errors import FileNotPublished, FrameTooLarge, ProtocolError, TrackerError, TrackerUnavailable
from p2pfs.net import Connection, ConnectionClosed, connect, describe_os_error
from p2pfs.protocol import messages as m

log = logging.getLogger("p2pfs.peer")

#: How long a tracker may take to answer one request before we call it unavailable.
REQUEST_TIMEOUT = 10.0
#: Chunk numbers per batch REQUEST_CHUNK_REGISTER: at most ~7 bytes each, so ~460 KB per frame.
REGISTER_BATCH = 65536


class TrackerClient:
    def __init__(self, on_lost: Callable[[Address], None] | None = None) -> None:
        self.address: Address | None = None
        #: our address as the tracker recorded it (REPLY_REGISTER's extension field), if it said
        self.registered_as: Address | None = None
        self._conn: Connection | None = None
        self._pending: collections.deque[asyncio.Future[m.AnyMessage]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._on_lost = on_lost

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self, tracker: Address, server_address: Address | None) -> Address | None:
        """Connect and register `server_address` (None: only ask, as `p2pfs ls` does); replaces any current
        tracker connection."""
        await self.close()
        try:
            conn = await connect(tracker)
        except (TimeoutError, OSError) as exc:
            raise TrackerUnavailable(f"cannot connect to tracker {tracker}: {describe_os_error(exc)}") from None
        self._conn = conn
        self.address = tracker
        self._reader = asyncio.create_task(self._read_replies(conn))
        if server_address is None:
            return None
        reply = await self._request(m.RequestRegister(address=(server_address.host, server_address.port)))
        if not isinstance(reply, m.ReplyRegister):
            await self.close()
            raise TrackerError(f"tracker {tracker} refused registration: {_describe(reply)}")
        self.registered_as = Address(*reply.address) if reply.address else None
        return self.registered_as

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._fail_pending(TrackerUnavailable("tracker connection closed"))
        if conn is not None:
            await conn.aclose()

    async def publish(
        self, name: str, filesize: int, chunk_count: int, chunk_size: int, chunk_hashes: bytes | None = None
    ) -> None:
        reply = await self._request(
            m.RequestPublish(
                filename=name, fileinfo=(filesize, chunk_count), chunksize=chunk_size, chunkhashes=chunk_hashes
            )
        )
        if not isinstance(reply, m.ReplyPublish):
            raise TrackerError(f"publish of {name!r} failed: {_describe(reply)}")
        if not reply.result:
            raise TrackerError(f"publish of {name!r} refused: {reply.message or 'no reason given'}")

    async def file_list(self) -> m.ReplyFileList:
        reply = await self._request(m.RequestFileList())
        if not isinstance(reply, m.ReplyFileList):
            raise TrackerError(f"file list failed: {_describe(reply)}")
        return reply

    async def locations(self, name: str) -> m.ReplyFileLocation:
        reply = await self._request(m.RequestFileLocation(filename=name))
        if isinstance(reply, m.Error):
            raise FileNotPublished(f"{name!r} is not listed by the tracker ({reply.message})")
        if not isinstance(reply, m.ReplyFileLocation):
            raise TrackerError(f"location request failed: {_describe(reply)}")
        return reply

    def register_chunk(self, name: str, chunk: int) -> None:
        """Tell the tracker we hold `chunk` (no reply; silently skipped while disconnected)."""
        if self._conn is not None:
            self._conn.send(m.RequestChunkRegister(filename=name, chunknum=chunk))

    def register_chunks(self, name: str, chunks: list[int]) -> None:
        """Register many chunks at once with the batch form (`chunknums`), in frames of REGISTER_BATCH."""
        if self._conn is None:
            return
        for i in range(0, len(chunks), REGISTER_BATCH):
            batch = chunks[i : i + REGISTER_BATCH]
            self._conn.send(m.RequestChunkRegister(filename=name, chunknum=batch[0], chunknums=batch))

    async def _request(self, message: m.Message) -> m.AnyMessage:
        conn = self._conn
        if conn is None:
            raise TrackerUnavailable("not connected to a tracker (use connect <ip> <port>)")
        future: asyncio.Future[m.AnyMessage] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        conn.send(message)
        try:
            await conn.drain()
            return await asyncio.wait_for(asyncio.shield(future), REQUEST_TIMEOUT)
        except ConnectionClosed:
            self._lost(conn)
            raise TrackerUnavailable(f"lost the connection to tracker {self.address}") from None
        except TimeoutError:
            # A reply may still come and would answer the wrong request: this connection is done.
            self._lost(conn)
            raise TrackerUnavailable(f"tracker {self.address} did not answer in {REQUEST_TIMEOUT:.0f} s") from None

    async def _read_replies(self, conn: Connection) -> None:
        try:
            while True:
                try:
                    reply = await conn.recv()
                except FrameTooLarge:
                    raise  # the stream cannot be re-synchronised: the connection is lost
                except ProtocolError as exc:
                    # A reply we cannot read still answers the oldest request: fail that one, so the
                    # replies that follow stay matched to their requests.
                    log.warning("tracker sent an invalid message: %s", exc)
                    self._resolve(TrackerError(f"tracker sent an invalid reply: {exc}"))
                    continue
                if isinstance(reply, m.Error) and reply.request == "REQUEST_CHUNK_REGISTER":
                    log.debug("tracker refused a chunk registration: %s", reply.message)
                    continue
                if not self._resolve(reply):
                    log.debug("unsolicited message from tracker: %r", reply)
        except (ConnectionClosed, FrameTooLarge):
            self._lost(conn)
        except Exception:  # keep the peer alive; the connection is unusable now
            log.exception("tracker connection reader failed")
            self._lost(conn)

    def _resolve(self, outcome: m.AnyMessage | Exception) -> bool:
        """Hand a reply (or the error standing for it) to the oldest waiting request."""
        while self._pending:
            future = self._pending.popleft()
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
            return True
        return False

    def _lost(self, conn: Connection) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        conn.close()
        self._fail_pending(TrackerUnavailable(f"lost the connection to tracker {self.address}"))
        log.warning("lost the connection to tracker %s", self.address)
        if self._on_lost is not None and self.address is not None:
            self._on_lost(self.address)

    def _fail_pending(self, exc: Exception) -> None:
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)


def _describe(reply: m.AnyMessage) -> str:
    if isinstance(reply, m.Error):
        return reply.message
    return f"unexpected reply {type(reply).__struct_config__.tag}"
