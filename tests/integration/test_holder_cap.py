"""Downloads from more holders than they connect to at once, with real holder processes.

A tracker, a seeder and 39 more holders (one `tests/liar.py --holders 39 --mode honest` process, so
the test stays cheap), so 40 in all: the downloader never has more than MAX_HOLDERS holder connections
open, seen both from its `get --json` progress and from the holders' side, and still gets the exact
bytes. And with room for one holder only, a holder with nothing left for us is closed for a candidate
that has something.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pfs.address import Address
from p2pfs.peer import transfer
from p2pfs.peer.node import Peer
from p2pfs.peer.transfer import MAX_HOLDERS
from tests import liar
from tests.procs import Proc, make_file, run

CHUNK = 4096
CHUNKS = 96
NAME = "f.bin"
MORE_HOLDERS = 39  # (with the seeder: 40 holders, more than MAX_HOLDERS)
#: Not a timed assertion: only so that a regression (a stalled download) fails with a clear message.
HANG_GUARD = 60.0


def test_a_download_from_40_holders_keeps_at_most_32_connections_open(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / NAME, CHUNKS * CHUNK - 1000, seed=31)
    seeder = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "4K")
    seeder.listening()
    seeder.expect(rf"published {re.escape(NAME)} ")
    many, addresses = liar.start_many(procs, taddr, NAME, MORE_HOLDERS, "--mode", "honest", "--path", str(src))
    assert len(set(addresses)) == MORE_HOLDERS
    dest = tmp_path / "out.bin"
    # (a generous ping timeout: on a loaded machine no holder is given up for a slow pong, so each one
    # the downloader tried is one it kept)
    got = run(
        "get", NAME, str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1",
        env={"P2PFS_PING_TIMEOUT": "30"},
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
    events = [json.loads(line) for line in got.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(1 <= e["holders"] <= MAX_HOLDERS for e in progress), progress
    done = events[-1]
    assert done["event"] == "done" and sum(done["sources"].values()) == CHUNKS
    assert len(done["sources"]) <= MAX_HOLDERS

    # The holders' side: a connection of our own, once `get` is over, marks the end of what the
    # downloader did (every line the holders printed before it has been read).
    probe_port = int(addresses[0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", probe_port), timeout=10):
        many.expect(rf"^connection open {probe_port}$")
    marker = len(many.stdout) - 1 - many.stdout[::-1].index(f"connection open {probe_port}")
    lines = many.stdout[:marker]
    opened: set[str] = set()
    open_now = most = 0
    for line in lines:
        if line.startswith("connection open "):
            opened.add(line.split()[-1])
            open_now += 1
            most = max(most, open_now)
        elif line.startswith("connection closed "):
            open_now -= 1
    assert opened, "the downloader never connected to the 39 holders: the test proves nothing"
    # every holder is complete, so none is ever closed for another: the ones connected are all it tried
    assert most <= MAX_HOLDERS and len(opened) <= MAX_HOLDERS, (most, sorted(opened))


async def test_a_holder_with_nothing_left_for_us_is_closed_for_a_waiting_candidate(
    tmp_path: Path,
    procs: Callable[..., Proc],
    tracker: tuple[Proc, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for one holder and two holders of half the file each, the download connects one,
    takes everything it has, closes it, and connects the other (in-process downloader, on real sockets
    with real holder processes, so the cap can be set to 1)."""
    _, taddr = tracker
    src = make_file(tmp_path / NAME, CHUNKS * CHUNK - 1000, seed=32)
    seeder = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "4K")
    seeder.listening()
    seeder.expect(rf"published {re.escape(NAME)} ")
    half = CHUNKS // 2
    low, low_addr = liar.start(procs, taddr, NAME, "--mode", "honest", "--path", str(src), "--chunks", f"0:{half}")
    high, high_addr = liar.start(
        procs, taddr, NAME, "--mode", "honest", "--path", str(src), "--chunks", f"{half}:{CHUNKS}"
    )
    # The halves cover the file, so it stays listed without the seeder; whether the tracker has noticed
    # yet or not, the seeder cannot be used (a refused connection counts it out).
    seeder.kill9()
    monkeypatch.setattr(transfer, "MAX_HOLDERS", 1)
    getter = Peer(host="127.0.0.1")
    connected: list[int] = []
    try:
        await getter.start()
        await getter.connect(Address.parse(taddr))
        async with asyncio.timeout(HANG_GUARD):
            result = await getter.download(NAME, tmp_path / "out.bin", lambda p: connected.append(p.holders))
    finally:
        await getter.stop()
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert result.sources == {Address.parse(low_addr): half, Address.parse(high_addr): CHUNKS - half}
    assert connected and max(connected) == 1
    for holder in (low, high):  # each was connected once, and only one at a time
        holder.expect(r"^connection closed ")
        assert sum(line.startswith("connection open ") for line in holder.stdout) == 1
