"""Benchmark 5, libtorrent side by side: benchmarks 2 (one→one) and 3 (one→four, one→eight) done by
libtorrent 2.1.1 (bench/lt_swarm.py, run with bench/.venv-lt's python, which `make bench` installs),
on the same files, timed the same way, in the same run.

Ratios are p2pfs ÷ libtorrent of the same quantity: for one→one the speed (above 1: p2pfs is faster),
for the swarms the makespan (below 1: p2pfs is faster). The p2pfs figures are benchmark 2's and 3's from
this run (measured here if those benchmarks were not run).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench import one_to_one, swarm
from bench.common import (
    REPO,
    TRANSFER_TIMEOUT,
    BenchError,
    Context,
    Figure,
    MiB,
    Proc,
    child_env,
    median,
    remove,
    size_label,
)

BENCH = "5 libtorrent"
#: The venv `make bench` builds for libtorrent (BENCH_LT_PYTHON names another interpreter).
LT_PYTHON = REPO / "bench" / ".venv-lt" / "bin" / "python"
LT_VERSION = "2.1.1"


def lt_python() -> Path:
    python = Path(os.environ.get("BENCH_LT_PYTHON") or LT_PYTHON)
    if not python.exists():
        raise BenchError(
            f"{python} is missing: `make bench` creates bench/.venv-lt with libtorrent=={LT_VERSION}"
        )
    probe = subprocess.run(
        [str(python), "-c", "import libtorrent; print(libtorrent.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise BenchError(f"{python} cannot import libtorrent: {probe.stderr.strip()[-300:]}")
    version = probe.stdout.strip()
    if not version.startswith(LT_VERSION):
        print(f"  note: libtorrent {version}, not {LT_VERSION}", flush=True)
    return python


def lt_measure(ctx: Context, python: Path, src: Path, downloaders: int) -> list[float]:
    work = ctx.dir(f"libtorrent-{downloaders}")
    ctx.ensure_room(src.stat().st_size * downloaders, f"{downloaders} libtorrent copies")
    print(f"  libtorrent: 1 seed → {downloaders} downloader(s), {size_label(src.stat().st_size)}", flush=True)
    proc = Proc(
        [
            str(python),
            "-m",
            "bench.lt_swarm",
            "measure",
            "--file",
            str(src),
            "--workdir",
            str(work),
            "--downloaders",
            str(downloaders),
            "--runs",
            str(ctx.runs),
        ],
        env=child_env(),
        cwd=REPO,
        label=f"libtorrent 1→{downloaders}",
    )
    try:
        rc = proc.wait(TRANSFER_TIMEOUT * ctx.runs + 300)
    finally:
        proc.stop()
        remove(work)
    for line in proc.stderr:
        if line.startswith("libtorrent "):
            print(f"    {line}", flush=True)
    if rc != 0 or not proc.stdout:
        raise BenchError(f"libtorrent measurement failed: {proc.describe()}")
    seconds: list[float] = json.loads(proc.stdout[-1])["seconds"]
    return seconds


def run(ctx: Context) -> None:
    python = lt_python()

    size = one_to_one.size_for(ctx)
    lt_seconds = lt_measure(ctx, python, ctx.source(size), 1)
    lt_speeds = [size / MiB / s for s in lt_seconds]
    speeds = {
        wire: median(size / MiB / s for s in one_to_one.measure(ctx, wire)) for wire in one_to_one.WIRES
    }
    lt_speed = median(lt_speeds)
    ctx.add(
        Figure(
            BENCH,
            f"libtorrent get {size_label(size)} (wall time {size / MiB / lt_speed:.2f} s)",
            lt_speed,
            "MiB/s",
            lt_speeds,
            ratio=speeds["binary"] / lt_speed,
            ratio_of="p2pfs binary / libtorrent speed",
            note=f"p2pfs json / libtorrent speed: {speeds['json'] / lt_speed:.2f}",
        )
    )

    size = swarm.size_for(ctx)
    for downloaders in swarm.TARGETS:
        lt_makespans = lt_measure(ctx, python, ctx.source(size), downloaders)
        p2pfs_makespan = median(swarm.measure(ctx, downloaders))
        value = median(lt_makespans)
        ctx.add(
            Figure(
                BENCH,
                f"libtorrent 1→{downloaders} makespan, {size_label(size)}",
                value,
                "s",
                lt_makespans,
                ratio=p2pfs_makespan / value,
                ratio_of="p2pfs / libtorrent time",
            )
        )
