"""A swarm across network namespaces (bench/netns.py): a tracker, one seeder and three downloaders, each a
host with its own address on one bridge, uplinks shaped to 100 Mbit/s with tc tbf; an 8 MiB file in
256 KiB chunks; the three `get --json --seed` start downloading at one moment (bench/gate.py).

Skipped where network namespaces cannot be made (not root, no iproute2, no tbf). Nothing here is timed:
every wait is for a line, an event or a file.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from bench.common import LISTENING, REPO, Proc
from bench.netns import Testbed, namespaces, unavailable_reason
from tests.procs import make_file

SIZE = 8 << 20
CHUNK = "256K"
DOWNLOADERS = ("d1", "d2", "d3")
RATE = 100.0
TRACKER_PORT = 6969
P2PFS = (sys.executable, "-m", "p2pfs")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_swarm_across_namespaces(tmp_path: Path) -> None:
    reason = unavailable_reason("p2t")
    if reason is not None:
        pytest.skip(f"network namespaces with tc tbf are not available here: {reason}")
    src = make_file(tmp_path / "payload.bin", SIZE)
    want = sha256(src)
    dests = {d: tmp_path / d / "payload.bin" for d in DOWNLOADERS}
    for dest in dests.values():
        dest.parent.mkdir()
    barrier = tmp_path / "go"
    bed = Testbed({"tracker": None, "seeder": RATE, **dict.fromkeys(DOWNLOADERS, RATE)}, family="p2t")
    procs: list[Proc] = []
    with bed:
        tracker_host, seeder = bed.host("tracker"), bed.host("seeder")
        tracker = bed.spawn(
            tracker_host, [*P2PFS, "tracker", "--port", str(TRACKER_PORT), "--no-shell"], cwd=REPO
        )
        tracker.expect(LISTENING, 30)
        taddr = f"{tracker_host.ip}:{TRACKER_PORT}"
        share = bed.spawn(
            seeder, [*P2PFS, "share", str(src), "--tracker", taddr, "--chunk-size", CHUNK], cwd=REPO
        )
        share.expect(r"^published ", 30)
        gets = {
            d: bed.spawn(
                bed.host(d),
                [
                    sys.executable,
                    "-m",
                    "bench.gate",
                    str(barrier),
                    "p2pfs.cli.main",
                    "get",
                    "payload.bin",
                    str(dests[d]),
                    "--tracker",
                    taddr,
                    "--json",
                    "--seed",
                ],
                cwd=REPO,
                label=f"get on {d}",
            )
            for d in DOWNLOADERS
        }
        procs = [tracker, share, *gets.values()]
        for get in gets.values():
            get.expect(r"^gate: ready$", 30)
        before = seeder.tx_bytes()
        barrier.touch()
        done = {d: get.expect_event("done", 90)[1] for d, get in gets.items()}
        for get in gets.values():
            get.expect_event("seeding", 30)  # its signal handlers are installed: SIGTERM stops it cleanly
        sent = seeder.tx_bytes() - before
        for d, get in gets.items():
            assert get.stop() == 0, get.describe()

        host_of = {h.ip: h.name for h in bed.hosts.values()}
        print(f"seeder sent {sent / SIZE:.2f} x the file; sources: {[done[d]['sources'] for d in DOWNLOADERS]}")
        for d in DOWNLOADERS:
            assert sha256(dests[d]) == want, f"{d} wrote a wrong file"
            sources = done[d]["sources"]
            holders = {address.rpartition(":")[0]: count for address, count in sources.items()}
            # every holder was reached at its address inside the testbed (not 127.0.0.1 or 0.0.0.0)
            assert set(holders) <= set(host_of), f"{d}: holders outside the testbed: {sources}"
            assert sum(holders.values()) == done[d]["chunk_count"]
            from_downloaders = sum(n for ip, n in holders.items() if host_of[ip] not in ("seeder", d))
            assert from_downloaders >= 1, f"{d} got every chunk from the seeder: {sources}"
        # Without a swarm the seeder sends the file once per downloader: 3 x 8 MiB plus ~4.6% of TCP/IP and
        # Ethernet headers. A working swarm needs it to send about one copy.
        assert sent < len(DOWNLOADERS) * SIZE, f"the seeder sent {sent / SIZE:.2f} x the file"
    assert bed.leftovers() == []
    assert not [ns for ns in namespaces() if ns.startswith(bed.prefix + "-")]
    for proc in procs:
        assert not os.path.exists(f"/proc/{proc.pid}") or proc.popen.poll() is not None
