"""A download whose own bookkeeping fails mid-way (the state log on a full disk, a bug in settling a
verified chunk) stops with one clear error instead of hanging or finishing silently. In-process, on real
sockets: a tracker, a sharing peer and a downloading peer on 127.0.0.1 in this event loop, so the failure
can be injected where the download settles a chunk."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pfs.address import Address
from p2pfs.errors import P2PFSError
from p2pfs.peer.node import Peer
from p2pfs.peer.partfile import PartFile, state_path
from p2pfs.peer.storage import StorageError, part_path
from p2pfs.tracker.server import TrackerServer
from tests.procs import make_file

CHUNK = 4096
CHUNKS = 24
#: Not a timed assertion: only so that a regression (a hang) fails this test with a clear message
#: long before pytest-timeout kills the whole run.
HANG_GUARD = 60.0


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[tuple[Peer, Path]]:
    """A tracker and a peer sharing `f.bin`; yields a second, connected peer to download with."""
    tracker = TrackerServer()
    address: Address = await tracker.start("127.0.0.1", 0)
    sharer, getter = Peer(host="127.0.0.1"), Peer(host="127.0.0.1")
    try:
        for peer in (sharer, getter):
            await peer.start()
            await peer.connect(address)
        src = make_file(tmp_path / "f.bin", CHUNKS * CHUNK - 100, seed=5)
        await sharer.publish(src, chunk_size=CHUNK)
        yield getter, tmp_path
    finally:
        await getter.stop()
        await sharer.stop()
        await tracker.stop()


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), StorageError, r"cannot write to .*: No space left on device"),
        (RuntimeError("a bug"), P2PFSError, r"stopped by an internal error: RuntimeError\('a bug'\)"),
    ],
)
async def test_a_failure_while_settling_a_chunk_fails_the_download_with_one_clear_error(
    swarm: tuple[Peer, Path],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    kind: type[Exception],
    message: str,
) -> None:
    getter, tmp_path = swarm
    recorded: list[int] = []

    def record(self: PartFile, chunk: int, digest: str) -> None:
        recorded.append(chunk)
        raise error

    monkeypatch.setattr(PartFile, "record", record)
    dest = tmp_path / "out.bin"
    with pytest.raises(kind, match=message) as info:
        async with asyncio.timeout(HANG_GUARD):
            await getter.download("f.bin", dest)
    assert recorded, "the state log was never written: the test proves nothing"
    assert "\n" not in str(info.value)
    # nothing was held (the chunk whose log line failed does not count), so nothing is kept
    assert not dest.exists() and not part_path(dest).exists() and not state_path(dest).exists()
    assert "f.bin" not in getter.library


async def test_the_same_download_succeeds_when_nothing_fails(swarm: tuple[Peer, Path]) -> None:
    getter, tmp_path = swarm
    dest = tmp_path / "out.bin"
    async with asyncio.timeout(HANG_GUARD):
        result = await getter.download("f.bin", dest)
    assert dest.read_bytes() == (tmp_path / "f.bin").read_bytes()
    assert sum(result.sources.values()) == CHUNKS


async def test_a_holder_that_cannot_read_a_chunk_ends_the_download_instead_of_looping(
    swarm: tuple[Peer, Path],
) -> None:
    # The shared file shrinks on disk: its only holder answers ERROR for the chunks past the new end,
    # and the tracker keeps listing them. The download must end (no holder left), not ask forever.
    getter, tmp_path = swarm
    os.truncate(tmp_path / "f.bin", 10 * CHUNK)
    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(P2PFSError, match=r"no holder left for 14 chunks \(10-23\)"):
            await getter.download("f.bin", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
