"""The one-shot commands: `share` (publish, then serve), `get` (download one name, or several into a
directory), `ls` (the file list), `verify` (a local copy against the published file) and `config`."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
import time
from pathlib import Path

import msgspec

from p2pfs.cli import config, render
from p2pfs.cli.common import (
    UsageError,
    connect_tracker,
    rates_of,
    security_of,
    shared_line,
    start_http,
    start_peer,
    status_to_stderr,
    stop_http,
    stop_on_signals,
    trackers_of,
)
from p2pfs.cli.shell import say
from p2pfs.errors import P2PFSError, format_ranges
from p2pfs.peer.hashing import Comparison
from p2pfs.peer.node import Peer
from p2pfs.peer.transfer import DownloadResult, Progress
from p2pfs.safetext import literal

#: Downloads a multi-name `get -d DIR` runs at once (aria2c's --max-concurrent-downloads is 5): each
#: keeps its holders busy with a window of requests, so a few already fill a link; thousands at once would
#: only multiply connections.
CONCURRENT_DOWNLOADS = 5


def shows_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and not getattr(args, "json", False)


def warn_line(message: str) -> None:
    print(f"p2pfs: warning: {literal(message)}", file=sys.stderr, flush=True)


def fail_line(message: str) -> None:
    print(f"p2pfs: error: {literal(message)}", file=sys.stderr, flush=True)


# -- share -------------------------------------------------------------------------------------------
async def run_share(args: argparse.Namespace) -> int:
    trackers = trackers_of(args)
    peer = await start_peer(args.host, args.port, security_of(args), **rates_of(args))
    stop = stop_on_signals()
    out = (lambda line: None) if args.quiet else say
    http = None
    try:
        out(f"listening on {peer.address}")
        http = await start_http(args, peer=peer)
        await connect_tracker(peer, trackers)
        if args.name is not None and len(args.files) != 1:
            raise UsageError("--name names one FILE or DIR; share several under their own names")
        with render.TransferDisplay(None if shows_progress(args) else False) as display:
            for path in args.files:
                shared = await peer.publish(
                    path, args.chunk_size, display.hashing(args.name or path.name), args.name, warn_line
                )
                out(shared_line(shared))
        out("serving; press Ctrl-C to stop")
        await stop.wait()
        return 0
    finally:
        await stop_http(http)
        await peer.stop()


# -- get ---------------------------------------------------------------------------------------------
def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def download_targets(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """(the names or patterns, DEST) from `get`'s positionals: NAME [DEST], or NAME... with -d DIR."""
    targets: list[str] = args.targets
    if args.dir is not None:
        if not args.dir.is_dir():
            why = "does not exist" if not args.dir.exists() else "is not a directory"
            raise UsageError(f"cannot download to {args.dir}: directory {why}")
        return targets, args.dir
    if len(targets) > 2:
        raise UsageError("to get several names, put them in a directory with -d DIR (e.g. get A B C -d .)")
    return targets[:1], Path(targets[1]) if len(targets) == 2 else None


def expand(patterns: list[str], listed: dict[str, tuple[int, int]]) -> tuple[list[str], list[str]]:
    """Names to download (patterns matched against the tracker's list, in sorted order, each name once)
    and the patterns that matched nothing."""
    names: list[str] = []
    unmatched: list[str] = []
    for pattern in patterns:
        if pattern in listed or not is_pattern(pattern):
            found = [pattern]
        else:
            found = sorted(n for n in listed if fnmatch.fnmatchcase(n, pattern))
            if not found:
                unmatched.append(pattern)
        names += [n for n in found if n not in names]
    return names, unmatched


async def run_get(args: argparse.Namespace) -> int:
    patterns, dest = download_targets(args)
    trackers = trackers_of(args)
    emit = emit_json if args.json else None
    if args.json:
        on_status = lambda line: emit_json({"event": "tracker", "message": line})
    else:
        on_status = status_to_stderr
    peer = await start_peer(args.host, args.port, security_of(args), on_status, **rates_of(args))
    failed = 0
    http = None
    try:
        http = await start_http(args, peer=peer)
        await connect_tracker(peer, trackers)
        if emit:
            emit({"event": "listening", "address": str(peer.self_address)})
        names = patterns
        if args.dir is not None and any(is_pattern(p) for p in patterns):
            names, unmatched = expand(patterns, (await peer.file_list()).filelist)
            for pattern in unmatched:
                failed += 1
                report_failure(args, pattern, f"no published name matches {pattern!r}")
        jobs = asyncio.Semaphore(CONCURRENT_DOWNLOADS)
        with render.TransferDisplay(None if shows_progress(args) else False) as display:

            async def get_one(name: str) -> bool:
                async with jobs:
                    target = dest if dest is not None else Path(name.rpartition("/")[2])  # (a member: ./BASENAME)
                    on_progress = JsonProgress().update if args.json else display.download(name)
                    try:
                        result = await peer.download(name, target, on_progress, force=args.force)
                    except P2PFSError as exc:
                        report_failure(args, name, str(exc), len(names) > 1)
                        return False
                if args.json:
                    emit_json(result_json(result))
                elif not args.quiet:
                    say(render.result_line(result))
                return True

            outcomes = await asyncio.gather(*(get_one(name) for name in names))
        failed += outcomes.count(False)
        asked = failed + outcomes.count(True)
        if failed and asked > 1:
            fail_line(f"{failed} of {asked} downloads failed")
        if args.seed and outcomes.count(True):
            stop = stop_on_signals()
            seeding = [n for n, ok in zip(names, outcomes, strict=True) if ok]
            if args.json:
                for name in seeding:
                    emit_json({"event": "seeding", "name": name, "address": str(peer.self_address)})
            elif not args.quiet:
                say(f"seeding {', '.join(seeding)} on {peer.self_address}; press Ctrl-C to stop")
            await stop.wait()
        return 1 if failed else 0
    finally:
        await stop_http(http)
        await peer.stop()


def report_failure(args: argparse.Namespace, name: str, message: str, prefix: bool = False) -> None:
    """One line on stderr for a name that could not be fetched (and a JSON event with --json)."""
    if args.json:
        emit_json({"event": "error", "name": name, "message": message})
    fail_line(f"{name}: {message}" if prefix and not message.startswith(name) else message)


class JsonProgress:
    """`get --json`: at most ten progress lines a second, and always the last one."""

    def __init__(self) -> None:
        self._last = 0.0

    def update(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.bytes_done >= p.filesize if p.stage != "download" else p.chunks_done == p.chunk_count
        if now - self._last >= 0.1 or final:
            self._last = now
            event: dict[str, object] = {
                "event": "progress" if p.stage == "download" else "checking",
                "name": p.name,
                "chunks_done": p.chunks_done,
                "chunk_count": p.chunk_count,
                "bytes_done": p.bytes_done,
                "filesize": p.filesize,
                "holders": p.holders,
            }
            if p.stage != "download":
                event["stage"] = p.stage
            emit_json(event)


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
        "already": result.already,
        **({"files": result.files} if result.files is not None else {}),
    }


def emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- ls ----------------------------------------------------------------------------------------------
async def run_ls(args: argparse.Namespace) -> int:
    trackers = trackers_of(args)
    peer = Peer(security=security_of(args), control=False)
    collection = args.name or args.tree
    try:
        await connect_tracker(peer, trackers, register=False)
        if collection is not None:
            return await list_members(peer, collection, args.json)
        reply = await peer.file_list()
    finally:
        await peer.tracker.close()
    if args.json:
        # (json.dumps escapes every non-ASCII character: no DEL, C1 or bidi control reaches a terminal)
        sys.stdout.write(json.dumps(reply.filelist) + "\n")
    elif not reply.filelist:
        say("no files published")
    else:
        render.print_table(render.file_table(reply.filelist, reply.contentids, reply.collections))
    return 0


async def list_members(peer: Peer, name: str, as_json: bool) -> int:
    """`ls NAME`: the members of a collection, in manifest order, streamed from its checked manifest."""
    manifest = await peer.manifest(name)
    try:
        h = manifest.header
        if not as_json:
            say(
                f"{name}/: {render.plural(h.files, 'file')}, {render.plural(h.dirs, 'directory', 'directories')}"
                f"{', ' + render.plural(h.links, 'link') if h.links else ''}, {render.human_size(h.size)}"
            )
        for entry in manifest.entries():
            if as_json:
                sys.stdout.write(json.dumps(msgspec.to_builtins(entry)) + "\n")
            elif entry.type == "dir":
                say(f"{'-':>10}  {entry.path}/")
            elif entry.type == "link":
                say(f"{'link':>10}  {entry.path} -> {entry.target}")
            else:
                say(f"{render.human_size(entry.size):>10}  {entry.path}{'  (executable)' if entry.x else ''}")
        sys.stdout.flush()
    finally:
        manifest.close()
    return 0


# -- verify ------------------------------------------------------------------------------------------
async def run_verify(args: argparse.Namespace) -> int:
    trackers = trackers_of(args)
    peer = Peer(security=security_of(args))
    try:
        await connect_tracker(peer, trackers, register=False)
        with render.TransferDisplay(None if shows_progress(args) else False) as display:
            found = await peer.verify(args.name, args.path, display.hashing(args.name, "verify"))
    finally:
        await peer.tracker.close()
    if args.json:
        emit_json(
            {
                "name": found.name,
                "path": found.path,
                "contentid": found.content_id,
                "matches": found.matches,
                "filesize": found.filesize,
                "local_size": found.local_size,
                "chunk_count": found.chunk_count,
                "differing": found.differing,
            }
        )
    elif not args.quiet:
        say(verify_line(found))
    return 0 if found.matches else 1


def verify_line(found: Comparison) -> str:
    if found.matches:
        return f"{found.path} matches {found.name} (content id {found.content_id})"
    parts: list[str] = []
    if found.local_size != found.filesize:
        parts.append(f"it has {found.local_size} bytes, {found.name} has {found.filesize}")
    if found.differing:
        parts.append(
            f"{len(found.differing)} of {render.plural(found.chunk_count, 'chunk')} differ "
            f"({format_ranges(found.differing)})"
        )
    return f"{found.path} differs from {found.name}: " + "; ".join(parts)


# -- config ------------------------------------------------------------------------------------------
async def run_config(args: argparse.Namespace) -> int:
    settings: dict[str, config.Resolved] = args.settings
    if args.json:
        shown = {
            key: {"value": _json_value(r.value), "source": r.source} for key, r in settings.items()
        }
        emit_json(shown)
        return 0
    path, _ = config.config_path()
    say(f"# config file: {path}{'' if path.exists() else ' (none)'}")
    width = max(len(k) for k in settings)
    for key, r in settings.items():
        say(f"{key:<{width}} = {config.describe(r.value, key)}  ({r.source})")
    return 0


def _json_value(value: object) -> object:
    if isinstance(value, list):
        return [str(v) for v in value]
    return value
