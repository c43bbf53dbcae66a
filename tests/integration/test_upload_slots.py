"""Upload slots against real peer processes over real sockets: a holder sends to a few connections at
a time; a request that accepts it (`busyok`) beyond the slots and their line is answered PEER_BUSY at
once, one that does not waits its turn; a connection that stops reading loses its slot; downloads that
are told "busy" ask elsewhere and again, and end exact."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_metrics import http_of, metric, scrape
from tests.integration.test_wire import Wire
from tests.procs import Proc, make_file

CHUNK = 64 * 1024


def test_requests_beyond_the_slots_and_their_line_are_answered_busy_and_the_others_wait(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "w.bin", 4 * CHUNK, seed=3)
    # 2 slots, each reply held 1.5 s inside its slot: 2 are sent, 2 wait in line, the rest are refused
    peer = procs(
        "share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K",
        env={"P2PFS_UPLOAD_SLOTS": "2", "P2PFS_TEST_DELAY": "1.5"},
    )
    paddr = peer.listening()
    peer.expect("published w.bin")
    raw = src.read_bytes()
    wires = [Wire(paddr) for _ in range(8)]
    for i, w in enumerate(wires):
        w.send({"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": i % 4, "busyok": True})
    replies = [w.recv() for w in wires]
    busy = [(i, r) for i, r in enumerate(replies) if r["type"] == "PEER_BUSY"]
    sent = [(i, r) for i, r in enumerate(replies) if r["type"] == "PEER_REPLY_CHUNK"]
    assert len(busy) + len(sent) == 8, replies
    assert 1 <= len(busy) <= 4, replies  # (2 slots + 2 in line; all 8 asked within the first reply's 1.5 s)
    for i, r in busy:
        assert r["filename"] == "w.bin" and r["chunknum"] == i % 4
        assert isinstance(r["retryafter"], float | int) and 0 <= r["retryafter"] <= 60
    for i, r in sent:
        n = i % 4
        assert base64.b64decode(str(r["data"])) == raw[n * CHUNK : (n + 1) * CHUNK]
    # asked again (on the same connection), a refused request is answered in its turn
    i, r = busy[0]
    w = wires[i]
    for _ in range(30):
        w.send({"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": i % 4, "busyok": True})
        again = w.recv()
        if again["type"] == "PEER_REPLY_CHUNK":
            break
        assert again["type"] == "PEER_BUSY"
        time.sleep(float(again["retryafter"]))  # (what the holder asked: the protocol's pacing, not a sync)
    assert again["type"] == "PEER_REPLY_CHUNK" and again["chunknum"] == i % 4
    # requests that do not accept PEER_BUSY (the seed's form) are never refused: they wait their turn
    seed_wires = [Wire(paddr) for _ in range(8)]
    for i, w in enumerate(seed_wires):
        w.send({"type": "PEER_REQUEST_CHUNK", "filename": "w.bin", "chunknum": i % 4})
    for i, w in enumerate(seed_wires):
        w.sock.settimeout(60)
        reply = w.recv()
        assert reply["type"] == "PEER_REPLY_CHUNK", reply
        assert base64.b64decode(str(reply["data"])) == raw[(i % 4) * CHUNK : (i % 4 + 1) * CHUNK]


def test_a_connection_that_stops_reading_loses_its_slot(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "big.bin", 24 << 20, seed=4)
    # one slot; a reader that stalls would hold it until the send times out (made 600 s here)
    peer = procs(
        "-v", "share", str(src), "--tracker", taddr, "--host", "127.0.0.1",
        env={"P2PFS_UPLOAD_SLOTS": "1", "P2PFS_FRAME_TIMEOUT": "600"},
    )
    paddr = peer.listening()
    peer.expect("published big.bin")
    hog = Wire(paddr)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for n in range(24):  # pipelined raw requests, never read: the kernel buffers fill, its reply stalls
        hog.send({"type": "PEER_REQUEST_CHUNK", "filename": "big.bin", "chunknum": n, "raw": True})
    # the hog is being sent to (the first raw header is readable); it stops reading, its reply stalls
    hog.sock.settimeout(30)
    assert b"PEER_REPLY_CHUNK" in hog.sock.recv(200)
    peer.expect_err(r"reads slowly: its upload slot goes to another connection", timeout=60)
    reader = Wire(paddr)
    reader.sock.settimeout(120)
    reader.send({"type": "PEER_REQUEST_CHUNK", "filename": "big.bin", "chunknum": 23})
    reply = reader.recv()  # (without the slot taken back: only after the hog's 600 s send timeout)
    assert reply["type"] == "PEER_REPLY_CHUNK" and reply["chunknum"] == 23
    data = base64.b64decode(str(reply["data"]))
    assert hashlib.sha256(data).hexdigest() == reply["digest"]
    with src.open("rb") as f:
        f.seek(23 << 20)
        assert data == f.read(1 << 20)


def test_downloads_told_busy_ask_elsewhere_and_again_and_end_exact(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "w.bin", 48 * CHUNK + 123, seed=5)
    # one slot, 0.15 s per chunk: the seeder alone needs >= 7 s for one copy, so the getters overlap
    seeder = procs(
        "share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K",
        "--http", "127.0.0.1:0",
        env={"P2PFS_UPLOAD_SLOTS": "1", "P2PFS_TEST_DELAY": "0.15"},
    )
    seeder.listening()
    seeder.expect("published w.bin")
    http = http_of(seeder)
    gets = [
        procs("get", "w.bin", str(tmp_path / f"out{i}.bin"), "--tracker", taddr, "--host", "127.0.0.1")
        for i in range(4)
    ]
    threads = [threading.Thread(target=g.wait, kwargs={"timeout": 240}) for g in gets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, g in enumerate(gets):
        assert g.wait(timeout=1) == 0, g.stderr
        assert (tmp_path / f"out{i}.bin").read_bytes() == src.read_bytes()
        assert not (tmp_path / f"out{i}.bin.part").exists()
    assert metric(scrape(http), "p2pfs_peer_busy_replies_total") > 0
