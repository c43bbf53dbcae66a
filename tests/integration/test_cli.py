"""The one-shot commands: tracker --no-shell, share, ls, get (with --json, --seed, DEST forms), errors."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pfs import __version__
from tests.procs import Proc, make_file, run

REFUSED = "127.0.0.1:1"  # nothing listens on port 1: connecting is refused


def share(procs: Callable[..., Proc], tracker: str, *files: Path, chunk: str = "64K") -> tuple[Proc, str]:
    proc = procs(
        "share", *map(str, files), "--tracker", tracker, "--host", "127.0.0.1", "--chunk-size", chunk
    )
    address = proc.listening()
    for f in files:
        proc.expect(rf"^published {re.escape(f.name)} ")
    proc.expect(r"^serving")
    return proc, address


def ls_json(taddr: str) -> dict[str, list[int]]:
    got = run("ls", "--tracker", taddr, "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def ls_json_until(taddr: str, expected: dict[str, list[int]], attempts: int = 10) -> dict[str, list[int]]:
    """The tracker notices a closed peer connection asynchronously; ask (a bounded number of times,
    each a whole process start) until the listing is `expected`, and return the last answer."""
    listing = ls_json(taddr)
    for _ in range(attempts):
        if listing == expected:
            break
        listing = ls_json(taddr)
    return listing


def one_clean_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# -- tracker --no-shell ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_tracker_service_listens_and_stops_on_signal(procs: Callable[..., Proc], sig: signal.Signals) -> None:
    tracker = procs("tracker", "--port", "0", "--no-shell")
    match = tracker.expect(r"^listening on (\S+):(\d+)$")
    assert int(match.group(2)) != 0
    taddr = f"127.0.0.1:{match.group(2)}"  # default host is the wildcard; reach it on loopback
    listing = run("ls", "--tracker", taddr)
    assert listing.returncode == 0 and listing.stdout.strip() == "no files published", listing
    assert tracker.interrupt(sig) == 0
    assert "Traceback" not in "\n".join(tracker.stderr)
    assert run("ls", "--tracker", taddr).returncode != 0  # and it stopped listening


# -- share and ls ----------------------------------------------------------------------------------------
def test_share_two_files_until_sigterm_then_delisted(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    a = make_file(tmp_path / "alpha.bin", 1_000_000, seed=1)  # 16 chunks of 64 KiB (last one short)
    b = make_file(tmp_path / "beta.bin", 65_536 * 3, seed=2)  # exactly 3 chunks
    sharer, _ = share(procs, taddr, a, b)
    assert ls_json(taddr) == {"alpha.bin": [1_000_000, 16], "beta.bin": [196_608, 3]}

    table = run("ls", "--tracker", taddr)
    assert table.returncode == 0, table.stderr
    assert "alpha.bin" in table.stdout and "beta.bin" in table.stdout and "1000000" in table.stdout

    assert sharer.popen.poll() is None  # still serving
    assert sharer.interrupt(signal.SIGTERM) == 0
    assert "Traceback" not in "\n".join(sharer.stderr)
    assert ls_json_until(taddr, {}) == {}
    assert run("ls", "--tracker", taddr).stdout.strip() == "no files published"


def test_ls_table_and_empty(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    empty = run("ls", "--tracker", taddr)
    assert empty.returncode == 0 and empty.stdout.strip() == "no files published", empty
    assert ls_json(taddr) == {}
    share(procs, taddr, make_file(tmp_path / "tabled.bin", 70_000))
    table = run("ls", "--tracker", taddr)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "tabled.bin" in line]
    assert len(rows) == 1 and "70000" in rows[0] and re.search(r"\b2\b", rows[0]), table.stdout
    assert "no files published" not in table.stdout


# -- get -------------------------------------------------------------------------------------------------
def test_get_default_dest_and_into_directory(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "file.bin", 700_000, seed=3)
    share(procs, taddr, src)

    work = tmp_path / "work"
    work.mkdir()
    got = run("get", "file.bin", "--tracker", taddr, cwd=work)
    assert got.returncode == 0, got.stderr
    assert (work / "file.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in work.iterdir()) == ["file.bin"]  # no .part left behind
    assert "downloaded file.bin" in got.stdout

    into = tmp_path / "into"
    into.mkdir()
    got = run("get", "file.bin", str(into), "--tracker", taddr, cwd=work)
    assert got.returncode == 0, got.stderr
    assert (into / "file.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in into.iterdir()) == ["file.bin"]

    missing_parent = tmp_path / "no" / "such" / "dir" / "x.bin"
    got = run("get", "file.bin", str(missing_parent), "--tracker", taddr)
    assert got.returncode != 0
    assert str(missing_parent.parent) in one_clean_error_line(got.stderr)


def test_get_onto_a_directory_entry_is_one_clean_line(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "clash.bin", 100_000)
    share(procs, taddr, src)
    into = tmp_path / "into"
    (into / "clash.bin").mkdir(parents=True)
    got = run("get", "clash.bin", str(into), "--tracker", taddr)
    assert got.returncode != 0
    assert "clash.bin" in one_clean_error_line(got.stderr)
    assert not (into / "clash.bin.part").exists()


def test_get_json_reports_done(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "j.bin", 2_000_000, seed=4)  # 31 chunks of 64 KiB
    _, saddr = share(procs, taddr, src)
    dest = tmp_path / "j.out"
    got = run("get", "j.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    events = [json.loads(line) for line in got.stdout.strip().splitlines()]  # every line is JSON
    done = events[-1]
    assert done["event"] == "done"
    assert done["name"] == "j.bin" and done["filesize"] == 2_000_000 and done["chunk_count"] == 31
    assert done["sources"] == {saddr: 31}
    assert Path(done["dest"]) == dest
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["chunks_done"] == 31 and progress[-1]["bytes_done"] == 2_000_000
    assert dest.read_bytes() == src.read_bytes()


def test_get_seed_keeps_serving_after_the_publisher_dies(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "s.bin", 1_500_000, seed=9)  # 23 chunks
    publisher, paddr = share(procs, taddr, src)
    (tmp_path / "seed").mkdir()
    seeder = procs(
        "get", "s.bin", str(tmp_path / "seed"), "--tracker", taddr, "--seed", "--host", "127.0.0.1"
    )
    seeder.expect(r"^downloaded s\.bin ")
    seed_addr = seeder.expect(r"^seeding s\.bin on (\S+);").group(1)
    assert seed_addr != paddr

    publisher.kill9()
    # the seeder holds every chunk, so the tracker keeps the file listed without its publisher
    assert ls_json(taddr) == {"s.bin": [1_500_000, 23]}

    dest = tmp_path / "third.bin"
    got = run("get", "s.bin", str(dest), "--tracker", taddr, "--json", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    done = json.loads(got.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and done["sources"] == {seed_addr: 23}
    assert dest.read_bytes() == src.read_bytes()

    assert seeder.popen.poll() is None
    assert seeder.interrupt(signal.SIGTERM) == 0
    assert ls_json_until(taddr, {}) == {}  # its last holder left: delisted


# -- errors ----------------------------------------------------------------------------------------------
def test_share_missing_file_fails_in_one_line(tmp_path: Path, tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    missing = tmp_path / "missing.bin"
    got = run("share", str(missing), "--tracker", taddr, "--host", "127.0.0.1")
    assert got.returncode != 0
    assert str(missing) in one_clean_error_line(got.stderr)
    assert ls_json(taddr) == {}


@pytest.mark.parametrize(
    "argv",
    [("ls",), ("get", "x.bin"), ("share", "x.bin"), ("peer", "--no-shell")],
    ids=["ls", "get", "share", "peer"],
)
def test_bad_tracker_address_is_a_usage_error(tmp_path: Path, argv: tuple[str, ...]) -> None:
    got = run(*argv, "--tracker", "nonsense", cwd=tmp_path)
    assert got.returncode == 2, got
    # one line, naming what was wrong and where to look
    assert got.stderr.count("\n") == 1 and "nonsense" in got.stderr and "--help" in got.stderr, got.stderr
    assert list(tmp_path.iterdir()) == []


def test_get_with_no_tracker_listening_fails_in_one_line(tmp_path: Path) -> None:
    got = run("get", "x.bin", "--tracker", REFUSED, cwd=tmp_path)
    assert got.returncode != 0
    assert "connection refused" in one_clean_error_line(got.stderr)
    assert list(tmp_path.iterdir()) == []


def test_version() -> None:
    got = run("--version")
    assert got.returncode == 0
    assert got.stdout.strip() == f"p2pfs {__version__}"
    assert re.fullmatch(r"p2pfs \d+\.\d+\.\d+\S*", got.stdout.strip())
