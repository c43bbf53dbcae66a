"""`p2pfs mount`: real FUSE mounts on a temporary directory over a real tracker and sharing peer (real
processes, sockets and files): listing and sizes, exact bytes across chunk boundaries, the mount serving
what it read, EIO when the only holder is gone (and the mount lives on), read-only, a clean unmount on
SIGTERM, and a remount reading from its cache alone.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse: FUSE mounts cannot be tested"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="no fusermount3 (Debian package fuse3)"),
]
pyfuse3 = pytest.importorskip("pyfuse3", reason="pyfuse3 is not installed (pip install '.[mount]')")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Published files: several chunks with a short last one, one byte, empty, exactly one chunk."""
    data = tmp_path / "data"
    data.mkdir()
    return {
        "big.bin": make_file(data / "big.bin", 64 * CHUNK + 1234, seed=3),
        "one.txt": make_file(data / "one.txt", 1, seed=4),
        "empty": make_file(data / "empty", 0),
        "exact.bin": make_file(data / "exact.bin", CHUNK, seed=5),
    }


def share(procs: Callable[..., Proc], taddr: str, paths: list[Path]) -> Proc:
    proc = procs("share", *map(str, paths), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K")
    proc.listening()
    proc.expect(r"^serving")
    return proc


@pytest.fixture
def mounts(procs: Callable[..., Proc]) -> Iterator[Callable[..., Proc]]:
    """Start `p2pfs mount`; awaited until mounted (skipped if this machine does not permit mounting).
    Whatever is still mounted at the end is unmounted."""
    points: list[Path] = []

    def start(taddr: str, mountpoint: Path, cache: Path, *extra: str) -> Proc:
        mountpoint.mkdir(exist_ok=True)
        points.append(mountpoint)
        proc = procs(
            "mount", str(mountpoint), "--tracker", taddr, "--host", "127.0.0.1", "--cache", str(cache), *extra
        )
        try:
            proc.expect(r"^mounted \d+ names at ")
        except AssertionError:
            if proc.popen.poll() is not None and any("cannot mount" in line for line in proc.stderr):
                pytest.skip(f"mounting is not permitted here: {proc.stderr[-1]}")
            raise
        return proc

    yield start
    for point in points:
        if os.path.ismount(point):
            subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False, capture_output=True)


def unmount_figures(proc: Proc) -> tuple[int, int, int]:
    """SIGTERM, exit 0, and the unmount line's (reads, chunks touched, chunks fetched)."""
    assert proc.interrupt() == 0, proc.stderr
    line = proc.expect(r"^unmounted ")
    match = re.search(r"(\d+) reads touching (\d+) distinct chunks, (\d+) chunks fetched", line.string)
    assert match, line.string
    return int(match[1]), int(match[2]), int(match[3])


def pread(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_listing_sizes_and_exact_bytes(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    share(procs, taddr, list(files.values()))
    mnt = tmp_path / "mnt"
    mounts(taddr, mnt, tmp_path / "cache")
    assert sorted(os.listdir(mnt)) == sorted(files)
    for name, path in files.items():
        st = os.stat(mnt / name)
        assert st.st_size == path.stat().st_size, name
        assert st.st_mode & 0o222 == 0, oct(st.st_mode)
    big = files["big.bin"].read_bytes()
    size = len(big)
    # single reads at chosen places: the first bytes, across a boundary, the short last chunk, past the end
    for offset, length in [
        (0, 10),
        (CHUNK - 5, 10),
        (3 * CHUNK, CHUNK),
        (5 * CHUNK - 1, 2 * CHUNK + 2),
        (size - 1234, 1234),
        (size - 10, 100),
        (size, 10),
    ]:
        assert pread(mnt / "big.bin", offset, length) == big[offset : offset + length], (offset, length)
    rng = random.Random(7)
    for _ in range(40):
        offset, length = rng.randrange(size), rng.randrange(1, 3 * CHUNK)
        assert pread(mnt / "big.bin", offset, length) == big[offset : offset + length], (offset, length)
    assert (mnt / "big.bin").read_bytes() == big  # sequential, whole
    assert (mnt / "one.txt").read_bytes() == files["one.txt"].read_bytes()
    assert (mnt / "exact.bin").read_bytes() == files["exact.bin"].read_bytes()
    assert (mnt / "empty").read_bytes() == b""


def test_random_read_fetches_what_it_covers(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    share(procs, taddr, [files["big.bin"]])
    proc = mounts(taddr, tmp_path / "mnt", tmp_path / "cache")
    want = files["big.bin"].read_bytes()[30 * CHUNK + 100 : 31 * CHUNK + 100]
    assert pread(tmp_path / "mnt" / "big.bin", 30 * CHUNK + 100, CHUNK) == want
    _, touched, fetched = unmount_figures(proc)
    assert 2 <= touched and fetched <= touched + 2, (touched, fetched)  # (the kernel may read a little ahead)


def test_mount_serves_what_it_read(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    sharer = share(procs, taddr, [files["big.bin"]])
    mount = mounts(taddr, tmp_path / "mnt", tmp_path / "cache")
    assert (tmp_path / "mnt" / "big.bin").read_bytes() == files["big.bin"].read_bytes()
    sharer.kill9()  # the mount is the only holder now: the file stays listed, served by it
    got = run("get", "big.bin", str(tmp_path / "copy.bin"), "--tracker", taddr, "--host", "127.0.0.1", "--json")
    assert got.returncode == 0, (got.stdout, got.stderr)
    assert (tmp_path / "copy.bin").read_bytes() == files["big.bin"].read_bytes()
    mount_address = mount.stdout[0].removeprefix("listening on ")
    port = mount_address.rpartition(":")[2]
    assert re.search(rf'"sources": \{{"[^"]*:{port}": 65\}}', got.stdout), (got.stdout, mount_address)


def test_only_holder_gone_is_eio_and_the_mount_lives_on(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    sharer = share(procs, taddr, [files["big.bin"], files["one.txt"]])
    mnt = tmp_path / "mnt"
    mount = mounts(taddr, mnt, tmp_path / "cache", "--read-timeout", "3")
    big = files["big.bin"].read_bytes()
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == big[:100]
        sharer.kill9()
        with pytest.raises(OSError) as failed:
            os.pread(fd, 100, 40 * CHUNK)
        assert failed.value.errno == errno.EIO
        assert os.pread(fd, 100, 0) == big[:100]  # what it has still reads
    finally:
        os.close(fd)
    assert mount.popen.poll() is None
    os.listdir(mnt)  # (answers, from the tracker or from the last list)
    assert mount.interrupt() == 0
    assert "Traceback" not in "\n".join(mount.stderr)


def test_read_only(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    share(procs, taddr, [files["one.txt"]])
    mnt = tmp_path / "mnt"
    mounts(taddr, mnt, tmp_path / "cache")
    for attempt in (
        lambda: os.open(mnt / "one.txt", os.O_WRONLY),
        lambda: os.open(mnt / "one.txt", os.O_RDWR),
        lambda: os.open(mnt / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.mkdir(mnt / "dir"),
        lambda: os.unlink(mnt / "one.txt"),
    ):
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EROFS
    assert (mnt / "one.txt").read_bytes() == files["one.txt"].read_bytes()


def test_sigterm_unmounts_and_a_remount_reads_from_the_cache(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    sharer = share(procs, taddr, [files["big.bin"]])
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    first = mounts(taddr, mnt, cache)
    big = files["big.bin"].read_bytes()
    assert (mnt / "big.bin").read_bytes() == big
    _, _, fetched = unmount_figures(first)
    assert fetched == 65
    assert not os.path.ismount(mnt)
    second = mounts(taddr, mnt, cache)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        sharer.kill9()  # nobody else has it: every byte must come from the cache
        assert os.pread(fd, len(big) + 10, 0) == big
    finally:
        os.close(fd)
    _, _, fetched = unmount_figures(second)
    assert fetched == 0
    assert not os.path.ismount(mnt)


def test_fusermount_u_ends_the_mount(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    _, taddr = tracker
    share(procs, taddr, [files["one.txt"]])
    mnt = tmp_path / "mnt"
    proc = mounts(taddr, mnt, tmp_path / "cache")
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    assert proc.wait(20) == 0, proc.stderr
    proc.expect(r"^unmounted ")
    assert not os.path.ismount(mnt)


def test_a_collection_is_a_directory_of_its_members(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], tmp_path: Path
) -> None:
    _, taddr = tracker
    root = tmp_path / "ds"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    make_file(root / "a" / "deep" / "data.bin", 3 * CHUNK + 77, seed=8)
    make_file(root / "a" / "run.sh", 1000, seed=9).chmod(0o755)
    make_file(root / "small.txt", 10, seed=10)
    (root / "zero").touch()
    (root / "a" / "link").symlink_to("run.sh")
    share(procs, taddr, [root])
    mnt = tmp_path / "mnt"
    mounts(taddr, mnt, tmp_path / "cache")
    assert os.listdir(mnt) == ["ds"] and (mnt / "ds").is_dir()
    assert sorted(os.listdir(mnt / "ds")) == ["a", "empty-dir", "small.txt", "zero"]
    assert sorted(os.listdir(mnt / "ds" / "a")) == ["deep", "link", "run.sh"]
    assert os.listdir(mnt / "ds" / "empty-dir") == []
    assert os.readlink(mnt / "ds" / "a" / "link") == "run.sh"
    assert os.stat(mnt / "ds" / "a" / "run.sh").st_mode & 0o111
    assert not os.stat(mnt / "ds" / "small.txt").st_mode & 0o111
    for rel in ("a/deep/data.bin", "a/run.sh", "small.txt", "zero", "a/link"):
        assert (mnt / "ds" / rel).read_bytes() == (root / rel).read_bytes(), rel
    data = (root / "a" / "deep" / "data.bin").read_bytes()
    assert pread(mnt / "ds" / "a" / "deep" / "data.bin", CHUNK - 3, CHUNK + 10) == data[CHUNK - 3 : 2 * CHUNK + 7]


def test_http_serves_the_mounts_metrics(
    tracker: tuple[Proc, str], procs: Callable[..., Proc], mounts: Callable[..., Proc], files: dict[str, Path], tmp_path: Path
) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    _, taddr = tracker
    share(procs, taddr, [files["big.bin"]])
    mnt = tmp_path / "mnt"
    proc = mounts(taddr, mnt, tmp_path / "cache", "--http", "127.0.0.1:0")
    url = proc.expect_err(r"metrics on (http://\S+)").group(1)
    assert (mnt / "big.bin").read_bytes() == files["big.bin"].read_bytes()
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    # every byte read through the mount was fetched (and verified) by its peer
    assert values["p2pfs_peer_downloaded_bytes_total"] >= files["big.bin"].stat().st_size
    assert values["p2pfs_peer_chunks_verified_total"] == 65
