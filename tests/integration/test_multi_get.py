"""`p2pfs get NAME NAME2 ... -d DIR` (issue 10): several names and shell-style patterns (matched against
the tracker's list) downloaded at once into DIR; a name or pattern that matches nothing is one error line
and the others still arrive (exit 1); --json events carry their name; DIR must exist; without -d, more
than NAME DEST is a usage line. Real processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli_env import isolated_env, one_error_line  # noqa: F401 (isolated_env: an autouse fixture)
from tests.procs import Proc, make_file, run


def share(procs: Callable[..., Proc], taddr: str, *files: Path) -> Proc:
    proc = procs("share", *map(str, files), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K")
    proc.listening()
    for f in files:
        proc.expect(rf"^published {re.escape(f.name)} ")
    proc.expect(r"^serving")
    return proc


def get(taddr: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run("get", *args, "--tracker", taddr, "--host", "127.0.0.1", cwd=cwd)  # type: ignore[no-any-return]


def expect_event(proc: Proc, event: str, name: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait for the JSON line of `proc` with this "event" and "name"."""
    while True:
        obj = json.loads(proc.expect(r"^\{", timeout).string)
        if obj.get("event") == event and obj.get("name") == name:
            return obj  # type: ignore[no-any-return]


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
def swarm(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> tuple[str, dict[str, bytes]]:
    """a.bin, b.bin and c.txt shared by one peer: (tracker address, {name: bytes})."""
    _, taddr = tracker
    src = tmp_path / "src"
    src.mkdir()
    files = [
        make_file(src / "a.bin", 300_000, seed=21),
        make_file(src / "b.bin", 200_000, seed=22),
        make_file(src / "c.txt", 100_000, seed=23),
    ]
    share(procs, taddr, *files)
    return taddr, {f.name: f.read_bytes() for f in files}


@pytest.fixture
def into(tmp_path: Path) -> Path:
    d = tmp_path / "into"
    d.mkdir()
    return d


# -- names and patterns ---------------------------------------------------------------------------------
def test_several_names_into_a_directory(swarm: tuple[str, dict[str, bytes]], into: Path) -> None:
    taddr, content = swarm
    got = get(taddr, "a.bin", "c.txt", "-d", str(into))
    assert got.returncode == 0, got.stderr
    assert "Traceback" not in got.stderr
    assert listing(into) == ["a.bin", "c.txt"]
    for name in ("a.bin", "c.txt"):
        assert (into / name).read_bytes() == content[name]


@pytest.mark.parametrize("pattern", ["*.bin", "?.bin", "[ab].bin"])
def test_pattern_is_matched_against_the_tracker_list(
    tmp_path: Path, swarm: tuple[str, dict[str, bytes]], into: Path, pattern: str
) -> None:
    taddr, content = swarm
    work = tmp_path / "work"
    work.mkdir()
    (work / "local.bin").write_bytes(b"a local file a shell would have matched\n")
    got = get(taddr, pattern, "-d", str(into), cwd=work)  # one argv element, as '*.bin' in quotes
    assert got.returncode == 0, got.stderr
    assert listing(into) == ["a.bin", "b.bin"]
    for name in ("a.bin", "b.bin"):
        assert (into / name).read_bytes() == content[name]


def test_pattern_and_name_together(swarm: tuple[str, dict[str, bytes]], into: Path) -> None:
    taddr, content = swarm
    got = get(taddr, "*.txt", "b.bin", "-d", str(into))
    assert got.returncode == 0, got.stderr
    assert listing(into) == ["b.bin", "c.txt"]
    assert (into / "c.txt").read_bytes() == content["c.txt"]


@pytest.mark.parametrize("missing", ["zzz*", "nosuch.bin"], ids=["pattern", "name"])
def test_what_matches_nothing_is_one_line_and_the_rest_arrives(
    swarm: tuple[str, dict[str, bytes]], into: Path, missing: str
) -> None:
    taddr, content = swarm
    got = get(taddr, "a.bin", missing, "b.bin", "-d", str(into))
    assert got.returncode == 1, (got.returncode, got.stderr)
    assert "Traceback" not in got.stderr and "Future exception was never retrieved" not in got.stderr
    lines = got.stderr.splitlines()
    assert lines and all(ln.startswith("p2pfs: error: ") for ln in lines), lines
    about = [ln for ln in lines if missing in ln]
    assert len(about) == 1, lines
    assert listing(into) == ["a.bin", "b.bin"]
    for name in ("a.bin", "b.bin"):
        assert (into / name).read_bytes() == content[name]


def test_json_events_carry_their_name(swarm: tuple[str, dict[str, bytes]], into: Path) -> None:
    taddr, content = swarm
    got = get(taddr, "*.bin", "c.txt", "-d", str(into), "--json")
    assert got.returncode == 0, got.stderr
    events = [json.loads(line) for line in got.stdout.splitlines() if line.strip()]  # every line is JSON
    per_file = [e for e in events if e.get("event") in ("progress", "done")]
    assert per_file and all(e.get("name") in content for e in per_file), per_file
    done = {e["name"]: e for e in events if e.get("event") == "done"}
    assert set(done) == {"a.bin", "b.bin", "c.txt"}, events
    for name, e in done.items():
        assert Path(e["dest"]) == into / name and e["filesize"] == len(content[name]), e
        assert e["already"] is False
        assert (into / name).read_bytes() == content[name]


def test_downloads_run_concurrently(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], into: Path
) -> None:
    """a.bin's only holder is stopped (SIGSTOP): b.bin, named after it, must still arrive; then a.bin
    does once its holder goes on. A get that fetched one name after the other would wait on a.bin."""
    _, taddr = tracker
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = make_file(tmp_path / "x" / "a.bin", 300_000, seed=31)
    b = make_file(tmp_path / "y" / "b.bin", 300_000, seed=32)
    stalled = share(procs, taddr, a)
    share(procs, taddr, b)
    os.kill(stalled.pid, signal.SIGSTOP)
    try:
        # the stopped holder must stay a candidate rather than be dropped as dead
        slow_ok = {"P2PFS_PING_TIMEOUT": "120", "P2PFS_CHUNK_TIMEOUT": "120"}
        argv = ["a.bin", "b.bin", "-d", str(into), "--tracker", taddr, "--host", "127.0.0.1", "--json"]
        getter = procs("get", *argv, env=slow_ok)
        done_b = expect_event(getter, "done", "b.bin", timeout=30)
        assert (into / "b.bin").read_bytes() == b.read_bytes()
        assert not (into / "a.bin").exists()
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    assert done_b["already"] is False
    expect_event(getter, "done", "a.bin", timeout=60)
    assert getter.wait(60) == 0, getter.stderr
    assert (into / "a.bin").read_bytes() == a.read_bytes()


# -- -d DIR and positionals ------------------------------------------------------------------------------
def test_missing_dir_is_one_line_naming_it(tmp_path: Path, swarm: tuple[str, dict[str, bytes]]) -> None:
    taddr, _ = swarm
    nodir = tmp_path / "nodir"
    line = one_error_line(get(taddr, "a.bin", "b.bin", "-d", str(nodir)))
    assert str(nodir) in line, line
    assert not nodir.exists()


def test_more_than_two_positionals_without_d_says_use_d(
    tmp_path: Path, swarm: tuple[str, dict[str, bytes]]
) -> None:
    taddr, _ = swarm
    work = tmp_path / "work"
    work.mkdir()
    line = one_error_line(get(taddr, "a.bin", "b.bin", "c.txt", cwd=work))
    assert re.search(r"(?<![\w-])-d\b", line), line
    assert listing(work) == []
