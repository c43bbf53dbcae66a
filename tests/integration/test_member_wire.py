"""A program that speaks only the seed protocol fetches collection members as plain files, named
`NAME/REL/PATH` (docs/PROTOCOL.md §14, "One member"): plain JSON frames over a plain socket
(REQUEST_FILE_LIST, REQUEST_FILE_LOCATION, PEER_REQUEST_CHUNK, no extension asked for) against a real
tracker and real `p2pfs share` / `p2pfs get --seed` processes; what is not a file member is not found; a
holder that serves a corrupt manifest (tests/liar.py) or a manifest that breaks the rules
(tests/evil_collection.py) makes no member resolvable and does not hurt the tracker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import evil_collection, liar
from tests.integration.test_collections import share_tree
from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024
NAME = "tree"
#: path -> size. In canonical order: `a.txt` fills the start of the first data chunk, so `big.bin` does
#: not start on a chunk boundary; `cross.bin` fits in one chunk of its own but spans two of the tree's.
FILES = {
    "a.txt": 100,
    "big.bin": 4 * CHUNK + 12345,
    "cross.bin": 50_000,
    "dir/empty": 0,
    "dir/sp ace \u00e9\u6f22.txt": 5_000,
}


class SeedClient:
    """The seed's wire and nothing else: 4-byte big-endian length, one JSON object; no `ranges`, no `raw`."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(obj).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        (length,) = struct.unpack(">I", self._exactly(4))
        return json.loads(self._exactly(length))  # type: ignore[no-any-return]

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.sock.recv(n - len(data))
            assert more, "connection closed"
            data += more
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client_of() -> Iterator[Callable[[str], SeedClient]]:
    made: list[SeedClient] = []

    def make(address: str) -> SeedClient:
        made.append(SeedClient(address))
        return made[-1]

    yield make
    for client in made:
        client.close()


def make_tree(root: Path) -> dict[str, bytes]:
    (root / "dir").mkdir(parents=True)
    contents = {}
    for seed, (path, size) in enumerate(FILES.items(), 1):
        contents[path] = make_file(root / path, size, seed=seed).read_bytes()
    os.symlink("a.txt", root / "link")
    return contents


def fetch_member(tracker: SeedClient, peers: Callable[[str], SeedClient], filename: str) -> bytes:
    """What a seed downloader does: locate, then every chunk from a holder listed for it, checked against
    the reply's digest (the seed's rule) and put in place."""
    location = tracker.request({"type": "REQUEST_FILE_LOCATION", "filename": filename})
    assert location["type"] == "REPLY_FILE_LOCATION" and location["filename"] == filename, location
    assert "chunkhashes" not in location and "contentid" not in location, location
    size, count = location["fileinfo"]
    chunk_size = location.get("chunksize", 1 << 20)
    assert count == -(-size // chunk_size)
    out = bytearray(size)
    for holder, chunks in location["chunkinfo"].items():
        assert chunks == list(range(count)), (holder, chunks)  # (a complete holder has every chunk)
    holder = peers(next(iter(location["chunkinfo"]))) if count else None
    for chunk in range(count):
        assert holder is not None
        reply = holder.request({"type": "PEER_REQUEST_CHUNK", "filename": filename, "chunknum": chunk})
        assert reply["type"] == "PEER_REPLY_CHUNK" and reply["chunknum"] == chunk, reply
        data = base64.b64decode(reply["data"])
        assert hashlib.sha256(data).hexdigest() == reply["digest"]
        out[chunk * chunk_size : chunk * chunk_size + len(data)] = data
    return bytes(out)


def not_found(client: SeedClient, filename: str) -> None:
    reply = client.request({"type": "REQUEST_FILE_LOCATION", "filename": filename})
    assert reply == {"type": "ERROR", "message": f"file not found: {filename}", "request": "REQUEST_FILE_LOCATION"}


def test_seed_client_fetches_members_as_plain_files(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], client_of: Callable[[str], SeedClient]
) -> None:
    _, taddr = tracker
    contents = make_tree(tmp_path / NAME)
    _, seeder, _ = share_tree(procs, taddr, tmp_path / NAME)
    t = client_of(taddr)

    listing = t.request({"type": "REQUEST_FILE_LIST"})
    assert list(listing["filelist"]) == [NAME], listing  # one entry for the collection, none per member

    for path, data in contents.items():
        assert fetch_member(t, client_of, f"{NAME}/{path}") == data, path

    # the geometry, as the tracker states it: big.bin is 5 chunks of its own; an empty member has none
    big = t.request({"type": "REQUEST_FILE_LOCATION", "filename": f"{NAME}/big.bin", "ranges": True, "watch": True})
    assert big["fileinfo"] == [FILES["big.bin"], 5] and big["chunksize"] == CHUNK, big
    assert big["chunkinfo"] == {} and big["chunkranges"] == {seeder: [[0, 5]]}, big
    empty = t.request({"type": "REQUEST_FILE_LOCATION", "filename": f"{NAME}/dir/empty"})
    assert empty["fileinfo"] == [0, 0] and empty["chunkinfo"] == {}, empty

    for missing in ("nope", "dir", "link", "dir/", "../tree/a.txt", "dir/../a.txt", "./a.txt", "a.txt/x", "DIR/empty"):
        not_found(t, f"{NAME}/{missing}")
    not_found(t, f"elsewhere/{'a.txt'}")

    # members are registered through their collection (the ERROR is answered even before registering)
    register = t.request({"type": "REQUEST_CHUNK_REGISTER", "filename": f"{NAME}/a.txt", "chunknum": 0})
    assert register["type"] == "ERROR" and register["request"] == "REQUEST_CHUNK_REGISTER", register
    assert NAME in register["message"]

    # the holder: a chunk past the member's end, a member it does not have, the binary fast path
    p = client_of(seeder)
    past = p.request({"type": "PEER_REQUEST_CHUNK", "filename": f"{NAME}/a.txt", "chunknum": 1})
    assert past == {"type": "ERROR", "message": f"chunk 1 of {NAME}/a.txt not held here", "request": "PEER_REQUEST_CHUNK"}
    for missing in ("nope", "dir", "../a.txt"):
        reply = p.request({"type": "PEER_REQUEST_CHUNK", "filename": f"{NAME}/{missing}", "chunknum": 0})
        assert reply["type"] == "ERROR" and reply["message"] == f"file not shared here: {NAME}/{missing}", reply
    t.request({"type": "PEER_PING_PONG"})  # (the tracker is still answering, in order)
    assert t.request({"type": "REQUEST_FILE_LIST"})["filelist"] == listing["filelist"]


def test_a_downloader_of_the_whole_tree_serves_its_members(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], client_of: Callable[[str], SeedClient]
) -> None:
    _, taddr = tracker
    contents = make_tree(tmp_path / NAME)
    sharer, _, _ = share_tree(procs, taddr, tmp_path / NAME)
    dest = tmp_path / "copy"
    getter = procs("get", NAME, str(dest), "--seed", "--tracker", taddr, "--host", "127.0.0.1")
    downloader = getter.expect(rf"^seeding {NAME} on (\S+); ").group(1)
    assert sharer.interrupt() == 0  # now the downloader is the only holder
    t = client_of(taddr)
    location = t.request({"type": "REQUEST_FILE_LOCATION", "filename": f"{NAME}/big.bin"})
    assert list(location["chunkinfo"]) == [downloader], location
    for path in ("big.bin", "cross.bin", "dir/sp ace \u00e9\u6f22.txt"):
        assert fetch_member(t, client_of, f"{NAME}/{path}") == contents[path], path


def test_a_holder_serving_a_forged_manifest_resolves_nothing(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], client_of: Callable[[str], SeedClient]
) -> None:
    _, taddr = tracker
    make_tree(tmp_path / NAME)
    sharer, seeder, published = share_tree(procs, taddr, tmp_path / NAME)
    # The tree's own bytes, with a manifest that is valid but names `0.txt` where the publisher's says
    # `a.txt`: only the chunk hashes tell them apart.
    s = client_of(seeder)
    chunks = [
        base64.b64decode(s.request({"type": "PEER_REQUEST_CHUNK", "filename": NAME, "chunknum": k})["data"])
        for k in range(int(published.group(3)))
    ]
    assert b'"path":"a.txt"' in chunks[0]
    forged = tmp_path / "forged"
    forged.write_bytes(chunks[0].replace(b'"path":"a.txt"', b'"path":"0.txt"') + b"".join(chunks[1:]))
    lying, lying_address = liar.start(procs, taddr, NAME, "--mode", "honest", "--path", str(forged))  # claims every chunk
    assert sharer.interrupt() == 0  # the liar is the only holder left: the tree stays listed
    t = client_of(taddr)
    assert list(t.request({"type": "REQUEST_FILE_LIST"})["filelist"]) == [NAME]
    not_found(t, f"{NAME}/0.txt")
    lying.expect(r"^served chunk 0 ")  # (the tracker did fetch it, and refused it)
    not_found(t, f"{NAME}/a.txt")
    not_found(t, f"{NAME}/big.bin")
    # No second fetch: the failure is remembered (a later ask, after a back-off, tries again). The liar
    # prints each reply's line as it sends it, so ours comes after any the tracker caused.
    client_of(lying_address).request({"type": "PEER_REQUEST_CHUNK", "filename": NAME, "chunknum": 1})
    lying.expect(r"^served chunk 1 ")
    assert sum(line.startswith("served chunk 0 ") for line in lying.stdout) == 1, lying.stdout
    assert t.request({"type": "REQUEST_FILE_LOCATION", "filename": NAME})["type"] == "REPLY_FILE_LOCATION"


def test_a_manifest_that_breaks_the_rules_resolves_nothing(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], client_of: Callable[[str], SeedClient]
) -> None:
    _, taddr = tracker
    lines = [
        {"manifest": 1, "name": "evil", "files": 2, "dirs": 0, "links": 0, "size": 10},
        {"path": "good.txt", "size": 5},
        {"path": "b/../c", "size": 5},  # (a `..` component: the whole manifest is refused)
    ]
    manifest_file = tmp_path / "manifest"
    manifest_file.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    data = tmp_path / "data"
    data.write_bytes(b"hello" * 2)
    evil_collection.start(procs, taddr, "evil", manifest_file, "--data", str(data))
    t = client_of(taddr)
    not_found(t, "evil/good.txt")
    not_found(t, "evil/b/../c")
    # the tracker is unharmed and still resolves an honest tree
    contents = make_tree(tmp_path / NAME)
    share_tree(procs, taddr, tmp_path / NAME)
    assert fetch_member(t, client_of, f"{NAME}/a.txt") == contents["a.txt"]
    assert sorted(t.request({"type": "REQUEST_FILE_LIST"})["filelist"]) == ["evil", NAME]
    assert run("ls", "--tracker", taddr).returncode == 0
