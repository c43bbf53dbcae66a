"""libtorrent 2.1.1 sessions for the namespace testbed of `make swarm` (bench/netswarm.py): the same
roles as bench/lt_swarm.py, but each session listens on its host's own address, not 127.0.0.1. Run with
bench/.venv-lt's python from the repository root (netswarm starts it inside a namespace):

    torrent --file F --out T                                   writes T (1 MiB pieces)
    seed --torrent T --save DIR --listen IP:PORT               serves until SIGTERM
    get --torrent T --save DIR --listen IP:PORT --peers IP:PORT,...   downloads, prints {"event": "done"},
                                                               then serves until SIGTERM

Settings: libtorrent's defaults except TCP only (uTP off), no DHT, LSD, UPnP or NAT-PMP, and status and
error alerts on (to hear torrent_finished_alert when it happens). Every host has its own address, so
allow_multiple_connections_per_ip stays at its default (off). Peers are connected with connect_peer:
every downloader to the seed and to every other downloader (full mesh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.lt_swarm import (
    Stop,
    Trace,
    add_torrent,
    die_with_parent,
    emit,
    libtorrent,
    make_torrent,
    serve_until_stopped,
)


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def session(listen: tuple[str, int]) -> Any:
    lt = libtorrent()
    return lt.session(
        {
            "listen_interfaces": f"{listen[0]}:{listen[1]}",
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "alert_mask": int(lt.alert_category.status | lt.alert_category.error),
        }
    )


def run_seed(args: argparse.Namespace) -> int:
    stop = Stop()
    die_with_parent()
    ses = session(args.listen)
    handle = add_torrent(ses, args.torrent, args.save)
    emit({"event": "listening", "port": ses.listen_port()})
    while not handle.status().is_seeding:  # the seed checks its file once, before anything is timed
        if stop.requested:
            return 0
        ses.wait_for_alert(100)
        ses.pop_alerts()
    emit({"event": "seeding"})
    serve_until_stopped(ses, stop)
    return 0


def run_get(args: argparse.Namespace) -> int:
    lt = libtorrent()
    stop = Stop()
    die_with_parent()
    ses = session(args.listen)
    handle = add_torrent(ses, args.torrent, args.save)
    for peer in args.peers:
        handle.connect_peer(peer)
    finished = False
    trace = Trace()  # BENCH_LT_TRACE=1: progress on stderr
    while not finished:
        if stop.requested:
            return 1
        trace.status(handle)
        ses.wait_for_alert(100)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.torrent_finished_alert):
                finished = True
            elif isinstance(alert, lt.torrent_error_alert):
                print(f"error: {alert.message()}", file=sys.stderr, flush=True)
                return 1
        finished = finished or handle.status().is_finished
    emit({"event": "done"})
    serve_until_stopped(ses, stop)
    return 0


def prepare() -> None:
    """Import libtorrent before bench.gate's barrier (so its load time is not timed)."""
    libtorrent()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lt_netns", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("torrent")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    for role in ("seed", "get"):
        p = sub.add_parser(role)
        p.add_argument("--torrent", type=Path, required=True)
        p.add_argument("--save", type=Path, required=True)
        p.add_argument("--listen", type=endpoint, required=True, metavar="IP:PORT")
        if role == "get":
            p.add_argument("--peers", type=lambda s: [endpoint(x) for x in s.split(",") if x], default=[])
    args = parser.parse_args(argv)
    if args.role == "torrent":
        make_torrent(args.file, args.out)
        return 0
    return run_seed(args) if args.role == "seed" else run_get(args)


if __name__ == "__main__":
    raise SystemExit(main())
