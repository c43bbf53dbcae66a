"""A flood of the costliest frames a client can send a tracker, from several raw connections at once, while
one more connection measures REQUEST_FILE_LIST round trips. Used by tests/faults/test_adversarial.py (which
asserts the tracker interleaves) and bench/hostile_latency.py (which reports the latency figures).

Every loop is bounded by a count, every socket by a timeout; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pfs.protocol.limits import MAX_REGISTER_BATCH, MAX_SMALL_FRAME, MAX_TRACKER_FRAME

HEADER = struct.Struct(">I")
MiB = 1 << 20

#: The file whose chunks the flood registers: as many chunks as one batch registration may name, listed
#: without chunk hashes (exactly the per-peer limit for such files).
FLOOD_FILE = "flood.bin"
FLOOD_CHUNKS = MAX_REGISTER_BATCH
FLOOD_CHUNK_SIZE = 1024
#: Chunk numbers in the oversized batch registration: 7 million "0," make a 14 MB body, over the tracker's
#: frame limit (refused from its header alone).
OVERSIZED_CHUNKNUMS = 7_000_000
#: Seconds any socket of the flood waits for the tracker before the flood gives up (a hung tracker).
SOCKET_TIMEOUT = 60.0
PING = b'{"type":"PEER_PING_PONG"}'


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def oversized_register_body() -> bytes:
    """REQUEST_CHUNK_REGISTER with 7 million chunknums (14 MB): more than any tracker frame may hold."""
    head = (
        b'{"type":"REQUEST_CHUNK_REGISTER","filename":"%s","chunknum":0,"chunknums":[' % FLOOD_FILE.encode()
    )
    return head + b"0," * (OVERSIZED_CHUNKNUMS - 1) + b"0]}"


def batch_register_body(offset: int) -> bytes:
    """REQUEST_CHUNK_REGISTER naming all FLOOD_CHUNKS chunks (the most a batch may), rotated by `offset`,
    padded with an unknown field to just under MAX_SMALL_FRAME: the largest frame a tracker parses that
    is not a publish, and the most per-chunk work one frame can buy."""
    nums = [(offset + i) % FLOOD_CHUNKS for i in range(FLOOD_CHUNKS)]
    body = compact(
        {"type": "REQUEST_CHUNK_REGISTER", "filename": FLOOD_FILE, "chunknum": nums[0], "chunknums": nums}
    )
    pad = MAX_SMALL_FRAME - len(body) - len(b',"pad":""') - 16
    assert pad >= 0, len(body)
    return body[:-1] + b',"pad":"' + b"p" * pad + b'"}'


def junk_publish_bodies() -> list[bytes]:
    """12 MiB REQUEST_PUBLISH bodies of junk (a huge unknown string, a huge unknown array, bytes that are not
    UTF-8), each exactly MAX_TRACKER_FRAME bytes and beginning with its type, so the tracker reads and
    parses the whole of each."""
    size = MAX_TRACKER_FRAME
    head = b'{"type":"REQUEST_PUBLISH","junk":'
    string = head + b'"' + b"J" * (size - len(head) - 3) + b'"}'
    array = head + b"[" + b"7," * ((size - len(head) - 3) // 2)
    array = array[: size - 2].rstrip(b",") + b"]}"
    array += b" " * (size - len(array))
    binary = head + b'"' + bytes(range(128, 256)) * ((size - len(head) - 3) // 128)
    binary += b"\xff" * (size - len(binary) - 2) + b'"}'
    bodies = [string, array, binary]
    assert all(len(b) == size for b in bodies), [len(b) for b in bodies]
    return bodies


# -- raw sockets -------------------------------------------------------------------------------------
def connect(address: str, source: str | None = None, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    """A TCP connection to `address` (127.0.0.1 only), from `source` (another loopback address) if given."""
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1", address
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        piece = sock.recv(min(n - len(buf), 1 << 20))
        if not piece:
            raise EOFError(f"closed by the server after {len(buf)} of {n} bytes")
        buf += piece
    return bytes(buf)


def recv_body(sock: socket.socket) -> bytes:
    (n,) = HEADER.unpack(recv_exact(sock, 4))
    return recv_exact(sock, n)


def recv_json(sock: socket.socket) -> dict[str, Any]:
    reply = json.loads(recv_body(sock))
    assert isinstance(reply, dict), reply
    return reply


def request(sock: socket.socket, obj: object) -> dict[str, Any]:
    sock.sendall(frame(compact(obj)))
    return recv_json(sock)


def register(sock: socket.socket, port: int) -> dict[str, Any]:
    reply = request(sock, {"type": "REQUEST_REGISTER", "address": ["127.0.0.1", port]})
    assert reply.get("type") == "REPLY_REGISTER", reply
    return reply


def at_eof(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (anything it sends first is discarded)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- the flood ---------------------------------------------------------------------------------------
@dataclass
class FloodPlan:
    """How big the flood is: every count bounds a loop."""

    #: connections that send the 14 MB registration, one after the other
    oversized: int = 3
    #: registered connections pipelining ~1 MiB batch registrations, and frames each
    registrars: int = 3
    register_frames: int = 12
    #: connections pipelining 12 MiB junk publishes, and frames each
    publishers: int = 3
    publish_frames: int = 4
    #: one connection pipelining this many PEER_PING_PONG at once (many small frames already buffered)
    burst: int = 20_000
    #: REQUEST_FILE_LIST round trips measured before the flood (the reference) and, at most, during it
    baseline_requests: int = 300
    max_flood_requests: int = 100_000


@dataclass
class Flood:
    """What happened: the measured round trips (seconds), and when each flood frame was answered."""

    baseline: list[float] = field(default_factory=list)
    #: (sent, answered) of every REQUEST_FILE_LIST during the flood, perf_counter seconds
    during: list[tuple[float, float]] = field(default_factory=list)
    #: replies that were not a REPLY_FILE_LIST naming `expect_listed`
    wrong: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    #: the ERROR each 14 MB registration got, and whether the tracker then closed its connection
    oversized: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    #: per flooding connection, the moment each of its frames was answered (a marker PING's echo after
    #: every batch registration; the ERROR of every junk publish)
    markers: dict[str, list[float]] = field(default_factory=dict)
    publish_errors: list[str] = field(default_factory=list)
    burst_echoes: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [answered - sent for sent, answered in self.during]

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def served_between_markers(self) -> tuple[int, int]:
        """(intervals between two consecutive answers to one flooding connection that contain the answer
        to a measured request, all such intervals): how often the tracker let the measuring client in
        between two frames of the same flooder."""
        answers = sorted(answered for _, answered in self.during)
        hit = total = 0
        for times in self.markers.values():
            for first, second in itertools.pairwise(times):
                total += 1
                lo = bisect.bisect_right(answers, first)
                if lo < len(answers) and answers[lo] < second:
                    hit += 1
        return hit, total


def summary(latencies: list[float]) -> dict[str, float]:
    """count, median, p99 and max of round trips, in milliseconds."""
    if not latencies:
        return {"count": 0, "median_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "count": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def describe(name: str, latencies: list[float]) -> str:
    s = summary(latencies)
    return (
        f"{name}: {s['count']} REQUEST_FILE_LIST round trips, median {s['median_ms']:.2f} ms, "
        f"p99 {s['p99_ms']:.2f} ms, max {s['max_ms']:.2f} ms"
    )


def prepare_flood_file(taddr: str, port: int) -> socket.socket:
    """A registered connection that lists FLOOD_FILE (without chunk hashes); keep it open while flooding."""
    sock = connect(taddr)
    register(sock, port)
    reply = request(
        sock,
        {
            "type": "REQUEST_PUBLISH",
            "filename": FLOOD_FILE,
            "fileinfo": [FLOOD_CHUNKS * FLOOD_CHUNK_SIZE, FLOOD_CHUNKS],
            "chunksize": FLOOD_CHUNK_SIZE,
        },
    )
    assert reply == {"type": "REPLY_PUBLISH", "result": True, "message": ""}, reply
    return sock


def run_flood(
    taddr: str,
    plan: FloodPlan,
    expect_listed: str,
    first_port: int = 47000,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> Flood:
    """Measure REQUEST_FILE_LIST round trips alone, then while the flood of `plan` runs from other
    connections; the measuring stops when every flooder is done (each waits for the tracker's answer to its
    last frame). `expect_listed` is a name every file list must contain."""
    result = Flood()
    failures = result.failures
    measurer = connect(taddr)
    ask = frame(b'{"type":"REQUEST_FILE_LIST"}')

    def measure_once() -> tuple[float, float]:
        sent = time.perf_counter()
        measurer.sendall(ask)
        body = recv_body(measurer)
        answered = time.perf_counter()
        reply = json.loads(body)
        if reply.get("type") != "REPLY_FILE_LIST" or expect_listed not in reply.get("filelist", {}):
            result.wrong.append(reply)
        return sent, answered

    socks: list[socket.socket] = [measurer]
    try:
        for _ in range(plan.baseline_requests):
            sent, answered = measure_once()
            result.baseline.append(answered - sent)
        setup = prepare_flood_file(taddr, first_port)
        socks.append(setup)
        registrars = []
        for i in range(plan.registrars):
            sock = connect(taddr)
            socks.append(sock)
            register(sock, first_port + 1 + i)
            registrars.append(sock)
        publishers = [connect(taddr) for _ in range(plan.publishers)]
        burster = connect(taddr)
        socks += [*publishers, burster]
        register_frames = [
            frame(batch_register_body(i * 997)) + frame(PING) for i in range(plan.register_frames)
        ]
        junk = [frame(body) for body in junk_publish_bodies()]
        oversized = frame(oversized_register_body())
        barrier = threading.Barrier(1 + 2 * plan.registrars + 2 * plan.publishers + 2 + 1)

        def guarded(name: str, work: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    barrier.wait(SOCKET_TIMEOUT)
                    work()
                except (OSError, EOFError, ValueError, threading.BrokenBarrierError) as exc:
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")

            return run

        def send_oversized() -> None:
            for _ in range(plan.oversized):
                with contextlib.closing(connect(taddr)) as sock:
                    sock.sendall(oversized[: 64 * 1024])  # the header and the start of the body
                    reply = recv_json(sock)
                    closed = at_eof(sock)
                    with contextlib.suppress(OSError):  # (the rest of the 14 MB goes nowhere)
                        sock.sendall(oversized[64 * 1024 :])
                    result.oversized.append((reply, closed))

        threads: list[threading.Thread] = []

        def flooder(
            name: str, sock: socket.socket, frames: list[bytes], replies: int, check: Callable[[bytes], None]
        ) -> None:
            times = result.markers.setdefault(name, []) if name.startswith(("register", "publish")) else []

            def send() -> None:
                for data in frames:
                    sock.sendall(data)

            def read() -> None:
                for _ in range(replies):
                    body = recv_body(sock)
                    times.append(time.perf_counter())
                    check(body)

            threads.append(threading.Thread(target=guarded(f"{name} sender", send), daemon=True))
            threads.append(threading.Thread(target=guarded(f"{name} reader", read), daemon=True))

        def echo(body: bytes) -> None:
            if body != PING:
                failures.append(f"not an echo: {body[:200]!r}")

        def publish_error(body: bytes) -> None:
            reply = json.loads(body)
            if reply.get("type") != "ERROR":
                failures.append(f"junk publish answered with {reply}")
            result.publish_errors.append(str(reply.get("message", ""))[:200])

        def count_echo(body: bytes) -> None:
            echo(body)
            result.burst_echoes += 1

        for i, sock in enumerate(registrars):
            flooder(f"register{i}", sock, register_frames, plan.register_frames, echo)
        for i, sock in enumerate(publishers):
            frames = [junk[(i + k) % len(junk)] for k in range(plan.publish_frames)]
            flooder(f"publish{i}", sock, frames, plan.publish_frames, publish_error)
        flooder("burst", burster, [frame(PING) * plan.burst], plan.burst, count_echo)
        threads.append(threading.Thread(target=guarded("oversized", send_oversized), daemon=True))
        for thread in threads:
            thread.start()
        barrier.wait(SOCKET_TIMEOUT)
        on_phase("flood")
        result.started = time.perf_counter()
        while any(t.is_alive() for t in threads) and len(result.during) < plan.max_flood_requests:
            result.during.append(measure_once())
        result.ended = time.perf_counter()
        for thread in threads:
            thread.join(SOCKET_TIMEOUT)
            if thread.is_alive():
                failures.append(f"a flooder thread is still running after {SOCKET_TIMEOUT:.0f} s")
    finally:
        for sock in socks:
            sock.close()
    return result
