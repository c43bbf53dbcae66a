"""The seed's fault list, injected for real with kill -9 mid-transfer.

Holders are slowed with the test-only P2PFS_TEST_DELAY (seconds per chunk reply) so that "mid-transfer"
is a moment the test can reach by awaiting a progress line, not a race against the machine's speed.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from tests.procs import Proc, make_file, run

SLOW = {"P2PFS_TEST_DELAY": "0.02"}
CHUNKS = 80
CHUNK = 64 * 1024


def share(procs: Callable[..., Proc], tracker: str, path: Path, env: dict[str, str] | None = None) -> Proc:
    proc = procs(
        "share", str(path), "--tracker", tracker, "--host", "127.0.0.1", "--chunk-size", "64K", env=env
    )
    proc.listening()
    proc.expect(rf"published {path.name} ")
    return proc


def progress_at_least(proc: Proc, chunks: int) -> dict[str, object]:
    while True:
        event = json.loads(proc.expect(r'^\{"event"').string)
        if event["event"] == "progress" and int(event["chunks_done"]) >= chunks:  # type: ignore[call-overload]
            return event  # type: ignore[no-any-return]
        assert event["event"] != "done", "download finished before the fault could be injected"


def last_event(proc: Proc) -> dict[str, object]:
    lines = [line for line in proc.stdout if line.startswith("{")]
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def test_holder_killed_mid_transfer_others_take_over(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", CHUNKS * CHUNK - 123, seed=3)
    first = share(procs, taddr, src, env=SLOW)
    (tmp_path / "b").mkdir()
    second = procs(
        "get", "f.bin", str(tmp_path / "b" / "f.bin"), "--tracker", taddr, "--seed", "--host", "127.0.0.1"
    )
    second.expect("seeding f.bin")
    # `second` is fast, `first` slow: kill the fast one so the slow one must carry the rest
    downloader = procs(
        "get",
        "f.bin",
        str(tmp_path / "out.bin"),
        "--tracker",
        taddr,
        "--json",
        "--host",
        "127.0.0.1",
        env=SLOW,
    )
    progress_at_least(downloader, 5)
    second.kill9()
    assert downloader.wait(120) == 0, downloader.stderr
    done = last_event(downloader)
    assert done["event"] == "done"
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert first.popen.poll() is None


def test_last_holder_killed_download_fails_cleanly(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", CHUNKS * CHUNK, seed=4)
    only = share(procs, taddr, src, env=SLOW)
    dest = tmp_path / "out.bin"
    downloader = procs("get", "f.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    progress_at_least(downloader, 5)
    only.kill9()
    rc = downloader.wait(60)
    assert rc != 0
    errors = [line for line in downloader.stderr if "error" in line]
    assert len(errors) == 1, downloader.stderr
    assert "f.bin" in errors[0] and "no holder left" in errors[0]
    assert "Traceback" not in "\n".join(downloader.stderr)
    assert "run it again to resume" in errors[0]
    # no file under the final name; the verified chunks are kept beside it for a resume
    assert not dest.exists()
    assert Path(str(dest) + ".part").exists() and Path(str(dest) + ".part.state").exists()
    # the tracker delisted the file: nobody can complete it
    assert json.loads(run("ls", "--tracker", taddr, "--json").stdout) == {}
    # the file comes back: the same command resumes, fetching only what is missing
    share(procs, taddr, src)
    again = run("get", "f.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    assert 5 <= done["resumed"] < CHUNKS
    assert sum(done["sources"].values()) == CHUNKS - done["resumed"]
    assert dest.read_bytes() == src.read_bytes()
    assert not Path(str(dest) + ".part").exists() and not Path(str(dest) + ".part.state").exists()


def test_tracker_killed_download_finishes_from_known_locations(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    tracker_proc, taddr = tracker
    src = make_file(tmp_path / "f.bin", CHUNKS * CHUNK, seed=5)
    share(procs, taddr, src, env=SLOW)
    dest = tmp_path / "out.bin"
    downloader = procs("get", "f.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    progress_at_least(downloader, 5)
    tracker_proc.kill9()
    assert downloader.wait(120) == 0, downloader.stderr
    assert dest.read_bytes() == src.read_bytes()


def test_tracker_restart_then_connect_again(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    tracker_proc = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
    taddr = tracker_proc.listening()
    host, port = taddr.rsplit(":", 1)
    peer = procs("peer", "--host", "127.0.0.1", "--tracker", taddr, stdin=True)
    peer.expect("connected to tracker")
    peer.send("list_file")
    peer.expect("no files published")
    tracker_proc.kill9()
    peer.send("list_file")
    peer.expect_err(r"^error: .*(not connected|unreachable)")
    restarted = procs("tracker", "--host", "127.0.0.1", "--port", port, "--no-shell")
    restarted.listening()
    peer.send(f"connect {host} {port}")
    peer.expect("connected to tracker")
    src = make_file(tmp_path / "again.bin", 100_000)
    peer.send(f"publish {src}")
    peer.expect("published again.bin")
    peer.send("list_file")
    peer.expect("again.bin")
    peer.send("exit")
    assert peer.wait(20) == 1  # (a command failed while the tracker was down: a piped shell says so)


def test_tracker_restart_is_invisible(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    """kill -9 the tracker, start a new one on the same port: peers reconnect by themselves, publish again
    and re-register their chunks, so the file list is complete again without anyone touching a peer."""
    first = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
    taddr = first.listening()
    port = taddr.rsplit(":", 1)[1]
    src = make_file(tmp_path / "r.bin", 20 * CHUNK, seed=21)
    sharer = share(procs, taddr, src)
    (tmp_path / "g").mkdir()
    getter = procs(
        "get",
        "r.bin",
        str(tmp_path / "g" / "r.bin"),
        "--tracker",
        taddr,
        "--seed",
        "--json",
        "--host",
        "127.0.0.1",
    )
    seeding = getter.expect(r'"event": "seeding"')
    getter_addr = json.loads(seeding.string)["address"]
    first.kill9()
    getter.expect(r'"event": "tracker".*unreachable')
    second = procs("tracker", "--host", "127.0.0.1", "--port", port, "--no-shell")
    second.listening()
    getter.expect(r'"event": "tracker".*is back', timeout=30)
    # wait (bounded) until both holders have announced themselves to the new tracker
    end = time.monotonic() + 30
    while True:
        listing = json.loads(run("ls", "--tracker", taddr, "--json").stdout)
        if listing == {"r.bin": [20 * CHUNK, 20]}:
            loc = _location(taddr, "r.bin")
            if getter_addr in loc and len(loc) == 2:
                break
        assert time.monotonic() < end, f"list not rebuilt: {listing}"
    assert sharer.popen.poll() is None
    got = run(
        "get", "r.bin", str(tmp_path / "again.bin"), "--tracker", taddr, "--json", "--host", "127.0.0.1"
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "again.bin").read_bytes() == src.read_bytes()


def _location(taddr: str, name: str) -> dict[str, list[int]]:
    host, port = taddr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = json.dumps({"type": "REQUEST_FILE_LOCATION", "filename": name}).encode()
        sock.sendall(struct.pack(">I", len(body)) + body)
        header = sock.recv(4, socket.MSG_WAITALL)
        (n,) = struct.unpack(">I", header)
        reply = json.loads(sock.recv(n, socket.MSG_WAITALL))
    return reply.get("chunkinfo", {})  # type: ignore[no-any-return]
