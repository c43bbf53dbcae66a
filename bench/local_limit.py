"""Benchmark 1, the local limit: one Python process reads the test file in 1 MiB pieces (readinto a
bytearray), SHA-256s each piece and writes it to a new file, all on tmpfs.

No transfer between processes can beat what one process does with the same bytes alone, so this is the
reference for the transfer figures. The copy runs in a child process (`python -m bench.local_limit
--copy SRC DST`) and times its own loop: interpreter start-up is left out, which makes the reference a
little stricter than the `get` wall times compared with it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import time
from pathlib import Path

from bench.common import (
    TRANSFER_TIMEOUT,
    BenchError,
    Context,
    Figure,
    GiB,
    MiB,
    Proc,
    child_env,
    median,
    remove,
    repeat,
    size_label,
)

BENCH = "1 local limit"
#: The size of benchmark 2's file, so the reference moves the same bytes.
SIZE = GiB
QUICK_SIZE = 128 * MiB
PIECE = MiB


def copy_and_hash(src: Path, dst: Path) -> float:
    """Read `src` in 1 MiB pieces, SHA-256 each, write it to `dst`; the seconds the loop took."""
    buf = bytearray(PIECE)
    view = memoryview(buf)
    started = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            hashlib.sha256(view[:n]).digest()
            piece = view[:n]
            while piece:
                piece = piece[fout.write(piece) :]
    return time.perf_counter() - started


def size_for(ctx: Context) -> int:
    return QUICK_SIZE if ctx.quick else SIZE


def copy_once(ctx: Context) -> float:
    """One local copy (read + SHA-256 + write in a fresh process): MiB/s."""
    return _once(ctx, 0)


def measure(ctx: Context) -> float:
    """The local limit in MiB/s (median of the runs), measured once per suite run."""
    once = functools.partial(_once, ctx)

    def all_runs() -> float:
        print(
            f"  local limit: read + SHA-256 + write of {size_label(size_for(ctx))} in 1 MiB pieces",
            flush=True,
        )
        samples = repeat(ctx.runs, once, "local limit MiB/s")
        ctx.memo("local_limit_samples", lambda: samples)
        return median(samples)

    return ctx.memo("local_limit", all_runs)


def _once(ctx: Context, i: int) -> float:
    """One run of the local copy (run number `i` is unused): MiB/s."""
    src = ctx.source(size_for(ctx))
    dst = ctx.workdir / "local-copy.bin"
    remove(dst)
    child = Proc(
        [sys.executable, "-m", "bench.local_limit", "--copy", str(src), str(dst)],
        env=child_env(),
        cwd=Path(__file__).resolve().parent.parent,
        label="local copy",
    )
    if child.wait(TRANSFER_TIMEOUT) != 0:
        raise BenchError(f"local copy failed: {child.describe()}")
    remove(dst)
    seconds = float(child.stdout[-1])
    return src.stat().st_size / MiB / seconds


def run(ctx: Context) -> None:
    mibs = measure(ctx)
    ctx.add(
        Figure(
            BENCH,
            f"read+SHA-256+write, {size_label(size_for(ctx))}, 1 process",
            mibs,
            "MiB/s",
            ctx.memo("local_limit_samples", lambda: [mibs]),
            ratio=1.0,
            ratio_of="itself: the reference",
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copy", nargs=2, metavar=("SRC", "DST"), type=Path, required=True)
    args = parser.parse_args()
    seconds = copy_and_hash(*args.copy)
    print(f"{seconds:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
