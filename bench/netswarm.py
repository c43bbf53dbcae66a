"""`make swarm`: one seeder and eight downloaders on a real (namespaced) network whose uplinks are shaped
to 100 Mbit/s, so the swarm, not the machine, is what is measured.

    python -m bench.netswarm [--quick] [--runs N] [--no-record] [--no-libtorrent]

Hosts (bench/netns.py): `tracker` (unshaped), `seeder`, `d1`..`d8`, each in its own network namespace on
one bridge. Every run starts fresh processes: `p2pfs tracker --no-shell` on the tracker host, `p2pfs
share` on the seeder, and on every downloader `p2pfs get NAME DEST --json --seed` (through bench/gate.py,
so the eight start downloading at one moment, after Python has started up). A downloader's completion
time is when its DEST appears (p2pfs renames DEST.part only after verifying every chunk), polled every
20 ms. Cases (each the median of --runs runs, 3 by default; --quick: 1 run, 32 MiB instead of 128 MiB):

- homogeneous: every uplink 100 Mbit/s; again without upload slots (P2PFS_UPLOAD_SLOTS=0, the chunk
  server before issue 12); then libtorrent 2.1.1 (bench/lt_netns.py) the same way;
- the tracker on the seeder's host: every uplink 100 Mbit/s, the tracker's replies and pushed updates
  leave by the seeder's shaped uplink, behind its chunks;
- two slow uplinks: d7 and d8 at 10 Mbit/s; again without upload slots; again without the publisher's
  BEP 16 hold-off (P2PFS_HOLD_OFF=0 on the seeder);
- slow holder: d1 waits SLOW_DELAY s before each chunk reply (P2PFS_TEST_DELAY).

Reported: makespan and mean completion time, and their ratio to the Kumar–Ross bound
T = max(F/u_s, N·F/(u_s + Σu_i)); the seeder's upload (tx_bytes of its interface, and the chunks the
downloaders' `done` events say came from it; p2pfs prints no served count itself); the share of each
downloader's chunks that came from other downloaders. Every host's tx_bytes is sampled every 100 ms;
the last homogeneous p2pfs run is drawn in bench/swarm-utilisation.svg (+ .csv). A full run appends the
table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    LISTENING,
    PUBLISH_TIMEOUT,
    REPO,
    STARTUP_TIMEOUT,
    TMPFS,
    BenchError,
    MiB,
    Proc,
    check_file,
    child_env,
    interrupt_on_termination,
    make_file,
    median,
    remove,
    size_label,
    tmpfs_room,
    tmpfs_workdir,
)
from bench.netns import TBF_OPTIONS, Host, Testbed, TestbedError, unavailable_reason

SIZE = 128 * MiB
QUICK_SIZE = 32 * MiB
DOWNLOADERS = 8
#: Uplink of every host (Mbit/s; 1 Mbit = 1e6 bit, as tc counts).
RATE = 100.0
#: The heterogeneous case: these downloaders get SLOW_LINK_RATE uplinks.
SLOW_LINKS = ("d7", "d8")
SLOW_LINK_RATE = 10.0
#: The slow-holder case: this downloader waits SLOW_DELAY s before every chunk reply (a chunk takes
#: 84 ms on a 100 Mbit/s wire), so it can serve each other downloader at most one chunk a second.
SLOW_HOLDER = "d1"
SLOW_DELAY = 1.0
TRACKER_PORT = 6969
LT_PORT = 6881
#: How often every DEST is looked for; how often every host's tx_bytes is sampled.
POLL = 0.02
SAMPLE_INTERVAL = 0.1
PLOT_SVG = REPO / "bench" / "swarm-utilisation.svg"
PLOT_CSV = REPO / "bench" / "swarm-utilisation.csv"
RESULTS = REPO / "bench" / "RESULTS.md"
P2PFS = (sys.executable, "-m", "p2pfs")


def kumar_ross(size: int, seeder_mbit: float, downloader_mbit: Sequence[float]) -> float:
    """The least time any scheme needs to give `size` bytes to every downloader (Kumar & Ross, 2006),
    when only uploads are limited: max(F/u_s, N·F/(u_s + Σu_i)), in seconds."""
    bits = size * 8
    u_s = seeder_mbit * 1e6
    return max(bits / u_s, len(downloader_mbit) * bits / (u_s + sum(r * 1e6 for r in downloader_mbit)))


# -- cases and results ------------------------------------------------------------------------------
@dataclass
class Case:
    key: str
    title: str
    tool: str  # "p2pfs" or "libtorrent"
    #: downloader -> uplink Mbit/s (the seeder always has RATE)
    uplinks: dict[str, float]
    #: host -> extra environment for its p2pfs process
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: where the tracker runs: its own unshaped host, or "seeder" (its replies then share the seeder's
    #: shaped uplink with the chunks, as in a small lab)
    tracker_host: str = "tracker"

    def bound(self, size: int) -> float:
        return kumar_ross(size, RATE, list(self.uplinks.values()))


@dataclass
class RunResult:
    #: downloader -> seconds from the common start to its DEST (p2pfs) or its finished alert (libtorrent)
    completions: dict[str, float]
    #: host -> bytes its interface sent during the run
    sent: dict[str, int]
    #: downloader -> {holder host: chunks} (p2pfs only: the `sources` of its `done` event)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    chunk_count: int = 0
    #: (seconds from the start, {host: tx_bytes}) every SAMPLE_INTERVAL, when sampled
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        return max(self.completions.values())

    @property
    def mean(self) -> float:
        return sum(self.completions.values()) / len(self.completions)

    def from_peers(self, downloader: str) -> float:
        """Share of `downloader`'s chunks that came from other downloaders (not from the seeder)."""
        got = self.sources[downloader]
        total = sum(got.values())
        return (total - got.get("seeder", 0)) / total if total else 0.0

    def served(self, host: str) -> int:
        """Chunks `host` served, as the downloaders' `done` events count them."""
        return sum(got.get(host, 0) for got in self.sources.values())


def cases() -> list[Case]:
    downloaders = [f"d{i + 1}" for i in range(DOWNLOADERS)]
    same = dict.fromkeys(downloaders, RATE)
    mixed = {d: SLOW_LINK_RATE if d in SLOW_LINKS else RATE for d in downloaders}
    return [
        Case("homogeneous", f"1+{DOWNLOADERS}, all uplinks {RATE:g} Mbit/s", "p2pfs", same),
        Case(
            "no-slots",
            f"1+{DOWNLOADERS}, all uplinks {RATE:g} Mbit/s, no upload slots (P2PFS_UPLOAD_SLOTS=0)",
            "p2pfs",
            same,
            {h: {"P2PFS_UPLOAD_SLOTS": "0"} for h in ["seeder", *downloaders]},
        ),
        Case(
            "tracker-on-seeder",
            f"1+{DOWNLOADERS}, all uplinks {RATE:g} Mbit/s, the tracker on the seeder's host",
            "p2pfs",
            same,
            tracker_host="seeder",
        ),
        Case("libtorrent", f"libtorrent 2.1.1, 1+{DOWNLOADERS}, all {RATE:g} Mbit/s", "libtorrent", same),
        Case(
            "slow-links",
            f"1+{DOWNLOADERS}, {' and '.join(SLOW_LINKS)} on {SLOW_LINK_RATE:g} Mbit/s",
            "p2pfs",
            mixed,
        ),
        Case(
            "slow-links-no-slots",
            f"1+{DOWNLOADERS}, {' and '.join(SLOW_LINKS)} on {SLOW_LINK_RATE:g} Mbit/s, no upload slots",
            "p2pfs",
            mixed,
            {h: {"P2PFS_UPLOAD_SLOTS": "0"} for h in ["seeder", *downloaders]},
        ),
        Case(
            "slow-links-no-hold-off",
            f"1+{DOWNLOADERS}, {' and '.join(SLOW_LINKS)} on {SLOW_LINK_RATE:g} Mbit/s, no BEP 16 hold-off",
            "p2pfs",
            mixed,
            {"seeder": {"P2PFS_HOLD_OFF": "0"}},
        ),
        Case(
            "slow-holder",
            f"1+{DOWNLOADERS}, {SLOW_HOLDER} replies after {SLOW_DELAY:g} s (P2PFS_TEST_DELAY)",
            "p2pfs",
            same,
            {SLOW_HOLDER: {"P2PFS_TEST_DELAY": str(SLOW_DELAY)}},
        ),
    ]


# -- one run ----------------------------------------------------------------------------------------
class Swarm:
    """The testbed, the test file and the work directory of one `make swarm`."""

    def __init__(self, bed: Testbed, src: Path, work: Path) -> None:
        self.bed = bed
        self.src = src
        self.size = src.stat().st_size
        self.work = work
        self.downloaders = [h for h in bed.hosts.values() if h.name.startswith("d")]
        self.by_ip = {h.ip: h.name for h in bed.hosts.values()}
        #: holder addresses in `sources` that are not a testbed host's (p2pfs misreporting an address)
        self.strange_addresses: set[str] = set()
        self.timeout = 600.0
        self.last_procs: list[Proc] = []

    def host_of(self, address: str) -> str:
        ip = address.rpartition(":")[0].strip("[]")
        name = self.by_ip.get(ip)
        if name is None:
            self.strange_addresses.add(address)
            return address
        return name

    def reshape(self, case: Case) -> None:
        for host in self.downloaders:
            rate = case.uplinks[host.name]
            if host.rate_mbit != rate:
                self.bed.shape(host, rate)

    @contextlib.contextmanager
    def run_procs(self) -> Iterator[list[Proc]]:
        """Processes of one run, all stopped when it ends."""
        procs: list[Proc] = []
        self.last_procs = procs  # for looking into a run afterwards (their output stays in them)
        try:
            yield procs
        finally:
            for proc in reversed(procs):
                with contextlib.suppress(Exception):
                    proc.stop(timeout=10.0)

    def start_gated(
        self,
        procs: list[Proc],
        python: str,
        barrier: Path,
        argv_of: Callable[[Host], list[str]],
        env_of: Callable[[Host], dict[str, str]],
    ) -> dict[str, Proc]:
        """Start a gated downloader (bench/gate.py) on every downloader host; wait until all are ready."""
        gets = {}
        for host in self.downloaders:
            proc = self.bed.spawn(
                host,
                [python, "-m", "bench.gate", str(barrier), *argv_of(host)],
                env=env_of(host),
                label=f"get on {host.name}",
                cwd=REPO,
            )
            procs.append(proc)
            gets[host.name] = proc
        for proc in gets.values():
            proc.expect(r"^gate: ready$", STARTUP_TIMEOUT)
        return gets

    def p2pfs_once(self, case: Case, run: int, sample: bool) -> RunResult:
        bed, name = self.bed, self.src.name
        tracker_host, seeder = bed.host(case.tracker_host), bed.host("seeder")
        run_dir = self.work / f"{case.key}-{run}"
        barrier = run_dir / "go"
        dests = {h.name: run_dir / h.name / name for h in self.downloaders}
        for dest in dests.values():
            dest.parent.mkdir(parents=True)
        with self.run_procs() as procs:
            tracker = bed.spawn(
                tracker_host, [*P2PFS, "tracker", "--port", str(TRACKER_PORT), "--no-shell"], label="tracker"
            )
            procs.append(tracker)
            tracker.expect(LISTENING, STARTUP_TIMEOUT)
            taddr = f"{tracker_host.ip}:{TRACKER_PORT}"
            share = bed.spawn(
                seeder,
                [*P2PFS, "share", str(self.src), "--tracker", taddr],
                env=child_env(case.env.get("seeder")),
                label="share on seeder",
            )
            procs.append(share)
            share.expect(r"^published ", PUBLISH_TIMEOUT)
            gets = self.start_gated(
                procs,
                sys.executable,
                barrier,
                lambda h: [
                    "p2pfs.cli.main",
                    "get",
                    name,
                    str(dests[h.name]),
                    "--tracker",
                    taddr,
                    "--json",
                    "--seed",
                ],
                lambda h: child_env(case.env.get(h.name)),
            )
            before = bed.tx()
            with bed.sampler(SAMPLE_INTERVAL) if sample else contextlib.nullcontext() as sampler:
                start = time.monotonic()
                barrier.touch()
                completions = self.wait_for_files(dests, gets, start)
                sources: dict[str, dict[str, int]] = {}
                chunk_count = 0
                for d, get in gets.items():
                    _, done = get.expect_event("done", self.timeout)
                    chunk_count = int(done["chunk_count"])
                    got: dict[str, int] = {}
                    for address, count in done["sources"].items():
                        holder = self.host_of(address)
                        got[holder] = got.get(holder, 0) + int(count)
                    sources[d] = got
                for get in gets.values():
                    # `seeding` comes once get has installed its signal handlers (a clean SIGTERM stop)
                    get.expect_event("seeding", STARTUP_TIMEOUT)
            after = bed.tx()
            for get in gets.values():
                if get.stop() != 0:
                    raise BenchError(f"a seeding get did not stop cleanly: {get.describe()}")
        for dest in dests.values():
            check_file(dest, self.size)
        remove(run_dir)
        samples = [(t - start, tx) for t, tx in sampler.samples] if sampler is not None else []
        return RunResult(completions, {h: after[h] - before[h] for h in after}, sources, chunk_count, samples)

    def wait_for_files(
        self, dests: dict[str, Path], procs: dict[str, Proc], start: float
    ) -> dict[str, float]:
        """Poll every DEST every POLL s; seconds from `start` to each one's appearance."""
        done: dict[str, float] = {}
        deadline = start + self.timeout
        while len(done) < len(dests):
            now = time.monotonic()
            for d, dest in dests.items():
                if d not in done and os.path.exists(dest):
                    done[d] = now - start
            for d, proc in procs.items():
                if d not in done and proc.popen.poll() is not None:
                    raise BenchError(f"{proc.label} exited before its download finished: {proc.describe()}")
            if now > deadline:
                missing = ", ".join(sorted(set(dests) - set(done)))
                raise BenchError(f"downloads on {missing} did not finish within {self.timeout:.0f} s")
            time.sleep(POLL)
        return done

    def lt_once(self, case: Case, run: int, python: Path, torrent: Path) -> RunResult:
        bed = self.bed
        seeder = bed.host("seeder")
        run_dir = self.work / f"{case.key}-{run}"
        barrier = run_dir / "go"
        saves = {h.name: run_dir / h.name for h in self.downloaders}
        for save in saves.values():
            save.mkdir(parents=True)
        lt = (str(python), "-m", "bench.lt_netns")
        with self.run_procs() as procs:
            seed = bed.spawn(
                seeder,
                [
                    *lt,
                    "seed",
                    "--torrent",
                    str(torrent),
                    "--save",
                    str(self.src.parent),
                    "--listen",
                    f"{seeder.ip}:{LT_PORT}",
                ],
                label="libtorrent seed",
                cwd=REPO,
            )
            procs.append(seed)
            seed.expect_event("listening", STARTUP_TIMEOUT)
            seed.expect_event("seeding", PUBLISH_TIMEOUT)

            def argv_of(h: Host) -> list[str]:
                peers = [
                    f"{seeder.ip}:{LT_PORT}",
                    *(f"{o.ip}:{LT_PORT}" for o in self.downloaders if o is not h),
                ]
                return [
                    "bench.lt_netns",
                    "get",
                    "--torrent",
                    str(torrent),
                    "--save",
                    str(saves[h.name]),
                    "--listen",
                    f"{h.ip}:{LT_PORT}",
                    "--peers",
                    ",".join(peers),
                ]

            gets = self.start_gated(procs, str(python), barrier, argv_of, lambda h: child_env())
            before = bed.tx()
            start = time.monotonic()
            barrier.touch()
            completions = {d: get.expect_event("done", self.timeout)[0] - start for d, get in gets.items()}
            after = bed.tx()
        for save in saves.values():
            check_file(save / self.src.name, self.size)
        remove(run_dir)
        return RunResult(completions, {h: after[h] - before[h] for h in after})


# -- figures ----------------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    figure: str
    value: str
    runs: str = ""
    note: str = ""


def _runs(values: Sequence[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values) if len(values) > 1 else ""


def time_rows(case: Case, results: Sequence[RunResult], size: int) -> list[Row]:
    bound = case.bound(size)
    rows = []
    for label, values in (
        ("makespan", [r.makespan for r in results]),
        ("mean completion time", [r.mean for r in results]),
    ):
        m = median(values)
        rows.append(
            Row(
                case.title,
                label,
                f"{m:.2f} s",
                _runs(values, ".2f"),
                f"{m / bound:.2f} × bound {bound:.2f} s",
            )
        )
    return rows


def upload_rows(case: Case, results: Sequence[RunResult], size: int) -> list[Row]:
    sent = [r.sent["seeder"] / MiB for r in results]
    m = median(sent)
    needed = len(case.uplinks) * size
    total = [sum(n for h, n in r.sent.items() if h != "tracker") / MiB for r in results]
    mt = median(total)
    rows = [
        Row(
            case.title,
            "all hosts uploaded (tx_bytes)",
            f"{mt:.0f} MiB",
            _runs(total, ".0f"),
            f"{mt * MiB / needed:.2f} × the N·F delivered: {1 - needed / (mt * MiB):.0%} of it was not needed",
        ),
        Row(
            case.title,
            "seeder uploaded (tx_bytes of its interface)",
            f"{m:.1f} MiB",
            _runs(sent, ".1f"),
            f"{m * MiB / size:.2f} × F"
            + (" (with the tracker's replies and updates)" if case.tracker_host == "seeder" else ""),
        ),
    ]
    if "tracker" in results[0].sent and case.tracker_host == "tracker":
        # issue 12: a tracker on a shaped uplink must not slow a swarm; what it sends is the measure
        rates = [r.sent["tracker"] / r.makespan / 1024 for r in results]
        mr = median(rates)
        rows.append(
            Row(
                case.title,
                "tracker sent (tx_bytes / makespan)",
                f"{mr:.1f} KiB/s",
                _runs(rates, ".1f"),
                f"{mr * 1024 * 8 / 100e6:.2%} of a 100 Mbit/s uplink",
            )
        )
    if results[0].sources:
        served = [float(r.served("seeder")) for r in results]
        ms = median(served)
        count = results[0].chunk_count
        rows.append(
            Row(
                case.title,
                "seeder chunks served (downloaders' `sources`)",
                f"{ms:.0f} chunks",
                _runs(served, ".0f"),
                f"{ms / count:.2f} × F ({count} chunks)",
            )
        )
        means = [sum(map(r.from_peers, r.sources)) / len(r.sources) for r in results]
        lows = [min(map(r.from_peers, r.sources)) for r in results]
        rows.append(
            Row(
                case.title,
                "share of chunks from other downloaders (mean)",
                f"{median(means):.0%}",
                _runs(means, ".0%"),
                f"lowest downloader {median(lows):.0%}",
            )
        )
    return rows


def holder_share_rows(
    case: Case, results: Sequence[RunResult], holders: Sequence[str], what: str
) -> list[Row]:
    """The share of all chunks transferred that `holders` served, beside the other downloaders' mean."""
    rows = []
    for holder in holders:
        shares, others = [], []
        for r in results:
            total = r.chunk_count * len(r.sources)
            shares.append(r.served(holder) / total)
            rest = [r.served(d) / total for d in r.sources if d not in holders]
            others.append(sum(rest) / len(rest))
        rows.append(
            Row(
                case.title,
                f"chunks served by {holder} ({what}), of all",
                f"{median(shares):.1%}",
                _runs(shares, ".1%"),
                f"other downloaders: {median(others):.1%} each",
            )
        )
    return rows


def completion_rows(case: Case, results: Sequence[RunResult], hosts: Sequence[str]) -> list[Row]:
    rows = []
    for host in hosts:
        values = [r.completions[host] for r in results]
        rows.append(
            Row(case.title, f"completion time of {host}", f"{median(values):.2f} s", _runs(values, ".2f"))
        )
    return rows


def markdown(rows: Sequence[Row]) -> str:
    header = ("case", "figure", "median", "runs", "vs bound / note")
    cells = [(r.case, r.figure, r.value, r.runs, r.note) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def print_table(rows: Sequence[Row], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(rows))
        return
    table = Table(title=title)
    for col in ("case", "figure", "median", "runs", "vs bound / note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.case, r.figure, r.value, r.runs, r.note)
    Console(width=200).print(table)


# -- utilisation plot -------------------------------------------------------------------------------
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def rates(samples: Sequence[tuple[float, dict[str, int]]]) -> list[tuple[float, dict[str, float]]]:
    """Mbit/s each host sent over each sampling interval, stamped with the interval's end."""
    out = []
    for (t0, a), (t1, b) in itertools.pairwise(samples):
        dt = t1 - t0
        if dt > 0:
            out.append((t1, {h: (b[h] - a[h]) * 8 / dt / 1e6 for h in b}))
    return out


def write_csv(path: Path, samples: Sequence[tuple[float, dict[str, int]]]) -> None:
    hosts = list(samples[0][1])
    lines = [
        "time_s," + ",".join(f"{h}_mbit_s" for h in hosts) + "," + ",".join(f"{h}_tx_bytes" for h in hosts)
    ]
    previous = samples[0]
    lines.append(
        f"{previous[0]:.3f},"
        + ",".join("" for _ in hosts)
        + ","
        + ",".join(str(previous[1][h]) for h in hosts)
    )
    for (t, tx), (_, rate) in zip(samples[1:], rates(samples), strict=True):
        lines.append(
            f"{t:.3f},"
            + ",".join(f"{rate[h]:.2f}" for h in hosts)
            + ","
            + ",".join(str(tx[h]) for h in hosts)
        )
    path.write_text("\n".join(lines) + "\n")


def write_svg(path: Path, result: RunResult, title: str, bound: float) -> None:
    """One line per host (Mbit/s sent over time), a dot where each downloader completed, dashed lines at
    the Kumar–Ross bound and at the makespan. Hand-written SVG."""
    series = rates(result.samples)
    hosts = list(result.samples[0][1])
    width, height = 960, 500
    left, right, top, bottom = 60, 150, 50, 50
    pw, ph = width - left - right, height - top - bottom
    t_min = min(0.0, series[0][0]) if series else 0.0
    t_max = max([t for t, _ in series] + [result.makespan, bound]) * 1.03
    y_max = max(110.0, max((max(r.values()) for _, r in series), default=0) * 1.05)

    def x(t: float) -> float:
        return left + (t - t_min) / (t_max - t_min) * pw

    def y(v: float) -> float:
        return top + ph - v / y_max * ph

    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
        ),
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{_esc(title)}</text>',
        (
            f'<text x="{left}" y="40" fill="#555">upload of every host: Mbit/s from tx_bytes every '
            f"{SAMPLE_INTERVAL * 1000:.0f} ms (about the TCP payload; the tbf caps that at 95.6); "
            "dots: a downloader's DEST appeared</text>"
        ),
    ]
    step = 20 if y_max <= 140 else 50
    for v in range(0, int(y_max) + 1, step):
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    tick = 1 if t_max - t_min <= 20 else 2 if t_max - t_min <= 40 else 5
    t = 0
    while t <= t_max:
        if t >= t_min:
            out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + ph}" stroke="#f0f0f0"/>')
            out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t}</text>')
        t += tick
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">seconds since the common start</text>'
    )
    out.append(
        f'<text x="16" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {top + ph / 2})">Mbit/s</text>'
    )
    marks = sorted(
        (
            (bound, f"bound {bound:.2f} s", "#c00"),
            (result.makespan, f"makespan {result.makespan:.2f} s", "#000"),
        )
    )
    for k, (at, label, colour) in enumerate(marks):
        out.append(
            f'<line x1="{x(at):.1f}" y1="{top}" x2="{x(at):.1f}" y2="{top + ph}" stroke="{colour}" '
            'stroke-dasharray="5,4"/>'
        )
        out.append(
            f'<text x="{x(at) - 4:.1f}" y="{top + 14 + 16 * k}" fill="{colour}" text-anchor="end">{label}</text>'
        )
    for i, host in enumerate(hosts):
        colour = (
            "#000" if host == "seeder" else "#aaa" if host == "tracker" else COLOURS[(i - 2) % len(COLOURS)]
        )
        points = " ".join(f"{x(t):.1f},{y(r[host]):.1f}" for t, r in series)
        sw = 2.2 if host == "seeder" else 1.3
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{sw}" points="{points}"/>')
        if host in result.completions:
            done = result.completions[host]
            near = min(series, key=lambda s: abs(s[0] - done))[1][host] if series else 0.0
            out.append(
                f'<circle cx="{x(done):.1f}" cy="{y(near):.1f}" r="4" fill="{colour}" stroke="#000" stroke-width="0.5"/>'
            )
        ly = top + 10 + i * 18
        out.append(
            f'<line x1="{left + pw + 12}" y1="{ly}" x2="{left + pw + 36}" y2="{ly}" stroke="{colour}" stroke-width="3"/>'
        )
        extra = f" ({result.completions[host]:.2f} s)" if host in result.completions else ""
        out.append(f'<text x="{left + pw + 42}" y="{ly + 4}">{_esc(host + extra)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the benchmark ----------------------------------------------------------------------------------
WORKDIR_PREFIX = "p2pfs-netswarm-"


def remove_stale_workdirs() -> None:
    """Remove the tmpfs work directories of runs that were killed (SIGKILL leaves no chance to clean)."""
    for path in TMPFS.glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove(path)


def lt_python() -> Path:
    from bench.libtorrent_side import lt_python as find

    return find()


def make_torrent(python: Path, src: Path, out: Path) -> Path:
    done = subprocess.run(
        [str(python), "-m", "bench.lt_netns", "torrent", "--file", str(src), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),
    )
    if done.returncode != 0:
        raise BenchError(f"libtorrent could not make the torrent: {done.stderr.strip()[-300:]}")
    return out


def measure(swarm: Swarm, case: Case, runs: int, with_libtorrent: bool) -> list[RunResult] | None:
    """`runs` runs of one case (None: skipped); each printed as it comes."""
    swarm.reshape(case)
    bound = case.bound(swarm.size)
    print(f"\n== {case.title}: {size_label(swarm.size)}, Kumar–Ross bound {bound:.2f} s ==", flush=True)
    results = []
    if case.tool == "libtorrent":
        if not with_libtorrent:
            print("  skipped (--no-libtorrent)", flush=True)
            return None
        python = lt_python()
        torrent = make_torrent(python, swarm.src, swarm.work / "swarm.torrent")
    for run in range(runs):
        if case.tool == "libtorrent":
            result = swarm.lt_once(case, run, python, torrent)
        else:
            result = swarm.p2pfs_once(case, run, sample=case.key == "homogeneous")
        results.append(result)
        line = (
            f"  run {run + 1}/{runs}: makespan {result.makespan:.2f} s ({result.makespan / bound:.2f} × bound), "
            f"mean {result.mean:.2f} s, seeder sent {result.sent['seeder'] / swarm.size:.2f} × F"
        )
        if result.sources:
            share = sum(map(result.from_peers, result.sources)) / len(result.sources)
            line += f", {share:.0%} of chunks from other downloaders"
        print(line, flush=True)
    return results


def rows_for(
    case: Case, results: list[RunResult], size: int, p2pfs_homogeneous: list[RunResult] | None
) -> list[Row]:
    rows = time_rows(case, results, size)
    if case.tool == "libtorrent" and p2pfs_homogeneous:
        ratio = median(r.makespan for r in p2pfs_homogeneous) / median(r.makespan for r in results)
        rows[0].note += f"; p2pfs ÷ libtorrent makespan {ratio:.2f}"
    rows += upload_rows(case, results, size)
    if case.key.startswith("slow-links"):
        rows += completion_rows(case, results, SLOW_LINKS)
        rows += holder_share_rows(case, results, SLOW_LINKS, f"{SLOW_LINK_RATE:g} Mbit/s uplink")
    if case.key == "slow-holder":
        rows += holder_share_rows(case, results, (SLOW_HOLDER,), f"{SLOW_DELAY:g} s per reply")
    return rows


def record(text: str, started: datetime.datetime, header: str) -> None:
    from bench.run import git_revision

    with open(RESULTS, "a", encoding="utf-8") as out:
        out.write(
            f"\n## make swarm · {started:%Y-%m-%d %H:%M} UTC · {git_revision()}\n\n{header}\n\n{text}\n"
        )
    print(f"appended to {RESULTS.relative_to(REPO)}")


def _resize(downloaders: int | None, rate: float | None) -> None:
    """--downloaders, --rate: the testbed's shape, read by cases() and main()."""
    global DOWNLOADERS, RATE
    DOWNLOADERS = downloaders or DOWNLOADERS
    RATE = rate or RATE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netswarm", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"1 run, {size_label(QUICK_SIZE)}: checks that all works"
    )
    parser.add_argument("--runs", type=int, help="runs per case (default 3; 1 with --quick)")
    parser.add_argument("--no-libtorrent", action="store_true", help="skip the libtorrent case")
    parser.add_argument("--downloaders", type=int, help=f"downloaders (default {DOWNLOADERS}; at least 3)")
    parser.add_argument("--rate", type=float, help=f"every uplink, Mbit/s (default {RATE:g})")
    parser.add_argument("--size", type=int, help=f"file size in MiB (default {SIZE // MiB}; {QUICK_SIZE // MiB} with --quick)")
    parser.add_argument(
        "--only",
        help="comma-separated cases to run: " + ", ".join(c.key for c in cases()),
    )
    rec = parser.add_mutually_exclusive_group()
    rec.add_argument(
        "--record", dest="record", action="store_true", default=None, help="append to RESULTS.md"
    )
    rec.add_argument("--no-record", dest="record", action="store_false", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    if runs < 1:
        parser.error("--runs must be at least 1")
    if args.downloaders is not None and args.downloaders < len(SLOW_LINKS) + 1:
        parser.error("--downloaders must be at least 3")
    _resize(args.downloaders, args.rate)
    size = args.size * MiB if args.size else QUICK_SIZE if args.quick else SIZE
    should_record = args.record if args.record is not None else not args.quick

    interrupt_on_termination()
    reason = unavailable_reason()
    if reason is not None:
        print(f"make swarm needs root and network namespaces: {reason}", file=sys.stderr)
        return 2
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.monotonic()
    load = f"{os.getloadavg()[0]:.2f}"
    uplinks: dict[str, float | None] = {"tracker": None, "seeder": RATE}
    uplinks.update({f"d{i + 1}": RATE for i in range(DOWNLOADERS)})
    rows: list[Row] = []
    failures: list[str] = []
    try:
        remove_stale_workdirs()
        with tmpfs_workdir(f"{WORKDIR_PREFIX}{os.getpid()}-") as work, Testbed(uplinks) as bed:
            if size * (DOWNLOADERS + 1) > tmpfs_room():
                raise BenchError(f"{DOWNLOADERS + 1} copies of {size_label(size)} do not fit in /dev/shm")
            (work / "source").mkdir()
            src = make_file(work / "source" / f"payload-{size_label(size).replace(' ', '')}.bin", size)
            swarm = Swarm(bed, src, work)
            print(
                f"testbed {bed.prefix}: tracker (unshaped), seeder and {DOWNLOADERS} downloaders on "
                f"{RATE:g} Mbit/s uplinks (tc tbf {' '.join(TBF_OPTIONS)}); {size_label(size)}; {runs} run(s) "
                f"per case; load average {load}",
                flush=True,
            )
            homogeneous: list[RunResult] | None = None
            for case in cases():
                if args.only and case.key not in args.only.split(","):
                    continue
                try:
                    results = measure(swarm, case, runs, not args.no_libtorrent)
                except TestbedError:
                    raise
                except BenchError as exc:
                    failures.append(f"{case.title}: {exc}")
                    print(f"  !! not measured: {exc}", flush=True)
                    continue
                if results is None:
                    continue
                if case.key == "homogeneous":
                    homogeneous = results
                    last = results[-1]
                    write_csv(PLOT_CSV, last.samples)
                    write_svg(
                        PLOT_SVG,
                        last,
                        f"p2pfs, {case.title}, {size_label(size)}: run {len(results)} of {len(results)}",
                        case.bound(size),
                    )
                    print(f"  wrote {PLOT_SVG.relative_to(REPO)} and {PLOT_CSV.name}", flush=True)
                rows += rows_for(case, results, size, homogeneous)
            if swarm.strange_addresses:
                print(f"note: holder addresses outside the testbed: {sorted(swarm.strange_addresses)}")
            leftovers = bed.leftovers
        left = leftovers()
        if left:
            print(f"warning: namespaces left behind: {', '.join(left)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted; testbed removed, processes stopped, tmpfs files removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"make swarm: {exc}", file=sys.stderr)
        return 1
    minutes = (time.monotonic() - started) / 60
    load = f"{load} at the start, {os.getloadavg()[0]:.2f} at the end"
    header = (
        f"`make swarm` ({'quick' if args.quick else 'full'}, median of {runs} run(s)): tracker + 1 seeder + "
        f"{DOWNLOADERS} downloaders in network namespaces on one bridge, each uplink shaped with tc tbf "
        f"(rate {RATE:g}mbit {' '.join(TBF_OPTIONS)}), {size_label(size)} on /dev/shm; completion = DEST "
        f"appears (p2pfs) or the finished alert (libtorrent), from a common start; bound = Kumar–Ross "
        f"max(F/u_s, N·F/(u_s+Σu_i)) with u in bit/s on the wire (TCP payload tops out at 95.6% of it; "
        f"tx_bytes counts about the payload: a veth counts GSO packets before segmentation, +0.2% measured). "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; total {minutes:.1f} min; load average {load}."
    )
    text = markdown(rows)
    print()
    print_table(rows, f"make swarm, {size_label(size)}, median of {runs} run(s)")
    for failure in failures:
        print(f"not measured: {failure}")
    print(f"total {minutes:.1f} min; load average {load}")
    if should_record:
        record(text + ("\n\nNot measured: " + "; ".join(failures) if failures else ""), started_at, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
