"""The one-shot commands: `share` (publish, then serve), `get` (download) and `ls` (the file list)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from p2pfs.cli import render
from p2pfs.cli.common import publish_line, security_of, start_peer, status_to_stderr, stop_on_signals
from p2pfs.cli.shell import say
from p2pfs.peer.node import Peer
from p2pfs.peer.transfer import DownloadResult, Progress


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


