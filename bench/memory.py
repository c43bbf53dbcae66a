"""Benchmark 4, memory: the peak resident set size of `p2pfs get` and of `p2pfs share` (hashing at
publish and serving included) for a 1 GiB and a 4 GiB file: the highest VmHWM read from
/proc/PID/status every 10 ms while each child runs (wait4's ru_maxrss would report the runner's own RSS:
see common.Proc).

The reference is the peak RSS of a bare interpreter that imports the p2pfs command line, measured in
the same run: what a p2pfs process costs before it touches any file. Memory must not grow with the file.
"""

from __future__ import annotations

import sys

from bench.common import (
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
    p2pfs_get,
    remove,
    size_label,
    start_share,
    start_tracker,
)

BENCH = "4 memory"
SIZES = (1 * GiB, 4 * GiB)
QUICK_SIZES = (64 * MiB, 256 * MiB)
#: get's peak RSS at the largest size, and how much it may grow from the smallest to the largest size
#: before we call it "growing with size" (allocator noise is a few MiB).
GET_TARGET = 100 * MiB
GROWTH_TOLERANCE = 8 * MiB
#: Peak RSS is not noisy like a time; one run per size is enough and saves minutes on 4 GiB transfers.
RUNS = 1


def sizes_for(ctx: Context) -> tuple[int, ...]:
    return QUICK_SIZES if ctx.quick else SIZES


def baseline(ctx: Context) -> float:
    """Peak RSS (MiB) of `python -c "import p2pfs.cli.main"`: the floor of any p2pfs process."""

    def once() -> float:
        # sleep a little after importing, so the 10 ms poller sees the process at its full size
        proc = Proc(
            [sys.executable, "-c", "import time, p2pfs.cli.main; time.sleep(0.2)"],
            env=child_env(),
            label="import p2pfs",
            watch_memory=True,
        )
        if proc.wait(60) != 0 or proc.peak_rss is None:
            raise BenchError(f"cannot import p2pfs: {proc.describe()}")
        return proc.peak_rss / MiB

    return ctx.memo("memory:baseline", lambda: median(once() for _ in range(3)))


def measure(ctx: Context, size: int) -> tuple[float, float]:
    """(get, share) peak RSS in MiB for one transfer of a file of `size` bytes."""
    src = ctx.source(size)
    ctx.ensure_room(size, "the downloaded copy")
    work = ctx.dir(f"memory-{size}")
    dest = work / src.name
    with children() as procs:
        tracker = start_tracker(procs)
        share = start_share(procs, src, tracker, child_env(), watch_memory=True)
        get = p2pfs_get(src.name, dest, tracker, env=child_env(), watch_memory=True)
        if get.wait(TRANSFER_TIMEOUT) != 0:
            raise BenchError(f"get failed: {get.describe()}")
        check_file(dest, size)
        if share.stop() != 0:
            raise BenchError(f"share did not stop cleanly: {share.describe()}")
    remove(work)
    if get.peak_rss is None or share.peak_rss is None:
        raise BenchError("could not read the peak RSS of get or share")
    return get.peak_rss / MiB, share.peak_rss / MiB


def run(ctx: Context) -> None:
    base = baseline(ctx)
    print(f"  baseline (interpreter + p2pfs imported): {base:.1f} MiB", flush=True)
    ctx.add(
        Figure(
            BENCH,
            "reference: python -c 'import p2pfs.cli.main'",
            base,
            "MiB",
            ratio=1.0,
            ratio_of="itself: the reference",
        )
    )
    sizes = sizes_for(ctx)
    largest = sizes[-1]
    results: dict[int, tuple[float, float]] = {}
    for size in sizes:
        print(f"  memory: share + get of {size_label(size)}", flush=True)
        runs = [measure(ctx, size) for _ in range(RUNS)]
        results[size] = (median(r[0] for r in runs), median(r[1] for r in runs))
        print(f"    get {results[size][0]:.1f} MiB, share {results[size][1]:.1f} MiB", flush=True)
        if size != sizes[0]:
            ctx.drop_source(size)  # the largest file is used by no other benchmark
    full = sizes == SIZES
    for size in sizes:
        get_rss, share_rss = results[size]
        at_largest = size == largest
        ctx.add(
            Figure(
                BENCH,
                f"get peak RSS, {size_label(size)}",
                get_rss,
                "MiB",
                ratio=get_rss / base,
                ratio_of="× baseline",
                target=f"≤ {GET_TARGET / MiB:.0f} MiB" if at_largest else "",
                met=(get_rss <= GET_TARGET / MiB if full else None) if at_largest else None,
            )
        )
        ctx.add(
            Figure(
                BENCH,
                f"share peak RSS, {size_label(size)}",
                share_rss,
                "MiB",
                ratio=share_rss / base,
                ratio_of="× baseline",
            )
        )
    for role, index in (("get", 0), ("share", 1)):
        growth = results[largest][index] - results[sizes[0]][index]
        ctx.add(
            Figure(
                BENCH,
                f"{role} RSS growth {size_label(sizes[0])} → {size_label(largest)}",
                growth,
                "MiB",
                ratio=results[largest][index] / results[sizes[0]][index],
                ratio_of=f"RSS at {size_label(largest)} / at {size_label(sizes[0])}",
                target=f"≤ {GROWTH_TOLERANCE / MiB:.0f} MiB (no growth)" if role == "get" else "",
                met=(growth <= GROWTH_TOLERANCE / MiB) if role == "get" else None,
            )
        )
