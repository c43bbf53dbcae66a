"""What the first round of a swarm pays for (issue 12): the 1→N makespan on loopback right after a
`share` starts was 1.5-3.6x the later rounds' from the same processes, and libtorrent's first round in
the same `make bench` was slower too (1.4-1.5x). Not part of `make bench`.

    .venv/bin/python -m bench.first_round [--downloaders 4] [--size 512M] [--rounds 3]

Three measurements, side by side in one run, every file on tmpfs:

1. writing N copies' worth of bytes into tmpfs (1 MiB writes, then the files removed): on memory the
   kernel has handed back to the hypervisor (*cold*: the free-page reporting of this VM's balloon,
   /sys/module/page_reporting, has returned it since it was last used), then at once again (*warm*);
2. 1→N rounds of `p2pfs get --seed` from one `share`, each started on cold memory;
3. the same rounds, each started right after the bytes it will write were written into tmpfs and
   removed (warm memory): the same processes and protocol, only the memory differs.

If (3) is as fast as the later rounds of `make bench` and (2) as slow as its first round, the first
round pays for the machine's memory, not for anything p2pfs does on its first round.
"""

from __future__ import annotations

import argparse

from bench.common import (
    Context,
    MiB,
    child_env,
    children,
    median,
    size_label,
    start_share,
    start_tracker,
    tmpfs_workdir,
)
from bench.swarm import swarm_once
from bench.vm_memory import cpu_times, wait_handed_back, write_and_remove
from p2pfs.cli.config import parse_size


def timed_round(ctx: Context, tracker: str, name: str, size: int, n: int, run: int) -> tuple[float, str]:
    """One 1→n round: its makespan, and the machine's CPU seconds (user/system/steal) spent in it."""
    before = cpu_times()
    makespan = swarm_once(ctx, tracker, name, size, n, run)
    user, system, steal = (b - a for a, b in zip(before, cpu_times(), strict=True))
    return makespan, f"cpu user {user:.1f} s, system {system:.1f} s, steal {steal:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_round", description=__doc__.splitlines()[0])
    parser.add_argument("--downloaders", type=int, default=4)
    parser.add_argument("--size", type=parse_size, default=512 * MiB)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, size = args.downloaders, args.size
    total = n * size
    with tmpfs_workdir() as workdir:
        ctx = Context(workdir, runs=args.rounds)
        src = ctx.source(size)
        touch = ctx.dir("touch")
        print(f"tmpfs writes of {size_label(total)} ({n} files), cold then warm:", flush=True)
        cold_w, warm_w = [], []
        for _ in range(args.rounds):
            waited = wait_handed_back()
            cold_w.append(write_and_remove(touch, total, n))
            warm_w.append(write_and_remove(touch, total, n))
            print(f"  cold {cold_w[-1]:.0f} MiB/s (after {waited:.1f} s), warm {warm_w[-1]:.0f} MiB/s",
                  flush=True)
        cold_s, warm_s = [], []
        with children() as procs:
            tracker = start_tracker(procs)
            start_share(procs, src, tracker, child_env())
            for i in range(args.rounds):
                waited = wait_handed_back()
                makespan, cold_cpu = timed_round(ctx, tracker, src.name, size, n, 2 * i)
                cold_s.append(makespan)
                wait_handed_back()
                write_and_remove(touch, total, n)
                makespan, warm_cpu = timed_round(ctx, tracker, src.name, size, n, 2 * i + 1)
                warm_s.append(makespan)
                print(f"  1→{n} on cold memory {cold_s[-1]:.2f} s (after {waited:.1f} s; {cold_cpu}), "
                      f"on warm memory {warm_s[-1]:.2f} s ({warm_cpu})", flush=True)
    print()
    print(f"tmpfs write, {size_label(total)}: cold {median(cold_w):.0f} MiB/s, warm {median(warm_w):.0f} MiB/s "
          f"(warm / cold {median(warm_w) / median(cold_w):.2f})")
    print(f"1→{n} of {size_label(size)}: cold memory {median(cold_s):.2f} s, warm memory {median(warm_s):.2f} s "
          f"(cold / warm {median(cold_s) / median(warm_s):.2f}); rounds {', '.join(f'{c:.2f}/{w:.2f}' for c, w in zip(cold_s, warm_s))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
