"""libtorrent 2.1.1 sessions for the namespace testbed of `make swarm` (bench/netswarm.py): the roles of
bench/lt_swarm.py, but each session listens on its host's own address, not 127.0.0.1. Run with
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
from pathlib import Path

from bench.lt_swarm import libtorrent, make_torrent, run_get, run_seed


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


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
    if args.role == "seed":
        return run_seed(args, args.listen, same_host=False)
    return run_get(args, args.listen, args.peers, same_host=False)


if __name__ == "__main__":
    raise SystemExit(main())
