"""What every benchmark shares: child processes, a tmpfs work directory, test files, timing, medians,
peak RSS, and the figures table.

Child processes are real programs (`sys.executable -m p2pfs ...`) whose output lines are read by threads
and stamped with the moment they arrived, so a benchmark can time "the `done` line came" without polling.
Every child is stopped, and the work directory removed, when a benchmark ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: Every file a benchmark writes lives here: disks would measure the disk, not p2pfs.
TMPFS = Path("/dev/shm")
REPO = Path(__file__).resolve().parent.parent
P2PFS = (sys.executable, "-m", "p2pfs")
HOST = "127.0.0.1"
LISTENING = re.compile(r"listening on (\S+):(\d+)")

#: Runs per figure in a full run; the median is reported, because the machine is shared and noisy.
RUNS = 3
#: Generous upper bounds, so a hung child ends the benchmark instead of the session.
STARTUP_TIMEOUT = 30.0
PUBLISH_TIMEOUT = 300.0
TRANSFER_TIMEOUT = 600.0

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not measure (a child failed or hung); the message says which and why."""


# -- environment ------------------------------------------------------------------------------------
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without any P2PFS_* setting (a developer's leftover
    P2PFS_TEST_DELAY or P2PFS_WIRE would skew every figure), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PFS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wire_env(wire: str) -> dict[str, str]:
    """Extra environment for a wire mode: "binary" (the default fast path) or "json" (base64 only)."""
    if wire == "binary":
        return {}
    if wire == "json":
        return {"P2PFS_WIRE": "json"}
    raise ValueError(f"unknown wire mode {wire!r}")


def interrupt_on_termination() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so `finally` blocks stop children and
    remove the tmpfs directory whichever way the run is ended. (SIGINT too: a shell starts background
    jobs with SIGINT ignored, and Python then leaves it ignored.)"""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def raise_nofile_limit(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `want` (never above the hard limit); the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that must know ports in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- child processes --------------------------------------------------------------------------------
_live: set[Proc] = set()


#: How often a watched child's VmHWM is read.
MEMORY_POLL = 0.01


class Proc:
    """A running child. Its stdout lines arrive on `lines` as (monotonic time, line); both streams are
    kept. `started` is taken just before the fork, `ended` when wait() reaped it.

    With `watch_memory`, `peak_rss` (bytes) is the highest VmHWM read from /proc/PID/status every 10 ms
    while the child ran. (wait4's ru_maxrss cannot be used: a child started with vfork+exec, as
    subprocess does, inherits its parent's high-water mark, so it reports the benchmark runner's RSS
    whenever that is larger.)"""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        label: str = "",
        watch_memory: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.label = label or " ".join(self.argv[2:5])
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.ended: float | None = None
        self.peak_rss: int | None = None
        self._timed_out = False
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else child_env(),
            cwd=cwd,
            text=True,
        )
        _live.add(self)
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr, False), daemon=True),
        ]
        if watch_memory:
            self._threads.append(threading.Thread(target=self._watch_memory, daemon=True))
        for t in self._threads:
            t.start()

    def _watch_memory(self) -> None:
        while self.popen.returncode is None and self.ended is None:
            kib = proc_status_kib(self.pid, "VmHWM")
            if kib is None:  # exited (a zombie has no memory left to report)
                return
            self.peak_rss = max(self.peak_rss or 0, kib * KiB)
            time.sleep(MEMORY_POLL)

    def _pump(self, stream: Any, sink: list[str], to_queue: bool) -> None:
        for line in stream:
            now = time.monotonic()
            line = line.rstrip("\n")
            sink.append(line)
            if to_queue:
                self.lines.put((now, line))
        if to_queue:
            self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.returncode is None and self.ended is None

    def describe(self) -> str:
        err = " | ".join(self.stderr[-5:])
        return f"{self.label} (pid {self.pid}, rc {self.popen.returncode}); stderr: {err or '(empty)'}"

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> tuple[float, re.Match[str]]:
        """Wait for a stdout line matching `pattern`; (the moment it arrived, the match)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    f"no line matching {rx.pattern!r} within {timeout:.0f} s from {self.describe()}"
                )
            try:
                item = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                self.popen.wait(5)
                raise BenchError(f"exited before printing {rx.pattern!r}: {self.describe()}")
            at, line = item
            match = rx.search(line)
            if match:
                return at, match

    def expect_event(self, event: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """Wait for a JSON line (`get --json`) whose "event" is `event`; (the moment it arrived, the object)."""
        deadline = time.monotonic() + timeout
        while True:
            at, match = self.expect(r"^\{", max(0.0, deadline - time.monotonic()))
            try:
                obj = json.loads(match.string)
            except ValueError:
                continue
            if obj.get("event") == event:
                return at, obj

    def listening_address(self, timeout: float = STARTUP_TIMEOUT) -> str:
        _, match = self.expect(LISTENING, timeout)
        return f"{HOST}:{match.group(2)}"

    def wait(self, timeout: float) -> int:
        """Reap the child (exit status, `ended`); kill it and raise BenchError after `timeout`."""
        if not self.running:
            return int(self.popen.returncode or 0)
        timer = threading.Timer(timeout, self._kill_on_timeout)
        timer.daemon = True
        timer.start()
        try:
            _, status = os.waitpid(self.pid, 0)
        finally:
            timer.cancel()
        self.ended = time.monotonic()
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        for t in self._threads:
            t.join(5)
        _live.discard(self)
        if self._timed_out:
            raise BenchError(f"did not finish within {timeout:.0f} s: {self.describe()}")
        return self.popen.returncode

    def _kill_on_timeout(self) -> None:
        self._timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Ask the child to stop (p2pfs exits 0 on SIGTERM); SIGKILL if it has not after `timeout`."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                return self.wait(timeout)
            except BenchError:
                return -9
        return int(self.popen.returncode or 0)


def stop_all() -> None:
    """Stop every child still running (the last resort of an interrupted run)."""
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)


@contextlib.contextmanager
def children() -> Iterator[list[Proc]]:
    """A list to put Procs in; they are all stopped when the block ends, however it ends."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()


def p2pfs(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    label: str = "",
    watch_memory: bool = False,
) -> Proc:
    return Proc(
        [*P2PFS, *args], env=env, cwd=cwd, label=label or f"p2pfs {args[0]}", watch_memory=watch_memory
    )


def start_tracker(procs: list[Proc], flags: Sequence[str] = ()) -> str:
    """Start `p2pfs tracker` on 127.0.0.1 (any free port), with extra `flags` (e.g. --tls-*); its address
    as H:P."""
    tracker = p2pfs("tracker", "--host", HOST, "--port", "0", "--no-shell", *flags, label="p2pfs tracker")
    procs.append(tracker)
    return tracker.listening_address()


def start_share(
    procs: list[Proc],
    path: Path,
    tracker: str,
    env: dict[str, str] | None = None,
    watch_memory: bool = False,
    flags: Sequence[str] = (),
) -> Proc:
    """Start `p2pfs share PATH` (with extra `flags`) and wait until it has published (hashing the file is
    not timed)."""
    share = p2pfs(
        "share",
        str(path),
        "--tracker",
        tracker,
        "--host",
        HOST,
        *flags,
        env=env,
        label="p2pfs share",
        watch_memory=watch_memory,
    )
    procs.append(share)
    share.expect(r"^published ", PUBLISH_TIMEOUT)
    return share


def p2pfs_get(
    name: str,
    dest: Path,
    tracker: str,
    *flags: str,
    env: dict[str, str] | None = None,
    watch_memory: bool = False,
) -> Proc:
    return p2pfs(
        "get",
        name,
        str(dest),
        "--tracker",
        tracker,
        "--host",
        HOST,
        *flags,
        env=env,
        label="p2pfs get",
        watch_memory=watch_memory,
    )


# -- files ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs_workdir(prefix: str = "p2pfs-bench-") -> Iterator[Path]:
    """A fresh directory on tmpfs, removed (with everything in it) when the block ends."""
    if not TMPFS.is_dir():
        raise BenchError(f"{TMPFS} is missing: the benchmarks need a tmpfs there")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=TMPFS))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tmpfs_room() -> int:
    """Bytes that can still be written to tmpfs without pushing the machine into swap or OOM: the
    smaller of the tmpfs's free space and the memory the kernel calls available."""
    free = shutil.disk_usage(TMPFS).free
    available = free
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * KiB
    return min(free, available)


def make_file(path: Path, size: int, seed: int = 1) -> Path:
    """A file of `size` incompressible bytes in which every 1 MiB piece differs: slices of a 16 MiB
    random pool at random offsets, each stamped with its index. Fast (memory speed), deterministic."""
    rng = random.Random(seed)
    pool = rng.randbytes(16 * MiB)
    piece = bytearray(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        index = 0
        left = size
        while left:
            n = min(left, MiB)
            offset = rng.randrange(0, len(pool) - MiB)
            piece[:] = pool[offset : offset + MiB]
            piece[:8] = index.to_bytes(8, "big")
            view = memoryview(piece)[:n]
            while view:
                view = view[os.write(fd, view) :]
            left -= n
            index += 1
    finally:
        os.close(fd)
    return path


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def check_file(path: Path, size: int) -> None:
    """A download must have produced DEST at full size (its content was verified chunk by chunk)."""
    try:
        got = path.stat().st_size
    except FileNotFoundError:
        raise BenchError(f"{path} was not written") from None
    if got != size:
        raise BenchError(f"{path} has {got} bytes, expected {size}")


def size_label(size: int) -> str:
    if size >= GiB and size % GiB == 0:
        return f"{size // GiB} GiB"
    return f"{size / MiB:g} MiB"


# -- memory -----------------------------------------------------------------------------------------
def proc_status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS: now, VmHWM: peak), in KiB; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (/proc/PID/stat); None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3, utime field 14, stime field 15 (1-based, man 5 proc)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- statistics -------------------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def repeat(runs: int, once: Callable[[int], T], label: str = "") -> list[T]:
    """Call `once(i)` for i in range(runs), printing each result as it comes."""
    results: list[T] = []
    for i in range(runs):
        result = once(i)
        results.append(result)
        if label:
            print(f"    {label} run {i + 1}/{runs}: {fmt_sample(result)}", flush=True)
    return results


def fmt_sample(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# -- figures ----------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number: its median over `samples`, its ratio to a reference from the same run, and
    whether the target was met (None: no target)."""

    bench: str
    name: str
    value: float
    unit: str
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None
    #: what the ratio is against, e.g. "local limit", "p2pfs/libtorrent time"
    ratio_of: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def value_text(self) -> str:
        return fmt_value(self.value, self.unit)

    def samples_text(self) -> str:
        if len(self.samples) <= 1:
            return ""
        return ", ".join(fmt_value(s, self.unit, with_unit=False) for s in self.samples)

    def ratio_text(self) -> str:
        if self.ratio is None or not math.isfinite(self.ratio):
            return ""
        return f"{self.ratio:.2f} ({self.ratio_of})" if self.ratio_of else f"{self.ratio:.2f}"

    def met_text(self) -> str:
        if self.met is None:
            return "n/a" if self.target else ""
        return "yes" if self.met else "NO"


def fmt_value(value: float, unit: str, with_unit: bool = True) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit in ("s", "ms", "MiB"):
        text = f"{value:.2f}" if unit == "s" else f"{value:.1f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}" if with_unit else text


def table(figures: Sequence[Figure]) -> str:
    """The figures as a Markdown table (printed at the end of a run and appended to RESULTS.md)."""
    header = ("bench", "figure", "median", "runs", "ratio (reference, same run)", "target", "met")
    rows = [
        (
            f.bench,
            f.name + (f" ({f.note})" if f.note else ""),
            f.value_text(),
            f.samples_text(),
            f.ratio_text(),
            f.target,
            f.met_text(),
        )
        for f in figures
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


# -- one run of the suite ---------------------------------------------------------------------------
class Context:
    """One run of the suite: where files go, how many runs make a median, the figures so far, and
    measurements that several benchmarks share (the local limit is the reference of many ratios; the
    libtorrent comparison reuses the p2pfs figures of benchmarks 2 and 3)."""

    def __init__(self, workdir: Path, quick: bool = False, runs: int | None = None) -> None:
        self.workdir = workdir
        self.quick = quick
        self.runs = runs if runs is not None else (1 if quick else RUNS)
        self.figures: list[Figure] = []
        self._memo: dict[str, Any] = {}
        self._sources: dict[int, Path] = {}

    def dir(self, name: str) -> Path:
        """A fresh, empty directory in the work directory."""
        path = self.workdir / name
        remove(path)
        path.mkdir(parents=True)
        return path

    def ensure_room(self, size: int, what: str) -> None:
        room = tmpfs_room()
        if size > room:
            raise BenchError(
                f"{what} needs {size_label(size)} on {TMPFS}; only {room / GiB:.1f} GiB can be used"
            )

    def source(self, size: int) -> Path:
        """The test file of `size` bytes (made once per run, shared by the benchmarks that use that size)."""
        path = self._sources.get(size)
        if path is None:
            self.ensure_room(size, "the test file")
            folder = self.dir(f"source-{size}")
            name = f"payload-{size_label(size).replace(' ', '')}.bin"
            started = time.monotonic()
            path = make_file(folder / name, size)
            print(
                f"    made {path.name} ({size_label(size)}) in {time.monotonic() - started:.1f} s", flush=True
            )
            self._sources[size] = path
        return path

    def drop_source(self, size: int) -> None:
        path = self._sources.pop(size, None)
        if path is not None:
            remove(path.parent)

    def memo(self, key: str, measure: Callable[[], T]) -> T:
        """`measure()` once per run; later calls with the same key get the same result."""
        if key not in self._memo:
            self._memo[key] = measure()
        return self._memo[key]  # type: ignore[no-any-return]

    def known(self, key: str) -> bool:
        return key in self._memo

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        parts = [f"  => {figure.name}: {figure.value_text()}"]
        if figure.samples_text():
            parts.append(f"[runs: {figure.samples_text()}]")
        if figure.ratio_text():
            parts.append(f"ratio {figure.ratio_text()}")
        if figure.target:
            verdict = "not judged (quick sizes)" if figure.met is None else "met" if figure.met else "NOT met"
            parts.append(f"target {figure.target}: {verdict}")
        print("  ".join(parts), flush=True)
        return figure
