"""Benchmark: `p2pfs mount` against `get` of the same file, side by side in one run (one sharing peer
and one tracker on 127.0.0.1, every file on tmpfs):

- sequential read of the whole file through a fresh mount (cold cache) vs `get` of it (the `done`
  event's seconds: from the tracker lookup to the rename, interpreter start-up left out of both), each
  started on warm memory (twice the file written into tmpfs and removed just before: bench/vm_memory);
- time to first byte of a cold file (open + first 4 KiB read on a fresh mount) vs one chunk round trip
  plus the tracker lookup, measured in this process with the same engine's connections;
- 1,000 reads of 64 KiB at random offsets on a fresh mount: reads/s, p99 latency, and chunks fetched vs
  chunks touched (from the mount's unmount line);
- the sequential read again under a --max-cache smaller than the file (SMALL_CACHE): MiB/s against the
  default cache's, and chunks fetched per chunk read (read-ahead held within the cache: each once).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from pathlib import Path

from bench import vm_memory
from bench.common import (
    HOST,
    STARTUP_TIMEOUT,
    TRANSFER_TIMEOUT,
    BenchError,
    Context,
    Figure,
    GiB,
    MiB,
    Proc,
    check_file,
    child_env,
    children,
    median,
    p2pfs,
    p2pfs_get,
    remove,
    repeat,
    size_label,
    start_share,
    start_tracker,
)

BENCH = "mount"
SIZE = GiB
QUICK_SIZE = 128 * MiB
RANDOM_READS = 1000
RANDOM_READ = 64 * 1024
FIRST_BYTES = 4096
#: --max-cache of the small-cache sequential read: a fraction of either size, some times the read-ahead
SMALL_CACHE = 32 * MiB
UNMOUNTED = re.compile(r"(\d+) reads touching (\d+) distinct chunks, (\d+) chunks fetched")


def mount(procs: list[Proc], tracker: str, mountpoint: Path, cache: Path, *extra: str) -> Proc:
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = p2pfs(
        "mount", str(mountpoint), "--tracker", tracker, "--host", HOST, "--cache", str(cache), *extra,
        env=child_env(), label="p2pfs mount",
    )
    procs.append(proc)
    proc.expect(r"^mounted ", STARTUP_TIMEOUT)
    return proc


def unmount(proc: Proc) -> tuple[int, int, int]:
    """Stop the mount; (reads, chunks touched, chunks fetched) from its unmount line."""
    if proc.stop() != 0:
        raise BenchError(f"mount did not exit 0: {proc.describe()}")
    for line in proc.stdout:
        match = UNMOUNTED.search(line)
        if match:
            return int(match[1]), int(match[2]), int(match[3])
    raise BenchError(f"no unmount line: {proc.describe()}")


def read_all(path: Path) -> int:
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while piece := os.read(fd, MiB):
            total += len(piece)
    finally:
        os.close(fd)
    return total


async def one_chunk_round_trip(tracker: str, name: str) -> float:
    """Seconds for a tracker lookup, then one holder's connection, ping and chunk 0 (raw), in-process."""
    from p2pfs.address import Address
    from p2pfs.net import connect
    from p2pfs.peer.tracker_client import TrackerClient
    from p2pfs.protocol import messages as m

    client = TrackerClient(auto_reconnect=False)
    await client.connect(Address.parse(tracker), None)
    try:
        started = time.monotonic()
        location = await client.locations(name)
        holder = Address.parse(next(iter(location.holder_runs())))
        conn = await connect(holder, 5.0)
        try:
            await conn.request(m.PeerPingPong())
            reply = await conn.request(m.PeerRequestChunk(filename=name, chunknum=0, raw=True))
            if not isinstance(reply, m.PeerReplyChunk) or reply.rawlength is None:
                raise BenchError(f"holder answered {reply!r}")
            buf = bytearray(reply.rawlength)
            await conn.recv_raw_into(memoryview(buf))
            return time.monotonic() - started
        finally:
            conn.close()
    finally:
        await client.close()


def run(ctx: Context) -> None:
    size = QUICK_SIZE if ctx.quick else SIZE
    src = ctx.source(size)
    ctx.ensure_room(2 * size, "the copy and the mount's cache, or the memory warmed before each")
    work = ctx.dir("mount")
    print(f"  mount, {size_label(size)}", flush=True)
    with children() as procs:
        tracker = start_tracker(procs)
        start_share(procs, src, tracker, child_env())
        seq_mount: list[float] = []
        seq_get: list[float] = []
        seq_small: list[float] = []
        small_fetched: list[float] = []

        def sequential(i: int) -> float:
            dest = work / f"copy-{i}.bin"
            # Each side starts on memory written and freed just before: the mount needs twice the pages
            # get needs (its cache and the kernel's page cache of the mounted file), and on this VM memory
            # the hypervisor took back costs ~7x more to write (bench/vm_memory.py); warmed, neither side
            # pays for pages the other does not.
            vm_memory.write_and_remove(work, 2 * size, 2)
            get = p2pfs_get(src.name, dest, tracker, "--json", env=child_env())
            _, done = get.expect_event("done", TRANSFER_TIMEOUT)
            get.wait(TRANSFER_TIMEOUT)
            check_file(dest, size)
            remove(dest)
            seq_get.append(float(done["seconds"]))
            vm_memory.write_and_remove(work, 2 * size, 2)
            proc = mount(procs, tracker, work / f"mnt-seq-{i}", work / f"cache-seq-{i}")
            started = time.monotonic()
            if read_all(work / f"mnt-seq-{i}" / src.name) != size:
                raise BenchError("short read through the mount")
            seconds = time.monotonic() - started
            unmount(proc)
            remove(work / f"cache-seq-{i}")
            seq_mount.append(seconds)
            small_cache = ("--max-cache", str(SMALL_CACHE))
            vm_memory.write_and_remove(work, 2 * size, 2)
            proc = mount(procs, tracker, work / f"mnt-small-{i}", work / f"cache-small-{i}", *small_cache)
            started = time.monotonic()
            if read_all(work / f"mnt-small-{i}" / src.name) != size:
                raise BenchError("short read through the mount")
            seq_small.append(time.monotonic() - started)
            _, touched, fetched = unmount(proc)
            remove(work / f"cache-small-{i}")
            small_fetched.append(100 * fetched / max(touched, 1))
            return seconds

        repeat(ctx.runs, sequential, "sequential read seconds")
        ratios = [g / m_ for m_, g in zip(seq_mount, seq_get, strict=True)]
        ctx.add(
            Figure(
                BENCH,
                f"sequential read of {size_label(size)} through a cold mount",
                median(size / MiB / s for s in seq_mount),
                "MiB/s",
                [size / MiB / s for s in seq_mount],
                ratio=median(ratios),
                ratio_of=f"of get of the same file: {', '.join(f'{size / MiB / s:.0f}' for s in seq_get)} MiB/s",
                target="≥ 70 % of get",
                met=median(ratios) >= 0.70,
            )
        )
        small = size_label(SMALL_CACHE)
        small_ratio = median(m_ / s for m_, s in zip(seq_mount, seq_small, strict=True))
        ctx.add(
            Figure(
                BENCH,
                f"sequential read of {size_label(size)}, --max-cache {small}",
                median(size / MiB / s for s in seq_small),
                "MiB/s",
                [size / MiB / s for s in seq_small],
                ratio=small_ratio,
                ratio_of="of the read with the default cache",
                target="≥ 80 % of it",
                met=small_ratio >= 0.80,
            )
        )
        ctx.add(
            Figure(
                BENCH,
                f"sequential read, --max-cache {small}: chunks fetched per chunk read",
                median(small_fetched),
                "%",
                small_fetched,
                target="≈ 100 % (read-ahead within the cache)",
                met=max(small_fetched) <= 105,
            )
        )

        first: list[float] = []
        reference: list[float] = []

        def first_byte(i: int) -> float:
            reference.append(asyncio.run(one_chunk_round_trip(tracker, src.name)))
            proc = mount(procs, tracker, work / f"mnt-first-{i}", work / f"cache-first-{i}")
            started = time.monotonic()
            fd = os.open(work / f"mnt-first-{i}" / src.name, os.O_RDONLY)
            try:
                if len(os.pread(fd, FIRST_BYTES, 0)) != FIRST_BYTES:
                    raise BenchError("short first read")
            finally:
                os.close(fd)
            seconds = time.monotonic() - started
            unmount(proc)
            remove(work / f"cache-first-{i}")
            first.append(seconds)
            return seconds

        repeat(ctx.runs, first_byte, "time to first byte")
        ratio = median(f / r for f, r in zip(first, reference, strict=True))
        ctx.add(
            Figure(
                BENCH,
                "time to first byte of a cold file (open + 4 KiB)",
                median(first) * 1000,
                "ms",
                [s * 1000 for s in first],
                ratio=ratio,
                ratio_of=f"× tracker lookup + one chunk round trip: {', '.join(f'{r * 1000:.1f}' for r in reference)} ms",
                target="within 3×",
                met=ratio <= 3.0,
            )
        )

        rng = random.Random(15)
        proc = mount(procs, tracker, work / "mnt-random", work / "cache-random")
        latencies: list[float] = []
        fd = os.open(work / "mnt-random" / src.name, os.O_RDONLY)
        try:
            started = time.monotonic()
            for _ in range(RANDOM_READS):
                offset = rng.randrange(0, size - RANDOM_READ)
                t0 = time.monotonic()
                if len(os.pread(fd, RANDOM_READ, offset)) != RANDOM_READ:
                    raise BenchError("short random read")
                latencies.append(time.monotonic() - t0)
            elapsed = time.monotonic() - started
        finally:
            os.close(fd)
        _, touched, fetched = unmount(proc)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        ctx.add(
            Figure(BENCH, f"{RANDOM_READS} random reads of 64 KiB (cold), reads/s", RANDOM_READS / elapsed, "reads/s")
        )
        ctx.add(Figure(BENCH, "random reads: p99 latency", p99 * 1000, "ms", note=f"median {median(latencies) * 1000:.2f} ms"))
        ctx.add(
            Figure(
                BENCH,
                "random reads: chunks fetched per chunk touched",
                100 * fetched / max(touched, 1),
                "%",
                ratio_of=f"{fetched} fetched, {touched} touched by the FUSE reads",
                target="≈ 100 %",
                met=fetched <= 1.5 * touched,
            )
        )
    remove(work)
