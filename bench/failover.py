"""Benchmark: several trackers on one Redis (`p2pfs tracker --store redis://...`).

1. Fail-over time: two trackers A and B on one Redis, a `p2pfs peer --tracker A,B` registered with A;
   kill -9 A and time until the peer prints that it registered with B (its first
   successful request there: REQUEST_REGISTER answered), median of several kills.
2. Availability across trackers: a watcher on B (REQUEST_FILE_LOCATION watch) and a holder on A that
   registers one chunk at a time; the time from each REQUEST_CHUNK_REGISTER sent to A until B pushes the
   update to the watcher, beside the same on one tracker with the memory store (the push delay alone).

Skipped (with one line) where redis-server is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from bench.common import (
    HOST,
    BenchError,
    Context,
    Figure,
    Proc,
    children,
    median,
    p2pfs,
    start_tracker,
)

BENCH = "6b trackers on Redis"
REDIS_SERVER = shutil.which("redis-server")
KILLS = 7
QUICK_KILLS = 3
REGISTRATIONS = 40
QUICK_REGISTRATIONS = 15
FAILOVER_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_redis(procs: list[Proc], directory: Path) -> str:
    """A redis-server on a free loopback port, saving nothing; its URL once it accepts connections."""
    if REDIS_SERVER is None:
        raise BenchError("redis-server is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    redis = Proc(
        [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--dir", str(directory), "--save", "", "--appendonly", "no"],
        label="redis-server",
    )
    procs.append(redis)
    redis.expect("Ready to accept connections", 30)
    return f"redis://{HOST}:{port}/0"


def store_tracker(procs: list[Proc], url: str, lease: str = "5") -> tuple[Proc, str]:
    address = start_tracker(procs, ["--store", url, "--lease", lease])
    return procs[-1], address


def failover_once(procs: list[Proc], url: str) -> float:
    tracker_a, a = store_tracker(procs, url)
    _, b = store_tracker(procs, url)
    peer = p2pfs("peer", "--host", HOST, "--tracker", f"{a},{b}", "--no-shell", label="p2pfs peer")
    procs.append(peer)
    peer.expect(rf"connected to tracker {a}", 30)
    killed = time.monotonic()
    os.kill(tracker_a.pid, signal.SIGKILL)
    at, _ = peer.expect(rf"failed over from tracker {a} to tracker {b}", FAILOVER_TIMEOUT)
    tracker_a.wait(10)
    return at - killed


async def push_latencies(holder_tracker: str, watcher_tracker: str, count: int) -> list[float]:
    """Seconds from each chunk registration sent through `holder_tracker` to its pushed update at a
    watcher of `watcher_tracker` (in-process peers speaking the protocol through TrackerClient)."""
    from p2pfs.address import Address
    from p2pfs.peer.tracker_client import TrackerClient

    chunks = count + 1
    name = f"push-{os.getpid()}-{time.monotonic_ns()}.bin"
    seeder, holder, watcher = TrackerClient(), TrackerClient(), TrackerClient()
    await seeder.connect(Address.parse(holder_tracker), Address(HOST, 1))
    await seeder.publish(name, chunks * 1024, chunks, 1024, bytes(32 * chunks))
    await holder.connect(Address.parse(holder_tracker), Address(HOST, 2))
    await watcher.connect(Address.parse(watcher_tracker), Address(HOST, 3))
    arrived: asyncio.Queue[float] = asyncio.Queue()
    watcher.watch(name, lambda update: arrived.put_nowait(time.perf_counter()))
    while True:  # (the publish reaches the other tracker through Redis: ask until it is listed there)
        try:
            await watcher.locations(name, watch=True)
            break
        except Exception:  # noqa: BLE001 (not listed there yet)
            await asyncio.sleep(0.01)
    samples = []
    for chunk in range(count):
        sent = time.perf_counter()
        holder.register_chunk(name, chunk)
        async with asyncio.timeout(10):
            samples.append(await arrived.get() - sent)
    for client in (seeder, holder, watcher):
        await client.close()
    return samples


def run(ctx: Context) -> None:
    if REDIS_SERVER is None:
        print("  skipped: redis-server is not installed", flush=True)
        return
    kills = QUICK_KILLS if ctx.quick else KILLS
    registrations = QUICK_REGISTRATIONS if ctx.quick else REGISTRATIONS
    times = []
    with children() as procs:
        url = start_redis(procs, ctx.dir("failover-redis"))
        for _ in range(kills):
            times.append(failover_once(procs, url))
            print(f"    fail-over in {times[-1] * 1000:.0f} ms", flush=True)
        _, a = store_tracker(procs, url)
        _, b = store_tracker(procs, url)
        across = asyncio.run(push_latencies(a, b, registrations))
        alone = start_tracker(procs)
        one = asyncio.run(push_latencies(alone, alone, registrations))
    ctx.add(
        Figure(
            BENCH,
            f"fail-over: kill -9 of the peer's tracker to registered with the other (median of {kills})",
            median(times) * 1000,
            "ms",
            [t * 1000 for t in times],
            target="≤ 2 s",
            met=median(times) <= 2.0,
        )
    )
    reference = median(one) * 1000
    ctx.add(
        Figure(
            BENCH,
            "pushed availability, one tracker (memory store): chunk registered → watcher updated, median",
            reference,
            "ms",
            ratio=1.0,
            ratio_of="itself: the reference",
        )
    )
    value = median(across) * 1000
    ctx.add(
        Figure(
            BENCH,
            "pushed availability across trackers (A → Redis → B → watcher), median",
            value,
            "ms",
            ratio=value / reference,
            ratio_of="× one tracker",
            target="~100 ms",
            met=value <= 100,
        )
    )
    p99 = sorted(across)[min(len(across) - 1, round(0.99 * (len(across) - 1)))] * 1000
    ctx.add(Figure(BENCH, "pushed availability across trackers, slowest of the registrations", p99, "ms"))
