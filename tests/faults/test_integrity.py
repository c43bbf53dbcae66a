"""End-to-end integrity with real processes: a holder that lies is caught by the publisher's chunk hashes
and dropped, one that says nothing times out; a seed-only publisher (no hashes) still works, shown as unverified; a second publisher of the
same content joins as a holder, different content under a listed name is refused; the content id is
shown by `ls` and `get`.

Misbehaving holders are `tests/liar.py`, a separate program speaking the protocol by itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import liar
from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024
WIDE = {"COLUMNS": "200"}  # rich would otherwise squeeze the `ls` table to 80 columns


def share(
    procs: Callable[..., Proc], tracker: str, path: Path, env: dict[str, str] | None = None
) -> tuple[Proc, str]:
    proc = procs(
        "share", str(path), "--tracker", tracker, "--host", "127.0.0.1", "--chunk-size", "64K", env=env
    )
    address = proc.listening()
    proc.expect(rf"published {re.escape(path.name)} ")
    return proc, address


def content_id(data: bytes, chunk_size: int = CHUNK) -> str:
    digests = b"".join(
        hashlib.sha256(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)
    )
    return hashlib.sha256(digests).hexdigest()


def done_event(stdout: str) -> dict[str, object]:
    event = json.loads(stdout.splitlines()[-1])
    assert event["event"] == "done", stdout
    return event  # type: ignore[no-any-return]


def ls_row(tracker: str, name: str) -> str:
    listing = run("ls", "--tracker", tracker, env=WIDE)
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if line.split() and line.split()[0] == name]
    assert len(rows) == 1, listing.stdout
    return rows[0]


def tracker_request(tracker: str, message: dict[str, object]) -> dict[str, object]:
    host, port = tracker.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = json.dumps(message).encode()
        sock.sendall(struct.pack(">I", len(body)) + body)
        (n,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
        return json.loads(sock.recv(n, socket.MSG_WAITALL))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mode", "wire"), [("corrupt", "raw"), ("corrupt", "json"), ("badlength", "raw"), ("badlength", "json")]
)
def test_lying_holder_is_dropped_and_the_file_still_arrives_intact(
    mode: str, wire: str, tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    chunks = 40
    src = make_file(tmp_path / "truth.bin", chunks * CHUNK - 777, seed=11)
    # the honest publisher is slow and the liar fast, so the liar is surely asked for chunks
    share(procs, taddr, src, env={"P2PFS_TEST_DELAY": "0.02"})
    lying, liar_addr = liar.start(procs, taddr, "truth.bin", "--mode", mode, "--wire", wire)
    dest = tmp_path / "out.bin"
    got = run("-v", "get", "truth.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
    lied = [int(m.group(1)) for line in lying.stdout if (m := re.match(rf"served chunk (\d+) {wire}$", line))]
    assert lied, f"the liar was never asked (in the {wire} form): the test proves nothing; {lying.stdout}"
    done = done_event(got.stdout)
    assert done["sources"].get(liar_addr, 0) == 0, done  # type: ignore[attr-defined]
    assert sum(done["sources"].values()) == chunks  # type: ignore[attr-defined]
    dropped = [line for line in got.stderr.splitlines() if "dropped for this file" in line]
    assert len(dropped) == 1, got.stderr  # asked once, never again
    # (chunks are verified in parallel threads: the first found corrupt may be any the liar sent)
    reported = re.search(
        rf"WARNING: holder {re.escape(liar_addr)} sent a corrupt chunk (\d+) of truth\.bin; dropped", dropped[0]
    )
    assert reported and int(reported.group(1)) in lied, (dropped, lied)
    assert not (tmp_path / "out.bin.part").exists() and not (tmp_path / "out.bin.part.state").exists()


def test_silent_holder_times_out_and_the_file_still_arrives(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    chunks = 40
    src = make_file(tmp_path / "quiet.bin", chunks * CHUNK, seed=16)
    _, honest_addr = share(procs, taddr, src, env={"P2PFS_TEST_DELAY": "0.03"})  # about 1.2 s of transfer
    lying, liar_addr = liar.start(procs, taddr, "quiet.bin", "--mode", "silent")
    dest = tmp_path / "out.bin"
    got = run(
        "-v", "get", "quiet.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1",
        env={"P2PFS_CHUNK_TIMEOUT": "0.4"},
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
    assert any(line.startswith("ignored chunk ") for line in lying.stdout), (
        "the silent holder was never asked"
    )
    assert done_event(got.stdout)["sources"] == {honest_addr: chunks}
    assert re.search(rf"holder {re.escape(liar_addr)} dropped: timed out", got.stderr), got.stderr


def test_seed_only_publisher_is_unverified_and_still_downloads(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "old.bin", 2 * (1 << 20) + 4321, seed=12)  # 3 chunks of the default 1 MiB
    liar.start(procs, taddr, "old.bin", "--mode", "honest", "--wire", "json", "--publish", "--path", str(src))
    listing = tracker_request(taddr, {"type": "REQUEST_FILE_LIST"})
    assert listing["filelist"] == {"old.bin": [src.stat().st_size, 3]}
    assert "old.bin" not in (listing.get("contentids") or {})  # type: ignore[operator]
    location = tracker_request(taddr, {"type": "REQUEST_FILE_LOCATION", "filename": "old.bin"})
    assert location.get("chunkhashes") is None and location.get("contentid") is None, location
    assert ls_row(taddr, "old.bin").split()[-1] == "unverified"

    got = run("get", "old.bin", str(tmp_path / "a.bin"), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "a.bin").read_bytes() == src.read_bytes()
    done = done_event(got.stdout)
    assert done["contentid"] is None and done["chunk_count"] == 3
    plain = run("get", "old.bin", str(tmp_path / "b.bin"), "--tracker", taddr, "--host", "127.0.0.1")
    assert plain.returncode == 0, plain.stderr
    assert "content id unverified" in plain.stdout
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()


def test_same_content_joins_as_holder_different_content_is_refused(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    chunks = 30
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "three").mkdir()
    first_src = make_file(tmp_path / "one" / "same.bin", chunks * CHUNK - 5, seed=13)
    second_src = tmp_path / "two" / "same.bin"
    second_src.write_bytes(first_src.read_bytes())
    slow = {"P2PFS_TEST_DELAY": "0.01"}  # so neither holder can finish the file before the other is asked
    first, first_addr = share(procs, taddr, first_src, env=slow)
    second, second_addr = share(procs, taddr, second_src, env=slow)
    location = tracker_request(taddr, {"type": "REQUEST_FILE_LOCATION", "filename": "same.bin"})
    assert location["chunkinfo"] == {first_addr: list(range(chunks)), second_addr: list(range(chunks))}
    assert location["contentid"] == content_id(first_src.read_bytes())

    # different bytes under the listed name: refused, one line, and the listing is unchanged
    other = make_file(tmp_path / "three" / "same.bin", chunks * CHUNK - 5, seed=14)
    third = run(
        "share", str(other), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K", timeout=30
    )
    assert third.returncode != 0
    errors = third.stderr.strip().splitlines()
    assert len(errors) == 1 and "already published" in errors[0], third.stderr
    assert tracker_request(taddr, {"type": "REQUEST_FILE_LOCATION", "filename": "same.bin"}) == location

    got = run(
        "get", "same.bin", str(tmp_path / "out.bin"), "--tracker", taddr, "--json", "--host", "127.0.0.1"
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.bin").read_bytes() == first_src.read_bytes()
    sources = done_event(got.stdout)["sources"]
    assert set(sources) == {first_addr, second_addr} and all(n > 0 for n in sources.values()), sources  # type: ignore[attr-defined]

    # the second publisher holds every chunk: the file outlives the first one
    first.kill9()
    again = run(
        "get", "same.bin", str(tmp_path / "again.bin"), "--tracker", taddr, "--json", "--host", "127.0.0.1"
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.bin").read_bytes() == first_src.read_bytes()
    assert set(done_event(again.stdout)["sources"]) == {second_addr}  # type: ignore[arg-type]
    assert second.popen.poll() is None


def test_content_id_in_ls_and_get(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "cid.bin", 10 * CHUNK + 99, seed=15)
    cid = content_id(src.read_bytes())
    share(procs, taddr, src)
    row = ls_row(taddr, "cid.bin")
    assert row.split()[-1] == cid[:16], row
    got = run("get", "cid.bin", str(tmp_path / "a.bin"), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    done = done_event(got.stdout)
    assert done["contentid"] == cid and done["resumed"] == 0
    plain = run("get", "cid.bin", str(tmp_path / "b.bin"), "--tracker", taddr, "--host", "127.0.0.1")
    assert plain.returncode == 0, plain.stderr
    assert f"content id {cid}" in plain.stdout
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes() == src.read_bytes()
