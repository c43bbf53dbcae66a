"""`p2pfs` command line: the parser, and the dispatch to the shells (cli.shells) and the one-shot
commands (cli.commands). Every failure a user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from p2pfs import __version__
from p2pfs.cli import commands, shells
from p2pfs.cli.common import (
    DEFAULT_HOST,
    add_security_options,
    byte_size,
    port_number,
    tracker_address,
)
from p2pfs.errors import P2PFSError, TrackerUnavailable
from p2pfs.net import install_event_loop_policy, quiet_tls_failures
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.safetext import LiteralFormatter, literal


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


async def run_command(args: argparse.Namespace) -> int:
    quiet_tls_failures(asyncio.get_running_loop())
    return await COMMANDS[args.command](args)


COMMANDS = {
    "tracker": shells.run_tracker,
    "peer": shells.run_peer,
    "share": commands.run_share,
    "get": commands.run_get,
    "ls": commands.run_ls,
}


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
