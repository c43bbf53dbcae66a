"""The two shells: `p2pfs tracker` (start, list_peers, list_file) and `p2pfs peer` (connect, publish,
list_file, download), each a `Shell` of commands over a tracker server or a peer."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2pfs.address import Address
from p2pfs.cli import render
from p2pfs.cli.common import (
    DEFAULT_TRACKER_PORT,
    UsageError,
    connect_tracker,
    listen,
    parse_port_arg,
    publish_line,
    security_of,
    start_peer,
    stop_on_signals,
)
from p2pfs.cli.shell import Shell, error, say
from p2pfs.errors import P2PFSError
from p2pfs.tracker.server import TrackerServer


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



# -- peer --------------------------------------------------------------------------------------------
async def run_peer(args: argparse.Namespace) -> int:
    peer = await start_peer(args.host, args.port, security_of(args), say)
    stop = stop_on_signals() if args.no_shell else None
    try:
        say(f"listening on {peer.address}")
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


