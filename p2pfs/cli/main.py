"""`p2pfs` command line: the tracker and peer shells and the one-shot commands share, get and ls.

Every failure a user can cause ends as one line on stderr (`p2pfs: error: ...`) and a non-zero exit.
Those lines, status lines and log lines quote names and messages from the network: all are printed
literal (p2pfs.safetext), so nothing a remote side sends can act on the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from p2pfs import __version__, security
from p2pfs.address import Address, parse_port
from p2pfs.cli import render
from p2pfs.cli.shell import Shell, error, say
from p2pfs.errors import P2PFSError, TrackerUnavailable
from p2pfs.net import describe_os_error, install_event_loop_policy, quiet_tls_failures
from p2pfs.peer.node import Peer
from p2pfs.peer.transfer import DownloadResult, Progress
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.safetext import LiteralFormatter, literal
from p2pfs.security import Security
from p2pfs.tracker.server import TrackerServer

#: Tracker port used by `p2pfs tracker --no-shell` when no --port is given.
DEFAULT_TRACKER_PORT = 6969
DEFAULT_HOST = "0.0.0.0"


class UsageError(P2PFSError):
    pass


# -- argument types ----------------------------------------------------------------------------------
def tracker_address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_number(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def byte_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use bytes or a suffix K, M (e.g. 256K, 1M)") from None


def add_security_options(p: argparse.ArgumentParser) -> None:
    """--secret-file and --tls-* (defaults from P2PFS_SECRET_FILE, P2PFS_TLS_CERT/KEY/CA)."""
    env = os.environ.get
    g = p.add_argument_group("private swarms (see docs/SECURITY.md)")
    g.add_argument(
        "--secret-file",
        metavar="PATH",
        default=env("P2PFS_SECRET_FILE") or None,
        help="admit only peers and trackers that know the secret in PATH (mode 600); env P2PFS_SECRET_FILE",
    )
    g.add_argument("--tls-cert", metavar="PATH", default=env("P2PFS_TLS_CERT") or None, help="this node's TLS certificate (PEM)")
    g.add_argument("--tls-key", metavar="PATH", default=env("P2PFS_TLS_KEY") or None, help="its private key (PEM)")
    g.add_argument(
        "--tls-ca",
        metavar="PATH",
        default=env("P2PFS_TLS_CA") or None,
        help="the CA that signs every member's certificate: all connections use TLS, verified both ways",
    )


def security_of(args: argparse.Namespace) -> Security:
    return security.load(args.secret_file, args.tls_cert, args.tls_key, args.tls_ca)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pfs", description="Peer-to-peer file distribution.")
    parser.add_argument("--version", action="version", version=f"p2pfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tracker", help="run the tracker (a shell, or a service with --no-shell)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=port_number, help="listen at once on this port (0: any free port)")
    p.add_argument("--no-shell", action="store_true", help="read no input; run until SIGINT/SIGTERM")
    add_security_options(p)

    p = sub.add_parser("peer", help="run a peer shell (connect, publish, list_file, download)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve chunks on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=port_number, default=0, help="port to serve chunks on (default: any free)")
    p.add_argument("--tracker", type=tracker_address, metavar="H:P", help="connect to this tracker at start")
    p.add_argument("--no-shell", action="store_true", help="read no input; run until SIGINT/SIGTERM")
    add_security_options(p)

    p = sub.add_parser("share", help="publish files, then serve them until interrupted")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--tracker", type=tracker_address, required=True, metavar="H:P")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=port_number, default=0)
    p.add_argument("--chunk-size", type=byte_size, default=DEFAULT_CHUNK_SIZE, help="bytes per chunk (default 1M)")
    add_security_options(p)

    p = sub.add_parser("get", help="download a published file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dest", nargs="?", type=Path, metavar="DEST", help="file or directory (default: ./NAME)")
    p.add_argument("--tracker", type=tracker_address, required=True, metavar="H:P")
    p.add_argument("--seed", action="store_true", help="keep serving the file after the download, until interrupted")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=port_number, default=0)
    p.add_argument("--json", action="store_true", help="print progress and the result as JSON lines on stdout")
    add_security_options(p)

    p = sub.add_parser("ls", help="list the files the tracker knows")
    p.add_argument("--tracker", type=tracker_address, required=True, metavar="H:P")
    p.add_argument("--json", action="store_true", help="print {name: [filesize, totalchunknum]} as JSON")
    add_security_options(p)
    return parser


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


async def start_peer(
    host: str, port: int, security: Security, on_tracker_status: Callable[[str], None] = status_to_stderr
) -> Peer:
    peer = Peer(
        host,
        port,
        serve_delay=serve_delay_from_env(),
        on_tracker_status=on_tracker_status,
        raw=os.environ.get("P2PFS_WIRE", "").strip().lower() != "json",
        security=security,
    )
    try:
        await peer.start()
    except OSError as exc:
        raise P2PFSError(f"cannot listen on {Address(host, port)}: {describe_os_error(exc)}") from None
    return peer


def publish_line(name: str, filesize: int, chunk_count: int) -> str:
    return f"published {name} ({render.human_size(filesize)}, {chunk_count} chunks)"


# -- tracker -----------------------------------------------------------------------------------------
async def run_tracker(args: argparse.Namespace) -> int:
    server = TrackerServer(security=security_of(args))
    stop = stop_on_signals() if args.no_shell else None
    try:
        if args.port is not None or args.no_shell:
            port = args.port if args.port is not None else DEFAULT_TRACKER_PORT
            say(f"listening on {await listen(server, args.host, port)}")
        if stop is not None:
            await stop.wait()
            return 0
        shell = Shell("tracker> ")

        async def start(host: str, port: str) -> None:
            if server.listening:
                raise UsageError(f"already listening on {server.address}")
            say(f"listening on {await listen(server, host, parse_port_arg(port))}")

        async def list_peers() -> None:
            peers = server.connected_peers()
            if not peers:
                say("no peers connected")
            else:
                render.print_table(render.peer_table(peers))

        async def list_file() -> None:
            files = server.registry.file_list()
            if not files:
                say("no files published")
            else:
                render.print_table(render.file_table(files, server.registry.content_ids()))

        async def exit_() -> None:
            shell.running = False

        shell.add("start", ("host", "port"), "listen for peers on host:port", start)
        shell.add("list_peers", (), "show the connected peers", list_peers)
        shell.add("list_file", (), "show the published files", list_file)
        shell.add("exit", (), "shut the tracker down", exit_)
        await shell.run()
        return 0
    finally:
        await server.stop()


def parse_port_arg(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- peer --------------------------------------------------------------------------------------------
async def run_peer(args: argparse.Namespace) -> int:
    peer = await start_peer(args.host, args.port, security_of(args), say)
    stop = stop_on_signals() if args.no_shell else None
    try:
        say(f"listening on {peer.address}")
        if args.tracker is not None:
            try:
                await peer.connect(args.tracker)
                say(f"connected to tracker {args.tracker}")
            except P2PFSError as exc:
                if args.no_shell:
                    raise
                error(str(exc))
        if stop is not None:
            await stop.wait()
            return 0
        shell = Shell("peer> ")

        async def connect(host: str, port: str) -> None:
            try:
                tracker = Address.of(host, port)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            await peer.connect(tracker)
            say(f"connected to tracker {tracker}")

        async def publish(localfile: str) -> None:
            shared = await peer.publish(Path(localfile))
            say(publish_line(shared.name, shared.filesize, shared.chunk_count))

        async def list_file() -> None:
            reply = await peer.file_list()
            if not reply.filelist:
                say("no files published")
            else:
                render.print_table(render.file_table(reply.filelist, reply.contentids))

        async def download(remote_file: str, local_path: str) -> None:
            with render.ProgressBar(remote_file) as bar:
                result = await peer.download(remote_file, Path(local_path), bar.update)
            say(render.result_line(result))

        async def exit_() -> None:
            shell.running = False

        shell.add("connect", ("trackerip", "trackerport"), "join the swarm through this tracker", connect)
        shell.add("publish", ("localfile",), "share a local file", publish)
        shell.add("list_file", (), "show the files the tracker knows", list_file)
        shell.add("download", ("remote_file", "local_path"), "download a published file", download)
        shell.add("exit", (), "shut the peer down", exit_)
        await shell.run()
        return 0
    finally:
        await peer.stop()


# -- one-shot commands ---------------------------------------------------------------------------------
async def run_share(args: argparse.Namespace) -> int:
    peer = await start_peer(args.host, args.port, security_of(args))
    stop = stop_on_signals()
    try:
        say(f"listening on {peer.address}")
        await peer.connect(args.tracker)
        for path in args.files:
            shared = await peer.publish(path, args.chunk_size)
            say(publish_line(shared.name, shared.filesize, shared.chunk_count))
        say("serving; press Ctrl-C to stop")
        await stop.wait()
        return 0
    finally:
        await peer.stop()


async def run_get(args: argparse.Namespace) -> int:
    dest: Path = args.dest if args.dest is not None else Path(args.name)
    on_status = (lambda line: emit_json({"event": "tracker", "message": line})) if args.json else status_to_stderr
    peer = await start_peer(args.host, args.port, security_of(args), on_status)
    try:
        await peer.connect(args.tracker)
        if args.json:
            emit_json({"event": "listening", "address": str(peer.self_address)})
            result = await peer.download(args.name, dest, JsonProgress().update)
            emit_json(result_json(result))
        else:
            with render.ProgressBar(args.name) as bar:
                result = await peer.download(args.name, dest, bar.update)
            say(render.result_line(result))
        if args.seed:
            stop = stop_on_signals()
            if args.json:
                emit_json({"event": "seeding", "name": args.name, "address": str(peer.self_address)})
            else:
                say(f"seeding {args.name} on {peer.self_address}; press Ctrl-C to stop")
            await stop.wait()
        return 0
    finally:
        await peer.stop()


class JsonProgress:
    """`get --json`: at most ten progress lines a second, and always the last one."""

    def __init__(self) -> None:
        self._last = 0.0

    def update(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last >= 0.1 or p.chunks_done == p.chunk_count:
            self._last = now
            emit_json(
                {
                    "event": "progress",
                    "name": p.name,
                    "chunks_done": p.chunks_done,
                    "chunk_count": p.chunk_count,
                    "bytes_done": p.bytes_done,
                    "filesize": p.filesize,
                    "holders": p.holders,
                }
            )


def result_json(result: DownloadResult) -> dict[str, object]:
    return {
        "event": "done",
        "name": result.name,
        "dest": str(result.dest),
        "filesize": result.filesize,
        "chunk_count": result.chunk_count,
        "seconds": round(result.seconds, 4),
        "mib_per_s": round(result.mib_per_s, 2),
        "sources": {str(addr): count for addr, count in result.sources.most_common()},
        "contentid": result.content_id,
        "resumed": result.resumed,
    }


def emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_ls(args: argparse.Namespace) -> int:
    peer = Peer(security=security_of(args))
    try:
        await peer.tracker.connect(args.tracker, None)
        reply = await peer.file_list()
    finally:
        await peer.tracker.close()
    if args.json:
        # (json.dumps escapes every non-ASCII character: no DEL, C1 or bidi control reaches a terminal)
        sys.stdout.write(json.dumps(reply.filelist) + "\n")
    elif not reply.filelist:
        say("no files published")
    else:
        render.print_table(render.file_table(reply.filelist, reply.contentids))
    return 0


async def run_command(args: argparse.Namespace) -> int:
    quiet_tls_failures(asyncio.get_running_loop())
    return await COMMANDS[args.command](args)


COMMANDS = {"tracker": run_tracker, "peer": run_peer, "share": run_share, "get": run_get, "ls": run_ls}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(LiteralFormatter("p2pfs: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[log_handler])
    install_event_loop_policy()
    try:
        return asyncio.run(run_command(args))
    except (P2PFSError, TrackerUnavailable) as exc:
        print(f"p2pfs: error: {literal(exc)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("p2pfs: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        return 1
