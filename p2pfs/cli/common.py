"""What every p2pfs command shares: argument types, the security options, starting a peer, signals.

Every failure a user can cause ends as one line on stderr (`p2pfs: error: ...`) and a non-zero exit.
Status and log lines quote names and messages from the network: all are printed literal
(p2pfs.safetext), so nothing a remote side sends can act on the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from p2pfs import security
from p2pfs.address import Address, parse_port
from p2pfs.cli import config, render
from p2pfs.collection.store import CollectionStore
from p2pfs.errors import P2PFSError
from p2pfs.net import describe_os_error
from p2pfs.peer.node import Peer
from p2pfs.peer.storage import ChunkFile
from p2pfs.safetext import literal
from p2pfs.security import Security
from p2pfs.tracker.server import TrackerServer

if TYPE_CHECKING:
    from p2pfs.observe.http import HttpServer

#: Tracker port used by `p2pfs tracker --no-shell` when no --port is given.
DEFAULT_TRACKER_PORT = 6969
DEFAULT_HOST = "0.0.0.0"

log = logging.getLogger("p2pfs.cli")


class UsageError(P2PFSError):
    pass


# -- argument types ----------------------------------------------------------------------------------
def tracker_address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tracker_addresses(text: str) -> list[Address]:
    """`--tracker H:P[,H:P...]`: the trackers, in the order to try them."""
    try:
        return config.parse_trackers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_number(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def byte_size(text: str) -> int:
    try:
        return config.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_security_options(p: argparse.ArgumentParser) -> None:
    """--secret-file and --tls-* (else from P2PFS_SECRET_FILE, P2PFS_TLS_CERT/KEY/CA, or the config file:
    see cli.config)."""
    g = p.add_argument_group("private swarms (see docs/SECURITY.md)")
    g.add_argument(
        "--secret-file",
        metavar="PATH",
        help="admit only peers and trackers that know the secret in PATH (mode 600); env P2PFS_SECRET_FILE",
    )
    g.add_argument("--tls-cert", metavar="PATH", help="this node's TLS certificate (PEM); env P2PFS_TLS_CERT")
    g.add_argument("--tls-key", metavar="PATH", help="its private key (PEM); env P2PFS_TLS_KEY")
    g.add_argument(
        "--tls-ca",
        metavar="PATH",
        help="the CA that signs every member's certificate: all connections use TLS, verified both ways; "
        "env P2PFS_TLS_CA",
    )


def add_http_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--http",
        type=tracker_address,
        metavar="HOST:PORT",
        help=f"also serve HTTP on HOST:PORT (port 0: any free port): {what}; off by default",
    )


async def start_http(
    args: argparse.Namespace, tracker: TrackerServer | None = None, peer: Peer | None = None
) -> HttpServer | None:
    """The HTTP server `--http HOST:PORT` asks for (None without it), started on this event loop: the
    tracker's dashboard and metrics, or a peer's metrics. Says where on stderr (unless -q)."""
    address: Address | None = getattr(args, "http", None)
    if address is None:
        return None
    from p2pfs.observe import metrics  # (aiohttp and prometheus_client only load when asked for)
    from p2pfs.observe.dashboard import Dashboard
    from p2pfs.observe.http import HttpServer

    if tracker is not None:
        http = HttpServer(metrics.tracker_registry(tracker), Dashboard(tracker))
    else:
        assert peer is not None
        http = HttpServer(metrics.peer_registry(peer))
    try:
        bound = await http.start(address.host, address.port)
    except OSError as exc:
        # (asyncio words a failed bind at length, with the address again: the errno says it all)
        reason = os.strerror(exc.errno).lower() if exc.errno else describe_os_error(exc)
        raise P2PFSError(f"cannot listen on {address} for --http: {reason}") from None
    if not getattr(args, "quiet", False):
        what = "dashboard" if tracker is not None else "metrics"
        where = f"http://{bound}/" if tracker is not None else f"http://{bound}/metrics"
        print(f"p2pfs: {what} on {where}", file=sys.stderr, flush=True)
    return http


async def stop_http(http: HttpServer | None) -> None:
    if http is not None:
        await http.stop()


def trackers_of(args: argparse.Namespace) -> list[Address]:
    """The trackers a command must use; one clear line if none was given anywhere."""
    trackers: list[Address] | None = getattr(args, "tracker", None)
    if not trackers:
        path, _ = config.config_path()
        raise UsageError(
            f"no tracker given: use --tracker HOST:PORT, set P2PFS_TRACKER, or put tracker = \"HOST:PORT\" in {path}"
        )
    return trackers


async def connect_tracker(peer: Peer, trackers: list[Address], register: bool = True) -> Address:
    """The first of `trackers` that answers (see Peer.connect_first)."""
    return await peer.connect_first(trackers, register)


def security_of(args: argparse.Namespace) -> Security:
    return security.load(args.secret_file, args.tls_cert, args.tls_key, args.tls_ca)


# -- helpers -----------------------------------------------------------------------------------------
def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM. Installed before a command prints that it is ready, so a
    signal sent right after that line always means a clean stop (exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def listen(server: TrackerServer, host: str, port: int) -> Address:
    try:
        return await server.start(host, port)
    except OSError as exc:
        raise P2PFSError(f"cannot listen on {Address(host, port)}: {describe_os_error(exc)}") from None


def serve_delay_from_env() -> float:
    """P2PFS_TEST_DELAY: seconds a peer waits before each chunk reply. For tests and benchmarks only."""
    try:
        return max(0.0, float(os.environ.get("P2PFS_TEST_DELAY", "0") or 0))
    except ValueError:
        return 0.0


def status_to_stderr(line: str) -> None:
    print(f"p2pfs: {literal(line)}", file=sys.stderr, flush=True)


def rate(text: str) -> int:
    """`--max-upload-rate`/`--max-download-rate`: bytes per second, K/M/G suffixes 1024-based (as
    aria2c); 0 for no limit."""
    return byte_size(text)


class Rates(TypedDict):
    max_upload_rate: int | None
    max_download_rate: int | None


def add_rate_options(p: argparse.ArgumentParser) -> None:
    """--max-upload-rate and --max-download-rate: caps over all of the process's transfers."""
    for way, verb in (("upload", "send"), ("download", "fetch")):
        p.add_argument(
            f"--max-{way}-rate",
            type=rate,
            metavar="RATE",
            help=f"{verb} at most RATE bytes per second over all transfers, K/M/G suffixes (1024-based; "
            f"0: no limit); env P2PFS_MAX_{way.upper()}_RATE, config max_{way}_rate",
        )


def rates_of(args: argparse.Namespace) -> Rates:
    """The rate limits in effect for a serving command (flags, env, config file; see cli.config)."""
    return {
        "max_upload_rate": getattr(args, "max_upload_rate", None) or None,
        "max_download_rate": getattr(args, "max_download_rate", None) or None,
    }


async def start_peer(
    host: str,
    port: int,
    security: Security,
    on_tracker_status: Callable[[str], None] = status_to_stderr,
    max_upload_rate: int | None = None,
    max_download_rate: int | None = None,
) -> Peer:
    peer = Peer(
        host,
        port,
        serve_delay=serve_delay_from_env(),
        on_tracker_status=on_tracker_status,
        raw=os.environ.get("P2PFS_WIRE", "").strip().lower() != "json",
        security=security,
        max_upload_rate=max_upload_rate,
        max_download_rate=max_download_rate,
    )
    try:
        await peer.start()
    except OSError as exc:
        raise P2PFSError(f"cannot listen on {Address(host, port)}: {describe_os_error(exc)}") from None
    return peer


def publish_line(name: str, filesize: int, chunk_count: int, files: int | None = None) -> str:
    """`published NAME (SIZE, N chunks)`; a collection: `published NAME/ (F files, SIZE, N chunks)`."""
    if files is not None:
        return f"published {name}/ ({render.plural(files, 'file')}, {render.human_size(filesize)}, " + (
            f"{render.plural(chunk_count, 'chunk')})"
        )
    return f"published {name} ({render.human_size(filesize)}, {render.plural(chunk_count, 'chunk')})"


def shared_line(shared: ChunkFile) -> str:
    """The publish line of a file or a collection just published."""
    if isinstance(shared, CollectionStore) and shared.header is not None:
        return publish_line(shared.name, shared.header.size, shared.chunk_count, shared.header.files)
    return publish_line(shared.name, shared.filesize, shared.chunk_count)


def parse_port_arg(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


