"""The two shells: `p2pfs tracker` (start, list_peers, list_file) and `p2pfs peer` (connect, publish,
list_file, download, unpublish), each a `Shell` of commands over a tracker server or a peer."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from p2pfs.address import Address
from p2pfs.cli import render
from p2pfs.cli.common import (
    DEFAULT_TRACKER_PORT,
    UsageError,
    connect_tracker,
    listen,
    parse_port_arg,
    rates_of,
    security_of,
    shared_line,
    start_http,
    start_peer,
    stop_http,
    stop_on_signals,
)
from p2pfs.cli.shell import PATH, Cancelled, Shell, error, say, warn
from p2pfs.errors import P2PFSError
from p2pfs.peer import destination, partfile, storage
from p2pfs.peer.node import Peer
from p2pfs.peer.transfer import Progress
from p2pfs.tracker.server import TrackerServer
from p2pfs.tracker.store import open_store


# -- tracker -----------------------------------------------------------------------------------------
async def run_tracker(args: argparse.Namespace) -> int:
    server = TrackerServer(security=security_of(args), store=open_store(args.store, args.lease))
    stop = stop_on_signals() if args.no_shell else None
    http = None
    try:
        if args.port is not None or args.no_shell:
            port = args.port if args.port is not None else DEFAULT_TRACKER_PORT
            say(f"listening on {await listen(server, args.host, port)}")
        http = await start_http(args, tracker=server)
        if stop is not None:
            await stop.wait()
            return 0
        return await tracker_shell(server).run()
    finally:
        await stop_http(http)
        await server.stop()


def tracker_shell(server: TrackerServer) -> Shell:
    """The tracker shell's commands, over `server`."""
    shell = Shell("tracker> ", history="tracker_history")

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
            registry = server.registry
            render.print_table(render.file_table(files, registry.content_ids(), registry.collections()))

    async def exit_() -> None:
        shell.running = False

    shell.add("start", ("host", "port"), "listen for peers on host:port", start)
    shell.add("list_peers", (), "show the connected peers", list_peers)
    shell.add("list_file", (), "show the published files", list_file)
    shell.add("exit", (), "shut the tracker down", exit_)
    return shell


# -- peer --------------------------------------------------------------------------------------------
async def run_peer(args: argparse.Namespace) -> int:
    peer = await start_peer(args.host, args.port, security_of(args), say, **rates_of(args))
    stop = stop_on_signals() if args.no_shell else None
    http = None
    try:
        say(f"listening on {peer.address}")
        http = await start_http(args, peer=peer)
        if args.tracker is not None:
            try:
                tracker = await connect_tracker(peer, args.tracker)
                say(f"connected to tracker {tracker}")
            except P2PFSError as exc:
                if args.no_shell:
                    raise
                error(str(exc))
        if stop is not None:
            await stop.wait()
            return 0
        return await peer_shell(peer).run()
    finally:
        await stop_http(http)
        await peer.stop()


def peer_shell(peer: Peer) -> Shell:
    """The peer shell's commands, over `peer`."""
    shell = Shell("peer> ", history="peer_history")
    #: the names of the last `list_file`, offered when completing `download`'s first argument
    listed: list[str] = []

    async def connect(*words: str) -> None:
        # (several trackers sharing a store: the first that answers is used, the others are where a
        # lost one fails over to, as with --tracker H:P,H:P)
        try:
            trackers = [Address.of(host, port) for host, port in zip(words[::2], words[1::2], strict=True)]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        tracker = await peer.connect_first(trackers)
        say(f"connected to tracker {tracker}")

    async def publish(localfile: str) -> None:
        path = Path(localfile)
        with render.TransferDisplay() as display:
            shared = await peer.publish(path, on_progress=display.hashing(path.name), on_warning=warn)
        say(shared_line(shared))

    async def list_file() -> None:
        reply = await peer.file_list()
        listed[:] = sorted(reply.filelist)
        if not reply.filelist:
            say("no files published")
        else:
            render.print_table(render.file_table(reply.filelist, reply.contentids, reply.collections))

    async def download(remote_file: str, local_path: str) -> None:
        verified = -1  # (chunks held, as the last progress report said; -1: none came)

        def on_progress(progress: Progress) -> None:
            nonlocal verified
            if progress.stage == "download":
                verified = progress.chunks_done
            bar.update(progress)

        try:
            with render.ProgressBar(remote_file) as bar:
                result = await peer.download(remote_file, Path(local_path), on_progress)
        except asyncio.CancelledError:
            if not shell.interrupted:
                raise  # (the shell itself is stopping)
            raise Cancelled(cancelled_line(remote_file, Path(local_path), verified)) from None
        say(render.result_line(result))

    async def unpublish(name: str) -> None:
        await peer.unpublish(name)
        say(f"unpublished {name}")

    async def exit_() -> None:
        shell.running = False

    shell.add(
        "connect",
        ("trackerip", "trackerport"),
        "join the swarm through this tracker (several: ip port ip port ..., the first that answers)",
        connect,
        (None, None),
        repeat=True,
    )
    shell.add("publish", ("localfile",), "share a local file", publish, (PATH,))
    shell.add("list_file", (), "show the files the tracker knows", list_file)
    shell.add(
        "download",
        ("remote_file", "local_path"),
        "download a published file (Ctrl-C stops it; run it again to resume)",
        download,
        (lambda: listed, PATH),
    )
    shell.add("unpublish", ("name",), "stop sharing a file (the peer goes on serving the others)", unpublish)
    shell.add("exit", (), "shut the peer down", exit_)
    return shell


def cancelled_line(name: str, dest: Path, verified: int) -> str:
    """What an interrupted download left: `DEST.part` (with its state log) if some verified chunks were
    kept for a resume, else nothing. `verified`: the chunks held at the last progress report (-1: none
    came, so the log is counted)."""
    try:
        final, _ = destination.resolve(dest, name)
    except P2PFSError:
        final = dest
    part = storage.part_path(final)
    state = partfile.state_path(final)
    if not (part.exists() and state.exists()):
        return f"download of {name} cancelled; nothing kept"
    if verified < 0:
        verified = _logged_chunks(state)
    return f"download of {name} cancelled; {render.plural(verified, 'verified chunk')} kept in {part} for resume"


def _logged_chunks(state: Path) -> int:
    """The chunks a `.part.state` log names (after its header line); 0 if it cannot be read."""
    try:
        lines = state.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return 0
    return len({line.split()[0] for line in lines if line.split() and line.split()[0].isdigit()})
