"""A quick, fixed-seed sample of the random fault-injection trials (`tests/faults/trials.py`): every
scenario at least once, small files, zero violations. `make faults` runs 120 random seeds."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path

import pytest

from p2pfs.address import Address
from p2pfs.peer import storage
from p2pfs.peer.picker import Picker
from p2pfs.peer.transfer import Download, _Holder
from p2pfs.protocol import messages as m
from tests.faults.trials import (
    COMPLETE,
    KILL_DOWNLOADER,
    KILL_SEEDER,
    KILL_SEEDING_DOWNLOADER,
    KILL_TRACKER,
    REDIS_SERVER,
    RESTART_REDIS,
    RESTART_TRACKER,
    make_plan,
    run_trial,
)
from tests.procs import Proc, make_file

CHUNK = 64 * 1024

#: (seed, what its plan is); each plan is asserted first, so a change to `make_plan` cannot silently
#: turn this sample into something else. Every seed keeps a complete holder alive through its fault, so
#: every download must complete (the failure path is covered by test_seed_faults.py and `make faults`).
QUICK_SEEDS = [
    (42, KILL_SEEDER, "an early holder outlives the seeder"),
    (15, KILL_SEEDING_DOWNLOADER, "the killed holder was seeding"),
    (319, KILL_SEEDING_DOWNLOADER, "the killed holder was still downloading"),
    (184, KILL_DOWNLOADER, "the same get resumes from DEST.part"),
    (195, RESTART_TRACKER, "peers reconnect, the list is rebuilt"),
    (210, RESTART_TRACKER, "downloads in progress register their chunks again"),
]
#: Seeds ≡ 2 mod 3 run the store scenarios (two trackers on one Redis) where redis-server is installed.
STORE_SEEDS = [
    (11, KILL_TRACKER, "every peer fails over to the other tracker"),
    (2, RESTART_REDIS, "Redis dies and comes back empty under the swarm"),
]


@pytest.mark.parametrize(
    ("seed", "scenario", "what"), QUICK_SEEDS, ids=[f"seed{s}" for s, _, _ in QUICK_SEEDS]
)
def test_random_fault_trial(seed: int, scenario: str, what: str, tmp_path: Path) -> None:
    plan = make_plan(seed)
    assert plan.scenario == scenario, plan.describe()
    result = run_trial(seed, tmp_path)
    assert not result.violations, "\n".join([f"seed {seed} ({what}): {result.plan}", *result.timeline])
    assert result.outcome == COMPLETE, "\n".join(result.timeline)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize(
    ("seed", "scenario", "what"), STORE_SEEDS, ids=[f"seed{s}" for s, _, _ in STORE_SEEDS]
)
def test_random_store_fault_trial(seed: int, scenario: str, what: str, tmp_path: Path) -> None:
    test_random_fault_trial(seed, scenario, what, tmp_path)


def test_holder_serves_on_after_a_downloader_left_with_requests_pipelined(tmp_path: Path) -> None:
    """Found by the trials (seeds 116, 1029, 1040): a holder answering requests left in its buffer by a
    downloader that had gone logged 'ERROR: error while serving' and a traceback (uvloop raises
    RuntimeError on a write to a closed transport). Fixed in 3d663b2; kept as a regression test."""
    src = make_file(tmp_path / "f.bin", 10 * 65536)
    tracker = Proc("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
    holder: Proc | None = None
    try:
        taddr = tracker.listening()
        holder = Proc(
            "share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K",
            env={"P2PFS_TEST_DELAY": "0.05"},
        )  # fmt: skip
        host, port = holder.listening().rsplit(":", 1)
        holder.expect("published f.bin")
        request = json.dumps({"type": "PEER_REQUEST_CHUNK", "filename": "f.bin", "chunknum": 0}).encode()
        frame = struct.pack(">I", len(request)) + request
        # A downloader pipelines three requests, then dies (closes without reading a reply).
        with socket.create_connection((host, int(port))) as gone:
            gone.sendall(frame * 3)
        # Another downloader is served after that: by then the first connection has been dealt with.
        with socket.create_connection((host, int(port)), timeout=10) as other:
            for _ in range(20):
                other.sendall(frame)
                (length,) = struct.unpack(">I", other.recv(4, socket.MSG_WAITALL))
                assert len(other.recv(length, socket.MSG_WAITALL)) == length
        assert holder.popen.poll() is None
        holder.kill9()
        holder.wait(10)
        assert not [line for line in holder.stderr if "Traceback" in line or "ERROR" in line], holder.stderr
    finally:
        for proc in (holder, tracker):
            if proc is not None:
                proc.kill9()


class _HeldReply:
    """A holder connection whose reply to the first request is handed over by the test."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[m.AnyMessage] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    def send(self, message: m.Message) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def recv(self) -> m.AnyMessage:
        self.waiting.set()
        return await self.reply

    def close(self) -> None:
        pass


async def test_failed_download_stops_a_worker_whose_reply_lands_with_the_cancel(tmp_path: Path) -> None:
    download = Download(None, {}, "f.bin", tmp_path / "f.bin")  # type: ignore[arg-type]
    download._file = storage.create_part(tmp_path / "f.bin", "f.bin", 2 * CHUNK, CHUNK)
    picker: Picker[Address] = Picker(2)
    download._picker = picker
    address = Address("127.0.0.1", 9)
    picker.add_holder(address, [0])  # chunk 1 has no holder: this download can only fail
    conn = _HeldReply()
    holder = _Holder(address, conn, rtt=0.001)  # type: ignore[arg-type]
    download._holders[address] = holder
    holder.task = worker = asyncio.create_task(download._fetch_from(holder))
    try:
        await conn.waiting.wait()  # the worker asked for chunk 0 and waits for the reply
        # The download gives up (NoSourceForChunk) in the very loop iteration the holder's answer lands.
        conn.reply.set_result(m.Error(message="chunk 0 of f.bin not held here", request="PEER_REQUEST_CHUNK"))
        await asyncio.wait_for(download._close_holders(), 5)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        download._file.close()
