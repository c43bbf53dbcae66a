"""The loop every p2pfs server runs (the tracker and each peer's chunk server): accept, apply connection
limits (in all and per source host), admit (TLS, the secret handshake), then read frames one at a time,
answer each bad frame with one ERROR, echo PEER_PING_PONG, and hand every other message to the server's
`handle`. No connection can keep the loop to itself: a connection whose frames are already buffered
yields to the others after TURN_SECONDS of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from p2pfs.address import Address
from p2pfs.errors import FrameTooLarge, ProtocolError
from p2pfs.net import ByteBudget, Connection, ConnectionClosed, admit, serve
from p2pfs.observe.stats import ServerStats
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import MAX_FRAME_SIZE
from p2pfs.security import OPEN, Security

log = logging.getLogger("p2pfs.server")

#: Seconds of work one connection may do before the loop turns to the others (its next frames wait).
#: A turn of 2 ms keeps a flooding client from adding more than that to anyone else's wait.
TURN_SECONDS = 0.002
#: Bodies up to this size that fail to decode are parsed again for their `type` (to name it in the
#: ERROR); larger ones only by their first bytes.
MAX_PEEK_BODY = 64 * 1024


class FrameServer:
    """Listens and serves connections; subclasses say what a connection may send (`max_frame`,
    `idle_timeout`, `check_frame`) and what is done with each message (`handle`, `on_close`)."""

    #: "tracker" or "peer", as in the ERROR texts ("unexpected message type T for a tracker")
    kind = "server"

    def __init__(
        self,
        security: Security = OPEN,
        max_connections: int = 1024,
        max_connections_per_host: int = 512,
        max_frame: int = MAX_FRAME_SIZE,
        budget: ByteBudget | None = None,
    ) -> None:
        self.security = security
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.max_frame = max_frame
        self.budget = budget
        self.address: Address | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._per_host: Counter[str] = Counter()
        #: messages, latencies and refusals, read by /metrics (p2pfs.observe)
        self.stats = ServerStats()

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def connection_count(self) -> int:
        """Connections being served now (admitted or being admitted)."""
        return len(self._handlers)

    async def start(self, host: str, port: int) -> Address:
        """Listen on host:port (port 0 picks a free one); return the address actually bound."""
        self._server = await serve(self._on_connect, host, port, self.security)
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

    # -- what subclasses supply ----------------------------------------------------------------------
    def idle_timeout(self, conn: Connection) -> float | None:
        """Seconds `conn` may stay silent between frames (None: for ever)."""
        return None

    def check_frame(self, conn: Connection, body: bytes | bytearray) -> str | None:
        """Why `body` is refused before it is even parsed (None: it is not)."""
        return None

    async def handle(self, conn: Connection, message: m.AnyMessage) -> None:
        """Act on one valid message (replies are sent with `conn.send`; the loop drains them)."""
        kind = type(message).__struct_config__.tag
        conn.send(m.Error(message=f"unexpected message type {kind} for a {self.kind}", request=str(kind)))

    def on_close(self, conn: Connection) -> None:
        """`conn` is gone (closed by either side, or refused after admission)."""

    # -- the loop ------------------------------------------------------------------------------------
    async def _on_connect(self, conn: Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        host = conn.remote.host
        if len(self._handlers) >= self.max_connections:
            self.stats.refused += 1
            await _refuse(conn, f"too many connections (limit {self.max_connections})")
            return
        if self._per_host[host] >= self.max_connections_per_host:
            self.stats.refused += 1
            await _refuse(conn, f"too many connections from {host} (limit {self.max_connections_per_host})")
            return
        self._handlers.add(task)
        self._per_host[host] += 1
        admitted = False
        try:
            if not await admit(conn, self.security):
                return
            admitted = True
            conn.max_frame = self.max_frame
            await self._serve(conn)
        except (asyncio.CancelledError, ConnectionClosed):
            pass  # (a client that leaves before reading its replies is not an error of ours)
        except Exception:  # a bug in serving one connection must not take the server down with it
            log.exception("error while serving %s", conn.remote)
        finally:
            if admitted:
                self.on_close(conn)
            conn.close()
            self._handlers.discard(task)
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]

    async def _serve(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        budget = self.budget
        clock, observe = time.perf_counter, self.stats.request_duration.observe  # (looked up once)
        turn_started = loop.time()
        while True:
            try:
                body = await conn.recv_body(self.idle_timeout(conn), budget)
            except FrameTooLarge as exc:
                log.warning("%s: %s; closing", conn.remote, exc)
                conn.send(m.Error(message=str(exc)))
                await conn.drain()
                return
            except ConnectionClosed:
                return
            started = clock()
            try:
                await self._one(conn, body)
            finally:
                if budget is not None and len(body) > budget.threshold:
                    budget.release(len(body))
                del body
            observe(clock() - started)
            await conn.drain()
            if loop.time() - turn_started > TURN_SECONDS:
                await asyncio.sleep(0)  # let the other connections have their turn
                turn_started = loop.time()

    async def _one(self, conn: Connection, body: bytes | bytearray) -> None:
        refusal = self.check_frame(conn, body)
        if refusal is not None:
            self.stats.invalid += 1
            log.warning("%s: %s", conn.remote, refusal)
            conn.send(m.Error(message=refusal, request=framing.leading_type(body)))
            return
        try:
            message = framing.decode(body)
        except ProtocolError as exc:
            self.stats.invalid += 1
            log.warning("%s: %s", conn.remote, exc)
            # (a large body is not parsed a second time just to name its type in the reply)
            kind = framing.leading_type(body) if len(body) > MAX_PEEK_BODY else framing.peek_type(body)
            conn.send(m.Error(message=str(exc), request=kind))
            return
        self.stats.messages[type(message)] += 1
        if isinstance(message, m.PeerPingPong):
            conn.send_raw(framing.frame(body))  # sent back exactly as received
        else:
            await self.handle(conn, message)


async def _refuse(conn: Connection, reason: str) -> None:
    """Over a connection limit: tell the newcomer why, and close it."""
    log.warning("refusing %s: %s", conn.remote, reason)
    with contextlib.suppress(ConnectionClosed):
        conn.send(m.Error(message=reason))
    await conn.aclose()
