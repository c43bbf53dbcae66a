"""The `get NAME [DEST]` contract (issue 10): only a regular file is ever replaced, a DEST that already
holds the published bytes is kept (and can be seeded), other bytes are refused unless --force, the
missing directory is named, links named by the user are followed and DIR/NAME links refused; -q; the
help texts; plurals; and share's chunk-size messages. Real processes, real files, real sockets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pfs.protocol.limits import MAX_CHUNKS, MIN_CHUNK_SIZE
from tests.cli_env import isolated_env, one_error_line  # noqa: F401 (isolated_env: an autouse fixture)
from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024
SIZE = 300_000  # 5 chunks of 64 KiB (the last one short)
CHUNKS = -(-SIZE // CHUNK)

def share(procs: Callable[..., Proc], taddr: str, *files: Path, chunk: str = "64K") -> tuple[Proc, str]:
    proc = procs("share", *map(str, files), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", chunk)
    address = proc.listening()
    for f in files:
        proc.expect(rf"^published {re.escape(f.name)} ")
    proc.expect(r"^serving")
    return proc, address


def get(taddr: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run("get", *args, "--tracker", taddr, "--host", "127.0.0.1", timeout=timeout)  # type: ignore[no-any-return]


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def expect_event(proc: Proc, event: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait for the JSON line of `proc` whose "event" is `event`."""
    while True:
        line = proc.expect(r"^\{", timeout).string
        obj = json.loads(line)
        if obj.get("event") == event:
            return obj  # type: ignore[no-any-return]


def snapshot(path: Path) -> tuple[int, int, int, bytes]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size, path.read_bytes()


@pytest.fixture
def published(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> tuple[str, Path, str]:
    """f.bin (SIZE bytes, 64 KiB chunks) shared on a running tracker: (tracker address, the file, the
    sharer's address)."""
    _, taddr = tracker
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "f.bin", SIZE, seed=7)
    _, saddr = share(procs, taddr, src)
    return taddr, src, saddr


def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


# -- 1. DEST a device node, a FIFO, a socket -----------------------------------------------------------
def make_node(kind: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Create a node of `kind` at `path`; its file type (stat.S_IFMT)."""
    if kind == "device":
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except (PermissionError, OSError) as exc:
            pytest.skip(f"cannot create a character device here: {exc}")
        return stat.S_IFCHR
    if kind == "fifo":
        os.mkfifo(path)
        return stat.S_IFIFO
    monkeypatch.chdir(path.parent)  # bind by a relative name: the absolute path may be too long for AF_UNIX
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path.name)
    return stat.S_IFSOCK


@pytest.mark.parametrize("kind", ["device", "fifo", "socket"])
def test_dest_that_is_not_a_regular_file_is_refused_even_with_force(
    tmp_path: Path, published: tuple[str, Path, str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    taddr, _, _ = published
    out = out_dir(tmp_path)
    dest = out / "node"
    ftype = make_node(kind, dest, monkeypatch)
    before = os.lstat(dest)
    for extra in ((), ("--force",)):
        got = get(taddr, "f.bin", str(dest), *extra, timeout=30)
        line = one_error_line(got)
        assert "not a regular file" in line, (extra, line)
        after = os.lstat(dest)
        assert stat.S_IFMT(after.st_mode) == ftype, (extra, oct(after.st_mode))
        assert after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
        assert sorted(p.name for p in out.iterdir()) == ["node"], extra  # no node.part, no node.part.state


# -- 2. DEST holds the published bytes: kept, nothing fetched; --seed serves it ------------------------
def test_identical_dest_is_kept_and_nothing_fetched(tmp_path: Path, published: tuple[str, Path, str]) -> None:
    taddr, src, _ = published
    out = out_dir(tmp_path)
    dest = out / "mine.bin"
    shutil.copyfile(src, dest)
    before = snapshot(dest)

    got = get(taddr, "f.bin", str(dest))
    assert got.returncode == 0, got.stderr
    lines = [ln for ln in got.stdout.splitlines() if ln.startswith(f"already have f.bin at {dest}")]
    assert len(lines) == 1 and "content id" in lines[0], got.stdout
    assert snapshot(dest) == before

    got = get(taddr, "f.bin", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    done = json_lines(got.stdout)[-1]
    assert done["event"] == "done" and done["already"] is True and done["sources"] == {}, done
    assert snapshot(dest) == before
    assert sorted(p.name for p in out.iterdir()) == ["mine.bin"]

    # a real download says it was not "already"
    fresh = out / "fresh.bin"
    got = get(taddr, "f.bin", str(fresh), "--json")
    assert got.returncode == 0, got.stderr
    done = json_lines(got.stdout)[-1]
    assert done["event"] == "done" and done["already"] is False and sum(done["sources"].values()) == CHUNKS
    assert fresh.read_bytes() == src.read_bytes()


def test_identical_dest_with_seed_serves_it_after_the_sharer_dies(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "f.bin", SIZE, seed=8)
    sharer, saddr = share(procs, taddr, src)
    out = out_dir(tmp_path)
    dest = out / "kept.bin"
    shutil.copyfile(src, dest)
    before = snapshot(dest)

    seeder = procs("get", "f.bin", str(dest), "--tracker", taddr, "--seed", "--host", "127.0.0.1")
    seed_addr = seeder.expect(r"^seeding f\.bin on ([^\s;,]+)").group(1)
    assert seed_addr != saddr
    assert seeder.popen.poll() is None
    assert snapshot(dest) == before

    sharer.kill9()
    third = out / "third.bin"
    got = get(taddr, "f.bin", str(third), "--json")
    assert got.returncode == 0, got.stderr
    done = json_lines(got.stdout)[-1]
    assert done["event"] == "done" and done["sources"] == {seed_addr: CHUNKS}, done
    assert third.read_bytes() == src.read_bytes()
    assert seeder.popen.poll() is None
    assert snapshot(dest) == before


def test_identical_dest_with_seed_json_says_seeding(
    tmp_path: Path, procs: Callable[..., Proc], published: tuple[str, Path, str]
) -> None:
    taddr, src, _ = published
    dest = out_dir(tmp_path) / "kept.bin"
    shutil.copyfile(src, dest)
    seeder = procs("get", "f.bin", str(dest), "--tracker", taddr, "--seed", "--json", "--host", "127.0.0.1")
    done = expect_event(seeder, "done")
    assert done["already"] is True and done["sources"] == {}, done
    seeding = expect_event(seeder, "seeding")
    assert seeding.get("name") == "f.bin", seeding
    assert seeder.popen.poll() is None


# -- 3. DEST with other bytes: refused unless --force ----------------------------------------------------
@pytest.mark.parametrize("other_size", [SIZE, SIZE - 1000, 10], ids=["same-size", "shorter", "tiny"])
def test_dest_with_other_content_needs_force(
    tmp_path: Path, published: tuple[str, Path, str], other_size: int
) -> None:
    taddr, src, _ = published
    dest = out_dir(tmp_path) / "other.bin"
    make_file(dest, other_size, seed=99)
    assert dest.read_bytes() != src.read_bytes()
    before = snapshot(dest)

    line = one_error_line(get(taddr, "f.bin", str(dest)))
    assert "exists with other content" in line and "--force" in line, line
    assert snapshot(dest) == before

    got = get(taddr, "f.bin", str(dest), "--force")
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["other.bin"]


# -- 4. the missing directory is named ----------------------------------------------------------------
def test_missing_directory_is_named_not_the_part_file(
    tmp_path: Path, published: tuple[str, Path, str]
) -> None:
    taddr, _, _ = published
    nodir = tmp_path / "x" / "nodir"
    nodir.parent.mkdir()
    line = one_error_line(get(taddr, "f.bin", str(nodir / "f.bin")))
    # the directory itself, not only as the start of DEST's path
    assert re.search(re.escape(str(nodir)) + r"(?!/)", line), line
    assert ".part" not in line and ".state" not in line, line
    assert not nodir.exists()


# -- 5. DEST a directory -----------------------------------------------------------------------------
def test_dest_directory_gets_name_and_then_already_have(
    tmp_path: Path, published: tuple[str, Path, str]
) -> None:
    taddr, src, _ = published
    out = out_dir(tmp_path)
    got = get(taddr, "f.bin", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "f.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["f.bin"]
    before = snapshot(out / "f.bin")

    got = get(taddr, "f.bin", str(out))
    assert got.returncode == 0, got.stderr
    assert any(
        ln.startswith(f"already have f.bin at {out}") and "content id" in ln for ln in got.stdout.splitlines()
    ), got.stdout
    got = get(taddr, "f.bin", str(out), "--json")
    assert got.returncode == 0, got.stderr
    done = json_lines(got.stdout)[-1]
    assert done["event"] == "done" and done["already"] is True and done["sources"] == {}, done
    assert snapshot(out / "f.bin") == before


# -- 6. symbolic links ---------------------------------------------------------------------------------
def link_and_target(tmp_path: Path, target_bytes: bytes) -> tuple[Path, Path]:
    """A link in links/ to a regular file in targets/."""
    (tmp_path / "links").mkdir()
    (tmp_path / "targets").mkdir()
    target = tmp_path / "targets" / "real.bin"
    target.write_bytes(target_bytes)
    link = tmp_path / "links" / "link.bin"
    link.symlink_to(target)
    return link, target


def test_named_link_to_identical_file_is_followed(tmp_path: Path, published: tuple[str, Path, str]) -> None:
    taddr, src, _ = published
    link, target = link_and_target(tmp_path, src.read_bytes())
    before = snapshot(target)
    got = get(taddr, "f.bin", str(link))
    assert got.returncode == 0, got.stderr
    assert any(ln.startswith("already have f.bin at ") for ln in got.stdout.splitlines()), got.stdout
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert snapshot(target) == before


def test_named_link_to_other_content_refused_then_force_replaces_the_target(
    tmp_path: Path, published: tuple[str, Path, str]
) -> None:
    taddr, src, _ = published
    link, target = link_and_target(tmp_path, b"something else entirely\n")
    before = snapshot(target)
    line = one_error_line(get(taddr, "f.bin", str(link)))
    assert "exists with other content" in line and "--force" in line, line
    assert snapshot(target) == before and link.is_symlink()

    got = get(taddr, "f.bin", str(link), "--force")
    assert got.returncode == 0, got.stderr
    assert target.read_bytes() == src.read_bytes()
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link was followed, not replaced
    assert sorted(p.name for p in link.parent.iterdir()) == ["link.bin"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["real.bin"]


@pytest.mark.parametrize("content", ["identical", "other"])
def test_dir_name_being_a_link_is_refused(
    tmp_path: Path, published: tuple[str, Path, str], content: str
) -> None:
    taddr, src, _ = published
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "t.bin"
    target.write_bytes(src.read_bytes() if content == "identical" else b"other bytes\n")
    before = snapshot(target)
    out = out_dir(tmp_path)
    (out / "f.bin").symlink_to(target)

    line = one_error_line(get(taddr, "f.bin", str(out)))
    assert "symbolic link" in line, line
    assert (out / "f.bin").is_symlink() and os.readlink(out / "f.bin") == str(target)
    assert snapshot(target) == before
    assert sorted(p.name for p in out.iterdir()) == ["f.bin"]


# -- 15. -q ---------------------------------------------------------------------------------------------
def test_quiet_get_prints_nothing_on_success_but_still_errors(
    tmp_path: Path, published: tuple[str, Path, str]
) -> None:
    taddr, src, _ = published
    dest = out_dir(tmp_path) / "q.bin"
    got = get(taddr, "f.bin", str(dest), "-q")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "" and got.stderr == "", got
    assert dest.read_bytes() == src.read_bytes()

    got = get(taddr, "f.bin", str(dest), "--quiet")  # already there: still silent
    assert got.returncode == 0 and got.stdout == "" and got.stderr == "", got

    line = one_error_line(get(taddr, "nosuch.bin", str(tmp_path / "out" / "n.bin"), "-q"))
    assert "nosuch.bin" in line


# -- 17. help texts -----------------------------------------------------------------------------------
def option_help(help_text: str, option: str) -> str:
    """The description argparse prints for `option` (on its line, or on the next, more indented, one)."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(rf"^(\s+)(?:-\w+(?: \S+)?, )?{re.escape(option)}\b(.*)$", line)
        if not m:
            continue
        rest = m.group(2)
        same_line = re.search(r"\s{2,}(\S.*)$", rest)
        if same_line:
            return same_line.group(1)
        if i + 1 < len(lines):
            nxt = lines[i + 1]
            indent = len(nxt) - len(nxt.lstrip())
            if nxt.strip() and indent > len(m.group(1)) and not nxt.lstrip().startswith("-"):
                return nxt.strip()
        return ""
    raise AssertionError(f"{option} not in the help:\n{help_text}")


@pytest.mark.parametrize("command", ["share", "get"])
def test_help_describes_tracker_host_port(command: str) -> None:
    got = run(command, "--help", env={"COLUMNS": "100"})
    assert got.returncode == 0, got.stderr
    for option in ("--tracker", "--host", "--port"):
        assert option_help(got.stdout, option), f"{command} --help: {option} has no description\n{got.stdout}"


# -- 18. plurals ------------------------------------------------------------------------------------------
def test_one_holder_and_one_chunk_are_singular(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    (tmp_path / "src").mkdir()
    one = make_file(tmp_path / "src" / "one.bin", 1000, seed=3)  # a single chunk
    proc = procs("share", str(one), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K")
    line = proc.expect(r"^published one\.bin ").string
    assert "1 chunk)" in line and "1 chunks" not in line, line
    proc.expect(r"^serving")

    dest = out_dir(tmp_path) / "one.bin"
    got = get(taddr, "one.bin", str(dest))
    assert got.returncode == 0, got.stderr
    result = [ln for ln in got.stdout.splitlines() if ln.startswith("downloaded one.bin")]
    assert len(result) == 1, got.stdout
    assert re.search(r"\b1 holder\b", result[0]) and "1 holders" not in result[0], result[0]
    assert dest.read_bytes() == one.read_bytes()


# -- 9, 10. share: chunk-size messages ---------------------------------------------------------------------
def test_same_bytes_other_chunk_size_names_the_chunk_size(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_file(tmp_path / "a" / "f.bin", SIZE, seed=5)
    second = tmp_path / "b" / "f.bin"
    shutil.copyfile(first, second)
    sharer, _ = share(procs, taddr, first, chunk="64K")

    got = run(
        "share", str(second), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "128K", timeout=60
    )
    line = one_error_line(got)
    assert "chunk size" in line and "different content" not in line, line
    assert sharer.popen.poll() is None
    listing = run("ls", "--tracker", taddr, "--json")
    assert json.loads(listing.stdout) == {"f.bin": [SIZE, CHUNKS]}  # the first publication stands


def test_too_many_chunks_suggests_a_chunk_size(tmp_path: Path, tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    chunk = 16 * 1024
    assert chunk >= MIN_CHUNK_SIZE  # the refusal is for the count, not for the chunk size itself
    big = tmp_path / "big.bin"
    big.touch()
    os.truncate(big, MAX_CHUNKS * chunk + 1)  # sparse: one chunk over the limit, no disk used
    got = run("share", str(big), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "16K", timeout=90)
    line = one_error_line(got)
    assert "--chunk-size" in line, line
    assert json.loads(run("ls", "--tracker", taddr, "--json").stdout) == {}
