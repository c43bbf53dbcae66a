"""BEP 16's rule with real processes: the publisher hears from the tracker who holds its chunks.

An in-process publisher (so its SuperSeeder can be read) and two `get` processes from a real tracker: the
tracker keeps pushing updates to the publisher although it holds every chunk, the publisher's
super-seeder sees each downloader's chunks at a second holder, and both downloads end with the exact
bytes (a hold-off answered PEER_BUSY is asked again, never a failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pfs.address import Address
from p2pfs.peer.node import Peer
from p2pfs.peer.superseed import SuperSeeder
from tests.procs import Proc, make_file

CHUNK = 16 * 1024
CHUNKS = 64
#: Not a timed assertion: only so that a regression (a stalled download) fails with a clear message.
HANG_GUARD = 60.0


async def _two_downloads(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, seed: int, watching: bool
) -> SuperSeeder:
    """Publish a file in-process, let two `get` processes download it, and check their bytes; the
    publisher's SuperSeeder. `watching`: whether publish leaves the publisher watching its file (and, if
    so, the downloaders' registrations must reach it as pushed updates before it stops)."""
    src = make_file(tmp_path / "f.bin", CHUNKS * CHUNK - 100, seed=seed)
    publisher = Peer(host="127.0.0.1")
    try:
        await publisher.start()
        await publisher.connect(Address.parse(taddr))
        await publisher.publish(src, chunk_size=CHUNK)
        seeder = publisher.server.super_seeder
        assert seeder is not None
        # (publish returns once the watch is set up, if there is one)
        assert ("f.bin" in publisher.tracker._watchers) == watching
        getters = [
            procs("get", "f.bin", str(tmp_path / f"out{i}.bin"), "--tracker", taddr, "--host", "127.0.0.1")
            for i in range(2)
        ]
        async with asyncio.timeout(HANG_GUARD):
            codes = [await asyncio.to_thread(g.wait) for g in getters]
            while watching and "f.bin" not in seeder._watched:
                await asyncio.sleep(0.01)
    finally:
        await publisher.stop()
    assert codes == [0, 0]
    for i in range(2):
        assert (tmp_path / f"out{i}.bin").read_bytes() == src.read_bytes()
    return seeder


async def test_the_publisher_watches_its_file_and_both_downloads_complete(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    # the downloaders' registrations reached the complete publisher as pushed updates
    seeder = await _two_downloads(tmp_path, procs, tracker[1], 41, watching=True)
    assert "f.bin" in seeder._watched


async def test_without_the_hold_off_the_publisher_does_not_watch(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """P2PFS_HOLD_OFF=0 (benchmarks compare both): super-seeding as before BEP 16's rule, and the
    downloads still complete."""
    monkeypatch.setenv("P2PFS_HOLD_OFF", "0")
    seeder = await _two_downloads(tmp_path, procs, tracker[1], 42, watching=False)
    assert "f.bin" not in seeder._watched and seeder.held_off == 0
