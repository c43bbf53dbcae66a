"""The I/O edge: framed messages over asyncio streams. Reads and writes bytes; `protocol` does the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from p2pfs.address import Address
from p2pfs.errors import P2PFSError
from p2pfs.protocol import framing
from p2pfs.protocol.messages import AnyMessage, Error, Message


def env_seconds(name: str, default: float) -> float:
    """A timeout, overridable from the environment (for operators with unusual networks, and for tests
    that must not wait the full default)."""
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


#: How long to wait for a TCP connection to a tracker or holder before calling it unreachable.
CONNECT_TIMEOUT = env_seconds("P2PFS_CONNECT_TIMEOUT", 5.0)
#: Once a frame's header has arrived, its body must follow within this many seconds (no slow-loris).
FRAME_TIMEOUT = env_seconds("P2PFS_FRAME_TIMEOUT", 30.0)

#: Stream buffer limit; frames are read with readexactly, which this does not bound.
_STREAM_LIMIT = 1 << 20


log = logging.getLogger("p2pfs.net")


class ConnectionClosed(P2PFSError):
    """The other side closed the connection (or it broke)."""


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Connection:
    """One TCP connection that carries framed JSON messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = writer.get_extra_info("peername")
        self.remote = Address(str(peername[0]), int(peername[1])) if peername else Address("?", 0)

    async def _read(self, length: int, timeout: float | None, timed_out: str) -> bytes:
        """Exactly `length` bytes within `timeout`; every way of failing is ConnectionClosed.

        Timeouts here and on the transfer path use `asyncio.timeout`, not `wait_for`: on Python 3.11
        `wait_for` returns a result that lands in the same loop iteration as a cancellation and swallows
        the cancellation, which left a cancelled download worker waiting for ever."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.readexactly(length)
        except TimeoutError:
            raise ConnectionClosed(f"{self.remote} {timed_out}") from None
        except asyncio.IncompleteReadError:
            raise ConnectionClosed(f"connection closed by {self.remote}") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection to {self.remote} broken: {exc}") from None

    async def recv_body(self, idle_timeout: float | None = None) -> bytes:
        """The next frame body. ConnectionClosed at EOF, after `idle_timeout` seconds without a frame, or
        when a started frame does not complete within FRAME_TIMEOUT; FrameTooLarge before reading an
        oversized body."""
        header = await self._read(framing.HEADER_SIZE, idle_timeout, f"idle for {idle_timeout or 0:.0f} s")
        length = framing.body_length(header)
        return await self._read(length, FRAME_TIMEOUT, f"did not complete a frame in {FRAME_TIMEOUT:.0f} s")

    async def recv_raw(self, length: int) -> bytes:
        """Exactly `length` raw bytes (the body of a binary PEER_REPLY_CHUNK), within FRAME_TIMEOUT."""
        return await self._read(length, FRAME_TIMEOUT, f"did not send {length} raw bytes in {FRAME_TIMEOUT:.0f} s")

    async def recv(self) -> AnyMessage:
        """The next message, validated; ProtocolError if it does not follow the protocol."""
        return framing.decode(await self.recv_body())

    def send(self, message: Message) -> None:
        """Queue a message (no wait); call `drain` to apply back-pressure. ConnectionClosed if the
        other side is gone."""
        self.send_raw(framing.encode(message))

    def send_raw(self, data: bytes | bytearray) -> None:
        # uvloop raises RuntimeError on a write to a closed transport (asyncio only logs): either way the
        # peer is gone, which callers handle as ConnectionClosed.
        if self.writer.is_closing():
            raise ConnectionClosed(f"connection to {self.remote} is closed")
        try:
            self.writer.write(data)
        except RuntimeError as exc:
            raise ConnectionClosed(f"connection to {self.remote} is closed: {exc}") from None

    async def drain(self) -> None:
        """Wait until the written data is taken by the kernel; a reader that takes nothing for
        FRAME_TIMEOUT seconds is treated as gone."""
        try:
            async with asyncio.timeout(FRAME_TIMEOUT):
                await self.writer.drain()
        except TimeoutError:
            self.close()
            raise ConnectionClosed(f"{self.remote} stopped reading for {FRAME_TIMEOUT:.0f} s") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"connection to {self.remote} broken: {exc}") from None

    async def request(self, message: Message) -> AnyMessage:
        """Send one message and wait for the next one (for strictly alternating exchanges)."""
        self.send(message)
        await self.drain()
        return await self.recv()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


async def refuse_if_full(conn: Connection, open_connections: int, limit: int) -> bool:
    """At the connection limit: tell the newcomer why, close it, and return True."""
    if open_connections < limit:
        return False
    log.warning("refusing %s: %d connections already (the limit)", conn.remote, limit)
    with contextlib.suppress(ConnectionClosed):
        conn.send(Error(message=f"too many connections (limit {limit})"))
    await conn.aclose()
    return True


async def connect(address: Address, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """Open a connection; ConnectionError/OSError/TimeoutError propagate for the caller to name."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address.host, address.port, limit=_STREAM_LIMIT), timeout
    )
    return Connection(reader, writer)


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for a failed connect ("connection refused", "timed out", ...)."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
