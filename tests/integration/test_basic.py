"""Publish, list and download with real processes on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.procs import Proc, make_file, run


def share(procs: Callable[..., Proc], tracker: str, *files: Path, chunk: str = "64K") -> tuple[Proc, str]:
    proc = procs("share", *map(str, files), "--tracker", tracker, "--host", "127.0.0.1", "--chunk-size", chunk)
    address = proc.listening()
    for f in files:
        proc.expect(rf"published {f.name} ")
    return proc, address


def test_publish_list_download(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "data.bin", 1_000_000)
    share(procs, taddr, src)
    listing = run("ls", "--tracker", taddr, "--json")
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) == {"data.bin": [1_000_000, 16]}
    dest = tmp_path / "out.bin"
    got = run("get", "data.bin", str(dest), "--tracker", taddr)
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
    assert not (tmp_path / "out.bin.part").exists()
    assert "downloaded data.bin" in got.stdout


def test_download_from_several_holders(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "big.bin", 4_000_000, seed=2)
    _, _seeder = share(procs, taddr, src)
    seed_dir = tmp_path / "seed2"
    seed_dir.mkdir()
    second = procs("get", "big.bin", str(seed_dir / "big.bin"), "--tracker", taddr, "--seed", "--host", "127.0.0.1")
    second.expect("seeding big.bin")
    got = run("get", "big.bin", str(tmp_path / "out.bin"), "--tracker", taddr, "--json")
    assert got.returncode == 0, got.stderr
    done = json.loads(got.stdout.strip().splitlines()[-1])
    assert done["event"] == "done"
    assert len(done["sources"]) >= 2, done["sources"]
    assert sum(done["sources"].values()) == done["chunk_count"] == 62
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()


def test_empty_file(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    src = tmp_path / "empty"
    src.write_bytes(b"")
    share(procs, taddr, src)
    assert json.loads(run("ls", "--tracker", taddr, "--json").stdout) == {"empty": [0, 0]}
    got = run("get", "empty", str(tmp_path / "out"), "--tracker", taddr)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out").read_bytes() == b""


def test_unknown_file_is_one_clear_line(tmp_path: Path, tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    got = run("get", "nothing.bin", str(tmp_path / "x"), "--tracker", taddr)
    assert got.returncode != 0
    assert got.stderr.strip().count("\n") == 0 and "nothing.bin" in got.stderr
    assert "Traceback" not in got.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_tracker_refused_is_one_clear_line() -> None:
    got = run("ls", "--tracker", "127.0.0.1:1")
    assert got.returncode != 0
    assert "connection refused" in got.stderr and "Traceback" not in got.stderr


def test_ipv6_loopback(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    tracker = procs("tracker", "--host", "::1", "--port", "0", "--no-shell")
    taddr = tracker.listening()
    assert taddr.startswith("[::1]:")
    src = make_file(tmp_path / "six.bin", 300_000, seed=6)
    sharer = procs("share", str(src), "--tracker", taddr, "--host", "::1", "--chunk-size", "64K")
    paddr = sharer.listening()
    sharer.expect("published six.bin")
    got = run("get", "six.bin", str(tmp_path / "out"), "--tracker", taddr, "--host", "::1", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout.splitlines()[-1])["sources"] == {paddr: 5}
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
