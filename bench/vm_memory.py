"""This VM's memory, as the benchmarks meet it: the kernel hands freed memory back to the hypervisor
(the virtio balloon's free-page reporting, /sys/module/page_reporting), and the next write into it faults
page by page in the host, several times slower than a write into memory used a moment ago. The first
swarm round after a pause writes into such memory; bench/first_round.py shows that this is what it pays.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import MiB

REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")
#: Seconds without a change in the reported count before the freed memory counts as handed back.
SETTLED = 3.0
#: ... and at most this long is waited for it.
SETTLE_LIMIT = 60.0


def cpu_times() -> tuple[float, float, float]:
    """The machine's user, system and steal CPU seconds so far (/proc/stat's first line)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, steal = (int(fields[i]) for i in (0, 1, 2, 7))
    return (user + nice) / tick, system / tick, steal / tick


def reported_kib() -> int | None:
    try:
        return int(REPORTED.read_text())
    except (OSError, ValueError):
        return None


def wait_handed_back() -> float:
    """Wait until the balloon's free-page reporting has gone quiet (the memory freed so far went back
    to the host); the seconds waited. Without the counter (no such balloon) nothing is handed back:
    no wait."""
    started = time.monotonic()
    last = reported_kib()
    if last is None:
        return 0.0
    quiet_since = started
    while time.monotonic() - started < SETTLE_LIMIT:
        time.sleep(0.25)
        now = reported_kib()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLED:
            break
    return time.monotonic() - started


def write_and_remove(folder: Path, total: int, files: int) -> float:
    """Write `total` bytes as `files` files of 1 MiB writes, fsync-free (tmpfs), then remove them;
    MiB/s of the writing."""
    piece = os.urandom(MiB)
    started = time.monotonic()
    paths = []
    for i in range(files):
        path = folder / f"touch-{i}.bin"
        paths.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(total // files // MiB):
                os.write(fd, piece)
        finally:
            os.close(fd)
    seconds = time.monotonic() - started
    for path in paths:
        path.unlink()
    return total / MiB / seconds
