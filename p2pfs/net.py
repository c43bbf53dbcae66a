"""The I/O edge: framed messages over asyncio streams. Reads and writes bytes; `protocol` does the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

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

#: A connection's read-ahead buffer starts this small (thousands of idle tracker connections must cost
#: little) and doubles while it fills up, to at most READ_BUFFER_SIZE. Larger frames and raw chunk
#: bodies are read straight into a buffer of their own size (for raw chunks: the caller's).
INITIAL_READ_BUFFER_SIZE = 4096
READ_BUFFER_SIZE = 256 * 1024
#: Listen backlog: thousands of peers reconnecting at once to a restarted tracker must not drop SYNs.
LISTEN_BACKLOG = 4096


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


class _Stream(asyncio.BufferedProtocol):
    """The bytes of one TCP connection, read with `recv_into` into a read-ahead buffer, or straight into a
    caller's buffer for a raw chunk body (no intermediate copy). Reading pauses when the read-ahead is
    full and nobody is taking from it; writing applies the transport's flow control to `drain`."""

    def __init__(self, on_connect: Callable[[Connection], Coroutine[Any, Any, None]] | None = None) -> None:
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray(INITIAL_READ_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are _buf[_start:_end]
        self._end = 0
        #: while set, incoming bytes go straight here (a raw read whose start the read-ahead did not hold)
        self._target: memoryview | None = None
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._error: str | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.handler: asyncio.Task[None] | None = None
        #: set once the transport is gone
        self.closed = asyncio.Event()

    # -- transport callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio.Transport subclasses)
        if self._on_connect is not None:
            self.handler = asyncio.get_running_loop().create_task(self._on_connect(Connection(self)))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._filled :]
        if self._end == len(self._buf):  # (reading is paused before this can happen; be safe anyway)
            self._make_room(len(self._buf))
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._filled += nbytes
            if self._filled == len(self._target):
                self._target = None
                self._wake()
            return
        self._end += nbytes
        if self._end == len(self._buf) and not self._make_room(1):
            self._pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # half-open: replies to what was already received still go out; the handler closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.closed.set()
        if exc is not None:
            self._error = str(exc) or type(exc).__name__
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- helpers -------------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _make_room(self, length: int) -> bool:
        """Make `length` bytes free after the unread ones (moving them to the front, growing the buffer
        up to READ_BUFFER_SIZE); False if they do not fit."""
        unread = self._end - self._start
        if len(self._buf) - self._end >= length:
            return True
        size = len(self._buf)
        while size - unread < length and size < READ_BUFFER_SIZE:
            size *= 2
        if size != len(self._buf):  # a new buffer (a resize could fail while a view of the old one lives)
            buf = bytearray(size)
            buf[:unread] = self._view[self._start : self._end]
            self._buf, self._view = buf, memoryview(buf)
        elif self._start:
            self._buf[:unread] = self._view[self._start : self._end]
        self._start, self._end = 0, unread
        return len(self._buf) - unread >= length

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()

    async def _wait(self) -> None:
        if self._eof or self._lost:
            raise asyncio.IncompleteReadError(b"", None)
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def buffered(self) -> int:
        return self._end - self._start

    def take(self, length: int) -> bytes:
        """`length` bytes that are already buffered."""
        start = self._start
        data = bytes(self._view[start : start + length])
        self._consumed(length)
        return data

    def _consumed(self, length: int) -> None:
        self._start += length
        if self._start == self._end:
            self._start = self._end = 0
        self._resume_reading()

    # -- reads ---------------------------------------------------------------------------------
    async def readexactly(self, length: int) -> bytes | bytearray:
        if length > READ_BUFFER_SIZE // 2:
            # Read straight into the result, grown as bytes arrive: a peer that announces a huge frame
            # and sends nothing must not make us allocate it.
            out = bytearray(min(length, READ_BUFFER_SIZE))
            filled = 0
            while True:
                with memoryview(out) as view:
                    await self.readinto(view[filled:])
                filled = len(out)
                if filled == length:
                    return out
                out.extend(bytes(min(length, 2 * filled) - filled))
        while self._end - self._start < length:
            self._make_room(length - (self._end - self._start))
            self._resume_reading()
            await self._wait()
        return self.take(length)

    async def readinto(self, view: memoryview) -> None:
        """Fill `view` exactly: first from the read-ahead, then straight from the socket."""
        have = min(self._end - self._start, len(view))
        if have:
            view[:have] = self._view[self._start : self._start + have]
            self._consumed(have)
        if have == len(view):
            return
        # The read-ahead is empty now, so the socket's next bytes are exactly the ones that belong here.
        self._target, self._filled = view[have:], 0
        try:
            self._resume_reading()
            while self._target is not None:
                await self._wait()
        finally:
            if self._target is not None:  # cancelled or broken midway: the stream's position is lost
                self._target = None
                if self.transport is not None:
                    self.transport.abort()

    async def drain(self) -> None:
        if self._lost:
            raise ConnectionResetError(self._error or "connection lost")
        if not self._write_paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
        if self._lost:
            raise ConnectionResetError(self._error or "connection lost")


class Connection:
    """One TCP connection that carries framed JSON messages (and, on the fast path, raw chunk bytes)."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        transport = stream.transport
        assert transport is not None
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = transport.get_extra_info("peername")
        self.remote = Address(str(peername[0]), int(peername[1])) if peername else Address("?", 0)

    async def _read(self, length: int, timeout: float | None, timed_out: str) -> bytes | bytearray:
        """Exactly `length` bytes within `timeout`; every way of failing is ConnectionClosed.

        Bytes already buffered are returned without arming a timer (the common case on a busy
        connection). Timeouts here and on the transfer path use `asyncio.timeout`, not `wait_for`: on
        Python 3.11 `wait_for` returns a result that lands in the same loop iteration as a cancellation
        and swallows the cancellation, which left a cancelled download worker waiting for ever."""
        stream = self._stream
        if stream.buffered() >= length:
            return stream.take(length)
        try:
            async with asyncio.timeout(timeout):
                return await stream.readexactly(length)
        except TimeoutError:
            raise ConnectionClosed(f"{self.remote} {timed_out}") from None
        except asyncio.IncompleteReadError:
            raise ConnectionClosed(self._closed_reason()) from None

    def _closed_reason(self) -> str:
        error = self._stream._error
        return f"connection to {self.remote} broken: {error}" if error else f"connection closed by {self.remote}"

    async def recv_body(self, idle_timeout: float | None = None) -> bytes | bytearray:
        """The next frame body. ConnectionClosed at EOF, after `idle_timeout` seconds without a frame, or
        when a started frame does not complete within FRAME_TIMEOUT; FrameTooLarge before reading an
        oversized body."""
        header = await self._read(framing.HEADER_SIZE, idle_timeout, f"idle for {idle_timeout or 0:.0f} s")
        length = framing.body_length(header)
        return await self._read(length, FRAME_TIMEOUT, f"did not complete a frame in {FRAME_TIMEOUT:.0f} s")

    async def recv_raw(self, length: int) -> bytes | bytearray:
        """Exactly `length` raw bytes (the body of a binary PEER_REPLY_CHUNK), within FRAME_TIMEOUT."""
        return await self._read(length, FRAME_TIMEOUT, f"did not send {length} raw bytes in {FRAME_TIMEOUT:.0f} s")

    async def recv_raw_into(self, view: memoryview) -> None:
        """Fill `view` with the next raw bytes, read straight from the socket into it, within FRAME_TIMEOUT.
        A failure leaves the connection unusable (it is aborted)."""
        try:
            async with asyncio.timeout(FRAME_TIMEOUT):
                await self._stream.readinto(view)
        except TimeoutError:
            raise ConnectionClosed(f"{self.remote} did not send {len(view)} raw bytes in {FRAME_TIMEOUT:.0f} s") from None
        except asyncio.IncompleteReadError:
            raise ConnectionClosed(self._closed_reason()) from None

    async def recv(self) -> AnyMessage:
        """The next message, validated; ProtocolError if it does not follow the protocol."""
        return framing.decode(await self.recv_body())

    def send(self, message: Message) -> None:
        """Queue a message (no wait); call `drain` to apply back-pressure. ConnectionClosed if the
        other side is gone."""
        self.send_raw(framing.encode(message))

    def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        # uvloop raises RuntimeError on a write to a closed transport (asyncio only logs): either way the
        # peer is gone, which callers handle as ConnectionClosed.
        if self.transport.is_closing():
            raise ConnectionClosed(f"connection to {self.remote} is closed")
        try:
            self.transport.write(data)
        except RuntimeError as exc:
            raise ConnectionClosed(f"connection to {self.remote} is closed: {exc}") from None

    async def drain(self) -> None:
        """Wait until the written data is taken by the kernel; a reader that takes nothing for
        FRAME_TIMEOUT seconds is treated as gone."""
        try:
            async with asyncio.timeout(FRAME_TIMEOUT):
                await self._stream.drain()
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
        if not self.transport.is_closing():
            self.transport.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._stream.closed.wait()


async def serve(
    handler: Callable[[Connection], Coroutine[Any, Any, None]], host: str, port: int
) -> asyncio.Server:
    """Listen on host:port and run `handler(connection)` as a task for every connection accepted."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Stream(handler), host, port, backlog=LISTEN_BACKLOG)


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
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, stream = await loop.create_connection(_Stream, address.host, address.port)
    return Connection(stream)


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
