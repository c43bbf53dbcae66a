"""Benchmark 2, one source and one downloader: `p2pfs share` and `p2pfs get` as separate processes on
127.0.0.1; the figure is the wall time of `get` from the moment it is started to its exit (interpreter
start-up, tracker exchange, transfer, verification and rename included), as MiB/s of the file.

Twice: the binary fast path (the default) and base64 JSON only (P2PFS_WIRE=json for share and get).
The reference is benchmark 1, the local limit, measured in the same run.
"""

from __future__ import annotations

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
    wire_env,
)

BENCH = "2 one→one"
SIZE = local_limit.SIZE
QUICK_SIZE = local_limit.QUICK_SIZE
WIRES = ("binary", "json")
#: Share of the local limit each wire should reach.
TARGETS = {"binary": 0.70, "json": 0.30}


def size_for(ctx: Context) -> int:
    return QUICK_SIZE if ctx.quick else SIZE


def measure(ctx: Context, wire: str) -> list[float]:
    """Wall times (s) of `get` for each run with this wire mode; measured once per suite run."""

    def all_runs() -> list[float]:
        size = size_for(ctx)
        src = ctx.source(size)
        ctx.ensure_room(size, "the downloaded copy")
        env = child_env(wire_env(wire))
        work = ctx.dir(f"one-to-one-{wire}")
        print(f"  one→one, {size_label(size)}, wire {wire}", flush=True)
        with children() as procs:
            tracker = start_tracker(procs)
            start_share(procs, src, tracker, env)

            def once(i: int) -> float:
                # the reference right before each get: the pair shares the machine's load of the moment
                paired_local.append(local_limit.copy_once(ctx))
                dest = work / f"copy-{i}.bin"
                get = p2pfs_get(src.name, dest, tracker, env=env)
                rc = get.wait(TRANSFER_TIMEOUT)
                if rc != 0:
                    raise BenchError(f"get failed: {get.describe()}")
                assert get.ended is not None
                check_file(dest, size)
                remove(dest)
                return get.ended - get.started

            samples = repeat(ctx.runs, once, f"get ({wire}) seconds")
        remove(work)
        ctx.memo(f"one_to_one:{wire}:local", lambda: paired_local)
        return samples

    paired_local: list[float] = []

    return ctx.memo(f"one_to_one:{wire}", all_runs)


def mib_per_s(ctx: Context, seconds: float) -> float:
    return size_for(ctx) / MiB / seconds


def run(ctx: Context) -> None:
    local_limit.measure(ctx)
    for wire in WIRES:
        samples = [mib_per_s(ctx, s) for s in measure(ctx, wire)]
        value = median(samples)
        # each get against the local copy measured just before it (a shared machine's load drifts)
        local: list[float] = ctx.memo(f"one_to_one:{wire}:local", list)
        ratio = median([got / ref for got, ref in zip(samples, local, strict=True)])
        ctx.add(
            Figure(
                BENCH,
                f"get {size_label(size_for(ctx))}, {wire} wire (wall time {size_for(ctx) / MiB / value:.2f} s)",
                value,
                "MiB/s",
                samples,
                ratio=ratio,
                ratio_of=f"of a local copy run just before each get: {', '.join(f'{x:.0f}' for x in local)} MiB/s",
                target=f"≥ {TARGETS[wire]:.0%} of local",
                met=ratio >= TARGETS[wire],
            )
        )
