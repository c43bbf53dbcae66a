"""`p2pfs mount MOUNTPOINT`: the tracker's files as a read-only file system until SIGINT/SIGTERM or
`fusermount -u` (then unmounted cleanly, exit 0). See p2pfs.mount."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path

from p2pfs.cli.common import (
    UsageError,
    add_http_option,
    add_rate_options,
    add_security_options,
    byte_size,
    connect_tracker,
    port_number,
    rates_of,
    security_of,
    start_http,
    start_peer,
    stop_http,
    stop_on_signals,
    tracker_addresses,
    trackers_of,
)
from p2pfs.cli.shell import say
from p2pfs.errors import P2PFSError

log = logging.getLogger("p2pfs.mount")

#: Bytes of chunks the cache keeps by default (least recently read first out).
DEFAULT_MAX_CACHE = 10 << 30
#: Seconds a read waits for its chunks by default before it fails with EIO.
DEFAULT_READ_TIMEOUT = 60.0


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "p2pfs" / "mount"


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}: must be positive")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "mount",
        help="mount the tracker's files read-only; chunks are fetched as they are read",
        description="Mount the tracker's files (and collections, as directories) read-only at MOUNTPOINT "
        "until SIGINT/SIGTERM or fusermount -u. A read fetches the chunks it covers, verified; sequential "
        "reads are read ahead. Fetched chunks stay in the cache directory (and are served to the swarm) "
        "up to --max-cache, least recently read first out, and are used again by the next mount.",
    )
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument(
        "--tracker",
        type=tracker_addresses,
        metavar="H:P[,H:P...]",
        help="the tracker: HOST:PORT, or several separated by commas; env P2PFS_TRACKER, config tracker",
    )
    p.add_argument("--cache", type=Path, metavar="DIR", help=f"the chunk cache (default {default_cache_dir()})")
    p.add_argument(
        "--max-cache",
        type=byte_size,
        default=DEFAULT_MAX_CACHE,
        metavar="SIZE",
        help=f"bytes of chunks to keep, with K/M/G suffixes (default {DEFAULT_MAX_CACHE >> 30}G)",
    )
    p.add_argument(
        "--read-timeout",
        type=seconds,
        default=DEFAULT_READ_TIMEOUT,
        metavar="SECONDS",
        help=f"a read whose chunks do not come within this fails with EIO (default {DEFAULT_READ_TIMEOUT:g})",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to serve cached chunks on (default 0.0.0.0)")
    p.add_argument("--port", type=port_number, default=0, help="port to serve them on (default 0: any free port)")
    add_rate_options(p)
    add_http_option(p, "/metrics (Prometheus)")
    add_security_options(p)


def check_mountpoint(path: Path) -> None:
    if not path.is_dir():
        why = "does not exist" if not path.exists() else "is not a directory"
        raise UsageError(f"cannot mount at {path}: it {why}")
    if os.path.ismount(path):
        raise UsageError(f"cannot mount at {path}: something is mounted there already")


async def run_mount(args: argparse.Namespace) -> int:
    try:
        import pyfuse3
        import pyfuse3.asyncio as pyfuse3_asyncio
    except ImportError:
        raise P2PFSError("p2pfs mount needs pyfuse3: pip install 'p2pfs[mount]' (it builds against libfuse3-dev)") from None
    from p2pfs.mount.cache import ChunkCache
    from p2pfs.mount.fs import MountFS

    trackers = trackers_of(args)
    mountpoint: Path = args.mountpoint
    check_mountpoint(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise P2PFSError("cannot mount: /dev/fuse is missing (is the fuse module loaded?)")
    cache = ChunkCache(args.cache or default_cache_dir(), args.max_cache)
    await asyncio.to_thread(cache.open)
    peer = await start_peer(args.host, args.port, security_of(args), **rates_of(args))
    stop = stop_on_signals()
    fs = MountFS(peer, cache, args.read_timeout)
    mounted = False
    http = None
    try:
        say(f"listening on {peer.address}")
        http = await start_http(args, peer=peer)
        await connect_tracker(peer, trackers)
        await fs.refresh(timeout=10.0)
        pyfuse3_asyncio.enable()
        options = set(pyfuse3.default_options) | {"fsname=p2pfs", "subtype=p2pfs", "ro", "noatime"}
        try:
            pyfuse3.init(fs, str(mountpoint), options)
        except RuntimeError as exc:
            raise P2PFSError(f"cannot mount at {mountpoint}: {exc} (is FUSE permitted here?)") from None
        mounted = True
        fs.start()
        main = asyncio.create_task(pyfuse3.main())
        # before the mount is announced: its stat would keep an unmount right after the line busy
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await raise_readahead(mountpoint)
        say(f"mounted {len(fs.root.children)} names at {mountpoint} (read-only)")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            pyfuse3.terminate()
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main  # (an error of the FUSE loop itself ends the mount: it is unmounted below)
        return 0
    finally:
        if mounted:
            with contextlib.suppress(Exception):
                pyfuse3.close(unmount=True)
        await fs.close()
        await stop_http(http)
        reads = sum(f.reads for f in fs.fetchers.values())
        touched = sum(f.chunks_touched for f in fs.fetchers.values())
        fetched = sum(f.cached.fetched for f in fs.fetchers.values())
        await peer.stop()
        if mounted:
            say(
                f"unmounted {mountpoint}: {reads} reads touching {touched} distinct chunks, "
                f"{fetched} chunks fetched"
            )


#: KiB the kernel reads ahead of a sequential reader of the mount (its default, 128 KiB, is one FUSE
#: request at a time; more lets several be in flight, so the reads overlap the mount's own work).
KERNEL_READAHEAD_KB = 8192


async def raise_readahead(mountpoint: Path) -> None:
    """Raise the mount's kernel read-ahead (/sys/class/bdi/MAJOR:MINOR/read_ahead_kb; root only, else
    the default stays). The stat needs the FUSE loop running, hence a task of its own."""
    try:
        dev = (await asyncio.to_thread(os.stat, mountpoint)).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        await asyncio.to_thread(Path(path).write_text, str(KERNEL_READAHEAD_KB))
    except OSError as exc:
        log.debug("kernel read-ahead of %s left as it is: %s", mountpoint, exc)
