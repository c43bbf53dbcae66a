"""`p2pfs unpublish NAME...`: the running peers of this user on this machine that share NAME stop sharing
it (they keep running and serving everything else), asked over their control sockets
(p2pfs.peer.control). Each tells its tracker, which delists the file when no complete holder is left."""

from __future__ import annotations

import argparse

from p2pfs.cli.commands import fail_line
from p2pfs.cli.common import status_to_stderr, tracker_addresses
from p2pfs.cli.shell import say
from p2pfs.errors import P2PFSError
from p2pfs.peer import control


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "unpublish",
        help="stop sharing names in the peers running on this machine (they keep running)",
        description="Ask every p2pfs peer of yours running on this machine (share, peer, get --seed) that "
        "shares NAME to stop sharing it, without stopping it. Its tracker delists NAME when some chunk is "
        "left with no holder. The file on disk is untouched.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="published name(s)")
    p.add_argument(
        "--tracker",
        dest="only_trackers",
        type=tracker_addresses,
        metavar="H:P[,H:P...]",
        help="ask only the peers connected to this tracker (as they were given it)",
    )


async def run_unpublish(args: argparse.Namespace) -> int:
    peers = await control.live_peers()
    only = args.only_trackers
    if only:
        wanted = {str(t) for t in only}
        peers = [p for p in peers if p.status.tracker in wanted]
    names = list(dict.fromkeys(args.names))
    failures: list[str] = []
    for name in names:
        holders = [p for p in peers if name in p.status.names or name in p.status.downloading]
        if not holders:
            where = f" with tracker {', '.join(str(t) for t in only)}" if only else ""
            failures.append(f"no running p2pfs peer on this machine{where} shares {name!r}")
            continue
        for peer in holders:
            try:
                reply = await control.unpublish(peer, name)
            except P2PFSError as exc:
                failures.append(f"{name}: {exc}")
                continue
            if not reply.result:
                failures.append(f"{name}: peer {peer.status.address}: {reply.message}")
                continue
            say(f"unpublished {name} (peer {peer.status.address})")
            if reply.message:
                status_to_stderr(f"warning: peer {peer.status.address}: {reply.message}")
    if len(failures) == 1:
        raise P2PFSError(failures[0])  # (main prints it: `p2pfs: error: ...`, exit 1)
    for line in failures:
        fail_line(line)
    return 1 if failures else 0
