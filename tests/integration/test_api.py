"""The library API (docs/API.md): `p2pfs.share`/`p2pfs.get` and `p2pfs.aio.share`/`p2pfs.aio.get`, for files
and collections, against a real tracker process, with real files and sockets. Nothing sleeps to
synchronise: a share is listed once `share` returns, and unlisted once its stop returns."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import p2pfs
from p2pfs.address import Address
from tests import cli_env
from tests.procs import Proc, make_file

CHUNK = 64 * 1024
SIZE = 300_000  # 5 chunks of 64 KiB, the last one short
ROOT = Path(__file__).resolve().parents[2]

# settings a user's environment could carry in (the session fixture clears most of them already)
CLEARED_ENV = (*cli_env.CLEARED_ENV, "P2PFS_WIRE")
CLEARED_ENV = (
    "P2PFS_TRACKER",
    "P2PFS_CONFIG",
    "P2PFS_SECRET_FILE",
    "P2PFS_TLS_CERT",
    "P2PFS_TLS_KEY",
    "P2PFS_TLS_CA",
    "P2PFS_CHUNK_SIZE",
    "P2PFS_WIRE",
    "P2PFS_TEST_DELAY",
)


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    # a config file of this test's own (absent unless a test writes it)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture
def taddr(tracker: tuple[Proc, str]) -> str:
    return tracker[1]


@pytest.fixture
def dead_tracker() -> Iterator[str]:
    """An address where nothing listens (the port is held by a socket that does not listen): refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """Every share a test starts is stopped by its end: no "p2pfs" thread outlives the test."""
    yield
    assert [t for t in threading.enumerate() if t.name == "p2pfs" and t.is_alive()] == []


def snapshot(root: Path) -> dict[str, tuple[str, bytes, bool]]:
    """A tree as {relative path: (kind, bytes, executable)}."""
    found: dict[str, tuple[str, bytes, bool]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            found[os.path.relpath(os.path.join(dirpath, d), root)] = ("dir", b"", False)
        for f in filenames:
            path = Path(dirpath, f)
            executable = bool(path.stat().st_mode & stat.S_IXUSR)
            found[os.path.relpath(path, root)] = ("file", path.read_bytes(), executable)
    return found


def make_tree(root: Path) -> Path:
    """Nested directories, an empty one, an executable, a file of several chunks."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "b" / "deep.txt").write_text("deep\n")
    make_file(root / "a" / "big.bin", 200_000, seed=7)
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    return root


# -- files and collections, sync -------------------------------------------------------------------
def test_share_and_get_a_file(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", SIZE)
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK, host="127.0.0.1") as shared:
        assert isinstance(shared, p2pfs.Share)
        assert shared.names == ["data.bin"]
        assert Address.parse(shared.address).port > 0
        result = p2pfs.get("data.bin", dest, tracker=taddr)
    assert dest.read_bytes() == src.read_bytes()
    assert isinstance(result, p2pfs.Result)
    assert not isinstance(result, p2pfs.Seeding)
    assert (result.name, result.dest, result.filesize, result.chunk_count) == ("data.bin", dest, SIZE, 5)
    assert result.content_id is not None and len(result.content_id) == 64
    assert (result.already, result.resumed, result.files) == (False, 0, None)
    assert {str(a) for a in result.sources} == {shared.address}
    assert sum(result.sources.values()) == 5
    assert result.seconds > 0 and result.mib_per_s > 0
    assert shared.stopped


def test_share_and_get_a_directory_tree(tmp_path: Path, taddr: str) -> None:
    tree = make_tree(tmp_path / "tree")
    dest = tmp_path / "copy"
    with p2pfs.share(tree, tracker=taddr, chunk_size=CHUNK) as shared:
        assert shared.names == ["tree"]
        result = p2pfs.get("tree", dest, tracker=taddr)
    assert snapshot(dest) == snapshot(tree)
    assert snapshot(dest)["run.sh"][2] is True
    assert snapshot(dest)["empty"] == ("dir", b"", False)
    assert (result.name, result.dest, result.files, result.already) == ("tree", dest, 3, False)


def test_get_one_file_of_a_collection(tmp_path: Path, taddr: str) -> None:
    tree = make_tree(tmp_path / "tree")
    with p2pfs.share(tree, tracker=taddr, chunk_size=CHUNK):
        member = p2pfs.get("tree/a/big.bin", tmp_path / "big.bin", tracker=taddr)
        assert (member.name, member.filesize, member.files) == ("tree/a/big.bin", 200_000, None)
        assert (tmp_path / "big.bin").read_bytes() == (tree / "a" / "big.bin").read_bytes()
        with pytest.raises(p2pfs.InvalidArgument, match="only whole files and collections can be seeded"):
            p2pfs.get("tree/run.sh", tmp_path / "run.sh", tracker=taddr, seed=True)
    assert not (tmp_path / "run.sh").exists()


def test_share_several_paths_and_a_name(tmp_path: Path, taddr: str) -> None:
    one = make_file(tmp_path / "one.bin", 1000, seed=1)
    tree = make_tree(tmp_path / "tree")
    with p2pfs.share([one, str(tree)], tracker=[taddr]) as shared:
        assert shared.names == ["one.bin", "tree"]
        assert p2pfs.get("tree", tmp_path / "t", tracker=taddr).files == 3
    with p2pfs.share(one, taddr, name="renamed.bin") as shared:
        assert shared.names == ["renamed.bin"]
        p2pfs.get("renamed.bin", tmp_path / "r.bin", taddr)
    assert (tmp_path / "r.bin").read_bytes() == one.read_bytes()


def test_get_dest_holding_the_bytes_is_already_there(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", SIZE)
    dest = tmp_path / "copy.bin"
    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK):
        first = p2pfs.get("data.bin", dest, tracker=taddr)
        mtime = dest.stat().st_mtime_ns
        stages: list[str] = []
        again = p2pfs.get("data.bin", dest, tracker=taddr, progress=lambda p: stages.append(p.stage))
        assert (first.already, again.already) == (False, True)
        assert again.sources == {} and again.content_id == first.content_id
        assert dest.stat().st_mtime_ns == mtime and dest.read_bytes() == src.read_bytes()
        assert set(stages) == {"check"}
        # other bytes are refused, unless force=True
        other = make_file(tmp_path / "other.bin", SIZE, seed=2)
        with pytest.raises(p2pfs.StorageError, match="exists with other content"):
            p2pfs.get("data.bin", other, tracker=taddr)
        assert p2pfs.get("data.bin", other, tracker=taddr, force=True).already is False
        assert other.read_bytes() == src.read_bytes()


def test_progress_reports_increasing_bytes(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", 40 * CHUNK + 5)
    seen: list[p2pfs.Progress] = []
    caller = threading.current_thread()
    threads: set[threading.Thread] = set()

    def progress(p: p2pfs.Progress) -> None:
        threads.add(threading.current_thread())
        seen.append(p)

    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK):
        result = p2pfs.get("data.bin", tmp_path / "copy.bin", tracker=taddr, progress=progress)
    assert seen and {p.stage for p in seen} == {"download"}
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and done[-1] == result.filesize == src.stat().st_size
    assert [p.chunks_done for p in seen] == sorted(p.chunks_done for p in seen)
    last = seen[-1]
    assert (last.name, last.filesize, last.chunk_count, last.chunks_done) == (
        "data.bin",
        result.filesize,
        41,
        41,
    )
    assert last.holders >= 1 and sum(last.sources.values()) == 41
    assert threads == {caller}  # (called in the caller's thread)


def test_a_failing_progress_callback_stops_the_download(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", 40 * CHUNK)
    dest = tmp_path / "copy.bin"

    def progress(p: p2pfs.Progress) -> None:
        if p.chunks_done:
            raise KeyError("stop here")

    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK):
        with pytest.raises(KeyError, match="stop here"):
            p2pfs.get("data.bin", dest, tracker=taddr, progress=progress)
        assert not dest.exists()
        resumed = p2pfs.get("data.bin", dest, tracker=taddr)  # the kept chunks are not fetched again
    assert resumed.resumed >= 1
    assert dest.read_bytes() == src.read_bytes()


# -- seeding and stopping -------------------------------------------------------------------------------
def test_share_exit_stops_serving(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", SIZE)
    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK) as shared:
        p2pfs.get("data.bin", tmp_path / "first.bin", tracker=taddr)
    assert shared.stopped and shared.names == []
    with pytest.raises(p2pfs.FileNotPublished):
        p2pfs.get("data.bin", tmp_path / "second.bin", tracker=taddr)
    assert not (tmp_path / "second.bin").exists()
    shared.stop()  # (idempotent)


def test_unpublish_one_name_keeps_serving_the_others(tmp_path: Path, taddr: str) -> None:
    one = make_file(tmp_path / "one.bin", 1000, seed=1)
    two = make_file(tmp_path / "two.bin", 2000, seed=2)
    with p2pfs.share([one, two], tracker=taddr) as shared:
        shared.unpublish("one.bin")
        assert shared.names == ["two.bin"]
        with pytest.raises(p2pfs.FileNotPublished):
            p2pfs.get("one.bin", tmp_path / "x", tracker=taddr)
        assert p2pfs.get("two.bin", tmp_path / "y", tracker=taddr).filesize == 2000
        with pytest.raises(p2pfs.P2PFSError, match="does not share"):
            shared.unpublish("one.bin")
    assert one.exists()  # (left untouched on disk)


def test_get_with_seed_serves_until_stopped(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", SIZE)
    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK) as shared:
        seeding = p2pfs.get("data.bin", tmp_path / "seed.bin", tracker=taddr, seed=True)
    assert isinstance(seeding, p2pfs.Result) and isinstance(seeding, p2pfs.Seeding)
    assert seeding.share.names == ["data.bin"] and seeding.share.address != shared.address
    with seeding:
        # the publisher is gone: the file is still listed (the seeder is a complete holder) and served
        third = p2pfs.get("data.bin", tmp_path / "third.bin", tracker=taddr)
        assert {str(a) for a in third.sources} == {seeding.share.address}
    assert seeding.share.stopped
    assert (tmp_path / "third.bin").read_bytes() == src.read_bytes()
    with pytest.raises(p2pfs.FileNotPublished):
        p2pfs.get("data.bin", tmp_path / "fourth.bin", tracker=taddr)


def test_a_downloaded_copy_can_be_shared_again(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", SIZE)
    copy = tmp_path / "copy.bin"
    with p2pfs.share(src, tracker=taddr, chunk_size=CHUNK) as first:
        p2pfs.get("data.bin", copy, tracker=taddr)
        with p2pfs.share(copy, tracker=taddr, name="data.bin", chunk_size=CHUNK) as second:
            first.stop()
            third = p2pfs.get("data.bin", tmp_path / "third.bin", tracker=taddr)
    assert {str(a) for a in third.sources} == {second.address}
    assert (tmp_path / "third.bin").read_bytes() == src.read_bytes()


# -- asyncio ------------------------------------------------------------------------------------------
def test_async_share_and_get_in_one_loop(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", SIZE)
    tree = make_tree(tmp_path / "tree")

    async def scenario() -> None:
        async with p2pfs.aio.share([src, tree], taddr, chunk_size=CHUNK) as shared:
            assert isinstance(shared, p2pfs.aio.Share) and shared.names == ["data.bin", "tree"]
            seen: list[int] = []
            got = await p2pfs.aio.get(
                "data.bin", tmp_path / "copy.bin", taddr, progress=lambda p: seen.append(p.bytes_done)
            )
            assert got.filesize == SIZE and not got.already and seen[-1] == SIZE
            both = await asyncio.gather(
                p2pfs.aio.get("tree", tmp_path / "tree-copy", taddr),
                p2pfs.aio.get("data.bin", tmp_path / "copy.bin", taddr),
            )
            assert [r.already for r in both] == [False, True]
            async with await p2pfs.aio.get("tree", tmp_path / "tree-seed", taddr, seed=True) as seeding:
                assert isinstance(seeding, p2pfs.aio.Seeding) and seeding.files == 3
                await shared.stop()
                again = await p2pfs.aio.get("tree", tmp_path / "tree-third", taddr)
                assert {str(a) for a in again.sources} == {seeding.share.address}
        with pytest.raises(p2pfs.FileNotPublished):
            await p2pfs.aio.get("tree", tmp_path / "tree-fourth", taddr)

    asyncio.run(scenario())
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    for copy in ("tree-copy", "tree-seed", "tree-third"):
        assert snapshot(tmp_path / copy) == snapshot(tree)


def test_async_start_share_without_a_block(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", 1000)

    async def scenario() -> None:
        shared = await p2pfs.aio.start_share(src, taddr)
        try:
            assert (await p2pfs.aio.get("data.bin", tmp_path / "c", taddr)).filesize == 1000
        finally:
            await shared.stop()
        with pytest.raises(p2pfs.FileNotPublished):
            await p2pfs.aio.get("data.bin", tmp_path / "d", taddr)

    asyncio.run(scenario())


def test_sync_calls_inside_a_running_loop_are_refused(tmp_path: Path, taddr: str) -> None:
    src = make_file(tmp_path / "data.bin", 1000)

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match=r"p2pfs\.aio\.get"):
            p2pfs.get("data.bin", tmp_path / "c", tracker=taddr)
        with pytest.raises(RuntimeError, match=r"p2pfs\.aio\.share"):
            p2pfs.share(src, tracker=taddr)

    asyncio.run(scenario())
    assert not (tmp_path / "c").exists()


# -- errors and settings ------------------------------------------------------------------------------
def test_unknown_name_is_file_not_published(tmp_path: Path, taddr: str) -> None:
    with pytest.raises(p2pfs.FileNotPublished, match="nothing.bin"):
        p2pfs.get("nothing.bin", tmp_path / "x", tracker=taddr)
    assert issubclass(p2pfs.FileNotPublished, p2pfs.P2PFSError)


def test_no_tracker_reachable_is_tracker_unavailable(tmp_path: Path, dead_tracker: str) -> None:
    with pytest.raises(p2pfs.TrackerUnavailable, match="connection refused"):
        p2pfs.get("x.bin", tmp_path / "x", tracker=dead_tracker)
    src = make_file(tmp_path / "data.bin", 1000)
    with pytest.raises(p2pfs.TrackerUnavailable):
        p2pfs.share(src, tracker=dead_tracker)
    with pytest.raises(p2pfs.TrackerUnavailable):
        asyncio.run(p2pfs.aio.get("x.bin", tmp_path / "x", dead_tracker))


def test_trackers_are_tried_in_order(tmp_path: Path, taddr: str, dead_tracker: str) -> None:
    src = make_file(tmp_path / "data.bin", 1000)
    with p2pfs.share(src, tracker=[dead_tracker, Address.parse(taddr)]):
        assert p2pfs.get("data.bin", tmp_path / "c", tracker=f"{dead_tracker},{taddr}").filesize == 1000


def test_no_tracker_given_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(p2pfs.P2PFSError, match="no tracker given") as info:
        p2pfs.get("x.bin", tmp_path / "x")
    assert "\n" not in str(info.value) and "P2PFS_TRACKER" in str(info.value)
    # an empty list is not "use the default": it names no tracker
    with pytest.raises(p2pfs.InvalidArgument, match="no tracker address given"):
        p2pfs.share(tmp_path, tracker=[])


def test_tracker_from_env_then_config_file(
    tmp_path: Path, taddr: str, dead_tracker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_file(tmp_path / "data.bin", 1000)
    config = tmp_path / "config.toml"
    config.write_text(f'tracker = "{taddr}"\nchunk_size = "256K"\n')
    monkeypatch.setenv("P2PFS_CONFIG", str(config))
    with p2pfs.share(src):  # the file's tracker
        assert p2pfs.get("data.bin", tmp_path / "a").chunk_count == 1
        monkeypatch.setenv("P2PFS_TRACKER", dead_tracker)  # the environment beats the file
        with pytest.raises(p2pfs.TrackerUnavailable):
            p2pfs.get("data.bin", tmp_path / "b")
        assert p2pfs.get("data.bin", tmp_path / "b", tracker=taddr).filesize == 1000  # an argument beats both
        monkeypatch.setenv("P2PFS_TRACKER", taddr)
        with pytest.raises(p2pfs.TrackerUnavailable):
            p2pfs.get("data.bin", tmp_path / "c", tracker=dead_tracker)


def test_bad_arguments_are_invalid_argument(
    tmp_path: Path, taddr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_file(tmp_path / "data.bin", 1000)
    with pytest.raises(p2pfs.InvalidArgument, match="bad tracker"):
        p2pfs.get("x", tmp_path / "x", tracker="no-port-here")
    with pytest.raises(ValueError, match="bad tracker"):  # (also a ValueError)
        p2pfs.get("x", tmp_path / "x", tracker=["127.0.0.1:1", "http://h:1"])
    with pytest.raises(p2pfs.InvalidArgument, match="name= names one path"):
        p2pfs.share([src, src], tracker=taddr, name="x")
    with pytest.raises(p2pfs.InvalidArgument, match="nothing to share"):
        p2pfs.share([], tracker=taddr)
    with pytest.raises(p2pfs.InvalidArgument, match="bad port"):
        p2pfs.share(src, tracker=taddr, port=70000)
    monkeypatch.setenv("P2PFS_TRACKER", "nonsense")
    with pytest.raises(p2pfs.P2PFSError, match="P2PFS_TRACKER"):
        p2pfs.get("x", tmp_path / "x")


def test_share_errors_are_raised_in_the_caller(tmp_path: Path, taddr: str) -> None:
    with pytest.raises(p2pfs.StorageError, match="not found"):
        p2pfs.share(tmp_path / "missing.bin", tracker=taddr)
    src = make_file(tmp_path / "data.bin", 1000)
    with p2pfs.share(src, tracker=taddr), pytest.raises(p2pfs.P2PFSError):
        # another file under the same name: the tracker refuses the publish
        p2pfs.share(make_file(tmp_path / "other", 2000, seed=3), tracker=taddr, name="data.bin")


def test_private_swarm(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    secret = tmp_path / "swarm.secret"
    secret.write_text("a-long-enough-shared-secret-for-the-test\n")
    secret.chmod(0o600)
    proc = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", "--secret-file", str(secret))
    taddr = proc.listening()
    src = make_file(tmp_path / "data.bin", SIZE)
    with p2pfs.share(src, tracker=taddr, secret_file=secret, chunk_size=CHUNK):
        with pytest.raises(p2pfs.P2PFSError, match="authentication failed"):
            p2pfs.get("data.bin", tmp_path / "no.bin", tracker=taddr)
        got = p2pfs.get("data.bin", tmp_path / "yes.bin", tracker=taddr, secret_file=str(secret))
    assert got.filesize == SIZE and (tmp_path / "yes.bin").read_bytes() == src.read_bytes()


# -- the package and the example ---------------------------------------------------------------------
def test_import_is_cheap() -> None:
    code = (
        "import json, sys, p2pfs\n"
        "before = sorted(sys.modules)\n"
        "p2pfs.share, p2pfs.get, p2pfs.aio.get, p2pfs.Result, p2pfs.StorageError\n"
        "print(json.dumps([before, sorted(sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    before, after = json.loads(out)
    assert not [
        m for m in before if m.startswith(("asyncio", "p2pfs.peer", "p2pfs.cli", "rich", "prompt_toolkit"))
    ]
    assert not [m for m in after if m.startswith(("rich", "prompt_toolkit"))]


@pytest.mark.parametrize("via", ["argv", "env"])
def test_the_example_runs(taddr: str, via: str) -> None:
    env = {**os.environ, "P2PFS_TRACKER": taddr} if via == "env" else dict(os.environ)
    args = [taddr] if via == "argv" else []
    got = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api_example.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert "sharing example.bin, example-tree on 127.0.0.1:" in got.stdout
    assert "got example-tree/: 2 files" in got.stdout
    assert got.stdout.rstrip().endswith("again: already=True")


def test_the_docs_show_the_example() -> None:
    example = (ROOT / "examples" / "api_example.py").read_text()
    assert f"```python\n{example}```" in (ROOT / "docs" / "API.md").read_text()
