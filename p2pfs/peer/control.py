"""The local control channel: how a one-shot `p2pfs unpublish NAME` reaches the peers already running on
this machine for the same user (`p2pfs share`, `p2pfs peer`, `p2pfs get --seed`), as transmission-remote
reaches its daemon.

Every started Peer listens on a Unix domain socket in the user's runtime directory: `$P2PFS_RUNTIME_DIR`
if set, else `$XDG_RUNTIME_DIR/p2pfs`, else `/tmp/p2pfs-<uid>`. The directory is created with mode 0700
and used only if it is a directory (not a symlink) owned by the user with no group or other access; the
socket is `peer-<pid>.sock` (`peer-<pid>-<n>.sock` for a process's later peers), mode 0600, removed when
the peer stops. Whoever may open it (the user, and root) may control the peer: there is no other check.

On it, the frames of the rest of p2pfs (p2pfs.protocol.framing: a 4-byte big-endian length, then one
JSON object) carry a few local messages defined here, outside the tracker and peer wire schema
(docs/PROTOCOL.md, section 13): CONTROL_STATUS and CONTROL_UNPUBLISH, answered by CONTROL_STATUS_REPLY,
CONTROL_UNPUBLISH_REPLY, or ERROR for a request that cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from p2pfs.errors import FrameTooLarge, P2PFSError, ProtocolError, TrackerError
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import MAX_FRAME_SIZE

if TYPE_CHECKING:
    from p2pfs.peer.node import Peer

log = logging.getLogger("p2pfs.peer")

RUNTIME_DIR_ENV = "P2PFS_RUNTIME_DIR"
#: Largest request a control server reads (a CONTROL_UNPUBLISH is ~300 bytes).
MAX_CONTROL_REQUEST = 8192
#: A client connection silent this long is closed by the control server.
IDLE_TIMEOUT = 60.0
#: How long a control client waits to connect, for a status, and for an unpublish (which waits for the
#: tracker's answer, itself bounded by the tracker client's 10 s request timeout).
CONNECT_TIMEOUT = 2.0
STATUS_TIMEOUT = 5.0
UNPUBLISH_TIMEOUT = 30.0

SOCKET_NAME = re.compile(r"^peer-(\d+)(?:-\d+)?\.sock$")


class ControlUnavailable(P2PFSError):
    """The runtime directory cannot be used (insecure, or not creatable), or a peer's socket failed."""


# -- the messages (local only: not in the tracker/peer wire schema) -------------------------------------
class ControlStatus(m.Message, tag="CONTROL_STATUS"):
    """What are you: your chunk server's address, your tracker, the names you share."""


class ControlStatusReply(m.Message, tag="CONTROL_STATUS_REPLY"):
    pid: int
    #: how other peers reach this one ("host:port", as the tracker recorded it, else as bound)
    address: str | None
    #: the tracker it is connected to (or reconnecting to), "host:port"; None without one
    tracker: str | None
    #: names it serves whole (published, or downloaded)
    names: list[str]
    #: names it is downloading (serving the chunks it has so far)
    downloading: list[str] = msgspec.field(default_factory=list)


class ControlUnpublish(m.Message, tag="CONTROL_UNPUBLISH"):
    """Stop sharing `filename` (Peer.unpublish)."""

    filename: m.Filename


class ControlUnpublishReply(m.Message, tag="CONTROL_UNPUBLISH_REPLY", omit_defaults=True):
    filename: str
    #: True: the peer no longer serves the name (`message` then is a warning, e.g. the tracker does not
    #: support unpublish). False: nothing changed; `message` says why
    result: bool
    message: str = ""


_requests = msgspec.json.Decoder(ControlStatus | ControlUnpublish)
_replies = msgspec.json.Decoder(ControlStatusReply | ControlUnpublishReply | m.Error)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> object:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None


async def _read_body(reader: asyncio.StreamReader, limit: int) -> bytes:
    header = await reader.readexactly(framing.HEADER_SIZE)
    return await reader.readexactly(framing.body_length(header, limit))


# -- the runtime directory ------------------------------------------------------------------------------
def runtime_dir() -> Path:
    explicit = os.environ.get(RUNTIME_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "p2pfs"
    return Path(f"/tmp/p2pfs-{os.getuid()}")


def check_dir(directory: Path, create: bool) -> bool:
    """Whether `directory` is safe to hold control sockets: a real directory of this user's, mode 0700 or
    stricter (created so when `create` and missing; False when missing and not `create`).
    ControlUnavailable says why it may not be used."""
    if create:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ControlUnavailable(f"cannot create {directory}: {exc.strerror or exc}") from None
    try:
        st = os.lstat(directory)  # (lstat: a symlink planted in /tmp by someone else is refused)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ControlUnavailable(f"cannot use {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise ControlUnavailable(f"refusing {directory}: {what}")
    if st.st_uid != os.getuid():
        raise ControlUnavailable(f"refusing {directory}: owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o077:
        raise ControlUnavailable(
            f"refusing {directory}: mode {stat.S_IMODE(st.st_mode):04o} lets others in (chmod 700 it)"
        )
    return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0; another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the server (in every started Peer) ----------------------------------------------------------------
_later_peers = itertools.count(1)


class ControlServer:
    """Answers control requests for one Peer on its socket in the runtime directory."""

    def __init__(self, peer: Peer, path: Path) -> None:
        self.peer = peer
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @classmethod
    async def start_for(cls, peer: Peer) -> ControlServer | None:
        """Listen for `peer`; None (after one warning) if the runtime directory cannot be used."""
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - not on POSIX
            return None
        directory = runtime_dir()
        try:
            check_dir(directory, create=True)
            server = cls(peer, directory / _socket_name())
            await server._listen()
        except ControlUnavailable as exc:
            log.warning("no control socket (p2pfs unpublish cannot reach this peer): %s", exc)
            return None
        return server

    async def _listen(self) -> None:
        path = self.path
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # (left by a dead process that had our pid: ours now)
        try:
            self._server = await asyncio.start_unix_server(self._on_client, path=str(path))
            os.chmod(path, 0o600)  # (the directory is 0700: nobody else could reach it meanwhile)
        except OSError as exc:
            await self.stop()
            raise ControlUnavailable(f"cannot listen on {path}: {exc.strerror or exc}") from None
        log.debug("control socket %s", path)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        body = await _read_body(reader, MAX_CONTROL_REQUEST)
                except FrameTooLarge as exc:
                    writer.write(framing.encode(m.Error(message=str(exc))))
                    await writer.drain()
                    return
                writer.write(framing.encode(await self._answer(body)))
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # (the client left, or went quiet)
        except Exception:  # a bug in one request must not take the peer down
            log.exception("control request failed")
        finally:
            writer.close()
            self._clients.discard(task)

    async def _answer(self, body: bytes) -> m.Message:
        try:
            request = _decode(_requests, body)
        except ProtocolError as exc:
            return m.Error(message=str(exc), request=framing.peek_type(body))
        if isinstance(request, ControlUnpublish):
            name = request.filename
            try:
                await self.peer.unpublish(name)
            except TrackerError as exc:  # (raised after the local stop: done here, with a warning)
                return ControlUnpublishReply(filename=name, result=True, message=str(exc))
            except P2PFSError as exc:
                return ControlUnpublishReply(filename=name, result=False, message=str(exc))
            return ControlUnpublishReply(filename=name, result=True)
        return self._status()

    def _status(self) -> ControlStatusReply:
        peer = self.peer
        tracker = peer.tracker
        connected = tracker.address is not None and (tracker.connected or tracker.reconnecting)
        return ControlStatusReply(
            pid=os.getpid(),
            address=str(peer.self_address) if peer.self_address is not None else None,
            tracker=str(tracker.address) if connected else None,
            names=sorted(n for n, shared in peer.library.items() if shared.complete),
            downloading=sorted(n for n, shared in peer.library.items() if not shared.complete),
        )


def _socket_name() -> str:
    n = next(_later_peers)
    return f"peer-{os.getpid()}.sock" if n == 1 else f"peer-{os.getpid()}-{n}.sock"


# -- the client (the one-shot commands) ---------------------------------------------------------------
@dataclass
class LivePeer:
    path: Path
    status: ControlStatusReply


async def _request(path: Path, message: m.Message, timeout: float) -> object:
    async with asyncio.timeout(CONNECT_TIMEOUT):
        reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(framing.encode(message))
        async with asyncio.timeout(timeout):
            await writer.drain()
            return _decode(_replies, await _read_body(reader, MAX_FRAME_SIZE))
    finally:
        writer.close()


async def live_peers() -> list[LivePeer]:
    """Every running peer of this user on this machine, with its status. Stale sockets (their peer was
    killed) are skipped, and removed when their pid is dead. ControlUnavailable if the runtime directory
    is not safe to use."""
    directory = runtime_dir()
    if not check_dir(directory, create=False):
        return []
    found: list[LivePeer] = []
    for path in sorted(directory.iterdir()):
        match = SOCKET_NAME.match(path.name)
        if match is None:
            continue
        try:
            status = await _request(path, ControlStatus(), STATUS_TIMEOUT)
        except (ConnectionRefusedError, FileNotFoundError):
            if not pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                log.info("removed stale control socket %s", path)
            continue
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
            log.info("control socket %s did not answer: %s", path, exc or type(exc).__name__)
            continue
        if isinstance(status, ControlStatusReply):
            found.append(LivePeer(path, status))
    return found


async def unpublish(peer: LivePeer, name: str) -> ControlUnpublishReply:
    """Ask a running peer to stop sharing `name`; ControlUnavailable if it cannot be asked."""
    try:
        reply = await _request(peer.path, ControlUnpublish(filename=name), UNPUBLISH_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise ControlUnavailable(f"peer {peer.status.address} did not answer: {why}") from None
    if isinstance(reply, m.Error):
        raise ControlUnavailable(f"peer {peer.status.address} refused the request: {reply.message}")
    if not isinstance(reply, ControlUnpublishReply):
        raise ControlUnavailable(f"peer {peer.status.address} sent an unexpected reply")
    return reply
