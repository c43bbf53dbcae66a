"""Peers given several trackers (`--tracker A,B`) fail over when theirs dies: a 1 -> 3 swarm whose
tracker is killed mid-transfer finishes every download exactly, through the other tracker of the same
Redis, and a new `get` given both trackers succeeds. Skipped without redis-server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_redis_store import (
    get_exact,
    listing,
    share,
    start_tracker,
    until,
)
from tests.procs import LISTENING, Proc, make_file
from tests.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def test_kill_the_swarms_tracker_mid_transfer(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    tracker_a, a = start_tracker(procs, redis_server.url, "--lease", "5")
    _, b = start_tracker(procs, redis_server.url, "--lease", "5")
    both = f"{a},{b}"
    src = make_file(tmp_path / "data.bin", 3_000_000)  # 46 chunks of 64 KiB, 20 ms each from the sharer
    sharer = share(procs, both, src, env={"P2PFS_TEST_DELAY": "0.02"})
    getters = [
        procs("get", "data.bin", str(tmp_path / f"out{i}.bin"), "--tracker", both, "--host", "127.0.0.1", "--json")
        for i in range(3)
    ]
    for getter in getters:  # every download under way (a chunk verified) before the tracker dies
        getter.expect(r'"chunks_done": [1-9]')
    tracker_a.kill9()
    for getter in getters:
        assert getter.wait(120) == 0, getter.stderr
    for i, getter in enumerate(getters):
        assert (tmp_path / f"out{i}.bin").read_bytes() == src.read_bytes()
        done = json.loads(getter.stdout[-1])
        assert done["event"] == "done", getter.stdout[-1]
    # the sharer moved to B and says so; B lists the file; a new get given both trackers succeeds
    sharer.expect_err(rf"failed over from tracker {a} to tracker {b}")
    assert "data.bin" in listing(b)
    get_exact(src, tmp_path / "later.bin", both)


def test_seeder_fails_over_and_stays_listed(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    """A seeder whose tracker dies registers with the next one, which renews its lease from then on
    (beyond what A granted): a tracker started later lists the file, fetched from it."""
    tracker_a, a = start_tracker(procs, redis_server.url, "--lease", "1")
    _, b = start_tracker(procs, redis_server.url, "--lease", "1")
    src = make_file(tmp_path / "data.bin", 400_000)
    sharer = share(procs, f"{a},{b}", src)
    peer = LISTENING.search(sharer.stdout[0])
    assert peer is not None
    lease_key = ("p2pfs:leases", f"127.0.0.1:{peer.group(2)}")
    until(lambda: redis_server.cli("ZSCORE", *lease_key) != "-1", 5, "the sharer is leased")
    tracker_a.kill9()
    granted_by_a = float(redis_server.cli("ZSCORE", *lease_key))
    sharer.expect_err(rf"failed over from tracker {a} to tracker {b}")
    until(lambda: float(redis_server.cli("ZSCORE", *lease_key)) > granted_by_a + 1000, 10, "B renews the lease")
    _, c = start_tracker(procs, redis_server.url, "--lease", "1")  # (loads what Redis leases now)
    assert "data.bin" in listing(c)
    get_exact(src, tmp_path / "out.bin", c)


def test_peer_shell_connect_takes_several_trackers(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    """`connect IP PORT IP PORT`: the first that answers is used (a refused one is skipped), and when
    that one dies the shell's peer fails over to the other and still publishes."""
    from tests.integration.test_shells import REFUSED_PORT, peer_shell

    tracker_a, a = start_tracker(procs, redis_server.url, "--lease", "5")
    _, b = start_tracker(procs, redis_server.url, "--lease", "5")
    shell, _ = peer_shell(procs)
    (ha, pa), (hb, pb) = a.rsplit(":", 1), b.rsplit(":", 1)
    assert shell.run(f"connect 127.0.0.1 {REFUSED_PORT} {ha} {pa} {hb} {pb}") == [f"connected to tracker {a}"]
    assert shell.one_error(f"connect {ha} {pa} {hb}") == "error: usage: connect <trackerip> <trackerport>"
    tracker_a.kill9()
    shell.proc.expect(rf"failed over from tracker {a} to tracker {b}")  # (a shell says it on stdout)
    src = make_file(tmp_path / "after.bin", 5000, seed=3)
    assert shell.run(f"publish {src}") == ["published after.bin (4.9 KiB, 1 chunk)"]
    assert "after.bin" in listing(b)
    shell.exit("exit")
