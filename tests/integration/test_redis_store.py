"""Several trackers on one Redis (`p2pfs tracker --store redis://...`): one swarm served by all, state
that survives a tracker's restart, registrations that expire with their tracker, and Redis itself
restarted under a swarm. Real redis-server, real p2pfs processes; skipped without redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import Proc, make_file, run
from tests.redis_server import REDIS_SERVER, RedisServer, free_port

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

CHUNK = "64K"


def start_tracker(procs: Callable[..., Proc], url: str, *more: str, port: int = 0) -> tuple[Proc, str]:
    proc = procs("tracker", "--host", "127.0.0.1", "--port", str(port), "--no-shell", "--store", url, *more)
    return proc, proc.listening()


def share(procs: Callable[..., Proc], trackers: str, path: Path, env: dict[str, str] | None = None) -> Proc:
    proc = procs(
        "share", str(path), "--tracker", trackers, "--host", "127.0.0.1", "--chunk-size", CHUNK, env=env
    )
    proc.listening()
    return proc


def listing(tracker: str) -> dict[str, list[int]]:
    result = run("ls", "--tracker", tracker, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def get_exact(src: Path, dest: Path, trackers: str) -> None:
    """`p2pfs get` of data.bin through `trackers` succeeds with `src`'s exact bytes."""
    result = run("get", "data.bin", str(dest), "--tracker", trackers, "-q")
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == src.read_bytes()


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Ask again until `condition` holds (a state another process reaches), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_two_trackers_serve_one_swarm(procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path) -> None:
    _, a = start_tracker(procs, redis_server.url)
    _, b = start_tracker(procs, redis_server.url)
    src = make_file(tmp_path / "data.bin", 1_000_000)
    share(procs, a, src)
    until(lambda: "data.bin" in listing(b), 5, "tracker B lists what was shared through A")
    assert listing(b)["data.bin"] == [1_000_000, 16]
    get_exact(src, tmp_path / "out.bin", b)


def test_downloaders_on_different_trackers_exchange_chunks(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    """A slow sharer on A hands each downloader different chunks (super-seeding); the downloader on B
    can finish only with chunks it learns of through A's registrations, and the other way round."""
    _, a = start_tracker(procs, redis_server.url)
    _, b = start_tracker(procs, redis_server.url)
    src = make_file(tmp_path / "data.bin", 2_000_000)  # 31 chunks of 64 KiB
    share(procs, a, src, env={"P2PFS_TEST_DELAY": "0.05"})
    getters = [
        procs("get", "data.bin", str(tmp_path / f"out{i}.bin"), "--tracker", t, "--host", "127.0.0.1", "--json")
        for i, t in enumerate((a, b))
    ]
    sources = []
    for getter in getters:
        assert getter.wait(120) == 0, getter.stderr
        done = [json.loads(line) for line in getter.stdout if '"done"' in line][-1]
        sources.append(set(done["sources"]))
    for i in range(2):
        assert (tmp_path / f"out{i}.bin").read_bytes() == src.read_bytes()
    assert len(sources[0] | sources[1]) == 3, sources  # the sharer and the two downloaders
    assert len(sources[0]) == 2 and len(sources[1]) == 2, sources  # each fetched from the other too


def test_tracker_restarted_has_its_state(procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path) -> None:
    """A tracker killed and started again (on another port, so the sharer cannot reconnect to it) lists
    the file from its first answer, and the holder it knew is found through it."""
    tracker, a = start_tracker(procs, redis_server.url, "--lease", "60")
    src = make_file(tmp_path / "data.bin", 500_000)
    share(procs, a, src)
    until(lambda: redis_server.cli("EXISTS", "p2pfs:file:data.bin") == "1", 5, "the publish is in Redis")
    tracker.kill9()
    _, again = start_tracker(procs, redis_server.url, "--lease", "60")
    assert listing(again)["data.bin"] == [500_000, 8]
    get_exact(src, tmp_path / "out.bin", again)


def test_peers_dying_with_their_tracker_expire(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    """The sharer and its tracker die together: the other tracker delists the file once the lease is
    gone (no peer can complete it), and its registered peers are gone from Redis too."""
    tracker, a = start_tracker(procs, redis_server.url, "--lease", "1")
    _, b = start_tracker(procs, redis_server.url, "--lease", "1")
    sharer = share(procs, a, make_file(tmp_path / "data.bin", 300_000))
    until(lambda: "data.bin" in listing(b), 5, "B lists the file")
    sharer.kill9()
    tracker.kill9()
    until(lambda: "data.bin" not in listing(b), 10, "B delists the file of a peer whose lease expired")
    until(lambda: redis_server.cli("ZCARD", "p2pfs:leases") == "0", 5, "no lease left")
    assert redis_server.cli("EXISTS", "p2pfs:file:data.bin") == "0"
    assert redis_server.cli("SCARD", "p2pfs:files") == "0"


def test_redis_restarted_under_a_swarm(procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path) -> None:
    """Redis dies: each tracker says so in one line, goes on serving from memory; Redis comes back empty:
    the trackers write their peers' state again, so a tracker started afterwards lists everything."""
    ta, a = start_tracker(procs, redis_server.url)
    tb, b = start_tracker(procs, redis_server.url)
    src = make_file(tmp_path / "data.bin", 700_000)
    share(procs, a, src)
    until(lambda: "data.bin" in listing(b), 5, "B lists the file")
    redis_server.kill9()
    for proc in (ta, tb):
        proc.expect_err(r"store redis://127\.0\.0\.1:\d+/0 unavailable \(.*\): serving from memory")
    assert "data.bin" in listing(a) and "data.bin" in listing(b)
    dest = tmp_path / "during.bin"
    assert run("get", "data.bin", str(dest), "--tracker", b, "-q").returncode == 0
    assert dest.read_bytes() == src.read_bytes()
    redis_server.start()  # (the same port, empty)
    for proc in (ta, tb):
        proc.expect_err(r"store redis://127\.0\.0\.1:\d+/0 is back")
    until(lambda: redis_server.cli("EXISTS", "p2pfs:file:data.bin") == "1", 5, "the file is in Redis again")
    _, c = start_tracker(procs, redis_server.url)
    assert listing(c)["data.bin"] == [700_000, 11]
    get_exact(src, tmp_path / "after.bin", c)
    # one line each for the failure, one for the recovery: no traceback
    for proc in (ta, tb):
        assert not any("Traceback" in line for line in proc.stderr), proc.stderr


@pytest.mark.parametrize(
    ("store", "reason"),
    [("http://127.0.0.1:6379", "write memory, or redis://HOST:PORT/DB"), ("redis://host:notaport", "bad store")],
)
def test_bad_store_is_one_line(store: str, reason: str) -> None:
    result = run("tracker", "--port", "0", "--no-shell", "--store", store)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr


def test_password_is_not_shown(procs: Callable[..., Proc], tmp_path: Path) -> None:
    """An unreachable Redis with a password in its URL: the tracker starts, says so, and never prints it."""
    proc = procs(
        "tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", "--store", f"redis://:s3cret@127.0.0.1:{free_port()}/2"
    )
    line = proc.expect_err(r"store .* unavailable").string
    assert "s3cret" not in line and ":***@127.0.0.1" in line
    proc.listening()


def test_chunks_registered_through_a_tracker_are_in_redis(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    """A downloader's chunk registrations (small batches, written by one script per flush) land in its
    bitmap in Redis: a tracker started afterwards, with the sharer gone, sends a get to the seeding
    downloader alone, and the bytes are exact."""
    _, a = start_tracker(procs, redis_server.url, "--lease", "60")
    src = make_file(tmp_path / "data.bin", 3_000_000)  # 46 chunks of 64 KiB, 50 ms each from the sharer
    sharer = share(procs, a, src, env={"P2PFS_TEST_DELAY": "0.05"})
    getter = procs(
        "get", "data.bin", str(tmp_path / "seeded.bin"), "--tracker", a, "--host", "127.0.0.1", "--seed", "--json"
    )
    getter.expect(r'"chunks_done": (?:[5-9]|[1-3][0-9])\b')  # (under way: registered chunk by chunk)
    holder = json.loads(getter.expect(r'"event": "seeding"').string)["address"]
    key = f"p2pfs:have:{holder}:data.bin"
    until(lambda: redis_server.cli("BITCOUNT", key) == "46", 10, "the getter's 46 chunks in its bitmap")
    assert redis_server.cli("SISMEMBER", "p2pfs:holders:data.bin", holder) == "1"
    assert redis_server.cli("SISMEMBER", f"p2pfs:files_of:{holder}", "data.bin") == "1"
    sharer.kill9()
    _, c = start_tracker(procs, redis_server.url, "--lease", "60")
    get_exact(src, tmp_path / "out.bin", c)


def test_small_registrations_are_written_by_one_script_per_batch(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flusher's registration script against a real Redis: every chunk's bit set in its holder's
    bitmap, the holder and file sets updated, however the batch is split into script runs."""
    import asyncio

    from p2pfs.tracker import store as store_module

    monkeypatch.setattr(store_module, "REGISTER_ARGS", 4)  # (so this batch takes three runs)
    groups: list[str | int] = ["f", "10.0.0.1:7", 3, 0, 7, 9, "g", "10.0.0.1:7", 1, 2, "f", "10.0.0.2:7", 1, 63]

    async def write() -> None:
        store = store_module.RedisStore(redis_server.url)
        pipe = store._redis.pipeline(transaction=False)
        store._write_chunks(pipe, groups)
        assert len(pipe.command_stack) == 3
        await pipe.execute()
        await store._redis.aclose()

    asyncio.run(write())
    bits = {
        key: [i for i in range(64) if redis_server.cli("GETBIT", key, str(i)) == "1"]
        for key in ("p2pfs:have:10.0.0.1:7:f", "p2pfs:have:10.0.0.1:7:g", "p2pfs:have:10.0.0.2:7:f")
    }
    assert bits == {
        "p2pfs:have:10.0.0.1:7:f": [0, 7, 9],
        "p2pfs:have:10.0.0.1:7:g": [2],
        "p2pfs:have:10.0.0.2:7:f": [63],
    }
    assert redis_server.cli("SCARD", "p2pfs:holders:f") == "2"
    assert redis_server.cli("SISMEMBER", "p2pfs:files_of:10.0.0.1:7", "g") == "1"


def test_damaged_entries_in_redis_are_skipped(
    procs: Callable[..., Proc], redis_server: RedisServer, tmp_path: Path
) -> None:
    """Garbage in the keys a tracker loads (a lease of no address, a record that is not MessagePack, a
    holder of no address): a tracker starting on it says nothing fails, lists the good file and serves it."""
    _, a = start_tracker(procs, redis_server.url, "--lease", "60")
    src = make_file(tmp_path / "data.bin", 300_000)
    share(procs, a, src)
    until(lambda: redis_server.cli("EXISTS", "p2pfs:file:data.bin") == "1", 5, "the publish is in Redis")
    redis_server.cli("ZADD", "p2pfs:leases", "99999999999999", "not an address")
    redis_server.cli("SADD", "p2pfs:files", "junk")
    redis_server.cli("SET", "p2pfs:file:junk", "\x01\x02 not msgpack")
    redis_server.cli("SADD", "p2pfs:holders:data.bin", "::nonsense::")
    tracker_b, b = start_tracker(procs, redis_server.url, "--lease", "60")
    assert listing(b) == {"data.bin": [300_000, 5]}
    get_exact(src, tmp_path / "out.bin", b)
    assert not any("unavailable" in line or "Traceback" in line for line in tracker_b.stderr), tracker_b.stderr
