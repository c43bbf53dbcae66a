"""A holder that lies, for fault tests: `python -m tests.liar --tracker H:P --file NAME --host 127.0.0.1`.

It registers with the tracker, claims every chunk of NAME (batch REQUEST_CHUNK_REGISTER, after reading
the file's fileinfo and chunk size from REQUEST_FILE_LOCATION), echoes PEER_PING_PONG and answers every
PEER_REQUEST_CHUNK according to `--mode`:

- `corrupt`: wrong bytes of the right length, with a digest that matches the wrong bytes (so only the
  publisher's chunk hashes can expose it);
- `badlength`: wrong bytes one byte longer than the chunk, with a matching digest;
- `honest`: the real bytes of `--path`, with their digest;
- `silent`: no answer at all (the ping is still echoed), so only the downloader's chunk timeout helps;
- `chunk0`: a valid copy of chunk 0 of `--path` (with its digest), whatever chunk was asked for: a
  substitute nobody asked for from a non-publisher, and useless substitutes after the first.

Replies use the binary fast path (a header frame with `rawlength`, then the raw bytes) when the request
asks for it with `raw`, unless `--wire json`, which always answers in the seed's base64 `data`.

With `--publish`, it instead publishes `--path` as NAME the way a seed-only program would: a
REQUEST_PUBLISH with no `chunksize` and no `chunkhashes` (so 1 MiB chunks, and an *unverified* file);
`--hashes` adds the `chunkhashes`. With `--join`, it publishes NAME again with the fileinfo, chunk size
and chunk hashes the tracker lists, so the tracker counts it among the file's publishers (the holders
allowed to send substitutes).

With `--chunks FIRST:END` it registers (and serves) only chunks FIRST to END-1 (default: all).

With `--holders N` it is N holders at once: N listening sockets, each registered (or published) by its
own tracker connection, all answering the same way.

Lines on stdout: `listening on HOST:PORT` (one per holder), then `registered NAME N chunks` or
`published NAME N chunks` (one per holder), then `connection open PORT` and `connection closed PORT`
for every downloader connection, and `served chunk K raw|json` for every chunk reply (K is the chunk
asked for; ` substitute` is added when the request allowed a substitute). It runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from p2pfs.address import Address
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from tests.procs import Proc

ROOT = Path(__file__).resolve().parents[1]


def start(procs: Callable[..., Proc], tracker: str, name: str, *options: str) -> tuple[Proc, str]:
    """Run this program as a real process through the `procs` fixture (so it is killed at the end of the
    test like any other); wait until it is registered or published; return it and its address."""
    # Proc always runs `python -m p2pfs ARGS`; for the duration of the start, it runs this module instead.
    with mock.patch("tests.procs.P2PFS", [sys.executable, "-m", "tests.liar"]):
        liar = procs("--tracker", tracker, "--file", name, "--host", "127.0.0.1", *options, cwd=ROOT)
    address = liar.listening()
    liar.expect(rf"^(registered|published) {re.escape(name)} ")
    return liar, address


def start_many(
    procs: Callable[..., Proc], tracker: str, name: str, count: int, *options: str
) -> tuple[Proc, list[str]]:
    """`start` for `--holders COUNT`: wait until every holder is registered; return their addresses."""
    with mock.patch("tests.procs.P2PFS", [sys.executable, "-m", "tests.liar"]):
        liar = procs(
            "--tracker", tracker, "--file", name, "--host", "127.0.0.1", "--holders", str(count), *options,
            cwd=ROOT,
        )  # fmt: skip
    addresses = [liar.listening() for _ in range(count)]
    for _ in range(count):
        liar.expect(rf"^(registered|published) {re.escape(name)} ")
    return liar, addresses


def say(line: str) -> None:
    print(line, flush=True)


async def recv(reader: asyncio.StreamReader) -> tuple[bytes, m.AnyMessage]:
    body = await reader.readexactly(framing.body_length(await reader.readexactly(framing.HEADER_SIZE)))
    return body, framing.decode(body)


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: m.Message
) -> m.AnyMessage:
    writer.write(framing.encode(message))
    await writer.drain()
    return (await recv(reader))[1]


class Liar:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.file
        self.mode: str = args.mode
        self.path: Path | None = args.path
        self.wire: str = args.wire
        self.delay: float = args.delay
        self.filesize = 0
        self.chunk_size = DEFAULT_CHUNK_SIZE
        #: the chunks it registers and serves: [first, end) (end None: to the last chunk)
        first, _, end = (args.chunks or "0:").partition(":")
        self.first, self.end = int(first), int(end) if end else None

    def holds(self, chunk: int) -> bool:
        return self.chunk_length(chunk) > 0 and self.first <= chunk and (self.end is None or chunk < self.end)

    def chunk_length(self, chunk: int) -> int:
        return max(0, min(self.chunk_size, self.filesize - chunk * self.chunk_size))

    def raw_reply(self, request: m.PeerRequestChunk) -> bool:
        return request.raw and self.wire == "raw"

    def reply(self, request: m.PeerRequestChunk) -> bytes:
        """The whole answer to a chunk request, as bytes for the wire."""
        chunk = 0 if self.mode == "chunk0" else request.chunknum
        length = self.chunk_length(chunk)
        if request.filename != self.name or not self.holds(request.chunknum):
            text = f"chunk {request.chunknum} of {request.filename} not held here"
            return framing.encode(m.Error(message=text, request="PEER_REQUEST_CHUNK"))
        if self.mode in ("honest", "chunk0"):
            assert self.path is not None, f"--mode {self.mode} needs --path"
            with open(self.path, "rb") as f:
                data = os.pread(f.fileno(), length, chunk * self.chunk_size)
        else:
            if self.mode == "badlength":
                length += 1
            # Deterministic junk that differs from any real chunk (and from zeros).
            seed = hashlib.sha256(f"lie {request.chunknum}".encode()).digest()
            data = (seed * (length // len(seed) + 1))[:length]
        digest = hashlib.sha256(data).hexdigest()
        if self.raw_reply(request):
            header = m.PeerReplyChunk(filename=self.name, chunknum=chunk, digest=digest, rawlength=len(data))
            return framing.encode(header) + data
        return framing.encode(m.PeerReplyChunk(filename=self.name, chunknum=chunk, digest=digest, data=data))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = int(writer.get_extra_info("sockname")[1])
        say(f"connection open {port}")
        try:
            while True:
                body, message = await recv(reader)
                if isinstance(message, m.PeerPingPong):
                    writer.write(framing.frame(body))
                elif isinstance(message, m.PeerRequestChunk):
                    if self.mode == "silent":
                        say(f"ignored chunk {message.chunknum}")
                        continue
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    writer.write(self.reply(message))
                    form = "raw" if self.raw_reply(message) else "json"
                    say(f"served chunk {message.chunknum} {form}{' substitute' if message.substitute else ''}")
                else:
                    writer.write(framing.encode(m.Error(message="unexpected message")))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            say(f"connection closed {port}")


async def main(args: argparse.Namespace) -> int:
    liar = Liar(args)
    servers: list[asyncio.Server] = []
    for _ in range(args.holders):
        server = await asyncio.start_server(liar.serve, args.host, 0)
        servers.append(server)
        say(f"listening on {args.host}:{int(server.sockets[0].getsockname()[1])}")
    # (each holder's tracker connection stays open: the tracker forgets a peer whose connection closes)
    links = [await enlist(liar, args, int(server.sockets[0].getsockname()[1])) for server in servers]
    await asyncio.gather(*(server.serve_forever() for server in servers))
    del links
    return 0


async def enlist(
    liar: Liar, args: argparse.Namespace, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Register the holder listening on `port` with the tracker, then publish, join or claim NAME."""
    tracker = Address.parse(args.tracker)
    reader, writer = await asyncio.open_connection(tracker.host, tracker.port)
    reply = await request(reader, writer, m.RequestRegister(address=(args.host, port)))
    assert isinstance(reply, m.ReplyRegister), reply
    if args.publish:
        assert args.path is not None, "--publish needs --path"
        data = args.path.read_bytes()
        liar.filesize = len(data)
        count = -(-liar.filesize // DEFAULT_CHUNK_SIZE)
        chunkhashes = None
        if args.hashes:
            chunks_of = range(0, liar.filesize, DEFAULT_CHUNK_SIZE)
            chunkhashes = b"".join(
                hashlib.sha256(data[i : i + DEFAULT_CHUNK_SIZE]).digest() for i in chunks_of
            )
        publish = m.RequestPublish(
            filename=liar.name, fileinfo=(liar.filesize, count), chunkhashes=chunkhashes
        )
        reply = await request(reader, writer, publish)
        assert isinstance(reply, m.ReplyPublish) and reply.result, reply
        say(f"published {liar.name} {count} chunks")
    elif args.join:
        location = await request(reader, writer, m.RequestFileLocation(filename=liar.name))
        assert isinstance(location, m.ReplyFileLocation) and location.fileinfo is not None, location
        assert location.chunkhashes is not None, "--join needs a file published with chunk hashes"
        liar.filesize, count = location.fileinfo
        liar.chunk_size = location.chunksize or DEFAULT_CHUNK_SIZE
        publish = m.RequestPublish(
            filename=liar.name,
            fileinfo=location.fileinfo,
            chunksize=location.chunksize,
            chunkhashes=location.chunkhashes,
        )
        reply = await request(reader, writer, publish)
        assert isinstance(reply, m.ReplyPublish) and reply.result, reply
        say(f"published {liar.name} {count} chunks")
    else:
        location = await request(reader, writer, m.RequestFileLocation(filename=liar.name))
        assert isinstance(location, m.ReplyFileLocation) and location.fileinfo is not None, location
        liar.filesize, count = location.fileinfo
        liar.chunk_size = location.chunksize or DEFAULT_CHUNK_SIZE
        chunks = [chunk for chunk in range(count) if liar.holds(chunk)]
        writer.write(framing.encode(m.RequestChunkRegister(filename=liar.name, chunknum=0, chunknums=chunks)))
        # The tracker answers in order: the next location reply already reflects the registration.
        location = await request(reader, writer, m.RequestFileLocation(filename=liar.name))
        assert isinstance(location, m.ReplyFileLocation), location
        mine = location.chunkinfo.get(str(Address(args.host, port)))
        assert mine == chunks, f"tracker lists {mine} for us"
        say(f"registered {liar.name} {count} chunks")
    return reader, writer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.liar", description=__doc__.split("\n")[0] if __doc__ else ""
    )
    p.add_argument("--tracker", required=True, metavar="H:P")
    p.add_argument("--file", required=True, metavar="NAME")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=("corrupt", "badlength", "honest", "silent", "chunk0"), default="corrupt")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each chunk reply")
    p.add_argument("--wire", choices=("raw", "json"), default="raw", help="json: never the binary fast path")
    p.add_argument("--path", type=Path, help="the real file (for --mode honest and --publish)")
    p.add_argument("--publish", action="store_true", help="publish --path as NAME, seed style (no hashes)")
    p.add_argument("--hashes", action="store_true", help="with --publish: send chunkhashes too")
    p.add_argument("--join", action="store_true", help="publish NAME again as listed: become a publisher")
    p.add_argument("--chunks", metavar="FIRST:END", help="register and serve only chunks FIRST..END-1")
    p.add_argument("--holders", type=int, default=1, metavar="N", help="be N holders (N sockets)")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
