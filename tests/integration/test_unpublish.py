"""`unpublish`: a peer stops sharing a name and keeps running. The tracker side (REQUEST_UNPUBLISH on real
sockets, a seed-only tracker, a reconnection), the local control socket, and `p2pfs unpublish` against
real `share` and `get --seed` processes. Every test has a runtime directory of its own
(P2PFS_RUNTIME_DIR), so it sees only its own peers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from p2pfs.address import Address
from p2pfs.errors import P2PFSError, TrackerError
from p2pfs.net import connect
from p2pfs.peer import control
from p2pfs.peer.node import Peer
from p2pfs.peer.tracker_client import TrackerClient
from p2pfs.protocol import messages as m
from p2pfs.tracker.server import TrackerServer
from tests.procs import Proc, make_file, run

CHUNK = 65_536


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A runtime directory for this test's peers, not created yet (the first peer creates it). Under a
    short temporary directory: a Unix socket's path must fit in 107 bytes."""
    parent = Path(tempfile.mkdtemp(prefix="p2pfs-rt-"))
    yield parent / "run"
    shutil.rmtree(parent, ignore_errors=True)


def env_of(runtime: Path, **more: str) -> dict[str, str]:
    return {"P2PFS_RUNTIME_DIR": str(runtime), **more}


def share(
    procs: Callable[..., Proc], taddr: str, runtime: Path, *files: Path, env: dict[str, str] | None = None
) -> tuple[Proc, str]:
    proc = procs(
        "share",
        *map(str, files),
        "--tracker",
        taddr,
        "--host",
        "127.0.0.1",
        "--chunk-size",
        "64K",
        env=env_of(runtime, **(env or {})),
    )
    address = proc.listening()
    for f in files:
        proc.expect(rf"^published {re.escape(f.name)} ")
    proc.expect(r"^serving")
    return proc, address


def unpublish(runtime: Path, *args: str):  # type: ignore[no-untyped-def]
    return run("unpublish", *args, env=env_of(runtime))


def ls_json(taddr: str) -> dict[str, list[int]]:
    got = run("ls", "--tracker", taddr, "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def one_clean_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def ask_chunk(address: str, name: str, chunk: int) -> dict[str, object]:
    """One PEER_REQUEST_CHUNK (the seed's form) to a chunk server, by hand; its reply's JSON."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = json.dumps({"type": "PEER_REQUEST_CHUNK", "filename": name, "chunknum": chunk}).encode()
        sock.sendall(struct.pack(">I", len(body)) + body)
        reader = sock.makefile("rb")
        (length,) = struct.unpack(">I", reader.read(4))
        return json.loads(reader.read(length))  # type: ignore[no-any-return]


# -- the tracker, in process, on real sockets ------------------------------------------------------------
async def test_the_tracker_removes_only_the_senders_own_holding() -> None:
    server = TrackerServer()
    address = await server.start("127.0.0.1", 0)
    one, two, anonymous = TrackerClient(), TrackerClient(), TrackerClient()
    try:
        await one.connect(address, Address("127.0.0.1", 7001))
        await two.connect(address, Address("127.0.0.1", 7002))
        await anonymous.connect(address, None)
        hashes = bytes(range(32)) * 2
        await one.publish("a.bin", 2048, 2, 1024, hashes)
        await two.publish("a.bin", 2048, 2, 1024, hashes)  # a second complete holder
        await two.publish("b.bin", 1024, 1, 1024)

        with pytest.raises(TrackerError, match=r"^unpublish of 'a.bin' refused: peer is not registered"):
            await anonymous.unpublish("a.bin")
        with pytest.raises(TrackerError, match=r"^unpublish of 'b.bin' refused: this peer does not hold 'b.bin'$"):
            await one.unpublish("b.bin")  # another peer's file: nothing of it is touched
        with pytest.raises(TrackerError, match=r"^unpublish of 'nope.bin' refused: 'nope.bin' is not listed$"):
            await one.unpublish("nope.bin")
        assert set((await anonymous.locations("b.bin")).holder_chunks()) == {"127.0.0.1:7002"}

        await one.unpublish("a.bin")
        location = await anonymous.locations("a.bin")
        assert location.holder_chunks() == {"127.0.0.1:7002": [0, 1]}
        assert location.publishers == ["127.0.0.1:7002"]
        assert one.connected  # still registered: it may publish again
        with pytest.raises(TrackerError, match="does not hold 'a.bin'"):
            await one.unpublish("a.bin")

        await two.unpublish("a.bin")  # the last holder: delisted
        assert (await anonymous.file_list()).filelist == {"b.bin": (1024, 1)}
        await one.publish("a.bin", 2048, 2, 1024, hashes)
        assert (await anonymous.file_list()).filelist == {"a.bin": (2048, 2), "b.bin": (1024, 1)}
    finally:
        for client in (one, two, anonymous):
            await client.close()
        await server.stop()


@pytest.fixture
async def seed_only_tracker() -> AsyncIterator[Address]:
    """A tracker that knows only the seed's requests: it registers, accepts publishes, and answers
    anything else as a p2pfs tracker without the extension does (ERROR, an unknown type)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                kind = json.loads(await reader.readexactly(length)).get("type")
                if kind == "REQUEST_REGISTER":
                    reply: dict[str, object] = {"type": "REPLY_REGISTER"}
                elif kind == "REQUEST_PUBLISH":
                    reply = {"type": "REPLY_PUBLISH", "result": True, "message": ""}
                else:
                    unknown = f"invalid message: Invalid value '{kind}' - at `$.type`"
                    reply = {"type": "ERROR", "message": unknown, "request": kind}
                body = json.dumps(reply).encode()
                writer.write(struct.pack(">I", len(body)) + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    yield Address("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()


async def test_a_seed_only_tracker_cannot_be_told_but_the_peer_stops_serving_anyway(
    tmp_path: Path, runtime: Path, seed_only_tracker: Address, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the control socket too: the request succeeds locally, with the tracker's refusal as a
    warning."""
    monkeypatch.setenv("P2PFS_RUNTIME_DIR", str(runtime))
    src = make_file(tmp_path / "a.bin", 5000, seed=3)
    peer = Peer(host="127.0.0.1")
    try:
        address = await peer.start()
        await peer.connect(seed_only_tracker)
        await peer.publish(src, chunk_size=1024)
        with pytest.raises(P2PFSError, match=r"^this peer does not share 'other.bin'$"):
            await peer.unpublish("other.bin")

        (found,) = await control.live_peers()
        assert re.fullmatch(rf"peer-{os.getpid()}(-\d+)?\.sock", found.path.name) and found.path.parent == runtime
        assert (found.status.names, found.status.downloading) == (["a.bin"], [])
        assert (found.status.address, found.status.tracker) == (str(address), str(seed_only_tracker))
        reply = await control.unpublish(found, "a.bin")
        assert reply.result is True
        assert reply.message == f"stopped sharing 'a.bin' here, but tracker {seed_only_tracker} does not support unpublish"
        assert "a.bin" not in peer.library
        assert peer.tracker.connected  # the ERROR did not cost the tracker connection
        conn = await connect(address)
        try:
            answer = await conn.request(m.PeerRequestChunk(filename="a.bin", chunknum=0))
        finally:
            await conn.aclose()
        assert answer == m.Error(message="file not shared here: a.bin", request="PEER_REQUEST_CHUNK")
        assert src.read_bytes() == make_file(tmp_path / "again.bin", 5000, seed=3).read_bytes()  # untouched

        # the same from Peer.unpublish itself: one line, a TrackerError
        await peer.publish(src, chunk_size=1024)
        with pytest.raises(TrackerError, match=r"does not support unpublish$") as info:
            await peer.unpublish("a.bin")
        assert "\n" not in str(info.value) and "a.bin" not in peer.library
    finally:
        await peer.stop()
    assert list(runtime.iterdir()) == []  # the socket is removed at stop


async def test_a_reconnection_does_not_announce_an_unpublished_name(tmp_path: Path) -> None:
    first = TrackerServer()
    address = await first.start("127.0.0.1", 0)
    back = asyncio.Event()
    peer = Peer(host="127.0.0.1", control=False, on_tracker_status=lambda line: back.set() if "is back" in line else None)
    again: TrackerServer | None = None
    try:
        await peer.start()
        await peer.connect(address)
        await peer.publish(make_file(tmp_path / "a.bin", 3000, seed=1), chunk_size=1024)
        await peer.publish(make_file(tmp_path / "b.bin", 2000, seed=2), chunk_size=1024)
        await peer.unpublish("a.bin")
        assert first.registry.file_list() == {"b.bin": (2000, 2)}

        await first.stop()  # the peer reconnects to the tracker restarted on the same port
        again = TrackerServer()
        await again.start("127.0.0.1", address.port)
        async with asyncio.timeout(30):
            await back.wait()
        # (the announce that follows "is back" sends its publish before this request goes out)
        assert (await peer.file_list()).filelist == {"b.bin": (2000, 2)}
    finally:
        await peer.stop()
        if again is not None:
            await again.stop()


async def test_the_control_socket_answers_bad_requests_with_error_and_goes_on(
    runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PFS_RUNTIME_DIR", str(runtime))
    off = Peer(host="127.0.0.1", control=False)
    peer = Peer(host="127.0.0.1")
    try:
        await off.start()
        assert not runtime.exists()  # control=False: no directory, no socket
        await peer.start()
        (path,) = runtime.iterdir()
        reader, writer = await asyncio.open_unix_connection(str(path))
        replies = []
        bodies = (
            b"{nope",
            b'{"type":"CONTROL_EVERYTHING"}',
            b'{"type":"CONTROL_UNPUBLISH","filename":"../x"}',
            b'{"type":"CONTROL_STATUS"}',
        )
        for body in bodies:
            writer.write(struct.pack(">I", len(body)) + body)
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            replies.append(json.loads(await reader.readexactly(length)))
        writer.close()
        assert [r["type"] for r in replies] == ["ERROR", "ERROR", "ERROR", "CONTROL_STATUS_REPLY"]
        assert replies[0]["message"].startswith("malformed JSON")
        assert replies[1]["request"] == "CONTROL_EVERYTHING"
        assert replies[2]["request"] == "CONTROL_UNPUBLISH"
        assert replies[3] == {
            "type": "CONTROL_STATUS_REPLY",
            "pid": os.getpid(),
            "address": str(peer.address),
            "tracker": None,
            "names": [],
            "downloading": [],
        }
    finally:
        await peer.stop()
        await off.stop()


# -- p2pfs unpublish against real processes ---------------------------------------------------------------
def test_unpublish_one_name_and_the_peer_goes_on_serving_the_other(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path
) -> None:
    _, taddr = tracker
    a = make_file(tmp_path / "a.bin", 300_000, seed=1)
    b = make_file(tmp_path / "b.bin", 200_000, seed=2)
    original = a.read_bytes()
    sharer, saddr = share(procs, taddr, runtime, a, b)

    elsewhere = unpublish(runtime, "a.bin", "--tracker", "127.0.0.1:1")  # not this peer's tracker
    assert elsewhere.returncode == 1
    assert one_clean_error_line(elsewhere.stderr) == (
        "p2pfs: error: no running p2pfs peer on this machine with tracker 127.0.0.1:1 shares 'a.bin'"
    )
    assert set(ls_json(taddr)) == {"a.bin", "b.bin"}

    done = unpublish(runtime, "a.bin", "--tracker", taddr)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"unpublished a.bin (peer {saddr})"]
    assert done.stderr == ""
    assert ls_json(taddr) == {"b.bin": [200_000, 4]}
    assert sharer.popen.poll() is None  # still running
    assert ask_chunk(saddr, "a.bin", 0) == {
        "type": "ERROR",
        "message": "file not shared here: a.bin",
        "request": "PEER_REQUEST_CHUNK",
    }

    got = run("get", "b.bin", str(tmp_path / "b.out"), "--tracker", taddr, env=env_of(runtime))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "b.out").read_bytes() == b.read_bytes()
    got = run("get", "a.bin", str(tmp_path / "a.out"), "--tracker", taddr, env=env_of(runtime))
    assert got.returncode == 1
    assert "'a.bin' is not listed" in one_clean_error_line(got.stderr)
    assert not (tmp_path / "a.out").exists()
    assert a.read_bytes() == original  # the file on disk is untouched

    again = unpublish(runtime, "a.bin")
    assert again.returncode == 1
    assert one_clean_error_line(again.stderr) == "p2pfs: error: no running p2pfs peer on this machine shares 'a.bin'"
    assert sharer.interrupt() == 0
    assert "Traceback" not in "\n".join(sharer.stderr)


def test_unpublish_of_a_name_no_local_peer_shares_is_one_error_line(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path
) -> None:
    _, taddr = tracker
    nobody = unpublish(runtime, "nope.bin")  # no peer at all: the runtime directory does not exist yet
    assert nobody.returncode == 1 and nobody.stdout == ""
    assert one_clean_error_line(nobody.stderr) == "p2pfs: error: no running p2pfs peer on this machine shares 'nope.bin'"

    sharer, saddr = share(procs, taddr, runtime, make_file(tmp_path / "a.bin", 70_000))
    other = unpublish(runtime, "nope.bin")
    assert other.returncode == 1 and other.stdout == ""
    assert one_clean_error_line(other.stderr) == "p2pfs: error: no running p2pfs peer on this machine shares 'nope.bin'"

    both = unpublish(runtime, "nope.bin", "a.bin")  # the known name is still unpublished
    assert both.returncode == 1
    assert both.stdout.splitlines() == [f"unpublished a.bin (peer {saddr})"]
    assert "'nope.bin'" in one_clean_error_line(both.stderr)
    assert ls_json(taddr) == {}
    assert sharer.popen.poll() is None


def test_a_peer_killed_with_kill_9_leaves_a_stale_socket_that_unpublish_skips(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path
) -> None:
    _, taddr = tracker
    victim, _ = share(procs, taddr, runtime, make_file(tmp_path / "s.bin", 70_000, seed=1))
    survivor, saddr = share(procs, taddr, runtime, make_file(tmp_path / "t.bin", 70_000, seed=2))
    stale = runtime / f"peer-{victim.pid}.sock"
    assert stale.exists()
    victim.kill9()
    assert stale.exists()  # nobody removed it
    # a socket nobody listens on, of a process that is alive (this one): skipped, but left in place
    refused = runtime / f"peer-{os.getpid()}-99.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(refused))

    gone = unpublish(runtime, "s.bin")
    assert gone.returncode == 1
    assert one_clean_error_line(gone.stderr) == "p2pfs: error: no running p2pfs peer on this machine shares 's.bin'"
    assert not stale.exists()  # its pid is dead: removed
    assert refused.exists()

    done = unpublish(runtime, "t.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"unpublished t.bin (peer {saddr})"]
    assert survivor.popen.poll() is None


def test_two_local_holders_both_stop_and_the_file_is_delisted(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "x.bin", 500_000, seed=4)
    sharer, saddr = share(procs, taddr, runtime, src)
    (tmp_path / "copy").mkdir()
    seeder = procs(
        "get", "x.bin", str(tmp_path / "copy"), "--tracker", taddr, "--seed", "--host", "127.0.0.1", env=env_of(runtime)
    )
    gaddr = seeder.expect(r"^seeding x\.bin on (\S+);").group(1)
    assert set(ls_json(taddr)) == {"x.bin"}

    done = unpublish(runtime, "x.bin", "--tracker", taddr)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(
        [f"unpublished x.bin (peer {saddr})", f"unpublished x.bin (peer {gaddr})"]
    )
    assert ls_json(taddr) == {}
    assert sharer.popen.poll() is None and seeder.popen.poll() is None
    got = run("get", "x.bin", str(tmp_path / "x.out"), "--tracker", taddr, env=env_of(runtime))
    assert got.returncode == 1 and "'x.bin' is not listed" in one_clean_error_line(got.stderr)
    assert (tmp_path / "copy" / "x.bin").read_bytes() == src.read_bytes()  # the copy stays on disk


def test_a_name_being_downloaded_is_refused_and_the_download_goes_on(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "slow.bin", 10 * CHUNK, seed=5)
    share(procs, taddr, runtime, src, env={"P2PFS_TEST_DELAY": "0.3"})  # ~3 s to send the 10 chunks
    downloader_runtime = runtime.parent / "downloader"
    getter = procs(
        "get", "slow.bin", str(tmp_path / "slow.out"), "--tracker", taddr, "--json", "--host", "127.0.0.1",
        env=env_of(downloader_runtime),
    )
    getter.expect(r'"event": "progress"')
    refused = unpublish(downloader_runtime, "slow.bin")  # (only the downloader is asked)
    assert refused.returncode == 1 and refused.stdout == ""
    line = one_clean_error_line(refused.stderr)
    assert line.startswith("p2pfs: error: slow.bin: peer 127.0.0.1:") and "'slow.bin' is being downloaded;" in line
    assert getter.wait() == 0, getter.stderr
    assert (tmp_path / "slow.out").read_bytes() == src.read_bytes()


def test_the_control_directory_is_0700_and_the_socket_0600_and_removed_at_stop(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path
) -> None:
    _, taddr = tracker
    sharer, _ = share(procs, taddr, runtime, make_file(tmp_path / "p.bin", 1000))
    st = os.lstat(runtime)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    sock = runtime / f"peer-{sharer.pid}.sock"
    st = os.lstat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert sharer.interrupt() == 0
    assert not sock.exists()


@pytest.mark.parametrize("unsafe", ["mode 0755", "symlink", "another owner"])
def test_an_unsafe_runtime_directory_is_refused(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], runtime: Path, unsafe: str
) -> None:
    _, taddr = tracker
    real = runtime.parent / "real"
    real.mkdir(mode=0o700)
    if unsafe == "mode 0755":
        runtime.mkdir()
        os.chmod(runtime, 0o755)
        real = runtime
    elif unsafe == "symlink":
        runtime.symlink_to(real)
    else:
        if os.getuid() != 0:
            pytest.skip("needs root to give the directory to another user")
        runtime.mkdir(mode=0o700)
        os.chown(runtime, 1, 1)
        real = runtime
    sharer, _ = share(procs, taddr, runtime, make_file(tmp_path / "u.bin", 1000))  # serves all the same
    assert list(real.iterdir()) == []  # no socket

    refused = unpublish(runtime, "u.bin")
    assert refused.returncode == 1
    line = one_clean_error_line(refused.stderr)
    assert line.startswith(f"p2pfs: error: refusing {runtime}: "), line
    assert ls_json(taddr) == {"u.bin": [1000, 1]}

    assert sharer.interrupt() == 0
    sharer.wait()  # (every stderr line read)
    warnings = [line for line in sharer.stderr if "control socket" in line]
    assert len(warnings) == 1 and f"refusing {runtime}" in warnings[0], sharer.stderr
