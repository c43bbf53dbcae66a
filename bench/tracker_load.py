"""Benchmark 6, the tracker under load: one driver process opens 2,000 connections to a `p2pfs tracker`
(asyncio, RLIMIT_NOFILE raised), each registers with its own port, ten of them publish a 1 GiB file
(1,024 chunks, with chunk hashes, as `p2pfs share` does), and then every peer sends rounds of messages
shaped like a downloader's traffic:

    8 × REQUEST_CHUNK_REGISTER (one chunk each, new chunks of "its" file, as each verified chunk is announced)
    1 × REQUEST_FILE_LIST
    1 × REQUEST_FILE_LOCATION of its file, every LOCATION_EVERY-th round

written in one go, replies read as they come. The driver speaks the wire protocol directly (4-byte length
+ JSON, frames encoded with p2pfs.protocol.framing) through bare asyncio Protocols, so it costs the
tracker's core as little as possible; the tracker and the driver each get one of the machine's cores.

Phases, all on the same 2,000 connections:
  unloaded   one peer asks REQUEST_FILE_LIST 200 times in turn while the others are idle: the reference
             latency.
  echo       every peer sends rounds of PEER_PING_PONG (which the tracker decodes and echoes): the
             tracker's floor cost per message, the reference for the throughput.
  saturated  every peer sends its rounds back to back (a new round when the last one is answered):
             the most messages per second the tracker gets through.
  paced      every peer sends one round every PEERS × (messages per round) / 50,000 s, at random phases:
             an offered load of exactly the 50,000 msgs/s target; the REPLY_FILE_LIST latency here is
             the one the < 50 ms p99 target is about (under saturation, latency is only the queue).

Messages per second count every message the tracker received in the phase (chunk registrations have no
reply; they are known to be processed when the reply to the request after them arrives), over the time
from the first send to the last reply. The tracker's RSS is read from /proc at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import random
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import failover
from bench.common import (
    HOST,
    REPO,
    BenchError,
    Context,
    Figure,
    Proc,
    child_env,
    children,
    cpu_seconds,
    median,
    proc_status_kib,
    raise_nofile_limit,
    start_tracker,
)

BENCH = "6 tracker"
PEERS = 2000
QUICK_PEERS = 200
#: Peers that publish a file; every peer registers chunks of file (peer index % FILES).
FILES = 10
CHUNKS = 1024
CHUNK_SIZE = 1 << 20
REGISTERS_PER_ROUND = 8
LOCATION_EVERY = 20
ROUNDS = 20
ECHO_ROUNDS = 5
ECHO_PER_ROUND = 10
PACED_RATE = 50_000
PACED_SECONDS = 4.0
UNLOADED_REQUESTS = 200
#: Concurrent connection attempts: the tracker's listen backlog is asyncio's default (100).
CONNECT_CONCURRENCY = 64
TARGET_RATE = 50_000
TARGET_P99_MS = 50.0

REPLY_PREFIX = {
    "REGISTER": b'{"type":"REPLY_REGISTER"',
    "PUBLISH": b'{"type":"REPLY_PUBLISH","result":true',
    "LIST": b'{"type":"REPLY_FILE_LIST"',
    "LOCATION": b'{"type":"REPLY_FILE_LOCATION"',
    "PING": b'{"type":"PEER_PING_PONG"',
}


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    reply_bytes: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    errors: int = 0
    first_error: str = ""
    lost: int = 0
    last_reply: float = 0.0

    def reset(self) -> None:
        self.latencies = collections.defaultdict(list)
        self.reply_bytes = collections.defaultdict(int)


class PeerConnection(asyncio.Protocol):
    """One simulated peer: writes pre-encoded frames, matches replies to requests in order."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: Any = None
        self.buf = bytearray()
        self.expected: collections.deque[tuple[str, float]] = collections.deque()
        self.on_idle: Any = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports are not asyncio.Transport instances, but behave like them
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.perf_counter()  # uvloop's loop.time() only has millisecond steps
        stats = self.stats
        pos = 0
        end_of_data = len(buf)
        while end_of_data - pos >= 4:
            length = int.from_bytes(buf[pos : pos + 4], "big")
            end = pos + 4 + length
            if end > end_of_data:
                break
            if not self.expected:
                stats.errors += 1
                stats.first_error = stats.first_error or bytes(buf[pos + 4 : min(end, pos + 200)]).decode(
                    "replace"
                )
            else:
                kind, sent = self.expected.popleft()
                if not buf.startswith(REPLY_PREFIX[kind], pos + 4):
                    stats.errors += 1
                    if not stats.first_error:
                        stats.first_error = bytes(buf[pos + 4 : min(end, pos + 200)]).decode("replace")
                stats.latencies[kind].append(now - sent)
                stats.reply_bytes[kind] += length
            pos = end
        if pos:
            del buf[:pos]
            stats.last_reply = now
            if not self.expected and self.on_idle is not None:
                self.on_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.lost += 1

    def send(self, blob: bytes | bytearray, kinds: tuple[str, ...]) -> None:
        now = time.perf_counter()
        self.expected.extend((kind, now) for kind in kinds)
        assert self.transport is not None
        self.transport.write(blob)

    async def idle(self) -> None:
        """Wait until every reply expected so far has arrived."""
        if not self.expected:
            return
        done = self.loop.create_future()

        def wake(conn: PeerConnection) -> None:
            conn.on_idle = None
            if not done.done():
                done.set_result(None)

        self.on_idle = wake
        await done


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (system-wide)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Driver:
    def __init__(
        self,
        tracker: list[tuple[str, int]],
        tracker_pid: int,
        peers: int,
        rounds: int,
        quick: bool,
        location_every: int,
    ) -> None:
        from p2pfs.protocol import framing
        from p2pfs.protocol import messages as m

        self.framing = framing
        self.m = m
        self.tracker = tracker
        self.tracker_pid = tracker_pid
        self.peers = peers
        self.rounds = rounds
        self.location_every = location_every
        self.paced_seconds = 2.0 if quick else PACED_SECONDS
        self.stats = Stats()
        self.conns: list[PeerConnection] = []
        self.rng = random.Random(6)
        self.result: dict[str, Any] = {"peers": peers}
        #: next chunk (index into the peer's shuffled order) each peer registers
        self.next_chunk = [0] * peers
        self.round_number = [0] * peers
        self.chunk_order: list[list[int]] = []

    def rss(self, key: str) -> float:
        kib = proc_status_kib(self.tracker_pid, key)
        return float("nan") if kib is None else kib / 1024

    # -- setup ---------------------------------------------------------------------------------
    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(i: int) -> PeerConnection:
            async with gate:  # (several trackers: the peers are spread over them in turn)
                transport, proto = await loop.create_connection(
                    lambda: PeerConnection(self.stats), *self.tracker[i % len(self.tracker)]
                )
                proto.transport = transport  # uvloop may call connection_made only on the next loop turn
                return proto

        started = time.monotonic()
        overflows = listen_overflows()
        self.conns = list(await asyncio.gather(*(one(i) for i in range(self.peers))))
        self.result["connect_s"] = time.monotonic() - started
        self.result["listen_overflows"] = listen_overflows() - overflows
        m = self.m
        for i, conn in enumerate(self.conns):
            conn.send(self.framing.encode(m.RequestRegister(address=(HOST, 20000 + i))), ("REGISTER",))
        await asyncio.gather(*(c.idle() for c in self.conns))
        self.result["connect_register_s"] = time.monotonic() - started
        for f in range(FILES):
            hashes = self.rng.randbytes(32 * CHUNKS)
            self.conns[f].send(
                self.framing.encode(
                    m.RequestPublish(
                        filename=f"file-{f}.bin",
                        fileinfo=(CHUNKS * CHUNK_SIZE, CHUNKS),
                        chunksize=CHUNK_SIZE,
                        chunkhashes=hashes,
                    )
                ),
                ("PUBLISH",),
            )
        await asyncio.gather(*(c.idle() for c in self.conns[:FILES]))
        await self.listed_everywhere()
        for _ in range(self.peers):
            order = list(range(CHUNKS))
            self.rng.shuffle(order)
            self.chunk_order.append(order)
        self.check("setup")

    async def listed_everywhere(self) -> None:
        """With trackers sharing a store: wait until each lists every file (publishes travel by Redis)."""
        if len(self.tracker) == 1:
            return
        m = self.m
        for host, port in self.tracker:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                for _ in range(1000):
                    body = self.framing.encode(m.RequestFileList())
                    writer.write(body)
                    length = int.from_bytes(await reader.readexactly(4), "big")
                    reply = json.loads(await reader.readexactly(length))
                    if len(reply.get("filelist") or {}) >= FILES:
                        break
                    await asyncio.sleep(0.01)  # (bounded polling of another tracker's state)
            finally:
                writer.close()

    def check(self, phase: str) -> None:
        if self.stats.errors or self.stats.lost:
            raise BenchError(
                f"{phase}: {self.stats.errors} unexpected replies, {self.stats.lost} connections lost; "
                f"first: {self.stats.first_error!r}"
            )

    def round_blob(self, i: int) -> tuple[bytes, tuple[str, ...], int]:
        """The frames of peer i's next downloader-like round: (bytes, expected replies, message count).
        Location requests are staggered over the peers, so they are spread evenly through a phase."""
        m = self.m
        number = self.round_number[i]
        self.round_number[i] = number + 1
        encode = self.framing.encode
        name = f"file-{i % FILES}.bin"
        order = self.chunk_order[i]
        start = self.next_chunk[i]
        self.next_chunk[i] = start + REGISTERS_PER_ROUND
        parts = [
            encode(m.RequestChunkRegister(filename=name, chunknum=order[(start + k) % CHUNKS]))
            for k in range(REGISTERS_PER_ROUND)
        ]
        kinds: tuple[str, ...] = ("LIST",)
        parts.append(encode(m.RequestFileList()))
        if (number + i) % self.location_every == self.location_every - 1:
            parts.append(encode(m.RequestFileLocation(filename=name)))
            kinds = ("LIST", "LOCATION")
        return b"".join(parts), kinds, len(parts)

    # -- phases --------------------------------------------------------------------------------
    async def unloaded(self) -> None:
        conn = self.conns[-1]
        blob = self.framing.encode(self.m.RequestFileList())
        self.stats.reset()
        for _ in range(UNLOADED_REQUESTS):
            conn.send(blob, ("LIST",))
            await conn.idle()
        lat = self.stats.latencies["LIST"]
        self.result["unloaded_list_p50_ms"] = percentile(lat, 50) * 1000
        self.result["list_reply_bytes"] = self.stats.reply_bytes["LIST"] / max(1, len(lat))
        self.check("unloaded")

    async def closed_loop(self, rounds: Sequence[Sequence[tuple[bytes | bytearray, tuple[str, ...], int]]]) -> tuple[float, int]:
        """Every peer sends its rounds back to back; (seconds from first send to last reply, messages)."""
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        remaining = [len(self.conns)]
        cursor = [0] * len(self.conns)
        index_of = {id(c): i for i, c in enumerate(self.conns)}
        messages = sum(r[2] for peer_rounds in rounds for r in peer_rounds)

        def next_round(conn: PeerConnection) -> None:
            i = index_of[id(conn)]
            if cursor[i] == len(rounds[i]):
                conn.on_idle = None
                remaining[0] -= 1
                if remaining[0] == 0 and not finished.done():
                    finished.set_result(None)
                return
            blob, kinds, _ = rounds[i][cursor[i]]
            cursor[i] += 1
            conn.send(blob, kinds)

        self.stats.reset()
        started = time.perf_counter()
        for conn in self.conns:
            conn.on_idle = next_round
            next_round(conn)
        await finished
        return self.stats.last_reply - started, messages

    async def echo(self) -> None:
        blob = self.framing.encode(self.m.PeerPingPong()) * ECHO_PER_ROUND
        kinds = ("PING",) * ECHO_PER_ROUND
        rounds = [[(blob, kinds, ECHO_PER_ROUND)] * ECHO_ROUNDS for _ in self.conns]
        seconds, messages = await self.closed_loop(rounds)
        self.result["echo_msgs_per_s"] = messages / seconds
        self.check("echo")

    async def saturated(self) -> None:
        rounds = [[self.round_blob(i) for _ in range(self.rounds)] for i in range(len(self.conns))]
        seconds, messages = await self.closed_loop(rounds)
        self.result["saturated_msgs_per_s"] = messages / seconds
        self.result["saturated_messages"] = messages
        self.result["saturated_s"] = seconds
        self.latency_figures("saturated")
        self.check("saturated")

    async def paced(self, name: str, rate: float) -> None:
        """Every peer sends one round per interval (random phases), so the tracker is offered `rate`
        msgs/s for about `paced_seconds`; then wait for the last reply."""
        loop = asyncio.get_running_loop()
        per_round = REGISTERS_PER_ROUND + 1 + 1 / self.location_every
        interval = len(self.conns) * per_round / rate
        count = max(3, round(self.paced_seconds / interval))
        rounds = [[self.round_blob(i) for _ in range(count)] for i in range(len(self.conns))]
        messages = sum(r[2] for peer_rounds in rounds for r in peer_rounds)
        self.stats.reset()
        lead = 0.05
        started = loop.time() + lead
        first_send = time.perf_counter() + lead

        def send(i: int, r: int) -> None:
            blob, kinds, _ = rounds[i][r]
            self.conns[i].send(blob, kinds)

        for i in range(len(self.conns)):
            offset = self.rng.random() * interval
            for r in range(count):
                loop.call_at(started + offset + r * interval, send, i, r)
        await asyncio.sleep(lead + count * interval)
        await asyncio.gather(*(c.idle() for c in self.conns))
        self.result[f"{name}_offered_msgs_per_s"] = messages / (count * interval)
        self.result[f"{name}_msgs_per_s"] = messages / (self.stats.last_reply - first_send)
        self.latency_figures(name)
        self.check(name)

    def latency_figures(self, phase: str) -> None:
        for kind in ("LIST", "LOCATION"):
            lat = self.stats.latencies[kind]
            key = kind.lower()
            self.result[f"{phase}_{key}_p50_ms"] = percentile(lat, 50) * 1000
            self.result[f"{phase}_{key}_p99_ms"] = percentile(lat, 99) * 1000
            self.result[f"{phase}_{key}_replies"] = len(lat)
            self.result[f"{phase}_{key}_reply_kib"] = self.stats.reply_bytes[kind] / max(1, len(lat)) / 1024

    async def phase(self, name: str, body: Any) -> None:
        """Run one phase, recording how busy the tracker's core and the driver's were meanwhile."""
        wall = time.perf_counter()
        tracker_cpu = cpu_seconds(self.tracker_pid) or 0.0
        own_cpu = time.process_time()
        await body()
        wall = time.perf_counter() - wall
        self.result[f"{name}_tracker_cpu"] = ((cpu_seconds(self.tracker_pid) or 0.0) - tracker_cpu) / wall
        self.result[f"{name}_driver_cpu"] = (time.process_time() - own_cpu) / wall
        self.result[f"{name}_tracker_rss_mib"] = self.rss("VmRSS")
        print(f"driver: {name} phase took {wall:.1f} s", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        self.result["tracker_rss_start_mib"] = self.rss("VmRSS")
        await self.connect_all()
        self.result["tracker_rss_registered_mib"] = self.rss("VmRSS")
        await self.unloaded()
        await self.phase("echo", self.echo)
        await self.phase("saturated", self.saturated)
        await self.phase("paced", lambda: self.paced("paced", PACED_RATE))
        # The same at half the throughput just measured: latency when the tracker keeps up.
        half = self.result["saturated_msgs_per_s"] / 2
        await self.phase("half", lambda: self.paced("half", half))
        self.result["tracker_rss_end_mib"] = self.rss("VmRSS")
        self.result["tracker_hwm_mib"] = self.rss("VmHWM")
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        return self.result


def drive(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="the tracker-load driver (started by bench.tracker_load)")
    parser.add_argument("--tracker", required=True, metavar="H:P")
    parser.add_argument("--tracker-pid", type=int, required=True)
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--location-every", type=int, default=LOCATION_EVERY)
    args = parser.parse_args(argv)
    raise_nofile_limit(args.peers + 1024)
    trackers = [(h, int(p)) for h, p in (t.rsplit(":", 1) for t in args.tracker.split(","))]
    from p2pfs.net import install_event_loop_policy

    install_event_loop_policy()  # uvloop, like the tracker
    driver = Driver(
        trackers, args.tracker_pid, args.peers, args.rounds, args.quick, args.location_every
    )
    result = asyncio.run(driver.run())
    print(json.dumps(result), flush=True)
    return 0


def measure(ctx: Context, store_trackers: int = 0) -> dict[str, Any]:
    """One run of the load on one tracker with the memory store (`store_trackers` 0), or on that many
    trackers sharing one Redis, the peers spread over them."""
    peers = QUICK_PEERS if ctx.quick else PEERS
    rounds = 5 if ctx.quick else ROUNDS
    raise_nofile_limit(peers + 1024)  # inherited by the tracker and the driver
    with children() as procs:
        if store_trackers:
            url = failover.start_redis(procs, ctx.dir("tracker-redis"))
            tracker = ",".join(start_tracker(procs, ["--store", url]) for _ in range(store_trackers))
        else:
            tracker = start_tracker(procs)
        pid = procs[1 if store_trackers else 0].pid  # (the first tracker, after Redis)
        where = f"{store_trackers} tracker(s) on Redis" if store_trackers else "memory store"
        print(f"  tracker load ({where}): {peers} peers, {rounds} rounds each (+ echo, paced phases)", flush=True)
        driver = Proc(
            [
                sys.executable,
                "-m",
                "bench.tracker_load",
                "--tracker",
                tracker,
                "--tracker-pid",
                str(pid),
                "--peers",
                str(peers),
                "--rounds",
                str(rounds),
                *(["--quick"] if ctx.quick else []),
            ],
            env=child_env(),
            cwd=REPO,
            label="tracker driver",
        )
        procs.append(driver)
        if driver.wait(900) != 0 or not driver.stdout:
            raise BenchError(f"tracker driver failed: {driver.describe()}")
        result: dict[str, Any] = json.loads(driver.stdout[-1])
        if not all(p.running for p in procs if p is not driver):
            raise BenchError(f"a tracker died: {'; '.join(p.describe() for p in procs if not p.running)}")
    print(
        f"    run: saturated {result['saturated_msgs_per_s']:,.0f} msgs/s; FILE_LIST p99 at "
        f"{PACED_RATE:,} offered {result['paced_list_p99_ms']:.1f} ms",
        flush=True,
    )
    return result


#: `ref` of a figure that is itself the reference of others
SELF = math.nan


def run(ctx: Context) -> None:
    runs = [measure(ctx) for _ in range(ctx.runs)]
    redis_runs = (
        {n: [measure(ctx, n) for _ in range(ctx.runs)] for n in (1, 2)} if failover.REDIS_SERVER else {}
    )

    def med(key: str) -> tuple[float, list[float]]:
        values = [float(r[key]) for r in runs]
        return median(values), values

    peers = runs[0]["peers"]
    full = peers == PEERS

    def add(name: str, key: str, unit: str, ref: float | None = None, ref_of: str = "", **kw: Any) -> float:
        """Add the median of `key` as a figure; `ref` None: no ratio; NaN: it is the reference itself."""
        value, samples = med(key)
        if ref is not None and math.isnan(ref):
            ref, ref_of = value, "itself: the reference"
        ctx.add(
            Figure(
                BENCH,
                name,
                value,
                unit,
                samples,
                ratio=None if ref is None else value / ref,
                ratio_of=ref_of,
                **kw,
            )
        )
        return value

    overflows = max(int(r["listen_overflows"]) for r in runs)
    add(
        f"connect + register {peers} peers",
        "connect_register_s",
        "s",
        note=f"up to {overflows} SYNs dropped by a full listen queue" if overflows else "",
    )
    echo = add(
        f"echo (PEER_PING_PONG, a reply per message), {peers} peers", "echo_msgs_per_s", "msgs/s", SELF
    )
    add(
        f"saturated: {peers} peers × {REGISTERS_PER_ROUND} CHUNK_REGISTER + 1 FILE_LIST per round, "
        f"1 FILE_LOCATION per {LOCATION_EVERY} rounds",
        "saturated_msgs_per_s",
        "msgs/s",
        echo,
        "of echo rate",
        target=f"≥ {TARGET_RATE:,} msgs/s",
        met=med("saturated_msgs_per_s")[0] >= TARGET_RATE if full else None,
    )
    busy = median(float(r["saturated_tracker_cpu"]) for r in runs)
    print(
        f"  tracker CPU while saturated: {busy:.0%} of a core; driver {median(float(r['saturated_driver_cpu']) for r in runs):.0%}",
        flush=True,
    )
    unloaded = add(
        "REPLY_FILE_LIST latency, unloaded (1 peer asking), p50", "unloaded_list_p50_ms", "ms", SELF
    )
    for phase, label in (
        ("saturated", "saturated"),
        ("paced", f"paced at {PACED_RATE:,} msgs/s offered"),
        ("half", "paced at half the saturated rate"),
    ):
        if phase != "saturated":
            offered, _ = med(f"{phase}_offered_msgs_per_s")
            add(
                f"{label}: throughput (offered {offered:,.0f})",
                f"{phase}_msgs_per_s",
                "msgs/s",
                offered,
                "of offered",
            )
        for q in ("p50", "p99"):
            is_target = phase == "paced" and q == "p99"
            value, _ = med(f"{phase}_list_{q}_ms")
            add(
                f"{label}: REPLY_FILE_LIST latency {q}",
                f"{phase}_list_{q}_ms",
                "ms",
                unloaded,
                "× unloaded p50",
                target=f"< {TARGET_P99_MS:.0f} ms" if is_target else "",
                met=(value < TARGET_P99_MS if full else None) if is_target else None,
            )
        kib, _ = med(f"{phase}_location_reply_kib")
        add(
            f"{label}: REPLY_FILE_LOCATION latency p99 (replies of {kib:.0f} KiB on average)",
            f"{phase}_location_p99_ms",
            "ms",
            unloaded,
            "× unloaded LIST p50",
        )
    start, _ = med("tracker_rss_start_mib")
    for key, label in (
        ("tracker_rss_registered_mib", f"tracker RSS, {peers} peers registered"),
        ("saturated_tracker_rss_mib", "tracker RSS after the saturated phase"),
        ("tracker_rss_end_mib", "tracker RSS after the load"),
        ("tracker_hwm_mib", "tracker peak RSS (VmHWM)"),
    ):
        add(label, key, "MiB", start, f"× fresh tracker, {start:.1f} MiB")
    memory = {
        key: med(key)[0]
        for key in (
            "saturated_msgs_per_s",
            "paced_list_p99_ms",
            "paced_location_p99_ms",
            "half_list_p99_ms",
            "half_location_p99_ms",
            "tracker_hwm_mib",
        )
    }
    for n, store_runs in redis_runs.items():
        where = f"Redis store, {n} tracker{'s' if n > 1 else ''}"
        for key, label, unit in (
            ("saturated_msgs_per_s", "saturated", "msgs/s"),
            ("paced_list_p99_ms", f"paced at {PACED_RATE:,} msgs/s offered: REPLY_FILE_LIST p99", "ms"),
            ("paced_location_p99_ms", f"paced at {PACED_RATE:,} msgs/s offered: REPLY_FILE_LOCATION p99", "ms"),
            # (below saturation, where latency is the store's own cost rather than a queue's length)
            ("half_list_p99_ms", "paced at half its saturated rate: REPLY_FILE_LIST p99", "ms"),
            ("half_location_p99_ms", "paced at half its saturated rate: REPLY_FILE_LOCATION p99", "ms"),
            ("tracker_hwm_mib", "first tracker's peak RSS (VmHWM)", "MiB"),
        ):
            samples = [float(r[key]) for r in store_runs]
            value = median(samples)
            ctx.add(
                Figure(BENCH, f"{where}: {label}", value, unit, samples, ratio=value / memory[key], ratio_of="× memory store")
            )


if __name__ == "__main__":
    raise SystemExit(drive(sys.argv[1:]))
