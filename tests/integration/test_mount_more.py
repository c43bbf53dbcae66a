"""`p2pfs mount`, more of issue 15's contract over real FUSE mounts, tracker and sharing peer: a tracker
that stops answering leaves the last known list (never a hang), two sequential streams read at once
share the fetching (neither starves), and a small `--max-cache` keeps the cache directory within its
budget (least recently read chunks go first) while every read still returns the exact bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.test_mount import CHUNK, files, mounts, pytestmark, share, unmount_figures
from tests.procs import Proc, make_file, run

__all__ = ["files", "mounts", "pytestmark"]  # (fixtures and skip marks reused from test_mount)

MiB = 1 << 20
#: Seconds a call into the mount may take before the test calls it a hang (generous: a hang is forever).
HANG = 30.0

T = TypeVar("T")


def in_thread(call: Callable[[], T]) -> T:
    """`call()` in a thread of its own; fails (rather than hangs) if it has not returned within HANG."""
    result: list[T] = []
    failure: list[OSError] = []

    def target() -> None:
        try:
            result.append(call())
        except OSError as exc:  # (re-raised in the test's thread: EIO is what a failed read gives)
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"the mount did not answer within {HANG:g} s (a hang)"
    if failure:
        raise failure[0]
    return result[0]


def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `condition` (the mount refreshes the tracker's list in the background: nothing announces it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def chunk_files(cache: Path) -> dict[int, int]:
    """The chunk files the cache directory holds (`CACHE/CONTENT_ID/CHUNK_NUMBER`): chunk number -> bytes,
    over every file's directory (one published file per test here)."""
    found: dict[int, int] = {}
    for directory in cache.iterdir():
        if directory.is_dir():
            for item in directory.iterdir():
                if item.name.isdigit():
                    found[int(item.name)] = item.stat().st_size
    return found


def test_a_tracker_that_stops_answering_leaves_the_last_list(
    tracker: tuple[Proc, str],
    procs: Callable[..., Proc],
    mounts: Callable[..., Proc],
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2pfs.mount.fs import LIST_FRESH  # (here: the module needs pyfuse3, which test_mount skips without)

    tracker_proc, taddr = tracker
    share(procs, taddr, [files["one.txt"], files["exact.bin"]])
    mnt = tmp_path / "mnt"
    # the mount's requests to the tracker never time out by themselves: only the mount's own bound on a
    # listing's wait keeps `ls` from hanging
    monkeypatch.setenv("P2PFS_REQUEST_TIMEOUT", "3600")
    mounts(taddr, mnt, tmp_path / "cache")
    assert sorted(os.listdir(mnt)) == ["exact.bin", "one.txt"]
    # the list is refreshed: a file published after the mount shows up (the last known list is this one)
    share(procs, taddr, [files["big.bin"]])
    until(lambda: "big.bin" in os.listdir(mnt), "big.bin to be listed by the mount")
    listed = sorted(os.listdir(mnt))
    assert listed == ["big.bin", "exact.bin", "one.txt"]
    os.kill(tracker_proc.pid, signal.SIGSTOP)
    try:
        # A listing asks the tracker again only once the list is older than LIST_FRESH: a clock
        # condition with nothing to await, so the mount is listed (paced, each asserted) until the list
        # has surely gone stale, through the background refreshes that cannot finish either.
        frozen = time.monotonic()
        rounds = 0
        while rounds < 2 or time.monotonic() - frozen < 3 * LIST_FRESH:
            assert sorted(in_thread(lambda: os.listdir(mnt))) == listed
            rounds += 1
            time.sleep(0.1)  # (pacing, not a synchronisation)
        size = in_thread(lambda: os.stat(mnt / "big.bin").st_size)
        assert size == files["big.bin"].stat().st_size
        # an unknown name makes the mount ask the tracker again: still an answer (no such file), no hang
        missing = in_thread(lambda: os.path.exists(mnt / "not-published"))
        assert missing is False
        assert sorted(in_thread(lambda: os.listdir(mnt))) == listed
    finally:
        os.kill(tracker_proc.pid, signal.SIGCONT)
    # the tracker answers again: so does the mount, with bytes fetched through it
    assert (mnt / "one.txt").read_bytes() == files["one.txt"].read_bytes()
    assert sorted(os.listdir(mnt)) == listed


def share_slowly(procs: Callable[..., Proc], taddr: str, paths: list[Path], rate: str) -> Proc:
    proc = procs(
        "share", *map(str, paths), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K",
        "--max-upload-rate", rate,
    )  # fmt: skip
    proc.listening()
    proc.expect(r"^serving")
    return proc


def test_two_sequential_streams_at_once_both_progress(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], tmp_path: Path
) -> None:
    _, taddr = tracker
    data = tmp_path / "data"
    data.mkdir()
    size = 6 * MiB + 4321
    published = {
        name: make_file(data / name, size, seed=seed) for name, seed in (("a.bin", 21), ("b.bin", 22))
    }
    # 2 MiB/s for both files together: seconds of fetching, so one stream could starve the other
    share_slowly(procs, taddr, list(published.values()), "2M")
    mnt = tmp_path / "mnt"
    mounts(taddr, mnt, tmp_path / "cache")
    # (stream, bytes read so far) in the order the reads returned, over both streams
    progress: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(2)
    digests: dict[str, str] = {}

    def stream(name: str) -> None:
        digest = hashlib.sha256()
        done = 0
        with open(mnt / name, "rb", buffering=0) as f:
            start.wait()
            while piece := f.read(256 * 1024):
                digest.update(piece)
                done += len(piece)
                with lock:
                    progress.append((name, done))
        digests[name] = digest.hexdigest()

    threads = [threading.Thread(target=stream, args=(name,), daemon=True) for name in published]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a stream did not finish"
    for name, path in published.items():
        assert digests[name] == hashlib.sha256(path.read_bytes()).hexdigest(), name
    for name, other in (("a.bin", "b.bin"), ("b.bin", "a.bin")):
        first_mib = next(i for i, (n, done) in enumerate(progress) if n == name and done >= MiB)
        other_done = max(i for i, (n, _) in enumerate(progress) if n == other)
        assert first_mib < other_done, f"{name} got its first MiB only after {other} was read whole"


def test_max_cache_evicts_the_least_recently_read(
    tracker: tuple[Proc, str],
    procs: Callable[..., Proc],
    mounts: Callable[..., Proc],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    _, taddr = tracker
    share(procs, taddr, [files["big.bin"]])
    budget_chunks = 4
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    # (a read whose chunks do not come fails within the test's patience for a hang)
    options = ("--max-cache", str(budget_chunks * CHUNK), "--read-timeout", "10")
    first = mounts(taddr, mnt, cache, *options)
    big = files["big.bin"].read_bytes()
    chunk_count = -(-len(big) // CHUNK)
    assert in_thread((mnt / "big.bin").read_bytes) == big
    _, _, fetched = unmount_figures(first)
    assert fetched >= chunk_count
    # what is left: at most the budget, and the least recently read went first (the start of the file)
    left = chunk_files(cache)
    assert 0 < len(left) <= budget_chunks and sum(left.values()) <= budget_chunks * CHUNK, left
    assert min(left) >= chunk_count // 2, sorted(left)
    # a remount keeps what is left; the start of the file is fetched again, exactly
    second = mounts(taddr, mnt, cache, *options)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # (no kernel read-ahead: only these chunks are read)
        assert os.pread(fd, 2 * CHUNK + 10, 0) == big[: 2 * CHUNK + 10]
        assert os.pread(fd, 1234, len(big) - 1234) == big[-1234:]
    finally:
        os.close(fd)
    _, _, fetched = unmount_figures(second)
    assert fetched >= 3  # (chunks 0, 1 and 2 were gone)
    left = chunk_files(cache)
    assert len(left) <= budget_chunks and {0, 1, 2} <= set(left), sorted(left)


def read_with(path: Path, reads: list[tuple[int, int]]) -> list[bytes]:
    """`reads` (offset, size) through one descriptor without kernel read-ahead, so the mount sees these
    reads and no others (each becomes FUSE reads of the pages it covers)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return [os.pread(fd, size, offset) for offset, size in reads]
    finally:
        os.close(fd)


#: a file of 16 chunks (the last one short), read under a --max-cache of two chunks
SMALL_CACHE_CHUNKS = 16
SMALL_CACHE_SIZE = (SMALL_CACHE_CHUNKS - 1) * CHUNK + 1000


def test_sequential_reads_under_a_cache_of_two_chunks_fetch_each_chunk_once(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], tmp_path: Path
) -> None:
    """The read-ahead window is held to half the cache (one chunk here): a window of the default 16 MiB
    would fetch the whole file ahead, each chunk evicting an earlier one before it is read, and the
    reader would fetch them all again."""
    _, taddr = tracker
    data = tmp_path / "data"
    data.mkdir()
    published = make_file(data / "seq.bin", SMALL_CACHE_SIZE, seed=31)
    share(procs, taddr, [published])
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mount = mounts(taddr, mnt, cache, "--max-cache", str(2 * CHUNK), "--read-timeout", "10")
    want = published.read_bytes()
    reads = [(offset, CHUNK) for offset in range(0, len(want), CHUNK)]
    got = in_thread(lambda: read_with(mnt / "seq.bin", reads))
    assert b"".join(got) == want
    _, touched, fetched = unmount_figures(mount)
    assert touched == SMALL_CACHE_CHUNKS
    assert fetched == SMALL_CACHE_CHUNKS, "a chunk was evicted before it was read, and fetched again"
    left = chunk_files(cache)
    assert sorted(left) == [SMALL_CACHE_CHUNKS - 2, SMALL_CACHE_CHUNKS - 1], sorted(left)


def test_reads_covering_more_chunks_than_the_cache_holds_return_exact_bytes(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], tmp_path: Path
) -> None:
    """Each read covers three chunks or more under a --max-cache of two: the chunks a read waits for are
    pinned until its bytes are copied out. Unpinned, the third to arrive evicts the first and the read
    fails (the kernel then retries it page by page, so the caller may still get its bytes: the mount's
    warning tells)."""
    _, taddr = tracker
    data = tmp_path / "data"
    data.mkdir()
    published = {
        name: make_file(data / name, SMALL_CACHE_SIZE, seed=seed)
        for name, seed in (("s.bin", 32), ("r.bin", 33))
    }
    share(procs, taddr, list(published.values()))
    mnt = tmp_path / "mnt"
    mount = mounts(taddr, mnt, tmp_path / "cache", "--max-cache", str(2 * CHUNK), "--read-timeout", "10")
    # sequential, in reads of two chunks and a half (so most start within a chunk)
    want = published["s.bin"].read_bytes()
    step = 2 * CHUNK + CHUNK // 2
    reads = [(offset, step) for offset in range(0, len(want), step)]
    got = in_thread(lambda: read_with(mnt / "s.bin", reads))
    assert b"".join(got) == want
    # random: one read within each run of three chunks, across both of its boundaries, in random order
    want = published["r.bin"].read_bytes()
    rng = random.Random(34)
    reads = [
        (first * CHUNK + rng.randrange(CHUNK), 2 * CHUNK) for first in range(0, SMALL_CACHE_CHUNKS - 2, 3)
    ]
    rng.shuffle(reads)
    got = in_thread(lambda: read_with(mnt / "r.bin", reads))
    for (offset, size), piece in zip(reads, got, strict=True):
        assert piece == want[offset : offset + size], (offset, size)
    assert mount.popen.poll() is None
    assert mount.interrupt() == 0
    failed = [line for line in mount.stderr if "WARNING" in line or "Traceback" in line]
    assert failed == [], "a read lost a chunk it needed"


def test_a_get_moves_on_when_the_mount_has_evicted_a_chunk_it_is_listed_for(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], tmp_path: Path
) -> None:
    """An evicted chunk stays registered at the tracker (there is no message to unregister one chunk):
    the mount declines it with ERROR, and a downloader takes it from another holder. A downloader that
    waited on the mount instead would hang here (its chunk timeout is set beyond the test's patience)."""
    _, taddr = tracker
    data = tmp_path / "data"
    data.mkdir()
    published = make_file(data / "big.bin", SMALL_CACHE_SIZE, seed=35)
    share(procs, taddr, [published])
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mount = mounts(taddr, mnt, cache, "--max-cache", str(2 * CHUNK))
    want = published.read_bytes()
    assert in_thread((mnt / "big.bin").read_bytes) == want
    evicted = set(range(SMALL_CACHE_CHUNKS)) - set(chunk_files(cache))
    assert len(evicted) >= SMALL_CACHE_CHUNKS - 2, sorted(evicted)
    mount_port = mount.stdout[0].rpartition(":")[2]
    got = run(
        "-v", "get", "big.bin", str(tmp_path / "copy.bin"), "--tracker", taddr, "--host", "127.0.0.1",
        "--json", timeout=HANG, env={"P2PFS_CHUNK_TIMEOUT": "3600"},
    )  # fmt: skip
    assert got.returncode == 0, (got.stdout, got.stderr)
    assert (tmp_path / "copy.bin").read_bytes() == want
    # the mount was asked for chunks it no longer has, and said so
    declined = [line for line in got.stderr.splitlines() if f":{mount_port} cannot give chunk" in line]
    assert declined and all("not held here" in line for line in declined), got.stderr
    assert mount.popen.poll() is None
    assert mount.interrupt() == 0
