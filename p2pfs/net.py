"""The I/O edge: framed messages over asyncio streams. Reads and writes bytes; `protocol` does the rest."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from p2pfs.address import Address
from p2pfs.errors import P2PFSError, ProtocolError
from p2pfs.protocol import auth, framing
from p2pfs.protocol.limits import MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME
from p2pfs.protocol.messages import AnyMessage, AuthChallenge, AuthProof, Error, Message
from p2pfs.security import OPEN, TLS_HANDSHAKE_TIMEOUT, AuthenticationFailed, Security


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
#: Seconds of silence before TCP keepalive probes a registered peer's tracker connection.
KEEPALIVE_IDLE = 15
#: Seconds the secret handshake may take, from the connection's first byte to the last proof.
HANDSHAKE_TIMEOUT = env_seconds("P2PFS_HANDSHAKE_TIMEOUT", 10.0)


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
        #: every coroutine waiting in `drain` (several tasks may send on one connection)
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.handler: asyncio.Task[None] | None = None
        self._tls = False
        #: set once the transport is gone
        self.closed = asyncio.Event()

    # -- transport callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio.Transport subclasses)
        self._tls = transport.get_extra_info("sslcontext") is not None
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
        # half-open: replies to what was already received still go out; the handler closes. (TLS cannot
        # stay half-open, and asyncio warns when asked to.)
        return not self._tls

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
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

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
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:  # (cancelled: the others still wait)
                self._drain_waiters.remove(waiter)
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
        self.remote = Address(source_host(str(peername[0])), int(peername[1])) if peername else Address("?", 0)
        #: largest frame body this side accepts on this connection (servers lower it to what they expect)
        self.max_frame = MAX_FRAME_SIZE

    def keepalive(self, idle: int = KEEPALIVE_IDLE, interval: int = 5, count: int = 3) -> None:
        """Probe a silent connection (TCP keepalive): a peer whose host vanished (power loss, cable) is
        noticed within idle + interval * count seconds instead of never."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)

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

    async def recv_body(
        self, idle_timeout: float | None = None, budget: ByteBudget | None = None
    ) -> bytes | bytearray:
        """The next frame body. ConnectionClosed at EOF, after `idle_timeout` seconds without a frame, or
        when a started frame does not complete within FRAME_TIMEOUT; FrameTooLarge before reading a body
        above `max_frame`. With a `budget`, a large body first takes its size from it (the caller gives it
        back once done with the body), so many connections sending large frames at once cannot add up
        to more memory than the budget."""
        header = await self._read(framing.HEADER_SIZE, idle_timeout, f"idle for {idle_timeout or 0:.0f} s")
        length = framing.body_length(header, self.max_frame)
        if budget is not None and length > budget.threshold:
            try:
                async with asyncio.timeout(FRAME_TIMEOUT):
                    await budget.acquire(length)
            except TimeoutError:
                raise ConnectionClosed(f"{self.remote} waited {FRAME_TIMEOUT:.0f} s to send a large frame") from None
            try:
                return await self._read(length, FRAME_TIMEOUT, f"did not complete a frame in {FRAME_TIMEOUT:.0f} s")
            except BaseException:
                budget.release(length)
                raise
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


class ByteBudget:
    """Bytes that frames larger than `threshold` may hold at once, across all of a server's connections.
    A connection whose large frame does not fit waits (its socket is not read meanwhile)."""

    def __init__(self, limit: int, threshold: int) -> None:
        self.limit = limit
        self.threshold = threshold
        self.free = limit
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> None:
        size = min(size, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= size)
            self.free -= size

    def release(self, size: int) -> None:
        self.free += min(size, self.limit)
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()


async def serve(
    handler: Callable[[Connection], Coroutine[Any, Any, None]],
    host: str,
    port: int,
    security: Security = OPEN,
) -> asyncio.Server:
    """Listen on host:port and run `handler(connection)` as a task for every connection accepted (after
    the TLS handshake, when `security` has TLS; the secret handshake is the handler's first step, see
    `admit`, so that it runs after the server's connection limits)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Stream(handler),
        host,
        port,
        backlog=LISTEN_BACKLOG,
        ssl=security.server_ssl,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if security.tls else None,
    )


async def admit(conn: Connection, security: Security) -> bool:
    """The accepting side of the secret handshake (see protocol.auth); True when the opener proved it
    knows the secret, or when there is no secret. Anything else gets one ERROR, "authentication failed",
    and the connection is closed: the opener learns no name, address or chunk."""
    secret = security.secret
    if secret is None:
        return True
    saved, conn.max_frame = conn.max_frame, MAX_HANDSHAKE_FRAME
    request: str | None = None
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            body = await conn.recv_body()
            request = framing.peek_type(body)  # (named in the ERROR whatever is wrong with the frame)
            hello = framing.decode(body)
            if isinstance(hello, AuthChallenge):
                acceptor_nonce = auth.new_nonce()
                conn.send(AuthChallenge(nonce=acceptor_nonce))
                await conn.drain()
                request = None  # (until the next frame is read: one too large for a handshake is unnamed)
                body = await conn.recv_body()
                request = framing.peek_type(body)
                answer = framing.decode(body)
                if isinstance(answer, AuthProof) and auth.check(
                    secret, "opener", hello.nonce, acceptor_nonce, answer.proof
                ):
                    conn.send(AuthProof(proof=auth.proof(secret, "acceptor", hello.nonce, acceptor_nonce)))
                    await conn.drain()
                    conn.max_frame = saved
                    return True
    except (TimeoutError, ConnectionClosed):
        log.info("%s did not complete the secret handshake", conn.remote)
        conn.close()
        return False
    except ProtocolError:
        pass  # (a frame too large or unreadable for a handshake: refused like a wrong proof)
    log.warning("%s failed the secret handshake; closing", conn.remote)
    with contextlib.suppress(ConnectionClosed):
        conn.send(Error(message=auth.FAILED, request=request))
    await conn.aclose()
    return False


async def _authenticate(conn: Connection, secret: bytes, peer: str) -> None:
    """The opening side of the secret handshake; AuthenticationFailed if the other side does not prove it
    knows the same secret (it is then told so and the connection closed)."""
    opener_nonce = auth.new_nonce()
    saved, conn.max_frame = conn.max_frame, MAX_HANDSHAKE_FRAME
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            challenge = await conn.request(AuthChallenge(nonce=opener_nonce))
            if isinstance(challenge, AuthChallenge):
                answer = await conn.request(
                    AuthProof(proof=auth.proof(secret, "opener", opener_nonce, challenge.nonce))
                )
                if isinstance(answer, AuthProof) and auth.check(
                    secret, "acceptor", opener_nonce, challenge.nonce, answer.proof
                ):
                    conn.max_frame = saved
                    return
                if not isinstance(answer, (AuthProof, Error)):
                    raise AuthenticationFailed(f"{peer} {conn.remote} does not speak the secret handshake")
                if isinstance(answer, Error):
                    raise AuthenticationFailed(f"authentication failed: {peer} {conn.remote} refused our secret")
            elif isinstance(challenge, Error) and challenge.message == auth.FAILED:
                raise AuthenticationFailed(f"authentication failed: {peer} {conn.remote} refused our secret")
            else:  # (a server without a secret answers the challenge as an unknown or unexpected message)
                raise AuthenticationFailed(
                    f"authentication failed: {peer} {conn.remote} does not use a shared secret"
                )
        with contextlib.suppress(ConnectionClosed):
            conn.send(Error(message=auth.FAILED, request="AUTH_PROOF"))
        raise AuthenticationFailed(f"authentication failed: {peer} {conn.remote} does not know our secret")
    except TimeoutError:
        raise AuthenticationFailed(f"{peer} {conn.remote} did not complete the secret handshake") from None
    except ConnectionClosed as exc:
        raise AuthenticationFailed(f"authentication failed: {peer} closed the connection ({exc})") from None
    except ProtocolError as exc:
        raise AuthenticationFailed(f"authentication failed: {peer} {conn.remote} sent {exc}") from None


async def connect(
    address: Address, timeout: float = CONNECT_TIMEOUT, security: Security = OPEN, peer: str = "peer"
) -> Connection:
    """Open a connection, with TLS and the secret handshake when `security` asks for them (`peer` names the
    other side in errors: "tracker", "holder"). ConnectionError/OSError/TimeoutError propagate for the
    caller to name; AuthenticationFailed when the other side fails or refuses admission."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, stream = await loop.create_connection(
            _Stream,
            address.host,
            address.port,
            ssl=security.client_ssl,
            server_hostname=address.host if security.tls else None,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if security.tls else None,
        )
    conn = Connection(stream)
    if security.secret is not None:
        try:
            await _authenticate(conn, security.secret, peer)
        except BaseException:
            conn.close()
            raise
    return conn


def source_host(host: str) -> str:
    """A connection's source host in its plain form: an IPv4 client of a dual-stack (`::`) listener
    appears as `::ffff:10.0.0.2` and is recorded as `10.0.0.2`."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


def quiet_tls_failures(loop: asyncio.AbstractEventLoop) -> None:
    """Log a client's failed TLS handshake (a plaintext client, a rogue certificate) as one line, not as
    the loop's default traceback: what a client sends must never fill the log with tracebacks."""
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)) or "SSL" in str(context.get("message", "")):
            log.info("TLS: %s%s", context.get("message", "handshake failed"), f" ({exc})" if exc else "")
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for a failed connect ("connection refused", "timed out", ...)."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, AuthenticationFailed):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
