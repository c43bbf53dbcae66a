"""A publisher of a hand-crafted collection, for tests of what a downloader refuses:
`python -m tests.evil_collection --tracker H:P --name NAME --manifest FILE [--data FILE] [--chunk-size N]`.

The manifest's bytes are FILE's, as they are (any rule may be broken). The collection is served by the
real p2pfs classes: a `CollectionStore` whose one (unnamed, temporary) file holds the whole byte stream
(the manifest, zeros to the next chunk boundary, then `--data`'s bytes: the members packed in manifest
order), hashed with `hash_chunks`, listed with the tracker by a real `Peer` (REQUEST_PUBLISH with its
`collection`) and served by its chunk server. So every chunk that exists verifies against the published
hashes, and a downloader gets as far as checking the manifest. Chunks the stream does not hold (a header
`size` larger than `--data`) get an arbitrary hash: they cannot be fetched.

Lines on stdout: `listening on HOST:PORT`, then `serving NAME`. It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from p2pfs.address import Address
from p2pfs.collection import manifest
from p2pfs.collection.store import CollectionStore, padded
from p2pfs.peer import hashing, storage
from p2pfs.peer.node import Peer
from p2pfs.peer.storage import ChunkFile
from p2pfs.protocol import messages as m
from tests.procs import Proc

ROOT = Path(__file__).resolve().parents[1]


def start(procs: Callable[..., Proc], tracker: str, name: str, manifest_file: Path, *options: str) -> Proc:
    """Run this program through the `procs` fixture (killed at the end of the test like any other);
    return it once it serves NAME."""
    with mock.patch("tests.procs.P2PFS", [sys.executable, "-m", "tests.evil_collection"]):
        proc = procs(
            "--tracker", tracker, "--name", name, "--manifest", str(manifest_file), *options, cwd=ROOT
        )
    proc.listening()
    proc.expect(rf"^serving {re.escape(name)}$")
    return proc


class StreamStore(CollectionStore):
    """A collection whose members are not files: the whole stream lives in the one file `fd`."""

    def read_into(self, chunk: int, view: memoryview) -> int:
        return ChunkFile.read_into(self, chunk, view)


def open_store(name: str, manifest_bytes: bytes, data: bytes, chunk_size: int) -> StreamStore:
    try:
        header = manifest.decode_header(manifest_bytes.split(b"\n", 1)[0])
    except manifest.ManifestError:  # (a broken header: tell the tracker of an empty collection)
        header = manifest.Header(manifest.VERSION, name, 0, 0, 0, 0)
    data_start = padded(len(manifest_bytes), chunk_size)
    filesize = data_start + max(len(data), header.size)
    fd, path = tempfile.mkstemp(prefix="p2pfs-evil-")
    os.unlink(path)
    os.pwrite(fd, manifest_bytes, 0)
    os.ftruncate(fd, data_start)  # (the zeros after the manifest)
    os.pwrite(fd, data, data_start)
    store = StreamStore(name, Path(path), filesize, chunk_size, fd, len(manifest_bytes), writable=False)
    store.header = header
    store.origin = True
    return store


async def main(args: argparse.Namespace) -> int:
    storage.check_chunk_size(args.chunk_size)
    data = args.data.read_bytes() if args.data is not None else b""
    store = open_store(args.name, args.manifest.read_bytes(), data, args.chunk_size)
    digests = await hashing.hash_chunks(store.fd, store.filesize, store.chunk_size, reader=store.read_into)
    for chunk in range(store.chunk_count):
        digest = digests.get(chunk) or hashlib.sha256(f"chunk {chunk} does not exist".encode()).hexdigest()
        store.digests[chunk] = digest
        store.have.add(chunk)
    peer = Peer(args.host, 0, control=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"listening on {await peer.start()}", flush=True)
        await peer.connect(Address.parse(args.tracker))
        peer.library[store.name] = store
        header = store.header
        assert header is not None
        await peer.tracker.publish(
            store.name,
            store.filesize,
            store.chunk_count,
            store.chunk_size,
            store.chunk_hashes(),
            collection=m.Collection(files=header.files, size=header.size, manifestsize=store.manifest_size),
        )
        print(f"serving {store.name}", flush=True)
        await stop.wait()
    finally:
        await peer.stop()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.evil_collection", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--tracker", required=True, metavar="H:P")
    p.add_argument("--name", required=True)
    p.add_argument("--manifest", required=True, type=Path, help="the manifest's bytes, as they are")
    p.add_argument("--data", type=Path, help="the members' bytes, packed in manifest order (default: none)")
    p.add_argument("--chunk-size", type=int, default=64 * 1024, metavar="BYTES")
    p.add_argument("--host", default="127.0.0.1")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
