"""Resuming an interrupted download from `DEST.part` and `DEST.part.state`, with real processes.

The holder is slowed with P2PFS_TEST_DELAY (seconds per chunk reply) so that "mid-transfer" is a moment
the test reaches by awaiting a `get --json` progress line. On resume every logged chunk is hashed again:
only those that still match are kept, only the rest is fetched, and the kept ones are announced to the
tracker at once. Two downloads never share one `.part`, and chunks of a different file that was published
under the same name in between are never kept.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import liar
from tests.procs import Proc, make_file, run

CHUNKS = 80
CHUNK = 64 * 1024
SIZE = CHUNKS * CHUNK - 1000  # a short last chunk
SLOW = {"P2PFS_TEST_DELAY": "0.02"}


def share(
    procs: Callable[..., Proc], tracker: str, path: Path, env: dict[str, str] | None = None
) -> tuple[Proc, str]:
    proc = procs(
        "share", str(path), "--tracker", tracker, "--host", "127.0.0.1", "--chunk-size", "64K", env=env
    )
    address = proc.listening()
    proc.expect(rf"published {path.name} ")
    return proc, address


def get_json(procs: Callable[..., Proc], tracker: str, dest: Path, name: str = "f.bin") -> Proc:
    return procs("get", name, str(dest), "--tracker", tracker, "--json", "--host", "127.0.0.1")


def progress_at_least(proc: Proc, chunks: int) -> dict[str, object]:
    while True:
        event = json.loads(proc.expect(r'^\{"event"').string)
        if event["event"] == "progress" and int(event["chunks_done"]) >= chunks:
            return event  # type: ignore[no-any-return]
        assert event["event"] != "done", "download finished before the fault could be injected"


def part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def state(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.state")


def logged_chunks(dest: Path) -> dict[int, str]:
    """The state log: a JSON header line, then `N HEX` per verified chunk."""
    lines = state(dest).read_text().splitlines()
    header = json.loads(lines[0])
    assert header["name"] == "f.bin" and header["filesize"] == SIZE and header["chunksize"] == CHUNK, header
    logged = {}
    for line in lines[1:]:
        number, digest = line.split()
        logged[int(number)] = digest
    return logged


def interrupted_by_kill(
    procs: Callable[..., Proc], tracker: str, dest: Path, at_least: int
) -> tuple[dict[str, object], dict[int, str]]:
    """Start a download, kill -9 it after `at_least` chunks; return the last progress seen and the log."""
    downloader = get_json(procs, tracker, dest)
    seen = progress_at_least(downloader, at_least)
    downloader.kill9()
    assert part(dest).exists() and not dest.exists()
    logged = logged_chunks(dest)
    assert int(seen["chunks_done"]) <= len(logged) < CHUNKS  # type: ignore[call-overload]
    return seen, logged


def finish(tracker: str, dest: Path) -> dict[str, object]:
    """Run the same `get` again to completion; return its done event."""
    again = run("get", "f.bin", str(dest), "--tracker", tracker, "--json", "--host", "127.0.0.1")
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    assert done["event"] == "done"
    assert sum(done["sources"].values()) == CHUNKS - done["resumed"], done
    assert not part(dest).exists() and not state(dest).exists()
    return done  # type: ignore[no-any-return]


def chunk_range(chunk: int) -> tuple[int, int]:
    return chunk * CHUNK, min((chunk + 1) * CHUNK, SIZE)


def test_kill9_downloader_then_get_again_resumes(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", SIZE, seed=31)
    share(procs, taddr, src, env=SLOW)
    dest = tmp_path / "out.bin"
    seen, logged = interrupted_by_kill(procs, taddr, dest, 15)
    done = finish(taddr, dest)
    # every chunk logged before the kill survives it (the log is appended with unbuffered writes)
    assert done["resumed"] == len(logged) >= int(seen["chunks_done"]) > 0  # type: ignore[call-overload]
    assert dest.read_bytes() == src.read_bytes()


def test_corrupt_part_loses_only_the_damaged_chunk(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", SIZE, seed=32)
    share(procs, taddr, src, env=SLOW)
    dest = tmp_path / "out.bin"
    _, logged = interrupted_by_kill(procs, taddr, dest, 10)
    victim = sorted(logged)[len(logged) // 2]
    start, end = chunk_range(victim)
    with open(part(dest), "r+b") as f:
        f.seek(start + (end - start) // 2)
        f.write(b"\xde\xad\xbe\xef" * 16)
    done = finish(taddr, dest)
    assert done["resumed"] == len(logged) - 1, (done, sorted(logged), victim)
    assert dest.read_bytes() == src.read_bytes()


def test_truncated_part_loses_only_the_chunks_cut_off(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", SIZE, seed=33)
    holder, _ = share(procs, taddr, src, env=SLOW)
    dest = tmp_path / "out.bin"
    # this time the download stops because its only holder dies ("no holder left")
    downloader = get_json(procs, taddr, dest)
    progress_at_least(downloader, 10)
    holder.kill9()
    assert downloader.wait(60) != 0
    assert any("run it again to resume" in line for line in downloader.stderr), downloader.stderr
    logged = logged_chunks(dest)
    # cut the .part in the middle of the highest logged chunk: it and everything above it are gone
    highest = max(logged)
    cut = chunk_range(highest)[0] + 100
    os.truncate(part(dest), cut)
    survivors = [c for c in logged if chunk_range(c)[1] <= cut]
    assert len(survivors) < len(logged)
    share(procs, taddr, src)
    done = finish(taddr, dest)
    assert done["resumed"] == len(survivors) > 0, (done, sorted(logged), cut)
    assert dest.read_bytes() == src.read_bytes()


def test_resumed_download_announces_kept_chunks_and_serves_them(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", SIZE, seed=34)
    # slower than the other tests, so the resumed download is surely still running while we look
    share(procs, taddr, src, env={"P2PFS_TEST_DELAY": "0.05"})
    dest = tmp_path / "out.bin"
    _, logged = interrupted_by_kill(procs, taddr, dest, 8)
    kept = sorted(logged)
    resumed = get_json(procs, taddr, dest)
    address = json.loads(resumed.expect(r'"event": "listening"').string)["address"]
    progress_at_least(resumed, len(kept) + 1)
    # no line tells us when the tracker has processed the batch registration: poll it, bounded
    end = time.monotonic() + 10
    while True:
        listed = exchange(taddr, {"type": "REQUEST_FILE_LOCATION", "filename": "f.bin"})["chunkinfo"]
        if set(kept) <= set(listed.get(address, ())):  # type: ignore[attr-defined]
            break
        assert time.monotonic() < end, f"kept chunks {kept} not announced; tracker lists {listed}"
    assert resumed.popen.poll() is None, "the download finished before the check: slow the holder more"
    # another peer can take a kept chunk from the restarted downloader
    chunk = kept[0]
    reply = exchange(address, {"type": "PEER_REQUEST_CHUNK", "filename": "f.bin", "chunknum": chunk})
    start, end_ = chunk_range(chunk)
    data = base64.b64decode(str(reply["data"]))
    assert reply["type"] == "PEER_REPLY_CHUNK" and data == src.read_bytes()[start:end_]
    assert reply["digest"] == hashlib.sha256(data).hexdigest()
    assert resumed.wait(60) == 0, resumed.stderr
    done = json.loads(resumed.stdout[-1])
    assert done["event"] == "done" and done["resumed"] == len(kept)
    assert sum(done["sources"].values()) == CHUNKS - len(kept)
    assert dest.read_bytes() == src.read_bytes()


def test_second_get_to_the_same_dest_is_refused_while_the_first_runs(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "f.bin", SIZE, seed=35)
    share(procs, taddr, src, env=SLOW)
    dest = tmp_path / "out.bin"
    first = get_json(procs, taddr, dest)
    progress_at_least(first, 5)
    second = run("get", "f.bin", str(dest), "--tracker", taddr, "--host", "127.0.0.1", timeout=30)
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and str(part(dest)) in lines[0], second.stderr
    assert first.popen.poll() is None, "the first download finished before the second started"
    assert first.wait(60) == 0, first.stderr
    done = json.loads(first.stdout[-1])
    assert done["event"] == "done" and done["resumed"] == 0 and sum(done["sources"].values()) == CHUNKS
    assert dest.read_bytes() == src.read_bytes()
    assert not part(dest).exists() and not state(dest).exists()


@pytest.mark.parametrize(
    "verified",
    [
        pytest.param(True, id="verified"),
        pytest.param(False, id="unverified"),
    ],
)
def test_resume_after_the_name_is_republished_with_other_content_gives_the_new_file(
    verified: bool, tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    size = 4 << 20  # 4 chunks of the default 1 MiB (a seed-only publisher cannot choose another size)
    old = make_file(tmp_path / "old" / "u.bin", size, seed=36)
    new = make_file(tmp_path / "new" / "u.bin", size, seed=37)
    hashes = ["--hashes"] if verified else []
    publish = ["--mode", "honest", "--wire", "json", "--publish", *hashes]
    first, _ = liar.start(procs, taddr, "u.bin", *publish, "--path", str(old), "--delay", "0.2")
    dest = tmp_path / "out.bin"
    downloader = get_json(procs, taddr, dest, "u.bin")
    progress_at_least(downloader, 1)
    first.kill9()
    assert downloader.wait(60) != 0
    # only a verified file keeps its chunks for a resume (an unverified one could change under its name)
    assert any("run it again to resume" in line for line in downloader.stderr) == verified, downloader.stderr
    assert part(dest).exists() == verified
    # the tracker delists the name once it sees the publisher gone; no line says when: poll, bounded
    end = time.monotonic() + 10
    while "u.bin" in exchange(taddr, {"type": "REQUEST_FILE_LIST"})["filelist"]:  # type: ignore[operator]
        assert time.monotonic() < end, "u.bin was never delisted"
    liar.start(procs, taddr, "u.bin", *publish, "--path", str(new))
    again = run("get", "u.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert again.returncode == 0, again.stderr
    assert dest.read_bytes() == new.read_bytes(), json.loads(again.stdout.splitlines()[-1])


def exchange(address: str, message: dict[str, object]) -> dict[str, object]:
    """One request and its reply on a fresh raw connection (to the tracker or a peer; seed JSON form)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = json.dumps(message).encode()
        sock.sendall(struct.pack(">I", len(body)) + body)
        (n,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
        return json.loads(sock.recv(n, socket.MSG_WAITALL))  # type: ignore[no-any-return]
