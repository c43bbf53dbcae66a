"""Attacks on a real tracker by raw-socket clients, each next to a real victim (`p2pfs share`, `get`, `ls`):
no client may crash the tracker, evict a peer or a file, stall the others, or buy unbounded memory.

One test per attack; each asserts what the victim still gets. Every socket goes to 127.0.0.1 (from
127.0.0.1, or from 127.0.0.2 where a test needs a second host). Where the property is about time, the
test asserts something the machine's speed cannot change (order of replies, a ratio of the tracker's
own CPU time) and prints the figures; bench/hostile_latency.py measures the latency itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pfs.address import Address
from p2pfs.protocol.limits import MAX_CHUNKS, MAX_SMALL_FRAME, MAX_TRACKER_FRAME
from p2pfs.tracker.registry import (
    MAX_FILES,
    MAX_LISTED_CHUNKS,
    MAX_PUBLISHED_CHUNKS_PER_PEER,
    MAX_UNHASHED_CHUNKS_PER_PEER,
    PublishRefused,
    Registry,
)
from tests import flood
from tests.faults.test_hostile import (
    CHUNK,
    NAME,
    SIZE,
    Swarm,
    assert_healthy,
    close_all,
    fds_at_most,
    get_ok,
    ls_ok,
    open_idle,
    ping_ok,
    raise_nofile,
    rss,
    settled_fds,
    start_swarm,
    wait_until,
)
from tests.flood import compact, connect, frame, recv_json, register, request
from tests.procs import Proc, make_file, run

MiB = 1 << 20
#: How much the tracker's memory may grow under one memory attack (peak, VmHWM, over RSS before).
MEMORY_BOUND = 128 * MiB
#: The second loopback host: a client bound to it is "another machine" to the tracker.
OTHER_HOST = "127.0.0.2"
#: What a victim `share` prints on stderr when it loses its tracker connection.
LOST_TRACKER = ("unreachable", "lost the connection")


# -- helpers -------------------------------------------------------------------------------------------
def peak_rss(pid: int) -> int:
    """Highest resident memory of a process so far (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_victim_kept_its_tracker(sharer: Proc) -> None:
    """The victim `share` never lost its tracker connection (it would have said so on stderr)."""
    lost = [line for line in sharer.stderr if any(word in line for word in LOST_TRACKER)]
    assert not lost, f"the victim lost its tracker: {lost}"


def file_list(address: str, source: str | None = None) -> dict[str, Any]:
    with contextlib.closing(connect(address, source)) as sock:
        reply = request(sock, {"type": "REQUEST_FILE_LIST"})
    assert reply.get("type") == "REPLY_FILE_LIST", reply
    filelist = reply["filelist"]
    assert isinstance(filelist, dict)
    return filelist


def locations(
    address: str, name: str = NAME, ranges: bool = False, source: str | None = None
) -> dict[str, Any]:
    with contextlib.closing(connect(address, source)) as sock:
        return request(sock, {"type": "REQUEST_FILE_LOCATION", "filename": name, "ranges": ranges})


def registered(address: str, port: int, source: str | None = None) -> socket.socket:
    """A connection registered as (its source host, `port`)."""
    sock = connect(address, source)
    try:
        register(sock, port)
    except BaseException:
        sock.close()
        raise
    return sock


def publish(
    sock: socket.socket, name: str, chunks: int, chunk_size: int = 1024, hashes: bytes | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "REQUEST_PUBLISH",
        "filename": name,
        "fileinfo": [chunks * chunk_size, chunks],
        "chunksize": chunk_size,
    }
    if hashes is not None:
        message["chunkhashes"] = base64.b64encode(hashes).decode()
    return request(sock, message)


def pipelined(sock: socket.socket, frames: list[bytes], replies: int) -> list[dict[str, Any]]:
    """Write `frames` in one go (from a thread, so a tracker that answers before reading all of them
    cannot deadlock us) and read `replies` replies."""
    failures: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(b"".join(frames))
        except OSError as exc:
            failures.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answers = [recv_json(sock) for _ in range(replies)]
    sender.join(flood.SOCKET_TIMEOUT)
    assert not failures, failures
    return answers


def send_without_blocking(sock: socket.socket, data: bytes) -> int:
    """Send as much of `data` as the kernel takes right now; the number of bytes sent."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + MiB])
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(flood.SOCKET_TIMEOUT)
    return sent


def still_open(sock: socket.socket) -> bool:
    """The server has not closed `sock` (checked without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(flood.SOCKET_TIMEOUT)


def readable(socks: list[socket.socket], seconds: float) -> int:
    """How many of `socks` have something to read, once all do or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    waiting = list(socks)
    while waiting and time.monotonic() < deadline:
        poller = select.poll()  # (not select(): file descriptors may be numbered above 1024)
        for sock in waiting:
            poller.register(sock, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000)))}
        waiting = [sock for sock in waiting if sock.fileno() not in ready]
    return len(socks) - len(waiting)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list of sockets, all closed when the block ends."""
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        close_all(socks)


def start_tracker(procs: Callable[..., Proc], env: dict[str, str] | None = None) -> tuple[Proc, str]:
    tracker = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", env=env)
    return tracker, tracker.listening()


def share(procs: Callable[..., Proc], path: Path, taddr: str, chunk_size: str = "64K") -> tuple[Proc, str]:
    sharer = procs("share", str(path), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", chunk_size)
    paddr = sharer.listening()
    sharer.expect(rf"published {path.name} ")
    return sharer, paddr


def assert_victim_served(swarm: Swarm, dest: Path) -> None:
    """The victim's file is listed, located at the victim, and downloads with exact bytes."""
    assert file_list(swarm.taddr)[NAME] == [SIZE, -(-SIZE // CHUNK)]
    located = locations(swarm.taddr)
    assert located["type"] == "REPLY_FILE_LOCATION", located
    assert located["chunkinfo"].get(swarm.paddr) == list(range(-(-SIZE // CHUNK))), located["chunkinfo"]
    get_ok(swarm, dest)
    ls_ok(swarm)


# -- 1. eviction ---------------------------------------------------------------------------------------
def test_registering_a_live_peers_address_cannot_evict_it(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    swarm = start_swarm(procs, tmp_path)
    victim_port = int(swarm.paddr.rsplit(":", 1)[1])
    refusal = {
        "type": "ERROR",
        "message": f"address {swarm.paddr} is registered by another live connection",
        "request": "REQUEST_REGISTER",
    }
    # whatever host is claimed, the tracker records the connection's source host (127.0.0.1) and the port
    claims = ["127.0.0.1", "0.0.0.0", "localhost", "10.9.8.7", "::1", "evil.example", ""]
    attempts = [
        {"type": "REQUEST_REGISTER", "address": [claims[i % len(claims)], victim_port]} for i in range(200)
    ]
    # 200 fresh connections, one claim each
    for attempt in attempts:
        with contextlib.closing(connect(swarm.taddr)) as sock:
            assert request(sock, attempt) == refusal
    # 200 claims pipelined on one connection
    with contextlib.closing(connect(swarm.taddr)) as sock:
        replies = pipelined(sock, [frame(compact(a)) for a in attempts], len(attempts))
        assert replies == [refusal] * len(attempts)
    # a registered attacker that then claims the victim's address keeps its own registration, nothing more
    with contextlib.closing(registered(swarm.taddr, 45001)) as sock:
        assert request(sock, attempts[0]) == refusal
        assert publish(sock, "attacker.bin", 1) == {"type": "REPLY_PUBLISH", "result": True, "message": ""}
    # from another host the same claim is recorded under that host: harmless, even when it then copies
    # the victim's file (same content id: it becomes one more, unreachable, holder)
    with contextlib.closing(connect(swarm.taddr, OTHER_HOST)) as copycat:
        reply = request(copycat, {"type": "REQUEST_REGISTER", "address": ["127.0.0.1", victim_port]})
        assert reply == {"type": "REPLY_REGISTER", "address": [OTHER_HOST, victim_port]}
        record = locations(swarm.taddr)
        copy = {"type": "REQUEST_PUBLISH", "filename": NAME, "fileinfo": record["fileinfo"]}
        copy |= {"chunksize": record["chunksize"], "chunkhashes": record["chunkhashes"]}
        assert request(copycat, copy) == {"type": "REPLY_PUBLISH", "result": True, "message": ""}
        assert_victim_served(swarm, tmp_path / "out.bin")
    # a registration whose connection has closed is taken over at once (a restarted peer gets its address)
    closed = registered(swarm.taddr, 45002)
    closed.close()
    with contextlib.closing(registered(swarm.taddr, 45002)):
        pass
    assert_victim_served(swarm, tmp_path / "out2.bin")
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 2. stall ------------------------------------------------------------------------------------------
def test_a_flood_of_the_costliest_frames_does_not_stall_other_clients(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    swarm = start_swarm(procs, tmp_path)
    plan = flood.FloodPlan()
    result = flood.run_flood(swarm.taddr, plan, expect_listed=NAME)
    print(flood.describe("before the flood", result.baseline))
    print(flood.describe(f"during the flood ({result.seconds:.2f} s)", result.latencies))
    hit, total = result.served_between_markers()
    print(f"the measuring client was answered between {hit} of {total} pairs of one flooder's frames")
    assert not result.failures, result.failures
    # every request during the flood was answered, correctly
    assert not result.wrong, result.wrong[:3]
    assert len(result.during) >= 1
    # the flood happened as planned: the 14 MB registration refused from its header alone, then closed
    announced = len(flood.oversized_register_body())
    expected = {
        "type": "ERROR",
        "message": f"frame of {announced} bytes announced; the limit is {MAX_TRACKER_FRAME}",
    }
    assert result.oversized == [(expected, True)] * plan.oversized
    assert len(result.publish_errors) == plan.publishers * plan.publish_frames
    assert all(e.startswith(("invalid message: ", "malformed JSON: ", "frame of ")) for e in result.publish_errors), (
        result.publish_errors
    )
    assert result.burst_echoes == plan.burst
    assert total == plan.registrars * (plan.register_frames - 1) + plan.publishers * (plan.publish_frames - 1)
    # The tracker interleaves: between two frames of one flooder it answers the others. (Timing-free: a
    # tracker that served a connection's pipelined frames back to back would answer nobody in between.)
    assert hit >= 0.75 * total, f"answered between only {hit} of {total} pairs of one flooder's frames"
    assert_victim_served(swarm, tmp_path / "out.bin")
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


def test_a_junk_frame_costs_no_more_than_the_largest_honest_frame(procs: Callable[..., Proc]) -> None:
    """Each frame is work the tracker does without turning to anyone else (a frame is parsed in one go).
    The largest honest frame is a publish with the hashes of MAX_CHUNKS chunks; no 12 MiB frame of junk
    may cost more than that. Compared as the tracker's own CPU time: the ratio does not depend on the
    machine's speed or load."""
    tracker, taddr = start_tracker(procs)
    rounds = 4
    hashes = os.urandom(32 * MAX_CHUNKS)  # (random digits: an honest-looking publish of 256 GiB)
    honest = 0.0
    with sockets() as socks:
        for i in range(rounds):
            socks.append(registered(taddr, 46100 + i))
            before = cpu_seconds(tracker.pid)
            reply = publish(socks[-1], f"honest{i}.bin", MAX_CHUNKS, hashes=hashes)
            honest += cpu_seconds(tracker.pid) - before
            assert reply == {"type": "REPLY_PUBLISH", "result": True, "message": ""}
    honest /= rounds
    costs: dict[str, float] = {}
    for body, what in zip(flood.junk_publish_bodies(), ("string", "array", "not UTF-8"), strict=True):
        with contextlib.closing(connect(taddr)) as sock:
            before = cpu_seconds(tracker.pid)
            for _ in range(rounds):
                sock.sendall(frame(body))
                assert recv_json(sock)["type"] == "ERROR"
            costs[what] = (cpu_seconds(tracker.pid) - before) / rounds
    print(
        f"tracker CPU per frame: honest publish {honest * 1000:.0f} ms; junk "
        + ", ".join(f"{what} {cost * 1000:.0f} ms" for what, cost in costs.items())
    )
    ping_ok(taddr)
    assert_healthy(tracker)
    worst = max(costs, key=lambda k: costs[k])
    assert costs[worst] <= 1.5 * honest, (
        f"a 12 MiB {worst} junk frame costs the tracker {costs[worst] * 1000:.0f} ms of CPU, "
        f"{costs[worst] / honest:.1f}x the largest honest publish ({honest * 1000:.0f} ms)"
    )


# -- 3. memory -----------------------------------------------------------------------------------------
def test_many_large_frames_at_once_cost_bounded_memory(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    swarm = start_swarm(procs, tmp_path)
    tracker = swarm.tracker.pid
    ping_ok(swarm.taddr)
    before = rss(tracker)
    junk = [frame(body) for body in flood.junk_publish_bodies()]
    connections = 100
    # half of them send whole 12 MiB frames, all at once (each is answered with an ERROR)
    errors: list[str] = []

    def send_whole(i: int) -> None:
        with contextlib.closing(connect(swarm.taddr)) as sock:
            sock.sendall(junk[i % len(junk)])
            errors.append(recv_json(sock)["type"])

    threads = [threading.Thread(target=send_whole, args=(i,), daemon=True) for i in range(connections // 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(flood.SOCKET_TIMEOUT)
    assert errors == ["ERROR"] * (connections // 2)
    whole_peak = peak_rss(tracker) - before
    # the other half send as much of one as the kernel takes, and hold it open
    with sockets() as held:
        sent = 0
        for i in range(connections - connections // 2):
            held.append(connect(swarm.taddr))
            sent += send_without_blocking(held[-1], junk[i % len(junk)][:-1])
        # everyone else is served meanwhile (small frames do not wait for the large ones)
        ping_ok(swarm.taddr)
        assert_victim_served(swarm, tmp_path / "out.bin")
        assert all(still_open(sock) for sock in held)
        grown, peak = rss(tracker) - before, peak_rss(tracker) - before
        print(
            f"tracker RSS: peak +{whole_peak / MiB:.0f} MiB for {connections // 2} whole 12 MiB frames at once; "
            f"+{grown / MiB:.0f} MiB (peak +{peak / MiB:.0f} MiB) with {len(held)} more held open "
            f"({sent / MiB:.0f} MiB of them sent)"
        )
    assert peak < MEMORY_BOUND, f"the tracker grew by {peak / MiB:.0f} MiB for {connections} large frames"
    ping_ok(swarm.taddr)
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


@pytest.mark.xfail(reason='known: unsent reply bytes are not budgeted (30 never-reading clients of an 11 MB location reply: +380 MiB); see issue 9 closing note', strict=False)
def test_clients_that_never_read_large_replies_cost_bounded_memory(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    """A reply the client does not read waits in the tracker's memory. One registered peer lists a file
    of MAX_CHUNKS chunks with its hashes (as `share` does for 256 GiB): each REQUEST_FILE_LOCATION of it is
    answered with 11 MB. Connections that ask once and never read must not add up."""
    swarm = start_swarm(procs, tmp_path)
    tracker = swarm.tracker.pid
    readers = 30
    with sockets() as socks:
        socks.append(registered(swarm.taddr, 46200))
        assert (
            publish(socks[-1], "huge.bin", MAX_CHUNKS, hashes=os.urandom(32 * MAX_CHUNKS))["result"] is True
        )
        before = rss(tracker)
        ask = frame(compact({"type": "REQUEST_FILE_LOCATION", "filename": "huge.bin"}))
        for _ in range(readers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connecting: a small window)
            sock.settimeout(flood.SOCKET_TIMEOUT)
            sock.connect(("127.0.0.1", int(swarm.taddr.rsplit(":", 1)[1])))
            sock.sendall(ask)
        # (each reply has begun to arrive: the tracker took every request; one that defers replies to
        # readers that do not read may keep them waiting, so this waits 5 s at most)
        answered = readable(socks[1:], 5.0)
        ping_ok(swarm.taddr)
        assert_victim_served(swarm, tmp_path / "out.bin")
        grown = rss(tracker) - before
        print(
            f"tracker RSS +{grown / MiB:.0f} MiB with {readers} unread 11 MB location replies ({answered} begun)"
        )
        assert grown < MEMORY_BOUND, (
            f"{readers} connections that never read their REPLY_FILE_LOCATION grew the tracker by "
            f"{grown / MiB:.0f} MiB"
        )
    assert_healthy(swarm.tracker, swarm.sharer)


@pytest.mark.xfail(reason="known: the large-frame budget has no per-host share, so half-sent frames from one host starve another's publish; see issue 9 closing note", strict=False)
def test_large_frames_held_open_do_not_starve_another_hosts_publish(procs: Callable[..., Proc]) -> None:
    """The memory budget for large frames admits five at a time. Connections that announce 12 MiB, send a
    part and stop must not keep another host's honest large publish (the hashes of 32,768 chunks: 1.4 MB)
    waiting until they time out."""
    frame_timeout = 6
    tracker, taddr = start_tracker(procs, env={"P2PFS_FRAME_TIMEOUT": str(frame_timeout)})
    junk = frame(flood.junk_publish_bodies()[0])
    chunks = 32768
    with sockets() as held:
        for _ in range(20):
            held.append(connect(taddr))
            send_without_blocking(held[-1], junk[: 4 * MiB])
        ping_ok(taddr)  # (small frames are not held up)
        with contextlib.closing(registered(taddr, 46300, source=OTHER_HOST)) as victim:
            victim.settimeout(2 * frame_timeout)
            message = {
                "type": "REQUEST_PUBLISH",
                "filename": "honest.bin",
                "fileinfo": [chunks * 1024, chunks],
            }
            message |= {"chunksize": 1024, "chunkhashes": base64.b64encode(os.urandom(32 * chunks)).decode()}
            body = compact(message)
            assert len(body) > MAX_SMALL_FRAME
            victim.sendall(frame(body))
            try:
                reply: dict[str, Any] | str = recv_json(victim)
            except (OSError, EOFError) as exc:
                reply = f"{type(exc).__name__}: {exc}"
            still = sum(still_open(sock) for sock in held)
        print(
            f"honest large publish from {OTHER_HOST}: {reply}; {still} of {len(held)} held frames still open"
        )
        assert reply == {"type": "REPLY_PUBLISH", "result": True, "message": ""}, (
            f"the honest publish got {reply!r} (the tracker's log: {tracker.stderr[-3:]})"
        )
        assert still == len(held), (
            f"the honest publish was answered only after the held frames were cut off ({frame_timeout} s)"
        )
    assert_healthy(tracker)


# -- 4. caps -------------------------------------------------------------------------------------------
def test_publishing_past_the_unhashed_cap_is_refused_clearly(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    swarm = start_swarm(procs, tmp_path)
    ok = {"type": "REPLY_PUBLISH", "result": True, "message": ""}
    with sockets() as socks:
        socks.append(registered(swarm.taddr, 46400))
        attacker = socks[-1]
        assert publish(attacker, "seed-style.bin", MAX_UNHASHED_CHUNKS_PER_PEER) == ok
        refused = publish(attacker, "one-more.bin", 1)
        assert refused == {
            "type": "REPLY_PUBLISH",
            "result": False,
            "message": (
                f"this peer already publishes {MAX_UNHASHED_CHUNKS_PER_PEER} chunks without chunk hashes; the "
                f"limit is {MAX_UNHASHED_CHUNKS_PER_PEER} (publish with chunkhashes for more)"
            ),
        }
        too_big = publish(socks[-1], "too-big.bin", MAX_UNHASHED_CHUNKS_PER_PEER + 1)
        assert too_big["result"] is False and "without chunk hashes" in too_big["message"], too_big
        # with hashes the same peer may publish more; another peer has a budget of its own
        assert publish(attacker, "hashed.bin", 1, hashes=hashlib.sha256(b"x").digest()) == ok
        socks.append(registered(swarm.taddr, 46401))
        assert publish(socks[-1], "other.bin", 1) == ok
        listed = file_list(swarm.taddr)
        assert {"seed-style.bin", "hashed.bin", "other.bin", NAME} <= set(listed)
        assert not {"one-more.bin", "too-big.bin"} & set(listed)
    assert_victim_served(swarm, tmp_path / "out.bin")
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


def flood_publishes(
    taddr: str,
    socks: list[socket.socket],
    connections: int,
    per_connection: int,
    name: Callable[[int, int], str],
    first_port: int,
    chunks: int = 1,
    hashed: bool = False,
) -> list[dict[str, Any]]:
    """`connections` registered connections (appended to `socks`, left open: a peer's files stay listed only
    while its connection lives) each pipeline `per_connection` publishes of `chunks`-chunk files named
    name(connection, k), all at once; every reply."""
    replies: list[dict[str, Any]] = []
    failures: list[str] = []
    digest = base64.b64encode(hashlib.sha256(b"flood").digest() * chunks).decode() if hashed else None

    mine = [registered(taddr, first_port + i) for i in range(connections)]
    socks += mine

    def work(i: int) -> None:
        try:
            frames = []
            for k in range(per_connection):
                message: dict[str, Any] = {
                    "type": "REQUEST_PUBLISH",
                    "filename": name(i, k),
                    "fileinfo": [chunks * 1024, chunks],
                    "chunksize": 1024,
                }
                if digest is not None:
                    message["chunkhashes"] = digest
                frames.append(frame(compact(message)))
            replies.extend(pipelined(mine[i], frames, per_connection))
        except (OSError, EOFError, ValueError, AssertionError) as exc:
            failures.append(f"connection {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * flood.SOCKET_TIMEOUT)
    assert not failures, failures[:3]
    assert len(replies) == connections * per_connection
    return replies


def test_a_file_count_flood_stops_at_a_clear_refusal(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    swarm = start_swarm(procs, tmp_path)
    connections, per_connection = 256, MAX_FILES // 256 + 2  # (a few more than the cap, in all)
    with sockets() as socks:
        replies = flood_publishes(
            swarm.taddr, socks, connections, per_connection, lambda i, k: f"f{i:03d}-{k:03d}", 20000
        )
        accepted = sum(r.get("result") is True for r in replies)
        refusals = {r["message"] for r in replies if r.get("result") is not True}
        print(f"{accepted} of {len(replies)} one-chunk publishes accepted; refusals: {refusals}")
        assert accepted == MAX_FILES - 1  # (the victim's file is listed too)
        assert refusals == {f"tracker full: {MAX_FILES} files listed (the limit)"}
        # the full tracker still answers everyone, the file list included, and serves the victim
        with contextlib.closing(connect(swarm.taddr)) as sock:
            started = time.perf_counter()
            sock.sendall(frame(b'{"type":"REQUEST_FILE_LIST"}'))
            body = flood.recv_body(sock)
            took = time.perf_counter() - started
        listed = json.loads(body)["filelist"]
        print(f"REPLY_FILE_LIST of {len(listed)} files: {len(body) / MiB:.1f} MiB in {took * 1000:.0f} ms")
        assert len(listed) == MAX_FILES and NAME in listed
        assert_victim_served(swarm, tmp_path / "out.bin")
    # the flooders are gone, and so are their files
    wait_until(lambda: len(file_list(swarm.taddr)) == 1, 30, "the flooders' files to be delisted")
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


def test_a_chunk_count_flood_stops_at_a_clear_refusal(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    """512 registered connections each publish the largest file the per-peer cap allows without hashes:
    the global MAX_LISTED_CHUNKS is reached with a handful of small frames, and refused from there on."""
    swarm = start_swarm(procs, tmp_path)
    connections = MAX_LISTED_CHUNKS // MAX_UNHASHED_CHUNKS_PER_PEER + 2
    with sockets() as socks:
        replies = []
        for i in range(connections):
            socks.append(registered(swarm.taddr, 21000 + i))
            replies.append(publish(socks[-1], f"big{i:03d}.bin", MAX_UNHASHED_CHUNKS_PER_PEER))
        accepted = sum(r.get("result") is True for r in replies)
        refusals = {r["message"] for r in replies if r.get("result") is not True}
        print(f"{accepted} publishes of {MAX_UNHASHED_CHUNKS_PER_PEER} chunks accepted; refusals: {refusals}")
        assert accepted == MAX_LISTED_CHUNKS // MAX_UNHASHED_CHUNKS_PER_PEER - 1  # (the victim's 4 chunks)
        assert len(refusals) == 1 and refusals.pop().startswith("tracker full: "), replies[-1]
        assert replies[-1]["message"].endswith(f"chunks listed; the limit is {MAX_LISTED_CHUNKS}")
        assert_victim_served(swarm, tmp_path / "out.bin")
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


@pytest.mark.xfail(reason='known: no cap on the encoded size of the file list (16,384 long escaped names exceed a frame); see issue 9 closing note', strict=False)
def test_long_names_cannot_make_the_file_list_unanswerable(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    """Names may be 255 bytes, and each `"` in one is written as two bytes in JSON. Below the file-count cap,
    a flood of such names (published with a hash, so each also has a content id in the list) must not make
    REPLY_FILE_LIST larger than a frame: the tracker must refuse a publish before that, not every `ls`."""
    swarm = start_swarm(procs, tmp_path)
    connections, per_connection = 64, 256

    def name(i: int, k: int) -> str:
        return '"' * 247 + f"{i:03d}-{k:03d}"

    with sockets() as socks:
        replies = flood_publishes(swarm.taddr, socks, connections, per_connection, name, 22000, hashed=True)
        accepted = sum(r.get("result") is True for r in replies)
        refusals = {r["message"] for r in replies if r.get("result") is not True}
        print(f"{accepted} of {len(replies)} publishes with 255-byte names accepted; refusals: {refusals}")
        assert all(r.startswith("tracker full: ") for r in refusals), refusals
        with contextlib.closing(connect(swarm.taddr)) as sock:
            sock.sendall(frame(b'{"type":"REQUEST_FILE_LIST"}'))
            body = flood.recv_body(sock)
        reply = json.loads(body)
        assert reply["type"] == "REPLY_FILE_LIST", (
            f"{accepted} long names listed; REQUEST_FILE_LIST got {reply}"
        )
        print(f"REPLY_FILE_LIST of {len(reply['filelist'])} files: {len(body) / MiB:.1f} MiB")
        listed = run("ls", "--tracker", swarm.taddr, "--json", timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert NAME in json.loads(listed.stdout)
    assert_healthy(swarm.tracker, swarm.sharer)


@pytest.mark.xfail(reason="known: Registry.publish sums a peer's files on every publish (O(files) per publish); see issue 9 closing note", strict=False)
def test_a_peers_publish_costs_the_same_however_many_files_it_has(procs: Callable[..., Proc]) -> None:
    """Bounded work per frame: a publish must not cost the tracker more because the same peer already
    publishes many files. Tracker CPU time of the first and of the third 1,000 one-chunk publishes of one
    connection, compared (a ratio: the machine's speed does not matter)."""
    tracker, taddr = start_tracker(procs)
    batch = 1000
    costs = []
    with contextlib.closing(registered(taddr, 46500)) as sock:
        for b in range(3):
            frames = [
                frame(compact({"type": "REQUEST_PUBLISH", "filename": f"p{b}-{k:05d}", "fileinfo": [1, 1]}))
                for k in range(batch)
            ]
            before = cpu_seconds(tracker.pid)
            replies = pipelined(sock, frames, batch)
            costs.append(cpu_seconds(tracker.pid) - before)
            assert all(r.get("result") is True for r in replies), replies[-1]
    print(
        "tracker CPU per publish: "
        + ", ".join(f"{c / batch * 1e6:.0f} us" for c in costs)
        + f" (batches of {batch})"
    )
    assert_healthy(tracker)
    assert costs[2] <= 2 * max(costs[0], 0.02), (
        f"publishes 2,001-3,000 of one peer cost {costs[2] / max(costs[0], 1e-9):.1f}x publishes 1-1,000"
    )


# -- 4b. the same caps, without sockets, at small sizes ---------------------------------------------------
P1, P2, P3 = Address("10.0.0.1", 1), Address("10.0.0.2", 2), Address("10.0.0.3", 3)


def caps_registry(**caps: int) -> Registry:
    reg = Registry(**caps)
    for peer in (P1, P2, P3):
        reg.add_peer(peer)
    return reg


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(PublishRefused) as info:
        call()
    return str(info.value)


def test_registry_file_cap_refuses_then_frees_room() -> None:
    reg = caps_registry(max_files=3)
    for i in range(3):
        reg.publish(P1 if i < 2 else P2, f"f{i}", 1024, 1, 1024)
    assert refused(lambda: reg.publish(P3, "f3", 1024, 1, 1024)) == "tracker full: 3 files listed (the limit)"
    assert set(reg.file_list()) == {"f0", "f1", "f2"}
    assert reg.remove_peer(P1) == ["f0", "f1"]
    reg.publish(P3, "f3", 1024, 1, 1024)
    assert set(reg.file_list()) == {"f2", "f3"}


def test_registry_listed_chunks_cap() -> None:
    reg = caps_registry(max_listed_chunks=10)
    reg.publish(P1, "a", 6 * 1024, 6, 1024)
    assert (
        refused(lambda: reg.publish(P2, "b", 5 * 1024, 5, 1024))
        == "tracker full: 6 chunks listed; the limit is 10"
    )
    reg.publish(P2, "b", 4 * 1024, 4, 1024)
    assert reg.listed_chunks == 10
    reg.remove_peer(P1)
    assert reg.listed_chunks == 4
    reg.publish(P3, "c", 6 * 1024, 6, 1024)


def test_registry_holder_caps_refuse_publishes_and_ignore_registrations() -> None:
    reg = caps_registry(max_holder_records=2, max_holder_bits=100)
    reg.publish(P1, "a", 4 * 1024, 4, 1024)
    assert reg.register_chunks(P2, "a", [0, 1]) == [0, 1]  # the second holder record
    assert reg.register_chunks(P3, "a", [2]) == []  # no room for a third: ignored, as documented
    message = refused(lambda: reg.publish(P3, "b", 1024, 1, 1024))
    assert message == "tracker full: 2 holder records of 8 chunks (limits 2 and 100)"
    assert "b" not in reg.file_list()
    reg.remove_peer(P2)
    assert reg.holder_records == 1 and reg.holder_bits == 4
    reg.publish(P3, "b", 1024, 1, 1024)
    bits = caps_registry(max_holder_bits=10)
    bits.publish(P1, "a", 8 * 1024, 8, 1024)
    assert refused(lambda: bits.publish(P2, "b", 3 * 1024, 3, 1024)).startswith(
        "tracker full: 1 holder records"
    )
    assert bits.register_chunks(P2, "a", [0]) == []  # a new record of 8 bits would pass the 10


def test_registry_per_peer_caps() -> None:
    reg = caps_registry()
    digest = b"\x00" * 32 * MAX_CHUNKS
    per_peer = MAX_PUBLISHED_CHUNKS_PER_PEER // MAX_CHUNKS
    for i in range(per_peer):
        reg.publish(
            P1, f"h{i}", MAX_CHUNKS * 1024, MAX_CHUNKS, 1024, digest[: 32 * MAX_CHUNKS - i] + bytes(i)
        )
    message = refused(lambda: reg.publish(P1, "h", 1024, 1, 1024, bytes(32)))
    assert message == (
        f"this peer already publishes {MAX_PUBLISHED_CHUNKS_PER_PEER} chunks; the limit is {MAX_PUBLISHED_CHUNKS_PER_PEER}"
    )
    reg.publish(P2, "u", MAX_UNHASHED_CHUNKS_PER_PEER * 1024, MAX_UNHASHED_CHUNKS_PER_PEER, 1024)
    assert "without chunk hashes" in refused(lambda: reg.publish(P2, "v", 1024, 1, 1024))
    reg.publish(P2, "w", 1024, 1, 1024, bytes(32))


# -- 5. connections per host ---------------------------------------------------------------------------
def test_one_host_cannot_take_every_connection(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    per_host = 2048
    raise_nofile(per_host + 1024)
    swarm = start_swarm(procs, tmp_path)
    tracker = swarm.tracker.pid
    fds_before = settled_fds(tracker)
    refusal = {"type": "ERROR", "message": f"too many connections from 127.0.0.1 (limit {per_host})"}
    with sockets() as idle:
        # the victim's own tracker connection is one of the 2,048
        idle += open_idle(swarm.taddr, per_host - 1, tracker)
        for _ in range(10):
            with contextlib.closing(connect(swarm.taddr)) as extra:
                assert recv_json(extra) == refusal
                assert flood.at_eof(extra)
        # another host is served meanwhile, and so is the registered victim
        assert file_list(swarm.taddr, source=OTHER_HOST)[NAME] == [SIZE, -(-SIZE // CHUNK)]
        located = locations(swarm.taddr, source=OTHER_HOST)
        assert located["chunkinfo"][swarm.paddr] == list(range(-(-SIZE // CHUNK))), located
        with contextlib.closing(registered(swarm.taddr, 46600, source=OTHER_HOST)) as other:
            assert publish(other, "from-another-host.bin", 1)["result"] is True
    wait_until(fds_at_most(tracker, fds_before + 10), 30, "the tracker to release the idle connections")
    ping_ok(swarm.taddr)
    assert_victim_served(swarm, tmp_path / "out.bin")
    assert_victim_kept_its_tracker(swarm.sharer)
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 6. hostile names ----------------------------------------------------------------------------------
HOSTILE_NAMES = {
    "\x1b[2J\x1b[H.bin": "U+001B",  # ESC: clear the screen
    "\x1b]0;pwned\x07.bin": "U+001B",  # OSC: set the window title
    "a\x7fb.bin": "U+007F",  # DEL
    "\x9b31mred.bin": "U+009B",  # C1 CSI
    "invoice\u202egnp.exe": "U+202E",  # bidi override: shows as "invoiceexe.png"
    "\u2066isolate.bin": "U+2066",
    "tab\there.bin": "U+0009",
    "new\nline.bin": "U+000A",
}
HOSTILE_HOSTS = {
    "127.0.0.1\x1b[31m": "U+001B",
    "\x1b]52;c;cHduZWQ=\x07": "U+001B",  # OSC 52: write the clipboard
    "host\x7f": "U+007F",
    "\x9b2J": "U+009B",
    "evil\u202e.example": "U+202E",
}
#: rich markup (rich would print it as "lit .bin"). No closing tag: "/" is a path separator, never in a name.
LITERAL_NAME = "[red]lit[red] [x][bold].bin"
#: the same with closing tags: refused for its "/", like any path
SLASHED_NAME = "[red]lit[/red] [/x].bin"


def test_names_and_hosts_with_control_characters_are_refused(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    swarm = start_swarm(procs, tmp_path)
    with contextlib.closing(registered(swarm.taddr, 46700)) as sock:
        for name, code in HOSTILE_NAMES.items():
            for kind, message in (
                ("REQUEST_PUBLISH", {"fileinfo": [1024, 1], "chunksize": 1024}),
                ("REQUEST_FILE_LOCATION", {}),
                ("REQUEST_CHUNK_REGISTER", {"chunknum": 0}),
            ):
                assert request(sock, {"type": kind, "filename": name, **message}) == {
                    "type": "ERROR",
                    "message": f"invalid message: filename contains a control character ({code})",
                    "request": kind,
                }, (kind, name)
        for host, code in HOSTILE_HOSTS.items():
            with contextlib.closing(connect(swarm.taddr)) as other:
                assert request(other, {"type": "REQUEST_REGISTER", "address": [host, 46701]}) == {
                    "type": "ERROR",
                    "message": f"invalid message: host contains a control character ({code})",
                    "request": "REQUEST_REGISTER",
                }, host
                # ...and the connection was not registered
                assert publish(other, "after-bad-host.bin", 1) == {
                    "type": "REPLY_PUBLISH",
                    "result": False,
                    "message": "peer is not registered (send REQUEST_REGISTER first)",
                }
        assert file_list(swarm.taddr) == {NAME: [SIZE, -(-SIZE // CHUNK)]}
        # square brackets are only text: accepted, and shown exactly (a "/" is refused as in any name)
        slashed = publish(sock, SLASHED_NAME, 1)
        assert slashed["type"] == "ERROR" and slashed["request"] == "REQUEST_PUBLISH", slashed
        assert slashed["message"].startswith("invalid message: Expected `str` matching regex"), slashed
        assert slashed["message"].endswith("at `$.filename`"), slashed
        assert publish(sock, LITERAL_NAME, 1) == {"type": "REPLY_PUBLISH", "result": True, "message": ""}
        assert set(file_list(swarm.taddr)) == {NAME, LITERAL_NAME}
        as_json = run("ls", "--tracker", swarm.taddr, "--json", timeout=30)
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)[LITERAL_NAME] == [1024, 1]
        table = run("ls", "--tracker", swarm.taddr, timeout=30, env={"COLUMNS": "200"})
        assert table.returncode == 0, table.stderr
        assert LITERAL_NAME in table.stdout, table.stdout
    # none of it reached the tracker's log as a live control character
    log = "\n".join(swarm.tracker.stderr)
    assert not any(ch in log for ch in ("\x1b", "\x9b", "\x7f", "\u202e", "\u2066", "\x07")), log[-2000:]
    assert_victim_served(swarm, tmp_path / "out.bin")
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 7. eviction of a file by fake holders ---------------------------------------------------------------
@pytest.mark.xfail(reason='known: a location reply lists every partial holder (200 fake holders of alternate chunks exceed a frame); see issue 9 closing note', strict=False)
def test_fake_holders_cannot_make_a_file_unlocatable(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    """Any registered connection may claim chunks of any listed file (the seed's REQUEST_CHUNK_REGISTER).
    Claims of every other chunk make a run per chunk in each claimant's part of REPLY_FILE_LOCATION;
    enough claimants must not push the reply past the frame limit, or nobody can download the file."""
    tracker, taddr = start_tracker(procs)
    chunks = 16384
    src = make_file(tmp_path / "victim.bin", chunks * 1024, seed=5)
    sharer, paddr = share(procs, src, taddr, chunk_size="1K")
    claimants = 200
    with sockets() as socks:
        for i in range(claimants):
            socks.append(registered(taddr, 23000 + i))
            claimed = list(range(i % 2, chunks, 2))
            message = {"type": "REQUEST_CHUNK_REGISTER", "filename": src.name, "chunknum": claimed[0]}
            socks[-1].sendall(frame(compact({**message, "chunknums": claimed})))
        for sock in socks:  # (a ping answered: the claims before it were taken)
            assert request(sock, {"type": "PEER_PING_PONG"}) == {"type": "PEER_PING_PONG"}
        located = locations(taddr, src.name, ranges=True)
        assert located["type"] == "REPLY_FILE_LOCATION", f"with {claimants} claimants: {located}"
        assert located["chunkranges"][paddr] == [[0, chunks]]
        dest = tmp_path / "out.bin"
        got = run("get", src.name, str(dest), "--tracker", taddr, "--host", "127.0.0.1", timeout=90)
        assert got.returncode == 0, got.stderr
        assert dest.read_bytes() == src.read_bytes()
    assert_victim_kept_its_tracker(sharer)
    assert_healthy(tracker, sharer)
