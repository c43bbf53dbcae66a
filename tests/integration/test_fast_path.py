"""The negotiated binary chunk path: raw bytes after a PEER_REPLY_CHUNK header frame when asked with
`"raw": true`; the seed's base64 JSON otherwise, or when a process runs with P2PFS_WIRE=json."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_wire import Wire
from tests.procs import Proc, make_file, run

JSON = {"P2PFS_WIRE": "json"}


def share(procs: Callable[..., Proc], taddr: str, src: Path, env: dict[str, str] | None = None) -> str:
    proc = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K", env=env)
    address = proc.listening()
    proc.expect(f"published {src.name}")
    return address


def test_raw_request_gets_header_then_raw_bytes(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "r.bin", 150_000, seed=31)
    w = Wire(share(procs, taddr, src))
    raw = src.read_bytes()
    for n in (2, 0):  # pipelined, answered in order; the last chunk is short
        w.send({"type": "PEER_REQUEST_CHUNK", "filename": "r.bin", "chunknum": n, "raw": True})
    for n in (2, 0):
        header = w.recv()
        want = raw[n * 65536 : (n + 1) * 65536]
        assert header == {
            "type": "PEER_REPLY_CHUNK",
            "filename": "r.bin",
            "chunknum": n,
            "digest": hashlib.sha256(want).hexdigest(),
            "rawlength": len(want),
        }
        assert w.recv_exact(len(want)) == want
    # without "raw", the seed's form
    reply = w.request({"type": "PEER_REQUEST_CHUNK", "filename": "r.bin", "chunknum": 1})
    assert base64.b64decode(str(reply["data"])) == raw[65536:131072] and "rawlength" not in reply


def test_json_only_peer_answers_raw_request_in_base64(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "j.bin", 70_000, seed=32)
    w = Wire(share(procs, taddr, src, env=JSON))
    reply = w.request({"type": "PEER_REQUEST_CHUNK", "filename": "j.bin", "chunknum": 1, "raw": True})
    assert "rawlength" not in reply
    assert base64.b64decode(str(reply["data"])) == src.read_bytes()[65536:]


@pytest.mark.parametrize(
    ("sharer_env", "getter_env"),
    [(None, None), (JSON, JSON), (JSON, None), (None, JSON)],
    ids=["fast-fast", "json-json", "json-sharer", "json-getter"],
)
def test_transfer_in_every_wire_pairing(
    tmp_path: Path,
    procs: Callable[..., Proc],
    tracker: tuple[Proc, str],
    sharer_env: dict[str, str] | None,
    getter_env: dict[str, str] | None,
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "m.bin", 1_000_000, seed=33)
    holder = share(procs, taddr, src, env=sharer_env)
    got = run("get", "m.bin", str(tmp_path / "out"), "--tracker", taddr, "--json", env=getter_env)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout.splitlines()[-1])["sources"] == {holder: 16}
    assert (tmp_path / "out").read_bytes() == src.read_bytes()


class RecordingHolder:
    """A seed-only holder on a real socket (thread): publishes one file without hashes, serves its chunks
    in base64 JSON whatever is asked, and records each request's `raw` flag."""

    def __init__(self, taddr: str, name: str, data: bytes) -> None:
        import socket
        import threading

        self.data = data
        self.name = name
        self.raw_flags: list[object] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.tracker = Wire(taddr)
        assert (
            self.tracker.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", port]})["type"]
            == "REPLY_REGISTER"
        )
        reply = self.tracker.request(
            {"type": "REQUEST_PUBLISH", "filename": name, "fileinfo": [len(data), -(-len(data) // 1048576)]}
        )
        assert reply["result"] is True, reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                buf = b""
                while True:
                    try:
                        piece = sock.recv(65536)
                    except OSError:
                        break
                    if not piece:
                        break
                    buf += piece
                    while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                        n = struct.unpack(">I", buf[:4])[0]
                        body, buf = buf[4 : 4 + n], buf[4 + n :]
                        msg = json.loads(body)
                        if msg["type"] == "PEER_PING_PONG":
                            out = body
                        else:
                            self.raw_flags.append(msg.get("raw"))
                            k = msg["chunknum"]
                            chunk = self.data[k * 1048576 : (k + 1) * 1048576]
                            out = json.dumps(
                                {
                                    "type": "PEER_REPLY_CHUNK",
                                    "filename": self.name,
                                    "chunknum": k,
                                    "data": base64.b64encode(chunk).decode(),
                                    "digest": hashlib.sha256(chunk).hexdigest(),
                                }
                            ).encode()
                        sock.sendall(struct.pack(">I", len(out)) + out)

    def close(self) -> None:
        self.listener.close()
        self.tracker.sock.close()


@pytest.mark.parametrize(
    ("env", "asked_raw"), [(None, True), (JSON, None)], ids=["default", "P2PFS_WIRE=json"]
)
def test_downloader_asks_for_raw_unless_json_only(
    tmp_path: Path, tracker: tuple[Proc, str], env: dict[str, str] | None, asked_raw: object
) -> None:
    _, taddr = tracker
    data = make_file(tmp_path / "s.bin", 2_500_000, seed=34).read_bytes()
    holder = RecordingHolder(taddr, "s.bin", data)
    try:
        got = run("get", "s.bin", str(tmp_path / "out"), "--tracker", taddr, env=env)
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "out").read_bytes() == data
        # a seed-only holder that answers base64 to a raw request is accepted
        assert holder.raw_flags == [asked_raw] * 3
    finally:
        holder.close()
