"""Collections: a directory tree shared with `p2pfs share DIR` and fetched with `p2pfs get NAME DEST` as one
name. Real processes, real files, real sockets: round trips (paths, bytes, executable bits, empty files
and directories, links), where the tree lands, what share skips, `ls`, resume after kill -9, a second
downloader served by the first, and hostile manifests (served by tests/evil_collection.py) refused with
one line and nothing written.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import evil_collection
from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024


# -- harness ---------------------------------------------------------------------------------------------
def share_tree(
    procs: Callable[..., Proc],
    taddr: str,
    root: Path,
    *extra: str,
    name: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str, re.Match[str]]:
    """`p2pfs share ROOT` with 64 KiB chunks, awaited until it serves: (process, its address, the match of
    its `published NAME/ (F files, SIZE, N chunks)` line: groups files, size, chunks)."""
    args = ["share", str(root), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K", *extra]
    if name is not None:
        args += ["--name", name]
    proc = procs(*args, env=env)
    address = proc.listening()
    shown = name if name is not None else root.name
    published = proc.expect(rf"^published {re.escape(shown)}/ \((\d+) files?, ([^,]+), (\d+) chunks?\)$")
    proc.expect(r"^serving")
    return proc, address, published


def get(taddr: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run("get", *args, "--tracker", taddr, "--host", "127.0.0.1", timeout=timeout)  # type: ignore[no-any-return]


def get_done(taddr: str, name: str, dest: Path) -> dict[str, Any]:
    """`get NAME DEST --json` to completion: its `done` event."""
    got = get(taddr, name, str(dest), "--json")
    assert got.returncode == 0, (got.stdout, got.stderr)
    events = [json.loads(line) for line in got.stdout.splitlines() if line.strip()]
    assert events and events[-1]["event"] == "done", events
    return events[-1]  # type: ignore[no-any-return]


def expect_event(proc: Proc, event: str, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        obj = json.loads(proc.expect(r"^\{", timeout).string)
        if obj.get("event") == event:
            return obj  # type: ignore[no-any-return]


def one_error_line(got: subprocess.CompletedProcess[str]) -> str:
    err = got.stderr
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines!r} (stdout {got.stdout!r})"
    assert lines[0].startswith("p2pfs: error: "), lines[0]
    assert got.returncode == 1, (got.returncode, err)
    return lines[0]


Node = tuple[Any, ...]


def tree_of(root: Path) -> dict[str, Node]:
    """Every entry under `root` (not followed through links): relative path -> ("dir",), ("link", target),
    ("file", size, bytes, executable) or ("other", file type)."""
    found: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", st.st_size, path.read_bytes(), st.st_mode & 0o111 != 0)
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def snapshot(root: Path, but: Path | None = None) -> dict[str, tuple[Node, int, int]]:
    """`tree_of` with each entry's inode and mtime: anything created, removed or rewritten shows (except
    entries made and removed again directly in the directory `but`, whose own mtime is left out)."""
    found = {}
    for rel, node in tree_of(root).items():
        st = os.lstat(root / rel)
        found[rel] = (node, st.st_ino, 0 if root / rel == but else st.st_mtime_ns)
    return found


def files_in(tree: dict[str, Node]) -> int:
    return sum(1 for node in tree.values() if node[0] == "file")


def bytes_in(tree: dict[str, Node]) -> int:
    return sum(node[1] for node in tree.values() if node[0] == "file")


#: links of the tree that point out of it (share skips them)
ESCAPING = {"bad": "/etc/passwd", "up2": "../../x", "a/b/esc": "../../../x"}


def make_tree(root: Path) -> None:
    """Nested and empty directories, an empty file, an executable, unicode and space names, 300 small
    files of random sizes, a file of several chunks, links inside the tree and links out of it."""
    rng = random.Random(20250611)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "top.txt").write_text("the top\n")
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(rng.randbytes(777))
    (root / "a" / "up").symlink_to("../top.txt")  # ln -s ../top.txt a/up
    (root / "a" / "down").symlink_to("b/c/deep.txt")
    (root / "a" / "dirlink").symlink_to("b")
    (root / "a" / "dangling").symlink_to("nowhere")  # inside the tree, pointing at nothing
    (root / "empty-dir").mkdir()
    (root / "e1" / "e2" / "e3").mkdir(parents=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "a" / "b" / "empty").write_bytes(b"")
    run_sh = root / "run.sh"
    run_sh.write_text("#!/bin/sh\necho hi\n")
    run_sh.chmod(0o755)
    plain = root / "plain.txt"
    plain.write_text("not executable\n")
    plain.chmod(0o644)
    (root / "ünï cödé").mkdir()
    (root / "ünï cödé" / "with space.txt").write_bytes(rng.randbytes(4321))
    (root / "with space.txt").write_text("spaced out\n")
    many = root / "many"
    many.mkdir()
    for i in range(300):
        prefix = ("A", "b", "_", "Z", "é")[i % 5]  # names whose byte order differs from a case-folded one
        (many / f"{prefix}{i:03d}.dat").write_bytes(rng.randbytes(rng.randint(1, 5000)))
    make_file(root / "big.bin", 5 * CHUNK + 12_345, seed=5)
    for link, target in ESCAPING.items():
        (root / link).symlink_to(target)  # ln -s /etc/passwd bad; ln -s ../../x up2


def expected_tree(src: Path) -> dict[str, Node]:
    return {rel: node for rel, node in tree_of(src).items() if rel not in ESCAPING}


@pytest.fixture
def taddr(tracker: tuple[Proc, str]) -> str:
    return tracker[1]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def shared_tree(tmp_path: Path, procs: Callable[..., Proc], taddr: str) -> tuple[Path, Proc, str]:
    """The tree of `make_tree` shared as `tree`: (its root, the sharer, the sharer's address)."""
    src = tmp_path / "src" / "tree"
    src.mkdir(parents=True)
    make_tree(src)
    sharer, address, _ = share_tree(procs, taddr, src)
    return src, sharer, address


# -- round trips -----------------------------------------------------------------------------------------
def test_round_trip_recreates_the_tree_exactly(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path
) -> None:
    src = tmp_path / "src" / "tree"
    src.mkdir(parents=True)
    make_tree(src)
    want = expected_tree(src)
    sharer, saddr, published = share_tree(procs, taddr, src)
    assert int(published.group(1)) == files_in(want) == 300 + 9, published.string
    # each link out of the tree is named by a warning (and not published)
    warnings = [sharer.expect_err(r"^p2pfs: warning: ").string for _ in ESCAPING]
    for link, target in ESCAPING.items():
        line = f"p2pfs: warning: skipped link {src / link} -> {target}: it points outside the tree"
        assert line in warnings, (line, warnings)

    dest = out / "copy"  # does not exist: it becomes the tree's root
    done = get_done(taddr, "tree", dest)
    assert done["files"] == files_in(want) and done["resumed"] == 0, done
    assert sum(done["sources"].values()) == done["chunk_count"] == int(published.group(3)), done
    assert set(done["sources"]) == {saddr}, done

    got = tree_of(dest)
    assert sorted(got) == sorted(want)  # the same paths (a readable diff first)
    assert got == want  # types, sizes, bytes, executable bits, link targets
    for link in ESCAPING:
        assert not os.path.lexists(dest / link), link
    assert got["run.sh"][3] is True and got["plain.txt"][3] is False
    assert got["a/up"] == ("link", "../top.txt") and (dest / "a" / "up").read_text() == "the top\n"
    assert got["empty-dir"] == ("dir",) and got["e1/e2/e3"] == ("dir",)
    assert got["empty.txt"] == ("file", 0, b"", False)
    assert sorted(p.name for p in out.iterdir()) == ["copy"]  # no copy.part, .part.state, .part.manifest


def test_existing_directory_gets_dest_slash_name_and_share_name(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path
) -> None:
    src = tmp_path / "src" / "local-dir-name"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "one.txt").write_text("one\n")
    (src / "two.bin").write_bytes(random.Random(2).randbytes(3 * CHUNK + 5))
    _, _, published = share_tree(procs, taddr, src, name="renamed")
    assert published.group(1) == "2", published.string

    got = get(taddr, "renamed", str(out))  # out exists: the tree goes to out/renamed
    assert got.returncode == 0, got.stderr
    assert re.search(
        rf"^downloaded renamed \(2 files\) to {re.escape(str(out / 'renamed'))}: ", got.stdout, re.MULTILINE
    ), got.stdout
    assert sorted(p.name for p in out.iterdir()) == ["renamed"]
    assert tree_of(out / "renamed") == tree_of(src)

    listing = run("ls", "--tracker", taddr)
    assert listing.returncode == 0, listing.stderr
    assert "renamed/" in listing.stdout and "local-dir-name" not in listing.stdout, listing.stdout


def test_fifo_is_skipped_with_a_warning(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path
) -> None:
    src = tmp_path / "src" / "withfifo"
    src.mkdir(parents=True)
    (src / "real.txt").write_text("real\n")
    os.mkfifo(src / "pipe")
    sharer, _, published = share_tree(procs, taddr, src)
    sharer.expect_err(r"^p2pfs: warning: skipped \S*pipe: not a regular file, directory or link$")
    assert published.group(1) == "1", published.string
    dest = out / "withfifo"
    done = get_done(taddr, "withfifo", dest)
    assert done["files"] == 1, done
    assert tree_of(dest) == {"real.txt": ("file", 5, b"real\n", False)}


def test_ls_shows_the_collection_and_json_keeps_the_seed_shape(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path
) -> None:
    src = tmp_path / "src" / "ds"
    (src / "d").mkdir(parents=True)
    for i in range(7):
        (src / "d" / f"{i}.bin").write_bytes(random.Random(i).randbytes(20_000 + i))
    (src / "e").mkdir()
    _, _, published = share_tree(procs, taddr, src)
    plain = make_file(tmp_path / "src" / "plain.bin", 100_000, seed=3)
    plain_sharer = procs(
        "share", str(plain), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K"
    )
    plain_sharer.expect(r"^serving")
    members = bytes_in(tree_of(src))

    listing = run("ls", "--tracker", taddr, "--json")
    assert listing.returncode == 0, listing.stderr
    table = json.loads(listing.stdout)
    assert set(table) == {"ds", "plain.bin"}, table
    assert table["plain.bin"] == [100_000, 2]
    filesize, chunks = table["ds"]
    assert isinstance(filesize, int) and isinstance(chunks, int)
    assert chunks == -(-filesize // CHUNK) == int(published.group(3)), (table, published.string)
    # the whole byte stream: the manifest padded to a chunk boundary, then the members
    assert filesize > members and (filesize - members) % CHUNK == 0, (filesize, members)

    shown = run("ls", "--tracker", taddr)
    assert shown.returncode == 0, shown.stderr
    rows = {
        cells[0]: cells
        for line in shown.stdout.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) > 4
    }
    assert "ds/" in rows and "plain.bin" in rows, shown.stdout
    _, _, size_bytes, row_chunks, files, _ = rows["ds/"]
    assert (size_bytes, row_chunks, files) == (str(members), str(chunks), "7"), rows["ds/"]
    assert rows["plain.bin"][4] == "", rows["plain.bin"]  # a plain file has no file count

    # the get's done event reports the same whole stream
    done = get_done(taddr, "ds", out / "ds")
    assert (done["filesize"], done["chunk_count"], done["files"]) == (filesize, chunks, 7), done


# -- resume ----------------------------------------------------------------------------------------------
def chunk_lines(state: Path) -> dict[int, str]:
    """The complete chunk lines of a state log (after its header line)."""
    try:
        text = state.read_text()
    except FileNotFoundError:
        return {}
    complete = text.split("\n")[:-1]  # (a last line without its newline is still being written)
    logged: dict[int, str] = {}
    for line in complete[1:]:
        number, digest = line.split()
        logged[int(number)] = digest
    return logged


def await_logged(state: Path, proc: Proc, count: int, timeout: float = 60.0) -> None:
    """Poll the state log until it names `count` chunks, waiting on the process's exit between looks
    (which fails the test: the transfer ended before the moment to interrupt it)."""
    deadline = time.monotonic() + timeout
    while len(chunk_lines(state)) < count:
        assert time.monotonic() < deadline, f"{state} never had {count} chunk lines: {chunk_lines(state)}"
        try:
            rc = proc.popen.wait(0.01)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(
            f"get exited ({rc}) before {count} chunks were logged: {proc.stdout} {proc.stderr}"
        )


def test_kill9_get_then_get_again_resumes(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path
) -> None:
    src = tmp_path / "src" / "slow"
    (src / "sub").mkdir(parents=True)
    for i in range(40):
        make_file(src / ("sub" if i % 2 else ".") / f"f{i:02d}.bin", CHUNK, seed=100 + i)
    (src / "empty").mkdir()
    (src / "sub" / "link").symlink_to("../f00.bin")
    slow, _, published = share_tree(procs, taddr, src, env={"P2PFS_TEST_DELAY": "0.05"})
    chunk_count = int(published.group(3))
    assert chunk_count > 40, published.string

    dest = out / "slow"
    state = out / "slow.part.state"
    downloader = procs("get", "slow", str(dest), "--tracker", taddr, "--host", "127.0.0.1", "--json")
    await_logged(state, downloader, 6)
    downloader.kill9()
    assert not os.path.lexists(dest)
    assert (out / "slow.part").is_dir() and (out / "slow.part.manifest").is_file()
    logged = chunk_lines(state)
    assert 6 <= len(logged) < chunk_count, logged

    # the same get again, from a sharer without the delay (the same tree: the same content id)
    assert slow.interrupt() == 0
    share_tree(procs, taddr, src)
    done = get_done(taddr, "slow", dest)
    assert done["resumed"] > 0 and done["resumed"] == len(logged), (done, sorted(logged))
    assert sum(done["sources"].values()) == chunk_count - done["resumed"], done
    assert done["files"] == 40, done
    assert tree_of(dest) == tree_of(src)
    assert sorted(p.name for p in out.iterdir()) == ["slow"]


# -- a second downloader, served by the first --------------------------------------------------------------
def test_second_downloader_is_served_by_a_seeding_first_one(
    procs: Callable[..., Proc], taddr: str, out: Path, shared_tree: tuple[Path, Proc, str]
) -> None:
    src, sharer, _ = shared_tree
    want = expected_tree(src)
    first = procs(
        "get", "tree", str(out / "first"), "--tracker", taddr, "--host", "127.0.0.1", "--json", "--seed"
    )
    done = expect_event(first, "done")
    assert done["files"] == files_in(want), done
    seeding = expect_event(first, "seeding")
    sharer.kill9()

    done = get_done(taddr, "tree", out / "second")
    assert set(done["sources"]) == {seeding["address"]}, (done, seeding)
    assert sum(done["sources"].values()) == done["chunk_count"], done
    assert tree_of(out / "second") == want
    assert tree_of(out / "first") == want
    assert sorted(p.name for p in out.iterdir()) == ["first", "second"]


# -- a DEST that exists ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dest_slash_name_is_a_directory", "dest_is_a_file"])
def test_existing_target_is_refused_and_left_untouched(
    taddr: str, out: Path, shared_tree: tuple[Path, Proc, str], kind: str
) -> None:
    if kind == "dest_slash_name_is_a_directory":
        (out / "tree" / "mine").mkdir(parents=True)
        (out / "tree" / "mine" / "keep.txt").write_text("keep me\n")
        (out / "tree" / "top.txt").write_text("not the published top\n")
        dest, target = out, out / "tree"
    else:
        (out / "tree.txt").write_text("a file\n")
        dest = target = out / "tree.txt"
    before = snapshot(out)
    got = get(taddr, "tree", str(dest))
    line = one_error_line(got)
    why = "a directory with other content is there" if kind.endswith("directory") else "it exists"
    assert f"cannot download 'tree' to {target}: {why}" in line, line
    assert snapshot(out) == before  # untouched, and no .part, .part.state or .part.manifest beside it


def test_get_again_finds_the_tree_already_there_and_fetches_nothing(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path, shared_tree: tuple[Path, Proc, str]
) -> None:
    first = get_done(taddr, "tree", out)
    assert not first["already"]
    before = snapshot(out)
    again = get_done(taddr, "tree", out)  # the same arguments: out/tree is there, with the same bytes
    assert again["already"] and again["sources"] == {} and again["files"] == first["files"], again
    assert again["contentid"] == first["contentid"]
    assert snapshot(out) == before  # nothing rewritten, nothing beside it
    # a tree whose bytes differ is refused, and left as it is
    member = next(p for p in sorted((out / "tree").rglob("*")) if p.is_file() and not p.is_symlink() and p.stat().st_size)
    member.write_bytes(b"x" + member.read_bytes()[1:])
    changed = snapshot(out)
    line = one_error_line(get(taddr, "tree", str(out)))
    assert "a directory with other content is there" in line, line
    assert snapshot(out) == changed


# -- hostile manifests -------------------------------------------------------------------------------------
def manifest_of(name: str, entries: list[dict[str, Any]], **header: int) -> bytes:
    """A manifest's bytes: a header whose counts match `entries` unless `header` says otherwise."""
    counts = {
        "files": sum(1 for e in entries if e.get("type", "file") == "file"),
        "dirs": sum(1 for e in entries if e.get("type") == "dir"),
        "links": sum(1 for e in entries if e.get("type") == "link"),
        "size": sum(e.get("size", 0) for e in entries if e.get("type", "file") == "file"),
    }
    lines = [{"manifest": 1, "name": name, **counts, **header}, *entries]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def f(path: str, size: int = 3) -> dict[str, Any]:
    return {"path": path, "size": size}


def d(path: str) -> dict[str, Any]:
    return {"path": path, "type": "dir"}


def ln(path: str, target: str) -> dict[str, Any]:
    return {"path": path, "type": "link", "target": target}


#: case -> (entries given tmp_path, header overrides, what the refusal says)
HOSTILE: dict[str, tuple[Callable[[Path], list[dict[str, Any]]], dict[str, int], str]] = {
    "absolute_path": (lambda t: [f(str(t / "victim" / "evil.txt"))], {}, "is an absolute path"),
    "dotdot": (lambda t: [f("../evil.txt")], {}, "has a '..' component"),
    "dotdot_inside": (lambda t: [d("a"), f("a/../../evil.txt")], {}, "has a '..' component"),
    "dot": (lambda t: [d("a"), f("a/./x")], {}, "has a '.' component"),
    "empty_component": (lambda t: [d("a"), f("a//x")], {}, "has an empty component"),
    "nul": (lambda t: [f("evil\x00.txt")], {}, "control character"),
    "escape_character": (lambda t: [f("evil\x1b[2J.txt")], {}, "control character"),
    "newline": (lambda t: [f("evil\n.txt")], {}, "control character"),
    "duplicate_file": (lambda t: [f("x"), f("x")], {}, "listed twice"),
    "duplicate_dir": (lambda t: [d("a"), d("a")], {}, "listed twice"),
    "out_of_order": (lambda t: [f("b"), f("a")], {}, "out of order"),
    "before_its_directory": (lambda t: [f("a/x"), d("a")], {}, "comes before its directory"),
    "link_absolute": (lambda t: [ln("l", "/etc/passwd")], {}, "points outside the tree"),
    "link_climbing": (lambda t: [d("a"), ln("a/l", "../../x")], {}, "points outside the tree"),
    "link_not_normalised": (lambda t: [d("a"), ln("a/l", "x/../../../y")], {}, "points outside the tree"),
    "header_more_files": (lambda t: [f("x")], {"files": 2}, "its header says 2"),
    "header_fewer_files": (lambda t: [f("x"), f("y")], {"files": 1}, "more entries than its header says"),
    "header_more_bytes": (lambda t: [f("x", 10)], {"size": 20}, "its header says"),
    "header_fewer_bytes": (lambda t: [f("x", 10)], {"size": 5}, "larger than its header says"),
    "header_wrong_links": (
        lambda t: [ln("l", "x"), f("x")],
        {"links": 0},
        "more entries than its header says",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_is_refused_and_nothing_written(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path, case: str
) -> None:
    entries_of, header, says = HOSTILE[case]
    (tmp_path / "victim").mkdir()
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    manifest_file = evil_dir / "manifest"
    manifest_file.write_bytes(manifest_of("evil", entries_of(tmp_path), **header))
    evil_collection.start(procs, taddr, "evil", manifest_file)
    (out / "sentinel.txt").write_text("was here\n")
    before_out = sorted(p.name for p in out.iterdir())
    # (DEST's directory itself is left out: the state log and the manifest's file are created in it, then
    # removed, before the manifest can be checked)
    before_all = snapshot(tmp_path, but=out)

    dest = out / "dest"
    got = get(taddr, "evil", str(dest))
    line = one_error_line(got)
    assert line.startswith("p2pfs: error: refused the manifest of 'evil': "), line
    assert says in line, line
    # no dest, dest.part, dest.part.state or dest.part.manifest
    assert sorted(p.name for p in out.iterdir()) == before_out
    assert snapshot(tmp_path, but=out) == before_all  # and nothing anywhere else
    assert not os.path.lexists(tmp_path / "victim" / "evil.txt")


def test_benign_manifest_from_the_evil_publisher_is_fetched(
    tmp_path: Path, procs: Callable[..., Proc], taddr: str, out: Path
) -> None:
    """The control for the hostile cases: the same publisher with a manifest that keeps the rules is
    downloaded whole (so a refusal above is the manifest's doing, not the publisher's)."""
    entries = [d("a"), {"path": "a/run", "size": 5, "x": True}, f("b", 3), ln("c", "b")]
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    (evil_dir / "manifest").write_bytes(manifest_of("fine", entries))
    (evil_dir / "data").write_bytes(b"hello" + b"abc")
    evil_collection.start(procs, taddr, "fine", evil_dir / "manifest", "--data", str(evil_dir / "data"))
    done = get_done(taddr, "fine", out / "fine")
    assert done["files"] == 2, done
    assert tree_of(out / "fine") == {
        "a": ("dir",),
        "a/run": ("file", 5, b"hello", True),
        "b": ("file", 3, b"abc", False),
        "c": ("link", "b"),
    }


# -- one member, and the member list ---------------------------------------------------------------------
def test_one_member_is_fetched_alone_and_ls_lists_the_members(
    shared_tree: tuple[Path, Proc, str], taddr: str, out: Path
) -> None:
    src, _, _ = shared_tree
    # a member spanning several chunks, into a directory; an executable; a small one, default DEST ./BASENAME
    done = get_done(taddr, "tree/big.bin", out)
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert done["name"] == "tree/big.bin" and done["filesize"] == (src / "big.bin").stat().st_size
    got = get(taddr, "tree/run.sh", str(out / "r.sh"))
    assert got.returncode == 0, got.stderr
    assert (out / "r.sh").read_bytes() == (src / "run.sh").read_bytes()
    assert (out / "r.sh").stat().st_mode & 0o111
    got = run("get", "tree/ünï cödé/with space.txt", "--tracker", taddr, "--host", "127.0.0.1", cwd=out)
    assert got.returncode == 0, got.stderr
    assert (out / "with space.txt").read_bytes() == (src / "ünï cödé" / "with space.txt").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["big.bin", "r.sh", "with space.txt"]  # no .part left
    # a directory or a name that is not a member: one line each
    assert "is a directory" in one_error_line(get(taddr, "tree/a/b", str(out / "x")))
    assert "has no member" in one_error_line(get(taddr, "tree/nope.txt", str(out / "x")))
    # ls NAME: every member with its size, in manifest order; --json: one object per entry
    listed = run("ls", "tree", "--tracker", taddr)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("tree/: ")
    assert any(line.endswith("  big.bin") for line in listed.stdout.splitlines())
    entries = [json.loads(line) for line in run("ls", "tree", "--json", "--tracker", taddr).stdout.splitlines()]
    paths = [e["path"] for e in entries]
    want = sorted(expected_tree(src), key=lambda p: [c.encode() for c in p.split("/")])
    assert paths == want
    assert next(e for e in entries if e["path"] == "run.sh").get("x") is True
