"""Benchmark 2c, hashing a local file: what `share` (publishing), `verify` and a `get` whose DEST already
holds the bytes pay before anything moves. Side by side in one run: p2pfs.peer.hashing on one thread and
on hashing.THREADS threads (the ratio is the speed-up), and the wall time of a `p2pfs get` whose DEST is
already the published file (hashed, nothing fetched) against the same `get` downloading it.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench import local_limit
from bench.common import (
    TRANSFER_TIMEOUT,
    BenchError,
    Context,
    Figure,
    MiB,
    check_file,
    child_env,
    children,
    median,
    p2pfs_get,
    remove,
    repeat,
    size_label,
    start_share,
    start_tracker,
)
from p2pfs.peer import hashing

BENCH = "2c hashing"


def hash_rate(path: os.PathLike[str], threads: int) -> float:
    """MiB/s of hashing every 1 MiB chunk of `path` on `threads` threads (the page cache warm)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        started = time.perf_counter()
        asyncio.run(hashing.hash_chunks(fd, size, 1 << 20, threads=threads))
        return size / MiB / (time.perf_counter() - started)
    finally:
        os.close(fd)


def run(ctx: Context) -> None:
    size = local_limit.QUICK_SIZE if ctx.quick else local_limit.SIZE
    src = ctx.source(size)
    hash_rate(src, 1)  # (warm-up: the source in the page cache)
    one: list[float] = []
    many: list[float] = []
    for i in range(ctx.runs):
        order = (1, hashing.THREADS) if i % 2 == 0 else (hashing.THREADS, 1)
        for threads in order:
            (one if threads == 1 else many).append(hash_rate(src, threads))
    ctx.add(Figure(BENCH, f"hash {size_label(size)}, 1 thread", median(one), "MiB/s", one))
    ctx.add(
        Figure(
            BENCH,
            f"hash {size_label(size)}, {hashing.THREADS} threads (share, verify, get of a file already held)",
            median(many),
            "MiB/s",
            many,
            ratio=median(many) / median(one),
            ratio_of="1 thread",
        )
    )

    ctx.ensure_room(size, "the downloaded copy")
    env = child_env()
    work = ctx.dir("hashing")
    dest = work / src.name
    with children() as procs:
        tracker = start_tracker(procs)
        start_share(procs, src, tracker, env)

        def get_once() -> float:
            get = p2pfs_get(src.name, dest, tracker, env=env)
            if get.wait(TRANSFER_TIMEOUT) != 0:
                raise BenchError(f"get failed: {get.describe()}")
            assert get.ended is not None
            check_file(dest, size)
            return get.ended - get.started

        def round_(i: int) -> tuple[float, float]:
            remove(dest)
            fetched = get_once()
            held = get_once()  # (DEST is now the published file: checked, nothing fetched)
            return fetched, held

        rounds = repeat(ctx.runs, round_)
    remove(work)
    fetched = [r[0] for r in rounds]
    held = [r[1] for r in rounds]
    ctx.add(Figure(BENCH, f"get {size_label(size)}, downloading it", median(fetched), "s", fetched))
    ctx.add(
        Figure(
            BENCH,
            f"get {size_label(size)}, DEST already the file (hashed, nothing fetched)",
            median(held),
            "s",
            held,
            ratio=median(held) / median(fetched),
            ratio_of="downloading",
        )
    )
