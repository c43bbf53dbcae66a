"""The blocking API, for code without an event loop: `p2pfs.share` and `p2pfs.get`.

    with p2pfs.share("weights.bin", tracker="10.0.0.1:6969") as shared:
        ...                                   # served from a background thread while the block runs
    result = p2pfs.get("weights.bin", "/data/", tracker="10.0.0.1:6969")

`share` runs its peer on an event loop of its own, in a daemon thread named "p2pfs", until the share is
stopped; `get` runs the download on a new event loop in the calling thread (or, with `seed=True`, in such
a background thread, which goes on serving). Neither touches the global event loop policy. Both refuse to
run in a thread whose event loop is running (they would block it): use p2pfs.aio there. Errors are raised
in the caller's thread as the same types as p2pfs.aio raises. See docs/API.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

from p2pfs import aio
from p2pfs.aio import DEFAULT_HOST, InvalidArgument, PathArg, ProgressCallback, Result, TrackerArg
from p2pfs.net import quiet_tls_failures

__all__ = ["InvalidArgument", "Result", "Seeding", "Share", "get", "share"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop, uvloop's when it is installed, without changing the global event loop policy."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    quiet_tls_failures(loop)
    return loop


def _refuse_in_running_loop(function: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"p2pfs.{function}() blocks, and this thread runs an event loop: use `await p2pfs.aio.{function}(...)`"
        + (" (or `async with p2pfs.aio.share(...)`)" if function == "share" else "")
        + " instead"
    )


class _LoopThread:
    """An event loop running in a daemon thread; coroutines are run on it with `call`."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="p2pfs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)  # (this thread's only)
        try:
            loop.run_forever()
        finally:
            try:  # (as asyncio.run ends: what is left is cancelled and awaited, then the executor shut down)
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result (or raise its exception) in the caller's thread.
        If the caller is interrupted (KeyboardInterrupt), the coroutine is cancelled."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a p2pfs share cannot be used from its own thread (a progress callback)")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # (a no-op once it is done; else the task is cancelled, and `close` awaits it)
            raise

    def close(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for the thread to end. Idempotent."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a p2pfs share cannot be stopped from its own thread (a progress callback)")
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()


class Share:
    """A running peer serving published files, from a background thread: what `share` returns.

    `address` is its chunk server's `host:port` as the tracker registered it; `names` are the names it
    still shares. `stop()` (or the end of a `with` block) unpublishes them and stops the peer and its
    thread. Its methods may be called from any thread."""

    def __init__(self, running: aio.Share, loop: _LoopThread) -> None:
        self._share = running
        self._loop = loop
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self._share.address

    @property
    def names(self) -> list[str]:
        return self._share.names

    @property
    def stopped(self) -> bool:
        return self._share.stopped

    def unpublish(self, name: str) -> None:
        """Stop sharing `name`, keep serving the others. P2PFSError if this share does not share it."""
        self._loop.call(self._share.unpublish(name))

    def stop(self) -> None:
        """Unpublish every name still shared, then stop the peer and its thread. Idempotent."""
        with self._lock:
            try:
                if not self._share.stopped:
                    self._loop.call(self._share.stop())
            finally:
                self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else f"serving {self.names}"
        return f"<p2pfs.Share {self.address} {state}>"


class Seeding(Result):
    """What `get(..., seed=True)` returns: the download's Result (every field of it), whose peer goes on
    serving the file or tree from a background thread until `stop()` or the end of a `with` block.
    `share` is that peer (its address, the name, `unpublish`)."""

    share: Share

    def __init__(self, seeding: aio.Seeding, loop: _LoopThread) -> None:
        super().__init__(**{f.name: getattr(seeding, f.name) for f in dataclasses.fields(Result)})
        self.share = Share(seeding.share, loop)

    def stop(self) -> None:
        """Stop seeding (idempotent)."""
        self.share.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _start(coro: Coroutine[Any, Any, T]) -> tuple[T, _LoopThread]:
    """Run `coro` on a new background loop, which goes on running; closed again if `coro` fails."""
    loop = _LoopThread()
    try:
        return loop.call(coro), loop
    except BaseException:
        loop.close()
        raise


def share(
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
    """Publish a file or a directory tree (a collection), or a list of them, and serve them from a
    background thread. Returns once every path is hashed and listed by the tracker; the Share serves until
    `stop()`, so use it as a context manager: `with p2pfs.share(path, tracker=T) as shared: ...`."""
    _refuse_in_running_loop("share")
    running, loop = _start(
        aio.start_share(
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
    )
    return Share(running, loop)


@overload
def get(
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
def get(
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
def get(
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


def get(
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
    """Download the published file or collection `name` to `dest` (default `./NAME`; an existing
    directory gets `DEST/NAME`) and return its Result; see p2pfs.aio.get. `progress` is called in this
    thread (with `seed=True`: in the background thread). With `seed=True` the Result is a Seeding whose
    peer goes on serving from a background thread until it is stopped."""
    _refuse_in_running_loop("get")
    if seed:
        seeding, loop = _start(
            aio.get(
                name,
                dest,
                tracker,
                seed=True,
                force=force,
                progress=progress,
                host=host,
                port=port,
                secret_file=secret_file,
                tls_cert=tls_cert,
                tls_key=tls_key,
                tls_ca=tls_ca,
            )
        )
        return Seeding(seeding, loop)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(
            aio.get(
                name,
                dest,
                tracker,
                force=force,
                progress=progress,
                host=host,
                port=port,
                secret_file=secret_file,
                tls_cert=tls_cert,
                tls_key=tls_key,
                tls_ca=tls_ca,
            )
        )
