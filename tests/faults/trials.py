"""Seeded random fault injection: each trial builds a real swarm (tracker, seeder, `get --seed` holders,
downloaders), injects one kill -9 at a random moment, and checks the invariants every outcome must keep.

Everything random in a trial comes from `random.Random(seed)` (`make_plan`), and the seed is printed when
the trial starts, so a failure replays with `python -m tests.faults.trials --seeds SEED` (the same swarm
and the same fault; timing is real, so the fault lands at about, not exactly, the same moment).

Run many: `python -m tests.faults.trials --trials N [--seed S] [--report docs/RELIABILITY.md]`; add
`--keep --peer-log debug` to keep every process's output, with debug logs, in the trial's directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import queue
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import Proc, make_file, run
from tests.redis_server import REDIS_SERVER, RedisServer

# -- what a trial may contain ------------------------------------------------------------------------
KILL_SEEDER = "kill seeder"
KILL_SEEDING_DOWNLOADER = "kill seeding downloader"
KILL_DOWNLOADER = "kill downloader, resume"
RESTART_TRACKER = "restart tracker"
#: With two trackers on one Redis (`--store`), every peer given both: kill -9 the one they use, or Redis.
KILL_TRACKER = "kill tracker, fail over"
RESTART_REDIS = "restart Redis"
STORE_SCENARIOS = (KILL_TRACKER, RESTART_REDIS)
BASE_SCENARIOS = (KILL_SEEDER, KILL_SEEDING_DOWNLOADER, KILL_DOWNLOADER, RESTART_TRACKER)
SCENARIOS = (*BASE_SCENARIOS, *STORE_SCENARIOS)
#: The peers' lease in the store scenarios: short, so a stale registration would show within DELIST_BOUND.
STORE_LEASE = "2"

COMPLETE = "complete"
CLEAN_ERROR = "clean error"
VIOLATION = "violation"
OUTCOMES = (COMPLETE, CLEAN_ERROR, VIOLATION)

CHUNK_SIZE = 64 * 1024
#: File sizes: 16 to 96 chunks (never a whole number of chunks, so the short last chunk is exercised).
#: With every holder slowed as below, a download lasts about 0.5-4 s on 2 cores: long enough to be
#: interrupted at a random moment, short enough for 120 trials in well under 30 minutes.
MIN_FILE_SIZE = 1 << 20
MAX_FILE_SIZE = 6 << 20
#: P2PFS_TEST_DELAY range (seconds per chunk reply) for every process that serves chunks. Requests on one
#: connection are answered in order, so a holder gives each downloader at most 1/delay chunks a second.
MIN_DELAY = 0.02
MAX_DELAY = 0.08
#: Shortened timeouts, so a holder that hangs is given up well inside DOWNLOAD_BOUND (a kill -9 on
#: loopback closes connections at once; these only matter if something hangs).
TIMEOUT_ENV = {"P2PFS_CHUNK_TIMEOUT": "10", "P2PFS_PING_TIMEOUT": "3", "P2PFS_REQUEST_TIMEOUT": "5"}

#: Every download must end (exit, or start seeding) within this many seconds of the fault, or of its
#: own start when it started after the fault.
DOWNLOAD_BOUND = 60.0
#: A restarted tracker must list the file again within this many seconds (peers retry with a backoff
#: capped at 5 s; two retries and a re-publish fit with room for a loaded machine).
REBUILD_BOUND = 20.0
#: When no complete holder is left, the tracker must delist the file within this many seconds of the
#: swarm settling (it delists as soon as it sees the last holder's connection close).
DELIST_BOUND = 10.0
#: Setup steps that precede the fault (start-up, early holders downloading) must finish in this time.
SETUP_BOUND = 60.0
#: Extra p2pfs options for every process (`--peer-log debug` to diagnose a seed; logs go to WORKDIR/logs).
PEER_FLAGS: list[str] = []
#: Pause between two polls of the tracker's file list (tracker state has no event to await).
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class HolderPlan:
    #: True: downloads and reports `seeding` before the downloaders start (a complete holder at the
    #: fault); False: starts with the downloaders, so it is still downloading when they are.
    early: bool
    delay: float


@dataclass(frozen=True)
class Plan:
    """Everything random about one trial, drawn from `random.Random(seed)` in a fixed order."""

    seed: int
    scenario: str
    filesize: int
    seeder_delay: float
    holders: tuple[HolderPlan, ...]
    downloader_delays: tuple[float, ...]
    #: the downloader whose progress decides the moment of the fault, and the chunk count it awaits
    target: int
    threshold: int
    #: kill seeding downloader: which holder; kill downloader: always `target`
    victim: int

    @property
    def chunk_count(self) -> int:
        return -(-self.filesize // CHUNK_SIZE)

    @property
    def name(self) -> str:
        return f"trial-{self.seed}.bin"

    def describe(self) -> str:
        holders = ", ".join(
            f"{'early' if h.early else 'joining'} {h.delay * 1000:.0f}ms" for h in self.holders
        )
        victim = ""
        if self.scenario == KILL_SEEDING_DOWNLOADER:
            victim = f" (holder h{self.victim})"
        elif self.scenario == KILL_DOWNLOADER:
            victim = f" (d{self.victim})"
        return (
            f"{self.scenario}{victim} when d{self.target} has {self.threshold}/{self.chunk_count} chunks; "
            f"file {self.filesize} B; seeder {self.seeder_delay * 1000:.0f}ms; holders [{holders}]; "
            f"downloaders [{', '.join(f'{d * 1000:.0f}ms' for d in self.downloader_delays)}]"
        )


def make_plan(seed: int) -> Plan:
    rng = random.Random(seed)
    scenario = rng.choice(BASE_SCENARIOS)
    filesize = rng.randint(MIN_FILE_SIZE, MAX_FILE_SIZE)
    if filesize % CHUNK_SIZE == 0:
        filesize -= 1
    chunk_count = -(-filesize // CHUNK_SIZE)

    def delay() -> float:
        return round(rng.uniform(MIN_DELAY, MAX_DELAY), 3)

    seeder_delay = delay()
    holders = tuple(HolderPlan(early=rng.random() < 0.5, delay=delay()) for _ in range(rng.randint(1, 2)))
    downloaders = tuple(delay() for _ in range(rng.randint(2, 3)))
    target = rng.randrange(len(downloaders))
    # A tracker restart is injected early, so that downloads are still running when peers reconnect.
    latest = chunk_count // 4 if scenario == RESTART_TRACKER else chunk_count * 4 // 5
    threshold = rng.randint(1, max(1, latest))
    victim = rng.randrange(len(holders)) if scenario == KILL_SEEDING_DOWNLOADER else target
    # One seed in three (those ≡ 2 mod 3) runs a store scenario where Redis is installed; the other
    # seeds keep the plans they always had, with or without Redis.
    if REDIS_SERVER is not None and seed % 3 == 2:
        scenario = rng.choice(STORE_SCENARIOS)
        threshold = min(threshold, max(1, chunk_count // 4))  # (early, as a tracker restart)
        victim = target
    return Plan(seed, scenario, filesize, seeder_delay, holders, downloaders, target, threshold, victim)


# -- results -----------------------------------------------------------------------------------------
@dataclass
class TrialResult:
    seed: int
    scenario: str
    outcome: str
    seconds: float
    plan: str
    violations: list[str] = field(default_factory=list)
    #: what happened, in order, with times since the trial started
    timeline: list[str] = field(default_factory=list)
    #: worth knowing, but no invariant broken
    notes: list[str] = field(default_factory=list)
    #: seconds a restarted tracker took to list the file again
    rebuild_seconds: float | None = None


class _Abort(Exception):
    """The trial cannot go on (a violation was recorded, or setup failed)."""


# -- the harness: processes and their JSON events ------------------------------------------------------
class Participant:
    """One `get --json` process: its events, read from the harness's line queue as they are awaited."""

    def __init__(self, label: str, proc: Proc, dest: Path, seed_after: bool, started: float) -> None:
        self.label = label
        self.proc = proc
        self.dest = dest
        self.seed_after = seed_after
        self.started = started
        self.events: list[dict[str, Any]] = []
        self.eof = False
        self.killed = False
        self.chunks_done = 0

    def next_event(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line on stdout; None once the output has ended; TimeoutError at `deadline`."""
        while not self.eof:
            # Lines already printed count even when the deadline has passed (another process was awaited).
            remaining = deadline - time.monotonic()
            try:
                line = (
                    self.proc.lines.get(timeout=remaining) if remaining > 0 else self.proc.lines.get_nowait()
                )
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise TimeoutError from None
                continue
            if line is None:
                self.eof = True
                break
            if not line.startswith("{"):
                continue
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            if event.get("event") == "progress":
                self.chunks_done = max(self.chunks_done, int(event["chunks_done"]))
            elif event.get("event") == "done":
                self.chunks_done = int(event["chunk_count"])
            return event
        return None

    def await_event(self, accept: Callable[[dict[str, Any]], bool], deadline: float) -> dict[str, Any] | None:
        """Read events until one is accepted (returned); None if the output ends first."""
        for seen in self.events:
            if accept(seen):
                return seen
        while (event := self.next_event(deadline)) is not None:
            if accept(event):
                return event
        return None

    def has(self, kind: str) -> bool:
        return any(e.get("event") == kind for e in self.events)

    def event(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == kind), None)

    @property
    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    @property
    def seeding(self) -> bool:
        return self.seed_after and self.has("seeding") and self.alive

    def error_lines(self) -> list[str]:
        return [line for line in self.proc.stderr if line.startswith("p2pfs: error:")]

    def stderr_tail(self, n: int = 6) -> str:
        return " | ".join(self.proc.stderr[-n:]) or "(empty)"


def free_port() -> int:
    """A free loopback port below the ephemeral range, so no outgoing connection takes it while the
    tracker is down and its successor can listen on it again."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picker = random.SystemRandom()
    for _ in range(200):
        port = picker.randrange(10000, max(10001, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


def tracker_files(taddr: str) -> dict[str, list[int]] | None:
    """The tracker's file list (REQUEST_FILE_LIST on a raw socket, far cheaper than a `p2pfs ls` process
    for polling); None if the tracker cannot be reached."""
    host, port = taddr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            body = json.dumps({"type": "REQUEST_FILE_LIST"}).encode()
            sock.sendall(struct.pack(">I", len(body)) + body)
            header = sock.recv(4, socket.MSG_WAITALL)
            if len(header) != 4:
                return None
            (length,) = struct.unpack(">I", header)
            reply = json.loads(sock.recv(length, socket.MSG_WAITALL))
    except (OSError, ValueError):
        return None
    if reply.get("type") != "REPLY_FILE_LIST":
        return None
    files: dict[str, list[int]] = reply.get("filelist") or {}
    return files


def tracker_holders(taddr: str, name: str) -> dict[str, set[int]] | None:
    """Who holds which chunk of `name`, as the tracker says (REQUEST_FILE_LOCATION on a raw socket);
    {} if the file is not listed, None if the tracker cannot be reached."""
    host, port = taddr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            body = json.dumps({"type": "REQUEST_FILE_LOCATION", "filename": name}).encode()
            sock.sendall(struct.pack(">I", len(body)) + body)
            header = sock.recv(4, socket.MSG_WAITALL)
            if len(header) != 4:
                return None
            (length,) = struct.unpack(">I", header)
            reply = json.loads(sock.recv(length, socket.MSG_WAITALL))
    except (OSError, ValueError):
        return None
    if reply.get("type") != "REPLY_FILE_LOCATION":
        return {}
    return {address: set(chunks) for address, chunks in (reply.get("chunkinfo") or {}).items()}


def verified_chunks(dest: Path) -> set[int] | None:
    """The chunks a download in progress has verified, from its DEST.part.state log (complete lines only);
    None when there is no log (the download finished, or never started)."""
    try:
        text = Path(str(dest) + ".part.state").read_bytes()
    except FileNotFoundError:
        return None
    chunks: set[int] = set()
    for line in text.split(b"\n")[1:-1]:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 64:
            chunks.add(int(parts[0]))
    return chunks


def poll_tracker(taddr: str, until: Callable[[dict[str, list[int]]], bool], bound: float) -> float | None:
    """Poll the file list until `until(list)`; seconds it took, or None if `bound` passed first."""
    start = time.monotonic()
    while True:
        files = tracker_files(taddr)
        if files is not None and until(files):
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            return None
        time.sleep(POLL_INTERVAL)  # bounded polling of state that has no event to await


def env_for(delay: float) -> dict[str, str]:
    return {**TIMEOUT_ENV, "P2PFS_TEST_DELAY": str(delay)}


# -- one trial -----------------------------------------------------------------------------------------
class _Trial:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.t0 = time.monotonic()
        self.violations: list[str] = []
        self.timeline: list[str] = []
        self.notes: list[str] = []
        self.rebuild_seconds: float | None = None
        self.procs: list[Proc] = []
        self.labels: dict[Proc, str] = {}
        self.trackers: list[Proc] = []
        self.seeder: Proc | None = None
        self.holders: list[Participant] = []
        self.downloaders: list[Participant] = []
        #: every `get` process started, killed or replaced ones included
        self.gets: list[Participant] = []
        #: how each `get` that was not killed ended: COMPLETE, CLEAN_ERROR or VIOLATION
        self.outcomes: list[str] = []
        self.taddr = ""
        self.port = 0
        #: what every peer is given as --tracker (both trackers in the store scenarios)
        self.peer_trackers = ""
        self.redis: RedisServer | None = None
        self.src_bytes = b""
        self.fault_at: float | None = None
        #: complete holders alive just after the fault: while one of them lives, every download must finish
        self.survivors: list[str] = []
        self.resume_expected: int | None = None

    # -- bookkeeping
    def log(self, text: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.t0:6.2f}s {text}")

    def violation(self, text: str) -> None:
        self.log(f"VIOLATION: {text}")
        self.violations.append(text)

    def abort(self, text: str) -> _Abort:
        self.violation(text)
        return _Abort(text)

    def start(self, *args: str, label: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(*PEER_FLAGS, *args, env=env)
        self.procs.append(proc)
        self.labels[proc] = label
        return proc

    def start_get(self, label: str, dest: Path, delay: float, seed_after: bool) -> Participant:
        dest.parent.mkdir(parents=True, exist_ok=True)
        args = ["get", self.plan.name, str(dest), "--tracker", self.peer_trackers, "--json", "--host", "127.0.0.1"]
        if seed_after:
            args.append("--seed")
        proc = self.start(*args, label=label, env=env_for(delay))
        self.log(f"started {label} (pid {proc.pid})")
        participant = Participant(label, proc, dest, seed_after, time.monotonic())
        self.gets.append(participant)
        return participant

    def start_tracker(self) -> Proc:
        label = "tracker" if not self.trackers else "restarted tracker"
        proc = self.start(
            "tracker", "--host", "127.0.0.1", "--port", str(self.port), "--no-shell", label=label
        )
        self.trackers.append(proc)
        try:
            proc.listening(SETUP_BOUND)
        except AssertionError as exc:
            raise self.abort(f"tracker did not start on port {self.port}: {exc}") from None
        self.log(f"tracker listening on {self.taddr} (pid {proc.pid})")
        return proc

    def start_redis(self) -> None:
        assert self.redis is not None
        try:
            self.redis.start()
        except AssertionError as exc:
            raise self.abort(str(exc)) from None
        self.log(f"redis-server on port {self.redis.port}")

    def start_store_trackers(self) -> None:
        """Redis, and two trackers sharing it; peers are given both, the first one first."""
        self.redis = RedisServer(self.workdir / "redis")
        self.start_redis()
        addresses = []
        for label in ("tracker A", "tracker B"):
            proc = self.start(
                "tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", "--lease", STORE_LEASE,
                "--store", self.redis.url, label=label,
            )  # fmt: skip
            self.trackers.append(proc)
            try:
                addresses.append(proc.listening(SETUP_BOUND))
            except AssertionError as exc:
                raise self.abort(f"{label} did not start: {exc}") from None
        self.taddr = addresses[0]
        self.peer_trackers = ",".join(addresses)
        self.log(f"trackers listening on {self.peer_trackers}, sharing Redis")

    # -- the trial
    def run(self) -> None:
        plan = self.plan
        if plan.scenario in STORE_SCENARIOS:
            self.start_store_trackers()
        else:
            self.port = free_port()
            self.taddr = self.peer_trackers = f"127.0.0.1:{self.port}"
            self.start_tracker()
        src = make_file(self.workdir / plan.name, plan.filesize, seed=plan.seed)
        self.src_bytes = src.read_bytes()
        self.seeder = self.start(
            "share", str(src), "--tracker", self.peer_trackers, "--host", "127.0.0.1", "--chunk-size", "64K",
            label="seeder", env=env_for(plan.seeder_delay),
        )  # fmt: skip
        try:
            self.seeder.listening(SETUP_BOUND)
            self.seeder.expect(rf"published {plan.name} ", SETUP_BOUND)
        except AssertionError as exc:
            raise self.abort(f"seeder did not publish: {exc}") from None
        self.log(f"seeder published {plan.name} (pid {self.seeder.pid})")

        for i, h in enumerate(plan.holders):
            if h.early:
                self.holders.append(
                    self.start_get(f"h{i}", self.workdir / f"h{i}" / plan.name, h.delay, True)
                )
        deadline = time.monotonic() + SETUP_BOUND
        for holder in self.holders:
            self.await_setup(holder, lambda e: e.get("event") == "seeding", "seeding", deadline)
        for i, h in enumerate(plan.holders):
            if not h.early:
                self.holders.insert(
                    i, self.start_get(f"h{i}", self.workdir / f"h{i}" / plan.name, h.delay, True)
                )
        for i, delay in enumerate(plan.downloader_delays):
            self.downloaders.append(self.start_get(f"d{i}", self.workdir / f"d{i}" / plan.name, delay, False))

        # Nobody is hit before it has its first chunk: a `get` started while the tracker is dead fails by
        # design, which would say nothing about fault handling.
        deadline = time.monotonic() + SETUP_BOUND
        for p in self.downloaders + [h for h in self.holders if not h.has("seeding")]:
            self.await_setup(p, lambda e: e.get("event") in ("progress", "done"), "its first chunk", deadline)
        target = self.downloaders[plan.target]
        self.await_setup(
            target,
            lambda e: (
                e.get("event") == "done"
                or (e.get("event") == "progress" and e["chunks_done"] >= plan.threshold)
            ),
            f"{plan.threshold} chunks",
            deadline,
        )
        self.log(f"d{plan.target} has {target.chunks_done}/{plan.chunk_count} chunks: fault")
        self.inject_fault(target)
        self.settle()
        self.check_listing()
        for p in self.gets:
            self.check_dest(p)

    def check_tracebacks(self, proc: Proc) -> None:
        """A traceback on any stderr is a violation: failures are one line, and peers survive bad peers."""
        lines = proc.stderr
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                logged = lines[i - 1] if i > 0 else ""
                last = next((x for x in lines[i + 1 :] if x and not x.startswith(" ")), "?")
                self.violation(f"traceback on stderr of {self.labels[proc]}: {logged} / {last}")

    def await_setup(
        self, p: Participant, accept: Callable[[dict[str, Any]], bool], what: str, deadline: float
    ) -> None:
        try:
            found = p.await_event(accept, deadline)
        except TimeoutError:
            raise self.abort(
                f"{p.label} did not reach {what} within {SETUP_BOUND:.0f} s (before any fault)"
            ) from None
        if found is None:
            rc = p.proc.wait(10)
            raise self.abort(f"{p.label} exited (rc={rc}) before {what}, before any fault: {p.stderr_tail()}")

    def inject_fault(self, target: Participant) -> None:
        plan = self.plan
        self.fault_at = time.monotonic()
        assert self.seeder is not None
        if plan.scenario == KILL_SEEDER:
            self.seeder.kill9()
            self.log("kill -9 seeder")
        elif plan.scenario == KILL_SEEDING_DOWNLOADER:
            victim = self.holders[plan.victim]
            state = "seeding" if victim.has("seeding") else f"downloading, {victim.chunks_done} chunks seen"
            victim.proc.kill9()
            victim.killed = True
            self.log(f"kill -9 holder h{plan.victim} ({state})")
        elif plan.scenario == KILL_DOWNLOADER:
            self.kill_and_resume(target)
        elif plan.scenario == RESTART_TRACKER:
            self.restart_tracker()
        elif plan.scenario == KILL_TRACKER:
            self.trackers[0].kill9()
            self.taddr = self.peer_trackers.split(",")[1]  # (what is checked from now on: the survivor)
            self.log("kill -9 tracker A")
        elif plan.scenario == RESTART_REDIS:
            self.restart_redis()
        # Complete holders that outlive the fault; holders that started seeding before it count too.
        if self.seeder.popen.poll() is None:
            self.survivors.append("seeder")
        self.survivors += [h.label for h in self.holders if not h.killed and h.has("seeding")]

    def kill_and_resume(self, victim: Participant) -> None:
        seen = victim.chunks_done
        victim.proc.kill9()
        victim.killed = True
        part = victim.dest.with_name(victim.dest.name + ".part")
        self.log(
            f"kill -9 {victim.label} ({seen} chunks seen; .part {'kept' if part.exists() else 'absent'})"
        )
        self.check_dest(victim)
        if victim.dest.exists():
            self.notes.append(f"{victim.label} finished before the kill landed: nothing to resume")
        elif not part.exists() or not Path(str(part) + ".state").exists():
            self.violation(
                f"{victim.label} killed with {seen} chunks verified left no .part/.part.state to resume"
            )
        else:
            self.resume_expected = seen
        again = self.start_get(
            f"{victim.label}'", victim.dest, self.plan.downloader_delays[self.plan.victim], False
        )
        self.downloaders[self.downloaders.index(victim)] = again

    def restart_tracker(self) -> None:
        old = self.trackers[-1]
        old.kill9()
        self.log("kill -9 tracker")
        self.start_tracker()
        # The list must be rebuilt while a complete holder (the seeder here) is alive.
        want = [self.plan.filesize, self.plan.chunk_count]
        took = poll_tracker(self.taddr, lambda files: files.get(self.plan.name) == want, REBUILD_BOUND)
        if took is None:
            self.violation(f"restarted tracker did not list {self.plan.name} within {REBUILD_BOUND:.0f} s")
        else:
            self.rebuild_seconds = took
            self.log(f"restarted tracker lists the file again after {took:.2f} s")
            self.check_reregistered()

    def restart_redis(self) -> None:
        """kill -9 Redis and start it again, empty, on its port: both trackers say so and recover."""
        assert self.redis is not None
        self.redis.kill9()
        self.log("kill -9 redis-server")
        for tracker in self.trackers:
            try:
                tracker.expect_err(r"store .* unavailable", REBUILD_BOUND)
            except AssertionError:
                self.violation(f"{self.labels[tracker]} did not report that Redis is unavailable")
        self.start_redis()
        for tracker in self.trackers:
            try:
                tracker.expect_err(r"store .* is back", REBUILD_BOUND)
            except AssertionError:
                self.violation(f"{self.labels[tracker]} did not recover within {REBUILD_BOUND:.0f} s of Redis")
        self.log("both trackers resynced with Redis")

    def check_reregistered(self) -> None:
        """Peers with a download in progress register their verified chunks again with the new tracker."""
        partial = [p for p in self.downloaders + self.holders if not p.killed and p.has("listening")]
        missing: dict[str, str] = {}
        checked: dict[str, int] = {}

        def all_registered(_: object) -> bool:
            holders = tracker_holders(self.taddr, self.plan.name)
            if holders is None:
                return False
            missing.clear()
            checked.clear()
            for p in partial:
                verified = verified_chunks(p.dest)
                if not verified or not p.alive:
                    continue  # finished (or gone): nothing in progress to register
                address = str(p.event("listening")["address"])  # type: ignore[index]
                lost = verified - holders.get(address, set())
                checked[p.label] = len(verified)
                if lost:
                    missing[p.label] = f"{len(lost)} of its {len(verified)} verified chunks"
            return not missing

        took = poll_tracker(self.taddr, all_registered, REBUILD_BOUND)
        if took is None and missing:
            unknown = "; ".join(f"{label}: {text}" for label, text in missing.items())
            self.violation(
                f"{REBUILD_BOUND:.0f} s after the tracker restart it still does not know chunks that "
                "downloads "
                f"in progress had verified ({unknown})"
            )
        elif took is not None:
            seen = ", ".join(f"{label} {n}" for label, n in checked.items()) or "none left in progress"
            self.log(
                f"downloads in progress have their verified chunks registered again ({seen}) "
                f"after {took:.2f} s"
            )

    def settle(self) -> None:
        """Every `get` ends within DOWNLOAD_BOUND: plain ones exit, `--seed` ones seed or exit."""
        assert self.fault_at is not None
        for p in self.downloaders + [h for h in self.holders if not h.killed]:
            deadline = max(self.fault_at, p.started) + DOWNLOAD_BOUND
            try:
                if p.seed_after:
                    p.await_event(lambda e: e.get("event") == "seeding", deadline)
                else:
                    while p.next_event(deadline) is not None:
                        pass
                if not p.seeding:
                    p.proc.wait(max(1.0, deadline - time.monotonic()))
            except (TimeoutError, subprocess.TimeoutExpired):
                self.violation(
                    f"{p.label} neither finished nor failed within {DOWNLOAD_BOUND:.0f} s "
                    f"({p.chunks_done}/{self.plan.chunk_count} chunks): {p.stderr_tail()}"
                )
                p.proc.kill9()
                p.killed = True
                continue
            self.judge(p)

    def judge(self, p: Participant) -> None:
        plan = self.plan
        rc = p.proc.popen.poll()
        if p.seeding or rc == 0:
            self.outcomes.append(COMPLETE)
            done = p.event("done")
            if done is None:
                self.violation(f"{p.label} succeeded without a done event")
            if not p.dest.exists() or p.dest.read_bytes() != self.src_bytes:
                self.violation(f"{p.label} succeeded but {p.dest} is not the published bytes")
            if p.error_lines():
                self.violation(f"{p.label} succeeded but printed {p.error_lines()}")
            part = p.dest.with_name(p.dest.name + ".part")
            if part.exists() or Path(str(part) + ".state").exists():
                self.violation(f"{p.label} succeeded but left {part} or its .state behind")
            self.log(f"{p.label} complete ({'seeding' if p.seeding else 'exit 0'})")
            if done is not None and p.label.endswith("'") and self.resume_expected is not None:
                resumed = int(done["resumed"])
                if resumed < self.resume_expected:
                    self.violation(
                        f"{p.label} resumed {resumed} chunks, but {self.resume_expected} were verified"
                    )
                if sum(done["sources"].values()) != plan.chunk_count - resumed:
                    self.violation(f"{p.label} fetched {done['sources']} besides {resumed} resumed chunks")
                self.log(
                    f"{p.label} resumed {resumed} chunks (>= {self.resume_expected} seen before the kill)"
                )
            return
        errors = p.error_lines()
        self.log(f"{p.label} exit {rc}: {errors}")
        clean = True
        if rc is None or rc <= 0:
            self.violation(f"{p.label} ended with rc={rc} (expected a non-zero exit): {p.stderr_tail()}")
            clean = False
        if len(errors) != 1:
            self.violation(f"{p.label} failed with {len(errors)} `p2pfs: error:` lines: {p.stderr_tail()}")
            clean = False
        if p.dest.exists():
            self.violation(f"{p.label} failed but left {p.dest}")
            clean = False
        if self.survivors:
            self.violation(
                f"{p.label} failed although complete holder(s) {', '.join(self.survivors)} stayed alive: "
                f"{p.stderr_tail()}"
            )
            clean = False
        if errors and "no holder left" in errors[0]:
            part = p.dest.with_name(p.dest.name + ".part")
            if p.chunks_done > 0 and not (part.exists() and Path(str(part) + ".state").exists()):
                self.violation(
                    f"{p.label} failed with {p.chunks_done} chunks verified but kept no .part to resume"
                )
            if p.chunks_done > 0 and "run it again to resume" not in errors[0]:
                self.violation(f"{p.label} kept chunks but its error does not say how to resume: {errors[0]}")
        elif errors:
            self.notes.append(f"{p.label} failed with an unexpected reason: {errors[0]}")
        self.outcomes.append(CLEAN_ERROR if clean else VIOLATION)

    def check_dest(self, p: Participant) -> None:
        """A DEST that exists holds exactly the published bytes, whatever happened to its `get`."""
        if p.dest.exists() and p.dest.read_bytes() != self.src_bytes:
            self.violation(f"{p.dest} ({p.label}) exists but differs from the published file")

    def check_listing(self) -> None:
        """Listed if and only if a live peer can complete the file; if listed, a fresh `get` succeeds."""
        plan = self.plan
        assert self.seeder is not None
        complete_alive = (["seeder"] if self.seeder.popen.poll() is None else []) + [
            h.label for h in self.holders if h.seeding
        ]
        want = [plan.filesize, plan.chunk_count]
        if complete_alive:
            took = poll_tracker(self.taddr, lambda files: files.get(plan.name) == want, REBUILD_BOUND)
            if took is None:
                text = f"{plan.name} not listed although {', '.join(complete_alive)} hold(s) it whole"
                if self.survivors:
                    self.violation(text)
                else:
                    # Held whole only by holders that finished after the fault: once the tracker has delisted
                    # a file, a holder that completes it later does not publish it again.
                    self.notes.append(text + " (they finished after the tracker had delisted it)")
                    return
        else:
            took = poll_tracker(self.taddr, lambda files: plan.name not in files, DELIST_BOUND)
            if took is None:
                self.violation(
                    f"{plan.name} still listed {DELIST_BOUND:.0f} s after its last complete holder died"
                )
        listing = run("ls", "--tracker", self.taddr, "--json", timeout=30)
        if listing.returncode != 0:
            self.violation(f"`ls --json` failed: {listing.stderr.strip()}")
            return
        listed = json.loads(listing.stdout).get(plan.name)
        self.log(
            f"ls --json: {plan.name} {'listed' if listed else 'not listed'}; "
            f"complete holders {complete_alive}"
        )
        if listed is None:
            return
        if listed != want:
            self.violation(f"`ls --json` lists {plan.name} as {listed}, published as {want}")
        fresh = self.workdir / "fresh" / plan.name
        fresh.parent.mkdir()
        try:
            got = run(
                "get", plan.name, str(fresh), "--tracker", self.peer_trackers, "--json", "--host", "127.0.0.1",
                timeout=DOWNLOAD_BOUND, env=TIMEOUT_ENV,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            self.violation(f"a fresh get of the listed {plan.name} did not end within {DOWNLOAD_BOUND:.0f} s")
            return
        if got.returncode != 0:
            self.violation(f"{plan.name} is listed but a fresh get fails: {got.stderr.strip()}")
        elif fresh.read_bytes() != self.src_bytes:
            self.violation(f"a fresh get of {plan.name} wrote different bytes")
        else:
            self.log("fresh get complete")

    def cleanup(self) -> None:
        """Kill every process still running, and keep each one's output in WORKDIR/logs."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        if self.redis is not None:
            self.redis.kill9()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill9()
                proc.wait(5)  # joins the reader threads: the output is complete
            name = self.labels[proc].replace(" ", "-").replace("'", "-again")
            with contextlib.suppress(OSError):
                (logs / f"{name}.out").write_text("\n".join(proc.stdout) + "\n")
                (logs / f"{name}.err").write_text("\n".join(proc.stderr) + "\n")

    def result(self) -> TrialResult:
        if self.violations:
            outcome = VIOLATION
        elif CLEAN_ERROR in self.outcomes:
            outcome = CLEAN_ERROR
        else:
            outcome = COMPLETE
        return TrialResult(
            self.plan.seed,
            self.plan.scenario,
            outcome,
            time.monotonic() - self.t0,
            self.plan.describe(),
            self.violations,
            self.timeline,
            self.notes,
            self.rebuild_seconds,
        )


def run_trial(seed: int, workdir: Path) -> TrialResult:
    """One trial in `workdir` (which must exist): build the swarm from `seed`, inject the fault, check
    every invariant. Every process it started is killed before it returns."""
    plan = make_plan(seed)
    print(f"trial seed={seed}: {plan.describe()}", flush=True)
    trial = _Trial(plan, workdir)
    try:
        trial.run()
    except _Abort:
        pass
    except Exception as exc:  # noqa: BLE001 - a harness failure is reported with its seed, never lost
        trial.violation(f"harness error: {type(exc).__name__}: {exc}")
    finally:
        trial.cleanup()
    for proc in trial.procs:  # complete output only now that every process has ended
        trial.check_tracebacks(proc)
    return trial.result()


# -- many trials ---------------------------------------------------------------------------------------
def outcome_table(results: Sequence[TrialResult]) -> list[list[str]]:
    rows = [["scenario", "trials", *OUTCOMES]]
    for scenario in (*SCENARIOS, "all"):
        chosen = [r for r in results if scenario in ("all", r.scenario)]
        rows.append(
            [scenario, str(len(chosen)), *(str(sum(r.outcome == o for r in chosen)) for o in OUTCOMES)]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(rows[0]) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(f"**{c}**" if row[0] == "all" else c for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


#: What the trials have found so far, for the report: (status, seeds, finding). Keep it current.
FINDINGS = [
    (
        "open",
        "1059, 66, 121, 296, 323, 379, 397",
        (
            "**A download that fails can hang for ever instead of exiting** (kill seeder with no complete "
            "holder left: about 1 trial in 20 with 4 trials at once on 2 cores, rarely without load; still "
            "there at ecc911c). `Download._close_holders` cancels the holder workers and awaits them, but on "
            "Python 3.11 `asyncio.wait_for` (around `conn.recv()` in `_fetch_from`, and in "
            "`Connection.drain`/`recv_raw`) returns the result instead of raising `CancelledError` when the "
            "awaited reply completes in the same loop iteration as the cancel. The worker carries on, finds "
            "nothing to pick and awaits `_changed` for ever, so `get` never prints its error nor exits (an "
            "asyncio task dump shows `Task cancelling ... _fetch_from ... await self._changed.wait()`). "
            "Reproduced deterministically by `test_random_faults.py::test_failed_download_stops_a_worker_"
            "whose_reply_lands_with_the_cancel` (strict xfail). Fix: `async with asyncio.timeout(...)` "
            "instead of `wait_for` on the "
            "worker path, or a `closing` flag the worker checks after every await."
        ),
    ),
    (
        "fixed in 3d663b2",
        "116, 1029, 1040, 1044",
        (
            "A holder answering requests left in its buffer by a downloader that had gone (killed, or closed "
            "with requests pipelined) logged `ERROR: error while serving` and a traceback: uvloop raises "
            "`RuntimeError` on a write to a closed transport. Regression test: `test_random_faults.py::test_"
            "holder_serves_on_after_a_downloader_left_with_requests_pipelined`."
        ),
    ),
]


def write_report(path: Path, results: Sequence[TrialResult], command: str, seconds: float) -> None:
    rebuilds = sorted(r.rebuild_seconds for r in results if r.rebuild_seconds is not None)
    violations = [r for r in results if r.outcome == VIOLATION]
    noted = [r for r in results if r.notes and r.outcome != VIOLATION]
    seeds = sorted(r.seed for r in results)
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds))) if seeds else True
    seed_text = (
        f"seeds {seeds[0]}–{seeds[-1]}" if contiguous and seeds else f"seeds {', '.join(map(str, seeds))}"
    )
    parts = [
        "# Reliability: random fault injection",
        "",
        "`tests/faults/trials.py` builds a real swarm of `python -m p2pfs` processes on 127.0.0.1 for each",
        "trial — a tracker, one `share` seeder of a random 1–6 MiB file in 64 KiB chunks, one or two",
        "`get --seed` holders (each either complete before the downloaders start, or joining with them) and",
        "two or three `get --json` downloaders, every one slowed by `P2PFS_TEST_DELAY` (20–80 ms per chunk",
        "reply) — waits until a chosen downloader has a random number of chunks, and injects one fault:",
        "",
        "- **kill seeder**: `kill -9` the `share` process;",
        "- **kill seeding downloader**: `kill -9` one `get --seed` holder (seeding, or still downloading);",
        "- **kill downloader, resume**: `kill -9` a downloader, then run the same `get` again: it must",
        "  resume with at least the chunks it had verified, and fetch only the rest;",
        "- **restart tracker**: `kill -9` the tracker and start a new one on the same port: without anyone",
        f"  touching a peer, the file is listed again within {REBUILD_BOUND:.0f} s and every chunk a download",
        "  in progress had verified is registered again;",
        "- **kill tracker, fail over** (where redis-server is installed, as the next one): two trackers",
        f"  share one Redis (`--store`, `--lease {STORE_LEASE}`) and every peer is given both; `kill -9` the",
        "  first, which every peer uses: they fail over to the second, and every check below is made there;",
        "- **restart Redis**: `kill -9` that Redis and start it again, empty: both trackers report it and",
        "  recover by themselves, and the swarm goes on.",
        "",
        f"Checked in every trial: every download ends within {DOWNLOAD_BOUND:.0f} s of the fault, either with",
        "exit 0 (or `seeding`) and exactly the published bytes at DEST, or with a non-zero exit, exactly one",
        "`p2pfs: error:` line and no DEST (`DEST.part` and its `.state` kept when chunks were verified); a",
        "download may fail only if no complete holder outlived the fault; any DEST that exists is",
        "byte-identical to the source; no traceback on any stderr; once the swarm has settled, the tracker",
        "(`ls --json`) lists the file while a complete holder lives (and then a fresh `get` succeeds) and",
        "does not list it once none is left.",
        "",
        "Outcomes: **complete** — every download finished; **clean error** — a download failed as designed",
        "(every holder of some chunk died) and every invariant held; **violation** — an invariant broke.",
        "",
        "Every random choice comes from the trial's seed, printed when the trial starts. Replay one (add",
        "`--keep --peer-log debug` to keep every process's output, with debug logs, in the trial directory):",
        "",
        "```sh",
        ".venv/bin/python -m tests.faults.trials --seeds SEED",
        "```",
        "",
        f"## Last run: {datetime.date.today().isoformat()}",
        "",
        (
            f"`{command}`: {len(results)} trials ({seed_text}) in {seconds / 60:.1f} min on "
            f"{os.cpu_count()} cores, p2pfs at {source_version()}."
        ),
        "",
        markdown_table(outcome_table(results)),
        "",
    ]
    if rebuilds:
        parts += [
            (
                "After a tracker restart the file was listed again in "
                f"{rebuilds[0]:.2f}–{rebuilds[-1]:.2f} s (median {rebuilds[len(rebuilds) // 2]:.2f} s)."
            ),
            "",
        ]
    parts += ["### Violations", ""]
    if not violations:
        parts += ["None.", ""]
    for r in violations:
        parts.append(f"- seed **{r.seed}**, {r.plan}:")
        parts += [f"  - {_clip(v)}" for v in r.violations]
    if violations:
        parts.append("")
    if noted:
        parts += ["### Notes (no invariant broken)", ""]
        parts += [f"- seed {r.seed} ({r.scenario}): {_clip('; '.join(r.notes))}" for r in noted]
        parts.append("")
    parts += ["## What the trials have found", "", "| status | seeds | finding |", "|---|---|---|"]
    parts += [f"| {status} | {seeds_} | {text} |" for status, seeds_, text in FINDINGS]
    parts.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def _clip(text: str, limit: int = 600) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " …"


def source_version() -> str:
    """The commit the p2pfs under test comes from, marked when its working tree differs."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain", "--", "p2pfs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"{head}{' with local changes' if dirty else ''}"


def run_trials(seeds: Iterable[int], jobs: int = 1, keep: bool = False) -> list[TrialResult]:
    lock = threading.Lock()

    def one(seed: int) -> TrialResult:
        workdir = Path(tempfile.mkdtemp(prefix=f"p2pfs-trial-{seed}-"))
        result = run_trial(seed, workdir)
        kept = keep or result.outcome == VIOLATION
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
        with lock:
            print(
                f"trial seed={seed}: {result.outcome} in {result.seconds:.1f} s ({result.scenario})",
                flush=True,
            )
            if result.outcome == VIOLATION:
                print(f"    files and process logs kept in {workdir}", flush=True)
                for line in result.timeline:
                    print(f"    {line}", flush=True)
        return result

    if jobs <= 1:
        return [one(seed) for seed in seeds]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, seeds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.trials", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--trials", type=int, default=20, help="how many trials (seeds SEED, SEED+1, ...)")
    parser.add_argument("--seed", type=int, help="first seed (default: a random one, printed)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="run exactly these seeds")
    parser.add_argument("--report", type=Path, help="write the results as Markdown to this file")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once (default 1)")
    parser.add_argument(
        "--keep", action="store_true", help="keep every trial's directory (kept anyway on a violation)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every trial's timeline")
    parser.add_argument(
        "--peer-log", choices=["info", "debug"], help="run every p2pfs process with -v or -vv"
    )
    args = parser.parse_args(argv)
    if args.peer_log:
        PEER_FLAGS[:] = ["-v" if args.peer_log == "info" else "-vv"]
    base = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    seeds = args.seeds or list(range(base, base + args.trials))
    print(f"{len(seeds)} trials, seeds {seeds[0]}..{seeds[-1]}", flush=True)
    started = time.monotonic()
    results = run_trials(seeds, args.jobs, args.keep)
    seconds = time.monotonic() - started
    if args.verbose:
        for r in results:
            print(f"seed {r.seed}: {r.outcome}; {r.plan}")
            for line in r.timeline:
                print(f"    {line}")
    print()
    print(format_table(outcome_table(results)))
    print(f"\n{len(results)} trials in {seconds / 60:.1f} min")
    for r in results:
        if r.outcome == VIOLATION:
            print(f"VIOLATION seed={r.seed} ({r.scenario}): {' / '.join(r.violations)}")
        for note in r.notes:
            print(f"note seed={r.seed} ({r.scenario}): {note}")
    if args.report is not None:
        command = " ".join(["python -m tests.faults.trials", *(sys.argv[1:] if argv is None else argv)])
        write_report(args.report, results, command, seconds)
        print(f"report written to {args.report}")
    return 1 if any(r.outcome == VIOLATION for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
