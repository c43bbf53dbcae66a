"""`p2pfs` command line: the parser, and the dispatch to the shells (cli.shells) and the one-shot
commands (cli.commands). Every failure a user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import NoReturn

from p2pfs import __version__
from p2pfs.cli import commands, config, shells, unpublish
from p2pfs.cli import mount as mount_command
from p2pfs.cli.common import (
    DEFAULT_HOST,
    add_http_option,
    add_rate_options,
    add_security_options,
    byte_size,
    port_number,
    tracker_addresses,
)
from p2pfs.errors import P2PFSError, TrackerUnavailable
from p2pfs.net import install_event_loop_policy, quiet_tls_failures
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.safetext import LiteralFormatter, literal
from p2pfs.tracker.store import DEFAULT_LEASE, check_store

GET_USAGE = "p2pfs get [options] NAME [DEST]\n       p2pfs get [options] NAME... -d DIR"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (`p2pfs get: error: ... (see p2pfs get --help)`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {literal(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="p2pfs",
        description="Peer-to-peer file distribution.",
        epilog="Settings come from flags, then P2PFS_* environment variables, then the config file "
        "(~/.config/p2pfs/config.toml, or $P2PFS_CONFIG); `p2pfs config` shows what is in effect.",
    )
    parser.add_argument("--version", action="version", version=f"p2pfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tracker", help="run the tracker (a shell, or a service with --no-shell)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=port_number, help="listen at once on this port (0: any free port)")
    p.add_argument("--no-shell", action="store_true", help="read no input; run until SIGINT/SIGTERM")
    add_http_option(p, "the dashboard at /, the JSON API at /api/, Prometheus metrics at /metrics")
    p.add_argument(
        "--store",
        default="memory",
        type=store_spec,
        metavar="memory|redis://HOST:PORT/DB",
        help="where the tracker's state lives: memory (the default: this tracker alone), or a Redis that "
        "several trackers share to serve one swarm (also rediss://, and a password as redis://:PASS@HOST)",
    )
    p.add_argument(
        "--lease",
        type=lease_seconds,
        default=DEFAULT_LEASE,
        metavar="SECONDS",
        help=f"with a Redis store: how long a peer stays registered after its tracker died "
        f"(default {DEFAULT_LEASE:.0f})",
    )
    add_security_options(p)

    p = sub.add_parser("peer", help="run a peer shell (connect, publish, list_file, download, unpublish)")
    add_serving_options(p)
    add_tracker_option(p, "connect to this tracker at start")
    p.add_argument("--no-shell", action="store_true", help="read no input; run until SIGINT/SIGTERM")
    add_security_options(p)

    p = sub.add_parser("share", help="publish files and directory trees, then serve them until interrupted")
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="local files, or directories to publish as collections (each under its base name)",
    )
    p.add_argument("--name", help="publish the one PATH under this name instead")
    add_tracker_option(p)
    add_serving_options(p)
    p.add_argument(
        "--chunk-size",
        type=byte_size,
        help=f"bytes per chunk, with K/M suffixes (default {DEFAULT_CHUNK_SIZE >> 20}M; config chunk_size)",
    )
    add_quiet_option(p)
    add_security_options(p)

    p = sub.add_parser(
        "get",
        help="download published files",
        usage=GET_USAGE,
        description="Download NAME to DEST (a file, or a directory to put NAME in; default ./NAME), or "
        "every NAME into DIR with -d (NAME may then be a pattern such as '*.bin', matched against the "
        "tracker's list). A DEST that already holds the published bytes is kept (exit 0, nothing "
        "fetched); one with other bytes is refused unless --force. Only a regular file is ever replaced.",
    )
    p.add_argument("targets", nargs="+", metavar="NAME", help="published name(s); without -d, an optional DEST last")
    p.add_argument("-d", "--dir", type=Path, metavar="DIR", help="download every NAME (or pattern) into DIR")
    add_tracker_option(p)
    p.add_argument("--force", action="store_true", help="replace a DEST that holds other bytes")
    p.add_argument("--seed", action="store_true", help="keep serving the file after the download, until interrupted")
    add_serving_options(p)
    p.add_argument("--json", action="store_true", help="print progress and the result as JSON lines on stdout")
    add_quiet_option(p)
    add_security_options(p)

    p = sub.add_parser("ls", help="list the files the tracker knows, or the members of a collection")
    p.add_argument("name", nargs="?", metavar="NAME", help="a collection: list its members with their sizes")
    p.add_argument("--tree", metavar="NAME", help="the same as ls NAME")
    add_tracker_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print {name: [filesize, totalchunknum]} as JSON (with NAME: one JSON object per member)",
    )
    add_security_options(p)

    p = sub.add_parser("verify", help="hash a local copy against a published file; name the chunks that differ")
    p.add_argument("name", metavar="NAME", help="the published name")
    p.add_argument("path", type=Path, metavar="PATH", help="the local file to check")
    add_tracker_option(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_quiet_option(p)
    add_security_options(p)

    p = sub.add_parser("config", help="show the settings in effect and where each came from")
    add_tracker_option(p)
    p.add_argument("--chunk-size", type=byte_size, help="bytes per chunk")
    p.add_argument("--json", action="store_true", help="print {key: {value, source}} as JSON")
    add_security_options(p)
    unpublish.add_parser(sub)
    mount_command.add_parser(sub)
    return parser


def store_spec(text: str) -> str:
    """`--store`: memory, or a Redis URL (checked here, connected to when the tracker starts)."""
    try:
        check_store(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def lease_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad lease {text!r}: a number of seconds") from None
    if not 0.3 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"bad lease {text!r}: between 0.3 and 3600 seconds")
    return value


def add_tracker_option(p: argparse.ArgumentParser, help: str = "the tracker") -> None:
    p.add_argument(
        "--tracker",
        type=tracker_addresses,
        metavar="H:P[,H:P...]",
        help=f"{help}: HOST:PORT, or several separated by commas (tried in order); "
        "env P2PFS_TRACKER, config tracker",
    )


def add_serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to serve chunks to other peers on (default {DEFAULT_HOST})"
    )
    p.add_argument("--port", type=port_number, default=0, help="port to serve chunks on (default 0: any free port)")
    add_rate_options(p)
    add_http_option(p, "Prometheus metrics at /metrics")


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress and no results, only errors")


#: what a setting is when neither a flag, the environment nor the config file gives it
DEFAULTS = {"chunk_size": DEFAULT_CHUNK_SIZE}


async def run_command(args: argparse.Namespace) -> int:
    quiet_tls_failures(asyncio.get_running_loop())
    return await COMMANDS[args.command](args)


COMMANDS = {
    "tracker": shells.run_tracker,
    "peer": shells.run_peer,
    "share": commands.run_share,
    "get": commands.run_get,
    "ls": commands.run_ls,
    "verify": commands.run_verify,
    "config": commands.run_config,
    "unpublish": unpublish.run_unpublish,
    "mount": mount_command.run_mount,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(LiteralFormatter("p2pfs: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[log_handler])
    install_event_loop_policy()
    try:
        args.settings = config.resolve(args, DEFAULTS)
        return asyncio.run(run_command(args))
    except (P2PFSError, TrackerUnavailable) as exc:
        print(f"p2pfs: error: {literal(exc)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("p2pfs: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        return 1
