"""The asyncio API: `share` a file or directory tree and `get` a published name from inside a running
event loop. The blocking forms for ordinary code are in `p2pfs.api` (`p2pfs.share`, `p2pfs.get`).

    async with p2pfs.aio.share("weights.bin", tracker="10.0.0.1:6969") as shared:
        ...                                   # served while the block runs
    result = await p2pfs.aio.get("weights.bin", "/data/", tracker="10.0.0.1:6969")

Every function runs one Peer (p2pfs.peer.node) on the caller's loop and raises the package's error types
(p2pfs.errors): TrackerUnavailable, FileNotPublished, NoSourceForChunk, StorageError, ... all P2PFSError.
Settings not given (tracker, secret file, TLS files, chunk size) come from P2PFS_* environment variables,
then the config file, as for the command line (p2pfs.cli.config). See docs/API.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeAlias, overload

from p2pfs.address import Address, parse_port
from p2pfs.errors import P2PFSError
from p2pfs.net import describe_os_error
from p2pfs.peer.node import Peer
from p2pfs.peer.transfer import DownloadResult, Progress
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.security import Security

__all__ = [
    "InvalidArgument",
    "PathArg",
    "Progress",
    "ProgressCallback",
    "Result",
    "Seeding",
    "Share",
    "TrackerArg",
    "get",
    "share",
    "start_share",
]

log = logging.getLogger("p2pfs.api")

#: A local path: `str` or any `os.PathLike` (`pathlib.Path`).
PathArg: TypeAlias = str | os.PathLike[str]
#: The tracker(s): `"H:P"`, `"H:P,H:P"` (tried in order), an Address, or a list of those.
TrackerArg: TypeAlias = str | Address | Sequence[str | Address]
#: Called on the event loop with every progress report of a download (it must not block).
ProgressCallback: TypeAlias = Callable[[Progress], None]
#: What `get` returns: p2pfs.peer.transfer.DownloadResult.
Result: TypeAlias = DownloadResult

DEFAULT_HOST = "0.0.0.0"
#: Seconds a share's stop waits for the tracker to confirm that it unpublished the names.
UNPUBLISH_ON_STOP_TIMEOUT = 5.0


class InvalidArgument(P2PFSError, ValueError):
    """An argument that cannot be used (a malformed tracker address, `name=` with several paths, ...)."""


# -- the objects handed out ----------------------------------------------------------------------------
class Share:
    """A running peer serving published files: what `share` yields (and `Seeding.share`).

    `address` is its chunk server's `host:port` as the tracker registered it; `names` are the names it
    still shares. `stop()` (or leaving the `async with` block) unpublishes them and stops the peer."""

    def __init__(self, peer: Peer, names: Sequence[str]) -> None:
        self._peer = peer
        self._names = list(dict.fromkeys(names))
        self._stopped = False
        assert peer.self_address is not None
        self._address = str(peer.self_address)

    @property
    def address(self) -> str:
        return self._address

    @property
    def names(self) -> list[str]:
        return [name for name in self._names if name in self._peer.library]

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def unpublish(self, name: str) -> None:
        """Stop sharing `name`, keep serving the others (the tracker delists `name` when no complete
        holder is left). P2PFSError if this share does not share `name`."""
        if self._stopped:
            raise P2PFSError("this share is stopped")
        await self._peer.unpublish(name)

    async def stop(self) -> None:
        """Unpublish every name still shared (so that the tracker stops sending downloaders here), then
        stop the peer. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        peer = self._peer
        try:
            names = self.names
            if names and peer.tracker.connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(UNPUBLISH_ON_STOP_TIMEOUT):
                        outcomes = await asyncio.gather(
                            *(peer.unpublish(name) for name in names), return_exceptions=True
                        )
                        for name, outcome in zip(names, outcomes, strict=True):
                            if isinstance(outcome, P2PFSError):
                                log.info("at stop, unpublishing %s: %s", name, outcome)
                            elif isinstance(outcome, BaseException):
                                raise outcome
        finally:
            await peer.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"serving {self.names}"
        return f"<p2pfs.aio.Share {self._address} {state}>"


class Seeding(DownloadResult):
    """What `get(..., seed=True)` returns: the download's Result (every field of it), whose peer goes on
    serving the downloaded file or tree to the swarm until `stop()` or the end of an `async with` block.
    `share` is that peer (its address, the name, `unpublish`)."""

    share: Share

    def __init__(self, result: DownloadResult, share: Share) -> None:
        values = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        super().__init__(**values)
        self.share = share

    async def stop(self) -> None:
        """Stop seeding (idempotent)."""
        await self.share.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# -- settings ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    trackers: list[Address]
    security: Security
    chunk_size: int
    #: rate limits from P2PFS_MAX_UPLOAD_RATE/P2PFS_MAX_DOWNLOAD_RATE or the config file (None: none)
    max_upload_rate: int | None = None
    max_download_rate: int | None = None


def parse_trackers(tracker: TrackerArg) -> list[Address]:
    """The trackers named by a `tracker` argument, in the order to try them; InvalidArgument if malformed."""
    from p2pfs.cli import config

    items: Sequence[object]
    if isinstance(tracker, (str, Address)):  # (an Address is a tuple: test it before Sequence)
        items = [tracker]
    elif isinstance(tracker, Sequence):
        items = tracker
    else:
        raise InvalidArgument(f"bad tracker {tracker!r}: expected 'HOST:PORT', an Address, or a list of them")
    trackers: list[Address] = []
    for item in items:
        if isinstance(item, Address):
            trackers.append(item)
        elif isinstance(item, str):
            try:
                trackers += config.parse_trackers(item)
            except ValueError as exc:
                raise InvalidArgument(f"bad tracker {item!r}: {exc}") from None
        else:
            raise InvalidArgument(f"bad tracker {item!r}: expected 'HOST:PORT' or an Address")
    if not trackers:
        raise InvalidArgument("no tracker address given: expected 'HOST:PORT'")
    return trackers


def _optional_path(value: PathArg | None) -> str | None:
    return None if value is None else os.fspath(value)


def _settings(
    tracker: TrackerArg | None,
    secret_file: PathArg | None,
    tls_cert: PathArg | None,
    tls_key: PathArg | None,
    tls_ca: PathArg | None,
    chunk_size: int | None = None,
) -> _Settings:
    """Arguments first, then P2PFS_* variables, then the config file, then defaults (as on the command
    line); the security files loaded. P2PFSError (ConfigError, SecurityError) with one line."""
    from p2pfs import security
    from p2pfs.cli import config

    args = argparse.Namespace(
        tracker=parse_trackers(tracker) if tracker is not None else None,
        secret_file=_optional_path(secret_file),
        tls_cert=_optional_path(tls_cert),
        tls_key=_optional_path(tls_key),
        tls_ca=_optional_path(tls_ca),
        chunk_size=chunk_size,
        max_upload_rate=None,
        max_download_rate=None,
    )
    config.resolve(args, {"chunk_size": DEFAULT_CHUNK_SIZE})
    if not args.tracker:
        path, _ = config.config_path()
        raise P2PFSError(
            f'no tracker given: pass tracker="HOST:PORT", set P2PFS_TRACKER, or put tracker = "HOST:PORT" in {path}'
        )
    loaded = security.load(args.secret_file, args.tls_cert, args.tls_key, args.tls_ca)
    return _Settings(
        list(args.tracker),
        loaded,
        int(args.chunk_size),
        args.max_upload_rate or None,
        args.max_download_rate or None,
    )


# -- the peer ------------------------------------------------------------------------------------------
async def _start_peer(host: str, port: int, settings: _Settings) -> Peer:
    try:
        port = parse_port(port)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    peer = Peer(
        host,
        port,
        raw=os.environ.get("P2PFS_WIRE", "").strip().lower() != "json",
        security=settings.security,
        max_upload_rate=settings.max_upload_rate,
        max_download_rate=settings.max_download_rate,
    )
    try:
        await peer.start()
    except OSError as exc:
        await peer.stop()
        raise P2PFSError(f"cannot listen on {Address(host, port)}: {describe_os_error(exc)}") from None
    except BaseException:
        await peer.stop()
        raise
    return peer


async def _connect(peer: Peer, trackers: list[Address]) -> None:
    """Register with the first tracker that answers; the last one's TrackerUnavailable if none does."""
    await peer.connect_first(trackers)


def _paths(paths: PathArg | Sequence[PathArg]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if not isinstance(paths, Sequence):
        raise InvalidArgument(f"bad path {paths!r}: expected a path or a list of paths")
    found = [Path(p) for p in paths]
    if not found:
        raise InvalidArgument("nothing to share: give a path or a list of paths")
    return found


async def start_share(
    paths: PathArg | Sequence[PathArg],
    tracker: TrackerArg | None = None,
    *,
    name: str | None = None,
    chunk_size: int | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    secret_file: PathArg | None = None,
    tls_cert: PathArg | None = None,
    tls_key: PathArg | None = None,
    tls_ca: PathArg | None = None,
) -> Share:
    """`share` without the context manager: the running Share, which the caller must `stop()`."""
    path_list = _paths(paths)
    if name is not None and len(path_list) != 1:
        raise InvalidArgument("name= names one path; share several paths under their own names")
    settings = _settings(tracker, secret_file, tls_cert, tls_key, tls_ca, chunk_size)
    peer = await _start_peer(host, port, settings)
    try:
        await _connect(peer, settings.trackers)
        names = []
        for path in path_list:
            shared = await peer.publish(path, settings.chunk_size, name=name)
            names.append(shared.name)
        return Share(peer, names)
    except BaseException:
        await peer.stop()
        raise


@contextlib.asynccontextmanager
async def share(
    paths: PathArg | Sequence[PathArg],
    tracker: TrackerArg | None = None,
    *,
    name: str | None = None,
    chunk_size: int | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    secret_file: PathArg | None = None,
    tls_cert: PathArg | None = None,
    tls_key: PathArg | None = None,
    tls_ca: PathArg | None = None,
) -> AsyncIterator[Share]:
    """Publish a file or a directory tree (a collection), or a list of them, and serve them until the
    `async with` block exits. Entering returns once every path is hashed and listed by the tracker."""
    running = await start_share(
        paths,
        tracker,
        name=name,
        chunk_size=chunk_size,
        host=host,
        port=port,
        secret_file=secret_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
    )
    try:
        yield running
    finally:
        await running.stop()


@overload
async def get(
    name: str,
    dest: PathArg | None = None,
    tracker: TrackerArg | None = None,
    *,
    seed: Literal[False] = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    secret_file: PathArg | None = None,
    tls_cert: PathArg | None = None,
    tls_key: PathArg | None = None,
    tls_ca: PathArg | None = None,
) -> Result: ...


@overload
async def get(
    name: str,
    dest: PathArg | None = None,
    tracker: TrackerArg | None = None,
    *,
    seed: Literal[True],
    force: bool = False,
    progress: ProgressCallback | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    secret_file: PathArg | None = None,
    tls_cert: PathArg | None = None,
    tls_key: PathArg | None = None,
    tls_ca: PathArg | None = None,
) -> Seeding: ...


@overload
async def get(
    name: str,
    dest: PathArg | None = None,
    tracker: TrackerArg | None = None,
    *,
    seed: bool,
    force: bool = False,
    progress: ProgressCallback | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    secret_file: PathArg | None = None,
    tls_cert: PathArg | None = None,
    tls_key: PathArg | None = None,
    tls_ca: PathArg | None = None,
) -> Result: ...


async def get(
    name: str,
    dest: PathArg | None = None,
    tracker: TrackerArg | None = None,
    *,
    seed: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    secret_file: PathArg | None = None,
    tls_cert: PathArg | None = None,
    tls_key: PathArg | None = None,
    tls_ca: PathArg | None = None,
) -> Result:
    """Download the published file or collection `name` (or one file of a collection, `NAME/PATH`) to
    `dest` (default `./NAME`; an existing directory gets `DEST/NAME`) and return its Result. A DEST already holding the published bytes is
    checked and kept (`already=True`); one holding other bytes is refused (StorageError) unless `force`.
    With `seed=True` the Result is a Seeding whose peer goes on serving until it is stopped."""
    if seed and "/" in name:
        raise InvalidArgument(
            f"{name!r} is one member of a collection: only whole files and collections can be seeded"
        )
    settings = _settings(tracker, secret_file, tls_cert, tls_key, tls_ca)
    target = Path(dest) if dest is not None else Path(name.rpartition("/")[2])  # (a member: ./BASENAME)
    peer = await _start_peer(host, port, settings)
    try:
        await _connect(peer, settings.trackers)
        result = await _download(peer, name, target, progress, force)
    except BaseException:
        await peer.stop()
        raise
    running = Share(peer, [result.name])
    if not seed:
        await running.stop()
        return result
    return Seeding(result, running)


async def _download(
    peer: Peer, name: str, dest: Path, progress: ProgressCallback | None, force: bool
) -> DownloadResult:
    """peer.download, with an exception raised by the progress callback stopping the download (it keeps
    `DEST.part` for a resume) and raised from here, instead of escaping into the transfer engine."""
    if progress is None:
        return await peer.download(name, dest, None, force=force)
    failure: list[Exception] = []
    callback = progress

    def report(update: Progress) -> None:
        if failure:
            return
        try:
            callback(update)
        except Exception as exc:  # noqa: BLE001 - any error of the caller's callback is raised by get
            failure.append(exc)
            task.cancel()

    task = asyncio.create_task(peer.download(name, dest, report, force=force))
    try:
        result = await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if failure and task.cancelled() and (current is None or not current.cancelling()):
            raise failure[0] from None  # (cancelled by `report`, not from outside)
        raise
    if failure:  # (the download finished before the cancellation reached it)
        raise failure[0]
    return result
