"""Run the benchmark suite: `python -m bench.run [--only NAME[,NAME...]] [--quick] [--runs N]`.

Prints each figure as it is measured, then the whole table. A full run (no --only, no --quick) appends
the table to bench/RESULTS.md with the date and the commit; --record / --no-record override that.
A benchmark that cannot measure (a child failed) is reported and the suite goes on with the next one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    collections,
    failover,
    hashing,
    hostile_latency,
    libtorrent_side,
    local_limit,
    memory,
    mount,
    one_to_one,
    ratelimit,
    swarm,
    tls,
    tracker_load,
)
from bench.common import (
    REPO,
    BenchError,
    Context,
    interrupt_on_termination,
    stop_all,
    table,
    tmpfs_workdir,
)

#: In the order they run: the local limit first, as it is the reference of the transfer figures, and
#: libtorrent after the p2pfs benchmarks whose figures it is compared with.
BENCHMARKS: dict[str, Callable[[Context], None]] = {
    "local_limit": local_limit.run,
    "one_to_one": one_to_one.run,
    "tls": tls.run,
    "hashing": hashing.run,
    "collections": collections.run,
    "hostile": hostile_latency.run,
    "swarm": swarm.run,
    "memory": memory.run,
    "mount": mount.run,
    "ratelimit": ratelimit.run,
    "libtorrent": libtorrent_side.run,
    "tracker": tracker_load.run,
    "failover": failover.run,
}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def git_revision() -> str:
    """`git rev-parse --short HEAD`, marked when p2pfs/ differs from it (read-only git commands)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "p2pfs"], cwd=REPO, capture_output=True, check=False
    )
    return rev + (" + uncommitted changes in p2pfs/" if dirty.returncode == 1 else "")


def load_average() -> str:
    """The 1-minute load average: other work on this shared machine skews every figure."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def record(
    text: str,
    started: datetime.datetime,
    seconds: float,
    args: argparse.Namespace,
    failures: list[str],
    load: str,
) -> None:
    mode = "quick" if args.quick else "full"
    lines = [
        "",
        f"## {started:%Y-%m-%d %H:%M} UTC · {git_revision()}",
        "",
        (
            f"`make bench` ({mode}, median of {args.runs or (1 if args.quick else 3)} runs); {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; total {seconds / 60:.1f} min; load average {load}."
        ),
        "",
        text,
    ]
    if failures:
        lines += ["", "Not measured: " + "; ".join(failures)]
    new = not RESULTS.exists()
    with open(RESULTS, "a", encoding="utf-8") as out:
        if new:
            out.write(
                "# Benchmark results\n\nAppended by `make bench` (bench/run.py): one section per full run. "
                "Ratios are to references measured in the same run.\n"
            )
        out.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one run each: checks that all works"
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --quick)")
    rec = parser.add_mutually_exclusive_group()
    rec.add_argument(
        "--record", dest="record", action="store_true", default=None, help="append to RESULTS.md"
    )
    rec.add_argument("--no-record", dest="record", action="store_false", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    should_record = args.record if args.record is not None else not (args.quick or args.only)

    interrupt_on_termination()
    load_before = load_average()
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.monotonic()
    failures: list[str] = []
    try:
        with tmpfs_workdir() as workdir:
            ctx = Context(workdir, quick=args.quick, runs=args.runs)
            print(
                f"work directory {workdir} (tmpfs); {ctx.runs} run(s) per figure; load average {load_before}",
                flush=True,
            )
            for name in names:
                print(f"\n== {name} ==", flush=True)
                t0 = time.monotonic()
                try:
                    BENCHMARKS[name](ctx)
                except BenchError as exc:
                    failures.append(f"{name}: {exc}")
                    print(f"  !! {name} could not measure: {exc}", flush=True)
                except Exception as exc:  # noqa: BLE001 - a bug in one benchmark must not lose the others' figures
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                finally:
                    stop_all()
                print(f"  ({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    except KeyboardInterrupt:
        stop_all()
        print("\ninterrupted; children stopped, tmpfs files removed", file=sys.stderr)
        return 130
    seconds = time.monotonic() - started
    text = table(ctx.figures)
    print("\n" + text)
    for failure in failures:
        print(f"not measured: {failure}")
    load = f"{load_before} at the start, {load_average()} at the end"
    print(f"\ntotal {seconds / 60:.1f} min; load average {load}")
    if should_record:
        record(text, started_at, seconds, args, failures, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
