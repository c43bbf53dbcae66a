"""The peer's long-lived connection to the tracker: requests matched to replies in order.

The tracker answers every request except REQUEST_CHUNK_REGISTER and PEER_STATS, in the order it received
them, so replies are matched to a FIFO of waiting futures. An ERROR naming either answers no one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from p2pfs.address import Address
from p2pfs.errors import (
    FileNotPublished,
    FrameTooLarge,
    P2PFSError,
    ProtocolError,
    TrackerError,
    TrackerUnavailable,
)
from p2pfs.net import Connection, ConnectionClosed, connect, describe_os_error, env_seconds
from p2pfs.protocol import auth
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import MAX_REGISTER_BATCH
from p2pfs.security import OPEN, AuthenticationFailed, Security

log = logging.getLogger("p2pfs.peer")

#: How long a tracker may take to answer one request before we call it unavailable.
REQUEST_TIMEOUT = env_seconds("P2PFS_REQUEST_TIMEOUT", 10.0)
#: Reconnection backoff: first retry after this many seconds, doubling up to the cap. The cap keeps a
#: restarted tracker's file list complete again within seconds.
RECONNECT_FIRST_DELAY = 0.25
RECONNECT_MAX_DELAY = 5.0
#: Chunk numbers per batch REQUEST_CHUNK_REGISTER: at most ~7 bytes each, so ~460 KB per frame.
REGISTER_BATCH = MAX_REGISTER_BATCH


class UnpublishUnsupported(TrackerError):
    """The tracker answered REQUEST_UNPUBLISH with ERROR: it does not know the extension."""


class TrackerClient:
    """Requests to one tracker. A registered client that loses its tracker reconnects by itself with
    capped exponential backoff, registers again and calls `on_reconnected` (the peer re-announces what
    it holds); `on_status` hears a line when the tracker becomes unreachable and when it is back."""

    def __init__(
        self,
        on_status: Callable[[str], None] | None = None,
        on_reconnected: Callable[[], Awaitable[None]] | None = None,
        auto_reconnect: bool = True,
        security: Security = OPEN,
    ) -> None:
        self.security = security
        self.address: Address | None = None
        #: our address as the tracker recorded it (REPLY_REGISTER's extension field), if it said
        self.registered_as: Address | None = None
        self.auto_reconnect = auto_reconnect
        #: the trackers of the swarm (`--tracker H:P,H:P`): a lost one is replaced by the next that answers
        self.trackers: list[Address] = []
        self._server_address: Address | None = None
        self._conn: Connection | None = None
        self._pending: collections.deque[asyncio.Future[m.AnyMessage]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._on_status = on_status
        self._on_reconnected = on_reconnected
        #: who hears the tracker's pushed updates of each watched file
        self._watchers: dict[str, Callable[[m.ReplyFileLocation], None]] = {}
        #: set once a registration succeeded: only then is a lost tracker reconnected in the background
        self._registered = False
        #: whether the current connection has carried any reply yet
        self._answered = False
        #: False once the tracker answered PEER_STATS with ERROR (an older tracker): not sent again to it
        self.reports_stats = True

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def reconnecting(self) -> bool:
        return self._reconnecting is not None

    async def connect(self, tracker: Address, server_address: Address | None) -> Address | None:
        """Connect and register `server_address` (None: only ask, as `p2pfs ls` does); replaces any current
        tracker connection and stops any reconnection in progress."""
        await self.close()
        return await self._open(tracker, server_address)

    async def _open(self, tracker: Address, server_address: Address | None) -> Address | None:
        try:
            conn = await connect(tracker, security=self.security, peer="tracker")
        except (TimeoutError, OSError) as exc:
            raise TrackerUnavailable(f"cannot connect to tracker {tracker}: {describe_os_error(exc)}") from None
        self._conn = conn
        self._answered = False
        self.reports_stats = True
        self.address = tracker
        self._server_address = server_address
        self._reader = asyncio.create_task(self._read_replies(conn))
        if server_address is None:
            return None
        reply = await self._request(m.RequestRegister(address=(server_address.host, server_address.port)))
        if not isinstance(reply, m.ReplyRegister):
            await self._drop_connection()
            raise TrackerError(f"tracker {tracker} refused registration: {_describe(reply)}")
        self.registered_as = Address(*reply.address) if reply.address else None
        self._registered = True
        return self.registered_as

    async def close(self) -> None:
        """Close the connection for good (no reconnection)."""
        self._registered = False
        task, self._reconnecting = self._reconnecting, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._fail_pending(TrackerUnavailable("tracker connection closed"))
        if conn is not None:
            await conn.aclose()

    def _failover_order(self, lost: Address) -> list[Address]:
        """The trackers to try after losing `lost`: the ones after it in the list, then the ones before,
        then `lost` itself (trackers sharing a store serve the same swarm, so any will do)."""
        others = self.trackers
        if lost not in others:
            return [*others, lost]
        at = others.index(lost)
        return [*others[at + 1 :], *others[:at], lost]

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        lost = self.address
        assert lost is not None
        while True:
            order = self._failover_order(lost)
            if len(order) == 1:
                await asyncio.sleep(delay)
            tracker = await self._open_first(order)
            if tracker is None:
                if len(order) > 1:  # (every one failed: wait before the next round)
                    await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            if tracker == lost:
                self._status(f"tracker {tracker} is back: registered again")
            else:
                self._status(f"failed over from tracker {lost} to tracker {tracker}: registered there")
            if self._on_reconnected is not None:
                try:
                    await self._on_reconnected()
                except P2PFSError as exc:
                    log.warning("announcing to tracker %s after reconnecting failed: %s", tracker, exc)
            if self._conn is not None:
                # Done. (A loss while announcing did not start a second reconnection: this one goes on.)
                self._reconnecting = None
                return
            delay = RECONNECT_FIRST_DELAY
            lost = tracker

    async def _open_first(self, order: list[Address]) -> Address | None:
        """Connect and register with the first of `order` that accepts us; None if none does."""
        for tracker in order:
            try:
                await self._open(tracker, self._server_address)
            except P2PFSError as exc:  # (unreachable, refused, or failed admission: all retried)
                log.debug("reconnection to tracker %s failed: %s", tracker, exc)
                continue
            return tracker
        return None

    def _status(self, line: str) -> None:
        log.info("%s", line)
        if self._on_status is not None:
            self._on_status(line)

    async def publish(
        self,
        name: str,
        filesize: int,
        chunk_count: int,
        chunk_size: int,
        chunk_hashes: bytes | None = None,
        collection: m.Collection | None = None,
    ) -> None:
        reply = await self._request(
            m.RequestPublish(
                filename=name,
                fileinfo=(filesize, chunk_count),
                chunksize=chunk_size,
                chunkhashes=chunk_hashes,
                collection=collection,
            )
        )
        if not isinstance(reply, m.ReplyPublish):
            raise TrackerError(f"publish of {name!r} failed: {_describe(reply)}")
        if not reply.result:
            raise TrackerError(f"publish of {name!r} refused: {reply.message or 'no reason given'}")

    async def unpublish(self, name: str) -> None:
        """Stop being a holder of `name` at the tracker (REQUEST_UNPUBLISH, an extension). TrackerError
        with one line if the tracker refuses, or UnpublishUnsupported if it does not know the request (a
        tracker that speaks only the seed's protocol answers it with ERROR)."""
        reply = await self._request(m.RequestUnpublish(filename=name))
        if isinstance(reply, m.Error):
            if "REQUEST_UNPUBLISH" in reply.message or reply.message.startswith("unexpected message type"):
                raise UnpublishUnsupported(f"tracker {self.address} does not support unpublish")
            raise TrackerError(f"unpublish of {name!r} failed: {reply.message}")
        if not isinstance(reply, m.ReplyUnpublish) or reply.filename != name:
            raise TrackerError(f"unpublish of {name!r} failed: {_describe(reply)}")
        if not reply.result:
            raise TrackerError(f"unpublish of {name!r} refused: {reply.message or 'no reason given'}")

    async def file_list(self) -> m.ReplyFileList:
        reply = await self._request(m.RequestFileList())
        if not isinstance(reply, m.ReplyFileList):
            raise TrackerError(f"file list failed: {_describe(reply)}")
        return reply

    def watch(self, name: str, on_update: Callable[[m.ReplyFileLocation], None]) -> None:
        """Hand the tracker's pushed updates of `name` to `on_update` (the tracker pushes them once a
        `locations(name, watch=True)` asked it to, on this connection)."""
        self._watchers[name] = on_update

    def unwatch(self, name: str) -> None:
        self._watchers.pop(name, None)

    async def locations(
        self, name: str, watch: bool = False, known_content_id: str | None = None
    ) -> m.ReplyFileLocation:
        """Where the chunks of `name` are (`known_content_id`: we hold its chunk hashes already)."""
        request = m.RequestFileLocation(filename=name, ranges=True, watch=watch, contentid=known_content_id)
        reply = await self._request(request)
        if isinstance(reply, m.Error):
            raise FileNotPublished(f"{name!r} is not listed by the tracker ({reply.message})")
        if not isinstance(reply, m.ReplyFileLocation):
            raise TrackerError(f"location request failed: {_describe(reply)}")
        return reply

    def register_chunk(self, name: str, chunk: int) -> None:
        """Tell the tracker we hold `chunk` (no reply; silently skipped while disconnected)."""
        if self._conn is not None:
            with contextlib.suppress(ConnectionClosed):  # a lost tracker is noticed by the reader task
                self._conn.send(m.RequestChunkRegister(filename=name, chunknum=chunk))

    def register_chunks(self, name: str, chunks: list[int]) -> None:
        """Register many chunks at once with the batch form (`chunknums`), in frames of REGISTER_BATCH."""
        if self._conn is None:
            return
        for i in range(0, len(chunks), REGISTER_BATCH):
            batch = chunks[i : i + REGISTER_BATCH]
            with contextlib.suppress(ConnectionClosed):
                self._conn.send(m.RequestChunkRegister(filename=name, chunknum=batch[0], chunknums=batch))

    def send_stats(self, uploaded: int, downloaded: int) -> None:
        """PEER_STATS (no reply): this peer's transfer totals, for the tracker's dashboard. Skipped while
        disconnected or unregistered, and for a tracker that refused one."""
        if self._conn is not None and self._registered and self.reports_stats:
            with contextlib.suppress(ConnectionClosed):
                self._conn.send(m.PeerStats(uploaded=uploaded, downloaded=downloaded))

    async def _request(self, message: m.Message) -> m.AnyMessage:
        conn = self._conn
        if conn is None:
            if self._reconnecting is not None:
                raise TrackerUnavailable(f"tracker {self.address} is unreachable (reconnecting in the background)")
            raise TrackerUnavailable("not connected to a tracker (use connect <ip> <port>)")
        try:
            conn.send(message)  # (FrameTooLarge propagates: nothing was sent, so nothing waits for a reply)
        except ConnectionClosed as exc:
            self._lost(conn)
            raise TrackerUnavailable(f"lost the connection to tracker {self.address}: {exc}") from None
        # Queued only once sent: a reply is owed to exactly the requests that went out, in order.
        future: asyncio.Future[m.AnyMessage] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        try:
            await conn.drain()
            # (asyncio.timeout, not wait_for: see net.Connection._read.) On a timeout or a cancellation
            # the future is cancelled but stays queued, so the reply it is owed is matched to it and dropped.
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reply = await future
        except ConnectionClosed as exc:
            self._lost(conn)
            raise TrackerUnavailable(f"lost the connection to tracker {self.address}: {exc}") from None
        except TimeoutError:
            # A reply may still come and would answer the wrong request: this connection is done.
            self._lost(conn)
            raise TrackerUnavailable(f"tracker {self.address} did not answer in {REQUEST_TIMEOUT:.0f} s") from None
        if isinstance(reply, m.Error) and reply.message == auth.FAILED:
            raise AuthenticationFailed(
                f"authentication failed: tracker {self.address} admits only members of its swarm (--secret-file)"
            )
        return reply

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
                if isinstance(reply, m.ReplyFileLocation) and reply.update:
                    on_update = self._watchers.get(reply.filename)
                    if on_update is not None:
                        on_update(reply)
                    continue  # (pushed, not a reply: it answers no request)
                if isinstance(reply, m.Error) and reply.request == "PEER_STATS":
                    # an older tracker that does not know the report (it answers no request): stop sending it
                    log.debug("tracker refused PEER_STATS (%s); not reporting to it", reply.message)
                    self.reports_stats = False
                    continue
                if isinstance(reply, m.Error) and reply.request == "REQUEST_CHUNK_REGISTER":
                    log.debug("tracker refused a chunk registration: %s", reply.message)
                    continue
                self._answered = True
                if not self._resolve(reply):
                    log.debug("unsolicited message from tracker: %r", reply)
        except (ConnectionClosed, FrameTooLarge) as exc:
            self._lost(conn, str(exc))
        except Exception:  # keep the peer alive; the connection is unusable now
            log.exception("tracker connection reader failed")
            self._lost(conn)

    def _resolve(self, outcome: m.AnyMessage | Exception) -> bool:
        """Hand a reply (or the error standing for it) to the oldest request sent; the reply to a request
        whose asker gave up (cancelled) is dropped with it."""
        if not self._pending:
            return False
        future = self._pending.popleft()
        if not future.done():
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        return True

    def _lost(self, conn: Connection, reason: str = "") -> None:
        if self._conn is not conn:
            return
        self._conn = None
        conn.close()
        if not self._answered:
            # Closed before answering anything: most likely a tracker that admits only members.
            reason += (" (" if reason else "(") + "if the tracker uses TLS or a shared secret, give the same options)"
        self._fail_pending(TrackerUnavailable(f"lost the connection to tracker {self.address}" + (f": {reason}" if reason else "")))
        if self.auto_reconnect and self._registered and self._server_address is not None and self._reconnecting is None:
            self._status(f"tracker {self.address} is unreachable: reconnecting in the background")
            self._reconnecting = asyncio.create_task(self._reconnect())
        elif self._registered and self._reconnecting is None:
            self._status(f"lost the connection to tracker {self.address}")

    def _fail_pending(self, exc: Exception) -> None:
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)


def _describe(reply: m.AnyMessage) -> str:
    if isinstance(reply, m.Error):
        return reply.message
    return f"unexpected reply {type(reply).__struct_config__.tag}"
