"""The wire protocol spoken by hand over real sockets to real tracker and peer processes, as another
implementation would: framing, replies, ERROR answers to bad input, and survival of the servers."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import Proc, make_file


class Wire:
    """A blocking client speaking length-prefixed JSON."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, body: bytes) -> None:
        self.send_raw(struct.pack(">I", len(body)) + body)

    def send(self, obj: object) -> None:
        self.send_body(json.dumps(obj).encode())

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            piece = self.sock.recv(n - len(buf))
            if not piece:
                raise EOFError(f"closed after {len(buf)} of {n} bytes")
            buf += piece
        return buf

    def recv_body(self) -> bytes:
        (n,) = struct.unpack(">I", self.recv_exact(4))
        return self.recv_exact(n)

    def recv(self) -> dict[str, object]:
        return json.loads(self.recv_body())  # type: ignore[no-any-return]

    def request(self, obj: object) -> dict[str, object]:
        self.send(obj)
        return self.recv()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
def seeded(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> tuple[str, str, Path]:
    """(tracker address, sharing peer address, source file) with `w.bin` published in 64 KiB chunks."""
    _, taddr = tracker
    src = make_file(tmp_path / "w.bin", 200_000, seed=9)
    peer = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K")
    paddr = peer.listening()
    peer.expect("published w.bin")
    return taddr, paddr, src


def test_seed_messages_against_tracker(seeded: tuple[str, str, Path]) -> None:
    taddr, paddr, _src = seeded
    w = Wire(taddr)
    reply = w.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 40000]})
    assert reply["type"] == "REPLY_REGISTER"
    raw = _src.read_bytes()
    chunkhashes = b"".join(hashlib.sha256(raw[i : i + 65536]).digest() for i in range(0, len(raw), 65536))
    content_id = hashlib.sha256(chunkhashes).hexdigest()
    assert w.request({"type": "REQUEST_FILE_LIST"}) == {
        "type": "REPLY_FILE_LIST",
        "filelist": {"w.bin": [200_000, 4]},
        "contentids": {"w.bin": content_id},
    }
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})
    assert loc["type"] == "REPLY_FILE_LOCATION" and loc["filename"] == "w.bin"
    assert loc["chunkinfo"] == {paddr: [0, 1, 2, 3]}
    assert base64.b64decode(str(loc["chunkhashes"])) == chunkhashes and loc["contentid"] == content_id
    # a chunk registration has no reply; the next reply answers the next request
    w.send({"type": "REQUEST_CHUNK_REGISTER", "filename": "w.bin", "chunknum": 2})
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})
    assert loc["chunkinfo"] == {paddr: [0, 1, 2, 3], "127.0.0.1:40000": [2]}
    # publishing a listed name fails with a reason; a seed-only publish (no chunksize) of a new name works
    refused = w.request({"type": "REQUEST_PUBLISH", "filename": "w.bin", "fileinfo": [200_000, 4]})
    assert refused["type"] == "REPLY_PUBLISH" and refused["result"] is False and "already" in str(refused["message"])
    ok = w.request({"type": "REQUEST_PUBLISH", "filename": "seed.bin", "fileinfo": [3 * 1048576, 3]})
    assert ok["type"] == "REPLY_PUBLISH" and ok["result"] is True
    # the ping is echoed exactly, extra fields included
    w.send_body(b'{"type":"PEER_PING_PONG","nonce":12345}')
    assert w.recv_body() == b'{"type":"PEER_PING_PONG","nonce":12345}'


def test_chunk_and_ping_against_peer(seeded: tuple[str, str, Path]) -> None:
    _, paddr, src = seeded
    w = Wire(paddr)
    w.send_body(b'{"type": "PEER_PING_PONG", "t": 1.5}')
    assert w.recv_body() == b'{"type": "PEER_PING_PONG", "t": 1.5}'
    # pipelined requests are answered in order
    for n in (3, 0, 1):
        w.send({"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": n})
    raw = src.read_bytes()
    for n in (3, 0, 1):
        reply = w.recv()
        data = base64.b64decode(str(reply["data"]))
        assert reply["type"] == "PEER_REPLY_CHUNK" and reply["chunknum"] == n and reply["filename"] == "w.bin"
        assert data == raw[n * 65536 : (n + 1) * 65536]
        assert reply["digest"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        b'{"type": "NO_SUCH_TYPE"}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "w.bin"}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": -1}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": "1"}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "../w.bin", "chunknum": 0}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "/etc/passwd", "chunknum": 0}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "nothere.bin", "chunknum": 0}',
        b'{"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": 4}',
        b'{"type": "REQUEST_PUBLISH", "filename": "x", "fileinfo": "big"}',
    ],
)
def test_bad_input_gets_error_and_server_keeps_serving(seeded: tuple[str, str, Path], body: bytes) -> None:
    taddr, paddr, _ = seeded
    for address in (taddr, paddr):
        w = Wire(address)
        w.send_body(body)
        reply = w.recv()
        assert reply["type"] == "ERROR" and reply["message"], reply
        # the same connection still works
        w.send_body(b'{"type":"PEER_PING_PONG"}')
        assert w.recv()["type"] == "PEER_PING_PONG"


def test_oversized_frame_is_refused_and_closed(seeded: tuple[str, str, Path]) -> None:
    taddr, paddr, _ = seeded
    for address in (taddr, paddr):
        w = Wire(address)
        w.send_raw(struct.pack(">I", 0xFFFFFFFF))
        reply = w.recv()
        assert reply["type"] == "ERROR" and "limit" in str(reply["message"])
        assert w.closed()
        # everyone else is still served
        assert Wire(address).request({"type": "PEER_PING_PONG"}) == {"type": "PEER_PING_PONG"}


def test_truncated_frame_then_disconnect_leaves_server_up(seeded: tuple[str, str, Path]) -> None:
    taddr, paddr, _ = seeded
    for address in (taddr, paddr):
        w = Wire(address)
        w.send_raw(struct.pack(">I", 1000) + b'{"type":')
        w.sock.close()
        assert Wire(address).request({"type": "PEER_PING_PONG"}) == {"type": "PEER_PING_PONG"}


def test_register_wildcard_records_connection_host(seeded: tuple[str, str, Path]) -> None:
    taddr, _, _ = seeded
    w = Wire(taddr)
    reply = w.request({"type": "REQUEST_REGISTER", "address": ["0.0.0.0", 41000]})
    assert reply == {"type": "REPLY_REGISTER", "address": ["127.0.0.1", 41000]}
    w.send({"type": "REQUEST_CHUNK_REGISTER", "filename": "w.bin", "chunknum": 0})
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})
    assert "127.0.0.1:41000" in loc["chunkinfo"]  # type: ignore[operator]


def test_disconnect_delists_and_unknown_location_is_error(seeded: tuple[str, str, Path]) -> None:
    taddr, _, _ = seeded
    w = Wire(taddr)
    w.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 42000]})
    assert w.request({"type": "REQUEST_PUBLISH", "filename": "mine.bin", "fileinfo": [10, 1]})["result"] is True
    w.sock.close()
    other = Wire(taddr)
    filelist = other.request({"type": "REQUEST_FILE_LIST"})["filelist"]
    # the tracker may need a moment to see the close; poll on the reply, not on a sleep
    for _ in range(100):
        if "mine.bin" not in filelist:  # type: ignore[operator]
            break
        filelist = other.request({"type": "REQUEST_FILE_LIST"})["filelist"]
    assert "mine.bin" not in filelist  # type: ignore[operator]
    reply = other.request({"type": "REQUEST_FILE_LOCATION", "filename": "mine.bin"})
    assert reply["type"] == "ERROR" and "mine.bin" in str(reply["message"])


def test_a_claimed_host_other_than_the_source_is_recorded_as_the_source(seeded: tuple[str, str, Path]) -> None:
    """The tracker records the host a registration comes from, whatever host it claims: no connection
    can register (or evict) another host's address."""
    taddr, _, _ = seeded
    w = Wire(taddr)
    for claimed in ("[::1]", "10.9.8.7", "h[/x]", "0.0.0.0"):
        assert w.request({"type": "REQUEST_REGISTER", "address": [claimed, 41001]}) == {
            "type": "REPLY_REGISTER",
            "address": ["127.0.0.1", 41001],
        }
    w.send({"type": "REQUEST_CHUNK_REGISTER", "filename": "w.bin", "chunknum": 1})
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})
    assert loc["chunkinfo"]["127.0.0.1:41001"] == [1]  # type: ignore[index]


def test_location_ranges_extension_only_for_askers_and_updated_on_change(seeded: tuple[str, str, Path]) -> None:
    """A request with `ranges: true` gets each holder's chunks as [first, end) runs and an empty
    `chunkinfo`; a request without it gets the seed's lists. A registration changes both at once (the
    tracker's cached encodings are not stale)."""
    taddr, paddr, _ = seeded
    w = Wire(taddr)
    w.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 40001]})
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin", "ranges": True})
    assert loc["chunkinfo"] == {} and loc["chunkranges"] == {paddr: [[0, 4]]}
    for chunk in (0, 1, 3):
        w.send({"type": "REQUEST_CHUNK_REGISTER", "filename": "w.bin", "chunknum": chunk})
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin", "ranges": True})
    assert loc["chunkranges"] == {paddr: [[0, 4]], "127.0.0.1:40001": [[0, 2], [3, 4]]}
    seed_form = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})
    assert "chunkranges" not in seed_form
    assert seed_form["chunkinfo"] == {paddr: [0, 1, 2, 3], "127.0.0.1:40001": [0, 1, 3]}
    w.send({"type": "REQUEST_CHUNK_REGISTER", "filename": "w.bin", "chunknum": 2})
    loc = w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin", "ranges": True})
    assert loc["chunkranges"] == {paddr: [[0, 4]], "127.0.0.1:40001": [[0, 4]]}
    assert w.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})["chunkinfo"] == {
        paddr: [0, 1, 2, 3],
        "127.0.0.1:40001": [0, 1, 2, 3],
    }


def test_origin_super_seeds_only_askers_that_accept_a_substitute(seeded: tuple[str, str, Path]) -> None:
    """The publisher sends every chunk once before any twice to requests with `substitute`: a second
    connection asking for chunk 0 gets another chunk (and its correct bytes and digest); a request
    without `substitute` (the seed's form) gets exactly what it asked for."""
    _, paddr, src = seeded
    raw = src.read_bytes()

    def ask(w: Wire, chunk: int, substitute: bool) -> int:
        request: dict[str, object] = {"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": chunk}
        if substitute:
            request["substitute"] = True
        reply = w.request(request)
        n = int(str(reply["chunknum"]))
        data = base64.b64decode(str(reply["data"]))
        assert data == raw[n * 65536 : (n + 1) * 65536] and reply["digest"] == hashlib.sha256(data).hexdigest()
        return n

    first, second, seed_form = Wire(paddr), Wire(paddr), Wire(paddr)
    assert ask(first, 0, substitute=True) == 0
    assert ask(first, 0, substitute=True) == 0  # the same connection asking again gets it again
    assert ask(seed_form, 0, substitute=False) == 0  # the seed's form is never substituted
    other = ask(second, 0, substitute=True)
    assert other in (1, 2, 3)
    sent = {0, other}
    for _ in range(2):  # the two chunks never sent yet, whatever is asked
        sent.add(ask(second, 0, substitute=True))
    assert sent == {0, 1, 2, 3}
    assert ask(second, 0, substitute=True) == 0  # every chunk has left once: answered as asked


def test_watchers_get_pushed_updates_and_others_do_not(seeded: tuple[str, str, Path]) -> None:
    """REQUEST_FILE_LOCATION with `watch`: registrations by other peers are pushed to the watcher as
    REPLY_FILE_LOCATION with `update` and only the news in `chunkranges`; a connection that did not ask
    for it only ever gets replies to its requests."""
    taddr, paddr, _ = seeded
    watcher, plain, registrant = Wire(taddr), Wire(taddr), Wire(taddr)
    watcher.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 40011]})
    first = watcher.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin", "ranges": True, "watch": True})
    assert first["chunkranges"] == {paddr: [[0, 4]]} and "update" not in first
    plain.request({"type": "REQUEST_FILE_LOCATION", "filename": "w.bin"})
    registrant.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 40012]})
    registrant.send({"type": "REQUEST_CHUNK_REGISTER", "filename": "w.bin", "chunknum": 2, "chunknums": [2, 3]})
    update = watcher.recv()  # pushed: no request was sent
    assert update["type"] == "REPLY_FILE_LOCATION" and update["update"] is True
    assert update["filename"] == "w.bin" and update["chunkinfo"] == {}
    assert update["chunkranges"] == {"127.0.0.1:40012": [[2, 4]]}
    assert update["contentid"] == first["contentid"]
    # the plain connection's next message is the reply to its next request, not an update
    assert plain.request({"type": "REQUEST_FILE_LIST"})["type"] == "REPLY_FILE_LIST"
    # and the watcher's replies still match its requests
    assert watcher.request({"type": "REQUEST_FILE_LIST"})["type"] == "REPLY_FILE_LIST"
