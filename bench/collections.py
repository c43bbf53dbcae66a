"""Benchmark 2d, collections: a directory tree shared with `p2pfs share DIR` and fetched with
`p2pfs get NAME DEST` (a new directory), each figure side by side with its reference in the same run:

1. 512 MiB as 2,048 files of 256 KiB against the same bytes as one file: two `share`s started the same
   way on one tracker, one `get` of each per round (the order alternating), wall time from start to exit.
   Ratio: collection ÷ file throughput, the median of the rounds' ratios (target ≥ 0.7).
2. 20,000 files of 4 KiB in 20 directories: `get` against `tar cf - DIR | tar xf -` into a fresh
   directory on the same tmpfs (the floor: no network, no hashing). Ratio: get ÷ tar time (target ≤ 5).
3. 1 → 4 swarm (one `share`, four `get --json --seed` started at once, as benchmark 3) of 1 GiB as 64
   files of 16 MiB against the same bytes as one file: makespan from the first `get` started to the last
   `done` event. Ratio: collection ÷ file makespan (target ≤ 1.2).
4. 1,000,000 entries (1,000 directories of 999 files of 0-16 bytes): the time to create them, `share`'s
   and `get`'s peak RSS (VmHWM polled every 10 ms, as benchmark 4) against benchmark 4's baseline (a bare
   interpreter importing the p2pfs command line), the manifest's size and `get`'s wall time. One run.

Every copy is compared with its original, names, sizes and bytes (outside the timed part), and removed.
--quick: 64 MiB as 256 files; 2,000 small files; 1 → 2 swarm of 128 MiB as 16 files; 20,000 entries.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import memory
from bench.common import (
    HOST,
    PUBLISH_TIMEOUT,
    TMPFS,
    TRANSFER_TIMEOUT,
    BenchError,
    Context,
    Figure,
    KiB,
    MiB,
    check_file,
    child_env,
    children,
    make_file,
    median,
    p2pfs,
    p2pfs_get,
    remove,
    size_label,
    start_share,
    start_tracker,
)

BENCH = "2d collections"
#: Case 1: collection throughput as a share of the same bytes' as one file.
THROUGHPUT_TARGET = 0.7
#: Case 2: get time as a multiple of tar's.
TAR_TARGET = 5.0
#: Case 3: collection makespan as a multiple of the file's.
SWARM_TARGET = 1.2
#: tmpfs cost of one tiny file: a page of data and its inode and dentry.
TINY_FILE_COST = 5 * KiB
#: Longer bounds for the million entries (walked, hashed, created and compared one by one).
ENTRIES_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Sizes:
    #: case 1: files of the large collection
    files: int
    file_size: int
    #: case 2: directories of small files
    small_dirs: int
    small_per_dir: int
    small_size: int
    #: case 3: downloaders and the swarm collection's files
    downloaders: int
    swarm_files: int
    swarm_file_size: int
    #: case 4: directories, and files in each (entries = dirs × (per_dir + 1))
    entry_dirs: int
    entries_per_dir: int


FULL = Sizes(2048, 256 * KiB, 20, 1000, 4 * KiB, 4, 64, 16 * MiB, 1000, 999)
QUICK = Sizes(256, 256 * KiB, 20, 100, 4 * KiB, 2, 16, 8 * MiB, 20, 999)


def sizes_for(ctx: Context) -> Sizes:
    return QUICK if ctx.quick else FULL


# -- trees ------------------------------------------------------------------------------------------
def tree_from_file(src: Path, root: Path, files: int, file_size: int, per_dir: int) -> None:
    """Cut `src` into `files` files of `file_size` bytes under `root`, `per_dir` to a directory
    (root/d000/f0000, ...): the tree's members, in manifest order, are `src`'s bytes in order."""
    root.mkdir()
    buf = bytearray(file_size)
    src_fd = os.open(src, os.O_RDONLY)
    try:
        for i in range(files):
            folder = root / f"d{i // per_dir:03}"
            if i % per_dir == 0:
                folder.mkdir()
            if os.preadv(src_fd, [buf], i * file_size) != file_size:
                raise BenchError(f"{src} is shorter than {files} × {file_size} bytes")
            fd = os.open(folder / f"f{i % per_dir:04}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(buf)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
    finally:
        os.close(src_fd)


def make_entries(root: Path, dirs: int, per_dir: int) -> tuple[int, int]:
    """`dirs` directories of `per_dir` files of 0-16 bytes (os.open/os.write, one at a time); (member
    files with bytes, their total bytes)."""
    root.mkdir()
    with_bytes = total = 0
    for d in range(dirs):
        folder = root / f"d{d:04}"
        folder.mkdir()
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(per_dir):
                n = (d * per_dir + i) % 17
                fd = os.open(f"f{i:04}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
                try:
                    if n:
                        os.write(fd, (b"%08d.%07d" % (d, i))[:n])
                        with_bytes += 1
                        total += n
                finally:
                    os.close(fd)
        finally:
            os.close(dir_fd)
    return with_bytes, total


KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l"}


def _listing(path: str) -> list[tuple[str, str]]:
    """(name, kind) of a directory's entries, sorted: kind "d", "f", "l" or "?"."""
    out = []
    with os.scandir(path) as it:
        for e in it:
            out.append((e.name, KINDS.get(stat.S_IFMT(e.stat(follow_symlinks=False).st_mode), "?")))
    out.sort()
    return out


def same_file(ours: str, theirs: str) -> None:
    """BenchError unless the two files hold the same bytes."""
    with open(ours, "rb", buffering=0) as a, open(theirs, "rb", buffering=0) as b:
        if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
            raise BenchError(f"{theirs} differs in size from {ours}")
        while True:
            block = a.read(MiB)
            if block != b.read(MiB):
                raise BenchError(f"{theirs} differs from {ours}")
            if not block:
                return


def same_tree(ours: Path, theirs: Path) -> int:
    """BenchError unless `theirs` has the same entries, kinds, sizes and bytes as `ours` (links: the same
    target); the number of entries compared."""
    if not theirs.is_dir():
        raise BenchError(f"{theirs} was not written")
    entries = 0
    pending = [""]
    while pending:
        rel = pending.pop()
        a_dir, b_dir = os.path.join(ours, rel), os.path.join(theirs, rel)
        a, b = _listing(a_dir), _listing(b_dir)
        if a != b:
            missing = sorted(set(a) ^ set(b))[:3]
            raise BenchError(f"{b_dir} has other entries than {a_dir} (e.g. {missing})")
        entries += len(a)
        for name, kind in a:
            if kind == "d":
                pending.append(os.path.join(rel, name))
            elif kind == "f":
                same_file(os.path.join(a_dir, name), os.path.join(b_dir, name))
            elif kind == "l":
                a_link, b_link = os.path.join(a_dir, name), os.path.join(b_dir, name)
                if os.readlink(a_link) != os.readlink(b_link):
                    raise BenchError(f"link {b_link} points elsewhere than {a_link}")
    return entries


def check_room(ctx: Context, size: int, inodes: int, what: str) -> None:
    ctx.ensure_room(size, what)
    free = os.statvfs(TMPFS).f_favail
    if inodes > free:
        raise BenchError(f"{what} needs {inodes:,} inodes on {TMPFS}; only {free:,} are free")


# -- processes --------------------------------------------------------------------------------------
def get_seconds(name: str, dest: Path, tracker: str, timeout: float = TRANSFER_TIMEOUT) -> float:
    """Wall time of one `p2pfs get NAME DEST`, from its start to its exit."""
    get = p2pfs_get(name, dest, tracker, env=child_env())
    if get.wait(timeout) != 0:
        raise BenchError(f"get {name} failed: {get.describe()}")
    assert get.ended is not None
    return get.ended - get.started


def tar_seconds(src: Path, into: Path) -> float:
    """Wall time of `tar cf - -C PARENT NAME | tar xf - -C INTO` (INTO/NAME is the copy)."""
    started = time.monotonic()
    pack = subprocess.Popen(["tar", "cf", "-", "-C", str(src.parent), src.name], stdout=subprocess.PIPE)
    unpack = subprocess.Popen(["tar", "xf", "-", "-C", str(into)], stdin=pack.stdout)
    assert pack.stdout is not None
    pack.stdout.close()
    rc_unpack, rc_pack = unpack.wait(TRANSFER_TIMEOUT), pack.wait(TRANSFER_TIMEOUT)
    seconds = time.monotonic() - started
    if rc_pack or rc_unpack:
        raise BenchError(f"tar failed (exit {rc_pack} | {rc_unpack})")
    return seconds


def swarm_makespan(
    ctx: Context, tracker: str, name: str, downloaders: int, check: Callable[[Path], None]
) -> float:
    """benchmark 3's swarm (bench.swarm.swarm_once: `downloaders` × `get --json --seed` started at once,
    the makespan from the first start to the last `done` event), with `check(DEST)` on every copy
    before it is removed (swarm_once checks a file's size only, and removes the copies itself)."""
    work = ctx.dir("collections-swarm")
    dests = [work / f"dl{i}" / name for i in range(downloaders)]
    for dest in dests:
        dest.parent.mkdir()
    with children() as procs:
        for dest in dests:
            procs.append(p2pfs_get(name, dest, tracker, "--json", "--seed", env=child_env()))
        start = procs[0].started
        done = [get.expect_event("done", TRANSFER_TIMEOUT)[0] for get in procs]
        for get in procs:
            get.expect_event("seeding", 30)
            if get.stop() != 0:
                raise BenchError(f"a seeding get did not stop cleanly: {get.describe()}")
    for dest in dests:
        check(dest)
    remove(work)
    return max(done) - start


def listed_filesize(tracker: str, name: str) -> int:
    """The size the tracker lists for `name` (`p2pfs ls --json`): for a collection, its manifest padded
    to whole chunks plus its members' bytes."""
    ls = p2pfs("ls", "--json", "--tracker", tracker, env=child_env(), label="p2pfs ls")
    if ls.wait(60) != 0 or not ls.stdout:
        raise BenchError(f"ls failed: {ls.describe()}")
    listed = json.loads(ls.stdout[-1])
    if name not in listed:
        raise BenchError(f"{name!r} is not in the tracker's list: {sorted(listed)[:5]}")
    return int(listed[name][0])


# -- 1: throughput ----------------------------------------------------------------------------------
def case_throughput(ctx: Context, sizes: Sizes) -> None:
    size = sizes.files * sizes.file_size
    src = ctx.source(size)
    check_room(ctx, 2 * size, 2 * sizes.files, "the collection and a copy")
    work = ctx.dir("collections-throughput")
    tree = work / f"tree-{sizes.files}"
    tree_from_file(src, tree, sizes.files, sizes.file_size, 128)
    label = f"{size_label(size)} as {sizes.files:,} files of {sizes.file_size // KiB} KiB"
    print(f"  1. get of {label} and of the same bytes as one file, side by side", flush=True)
    copy_file, copy_tree = work / "copy.bin", work / "copy-tree"
    with children() as procs:
        tracker = start_tracker(procs)
        start_share(procs, src, tracker, child_env())
        start_share(procs, tree, tracker, child_env())

        def one_round(i: int) -> dict[str, float]:
            seconds = {}
            for kind in ("file", "collection") if i % 2 == 0 else ("collection", "file"):
                if kind == "file":
                    seconds[kind] = get_seconds(src.name, copy_file, tracker)
                    check_file(copy_file, size)
                    same_file(str(src), str(copy_file))
                    remove(copy_file)
                else:
                    seconds[kind] = get_seconds(tree.name, copy_tree, tracker)
                    same_tree(tree, copy_tree)
                    remove(copy_tree)
            return seconds

        warm = one_round(1)
        print(
            f"    warm-up round (not counted): file {warm['file']:.2f} s, collection {warm['collection']:.2f} s",
            flush=True,
        )
        rounds = []
        for i in range(ctx.runs):
            r = one_round(i)
            rounds.append(r)
            print(
                f"    round {i + 1}/{ctx.runs}: file {r['file']:.2f} s, collection {r['collection']:.2f} s "
                f"(collection/file throughput {r['file'] / r['collection']:.2f})",
                flush=True,
            )
    remove(work)
    rates = {k: [size / MiB / r[k] for r in rounds] for k in ("file", "collection")}
    ratio = median(r["file"] / r["collection"] for r in rounds)

    def wall(kind: str) -> str:
        return f"wall time {median(r[kind] for r in rounds):.2f} s"

    ctx.add(
        Figure(
            BENCH,
            f"get {size_label(size)} as one file ({wall('file')})",
            median(rates["file"]),
            "MiB/s",
            rates["file"],
        )
    )
    ctx.add(
        Figure(
            BENCH,
            f"get {label} ({wall('collection')})",
            median(rates["collection"]),
            "MiB/s",
            rates["collection"],
            ratio=ratio,
            ratio_of="collection ÷ file throughput, median of the rounds",
            target=f"≥ {THROUGHPUT_TARGET:.1f}" + ("" if sizes is FULL else " (at 512 MiB)"),
            met=ratio >= THROUGHPUT_TARGET if sizes is FULL else None,
        )
    )


# -- 2: small files against tar ---------------------------------------------------------------------
def case_small_files(ctx: Context, sizes: Sizes) -> None:
    files = sizes.small_dirs * sizes.small_per_dir
    size = files * sizes.small_size
    check_room(ctx, 4 * files * max(sizes.small_size, TINY_FILE_COST), 3 * files, "the small files")
    work = ctx.dir("collections-small")
    src = make_file(work / "bytes.bin", size, seed=2)
    tree = work / f"small-{files}"
    tree_from_file(src, tree, files, sizes.small_size, sizes.small_per_dir)
    remove(src)
    label = f"{files:,} files of {sizes.small_size // KiB} KiB ({sizes.small_dirs} dirs of {sizes.small_per_dir:,})"
    print(f"  2. get of {label} and tar cf - piped into tar xf -, side by side", flush=True)
    copy_tree, tar_into = work / "copy-tree", work / "tar-copy"
    with children() as procs:
        tracker = start_tracker(procs)
        start_share(procs, tree, tracker, child_env())

        def one_round(i: int) -> dict[str, float]:
            seconds = {}
            for kind in ("tar", "get") if i % 2 == 0 else ("get", "tar"):
                if kind == "tar":
                    tar_into.mkdir()
                    seconds[kind] = tar_seconds(tree, tar_into)
                    same_tree(tree, tar_into / tree.name)
                    remove(tar_into)
                else:
                    seconds[kind] = get_seconds(tree.name, copy_tree, tracker)
                    same_tree(tree, copy_tree)
                    remove(copy_tree)
            return seconds

        rounds = []
        for i in range(ctx.runs):
            r = one_round(i)
            rounds.append(r)
            print(
                f"    round {i + 1}/{ctx.runs}: tar {r['tar']:.2f} s, get {r['get']:.2f} s "
                f"(get/tar {r['get'] / r['tar']:.2f})",
                flush=True,
            )
    remove(work)
    tar = [r["tar"] for r in rounds]
    get = [r["get"] for r in rounds]
    ratio = median(r["get"] / r["tar"] for r in rounds)
    ctx.add(Figure(BENCH, f"tar cf - piped into tar xf -, {label} (the floor)", median(tar), "s", tar))
    ctx.add(
        Figure(
            BENCH,
            f"get {label}",
            median(get),
            "s",
            get,
            ratio=ratio,
            ratio_of="get ÷ tar time, median of the rounds",
            target=f"≤ {TAR_TARGET:.0f}" + ("" if sizes is FULL else " (at 20,000 files)"),
            met=ratio <= TAR_TARGET if sizes is FULL else None,
        )
    )


# -- 3: a swarm -------------------------------------------------------------------------------------
def case_swarm(ctx: Context, sizes: Sizes) -> None:
    n = sizes.downloaders
    size = sizes.swarm_files * sizes.swarm_file_size
    src = ctx.source(size)
    check_room(ctx, (n + 1) * size, n * sizes.swarm_files + 100, f"the collection and {n} copies")
    work = ctx.dir("collections-swarm-src")
    tree = work / f"swarm-{sizes.swarm_files}"
    tree_from_file(src, tree, sizes.swarm_files, sizes.swarm_file_size, 16)
    label = f"{size_label(size)} as {sizes.swarm_files} files of {size_label(sizes.swarm_file_size)}"
    print(f"  3. swarm 1 → {n} of {label} and of the same bytes as one file, side by side", flush=True)

    def check_file_copy(dest: Path) -> None:
        check_file(dest, size)
        same_file(str(src), str(dest))

    def check_tree_copy(dest: Path) -> None:
        same_tree(tree, dest)

    with children() as procs:
        tracker = start_tracker(procs)
        start_share(procs, src, tracker, child_env())
        start_share(procs, tree, tracker, child_env())
        rounds = []
        for i in range(ctx.runs):
            r = {}
            for kind in ("file", "collection") if i % 2 == 0 else ("collection", "file"):
                if kind == "file":
                    r[kind] = swarm_makespan(ctx, tracker, src.name, n, check_file_copy)
                else:
                    r[kind] = swarm_makespan(ctx, tracker, tree.name, n, check_tree_copy)
            rounds.append(r)
            print(
                f"    round {i + 1}/{ctx.runs}: file {r['file']:.2f} s, collection {r['collection']:.2f} s "
                f"(collection/file {r['collection'] / r['file']:.2f})",
                flush=True,
            )
    remove(work)
    file_ = [r["file"] for r in rounds]
    coll = [r["collection"] for r in rounds]
    ratio = median(r["collection"] / r["file"] for r in rounds)
    ctx.add(Figure(BENCH, f"1→{n} makespan, {size_label(size)} as one file", median(file_), "s", file_))
    ctx.add(
        Figure(
            BENCH,
            f"1→{n} makespan, {label}",
            median(coll),
            "s",
            coll,
            ratio=ratio,
            ratio_of="collection ÷ file makespan, median of the rounds",
            target=f"≤ {SWARM_TARGET:.1f}" + ("" if sizes is FULL else " (at 1→4, 1 GiB)"),
            met=ratio <= SWARM_TARGET if sizes is FULL else None,
        )
    )


# -- 4: a million entries ---------------------------------------------------------------------------
def case_entries(ctx: Context, sizes: Sizes) -> None:
    base = memory.baseline(ctx)
    dirs, per_dir = sizes.entry_dirs, sizes.entries_per_dir
    entries = dirs * (per_dir + 1)
    check_room(ctx, 2 * entries * TINY_FILE_COST, 2 * entries + 100, f"two trees of {entries:,} entries")
    work = ctx.dir("collections-entries")
    tree = work / f"entries-{entries}"
    print(
        f"  4. share and get of {entries:,} entries ({dirs:,} dirs of {per_dir:,} files of 0-16 bytes)",
        flush=True,
    )
    started = time.monotonic()
    with_bytes, member_bytes = make_entries(tree, dirs, per_dir)
    created = time.monotonic() - started
    print(
        f"    created in {created:.1f} s ({with_bytes:,} files with bytes, {member_bytes:,} bytes)",
        flush=True,
    )
    copy_tree = work / "copy-tree"
    with children() as procs:
        tracker = start_tracker(procs)
        share = p2pfs(
            "share",
            str(tree),
            "--tracker",
            tracker,
            "--host",
            HOST,
            env=child_env(),
            label="p2pfs share",
            watch_memory=True,
        )
        procs.append(share)
        published_at, _ = share.expect(r"^published ", max(PUBLISH_TIMEOUT, ENTRIES_TIMEOUT))
        publish = published_at - share.started
        print(f"    published in {publish:.1f} s", flush=True)
        padded_manifest = listed_filesize(tracker, tree.name) - member_bytes
        get = p2pfs_get(tree.name, copy_tree, tracker, env=child_env(), watch_memory=True)
        if get.wait(ENTRIES_TIMEOUT) != 0:
            raise BenchError(f"get failed: {get.describe()}")
        assert get.ended is not None
        get_wall = get.ended - get.started
        print(f"    got in {get_wall:.1f} s", flush=True)
        if share.stop() != 0:
            raise BenchError(f"share did not stop cleanly: {share.describe()}")
    started = time.monotonic()
    compared = same_tree(tree, copy_tree)
    print(f"    copy compared ({compared:,} entries) in {time.monotonic() - started:.1f} s", flush=True)
    started = time.monotonic()
    remove(work)
    print(f"    trees removed in {time.monotonic() - started:.1f} s", flush=True)
    if get.peak_rss is None or share.peak_rss is None:
        raise BenchError("could not read the peak RSS of get or share")
    what = f"{entries:,} entries"
    ctx.add(
        Figure(
            BENCH,
            "reference: python -c 'import p2pfs.cli.main' peak RSS",
            base,
            "MiB",
            ratio=1.0,
            ratio_of="itself: the reference",
        )
    )
    ctx.add(Figure(BENCH, f"create {what} (os.open/os.write, one Python loop)", created, "s"))
    ctx.add(
        Figure(
            BENCH,
            f"manifest of {what} (padded to whole chunks)",
            padded_manifest / MiB,
            "MiB",
            note=f"{padded_manifest / entries:.0f} bytes an entry",
        )
    )
    ctx.add(Figure(BENCH, f"share {what}: start to published (walk + hash)", publish, "s"))
    ctx.add(
        Figure(
            BENCH,
            f"share peak RSS, {what}",
            share.peak_rss / MiB,
            "MiB",
            ratio=share.peak_rss / MiB / base,
            ratio_of="× baseline",
        )
    )
    ctx.add(Figure(BENCH, f"get {what}: wall time", get_wall, "s"))
    ctx.add(
        Figure(
            BENCH,
            f"get peak RSS, {what}",
            get.peak_rss / MiB,
            "MiB",
            ratio=get.peak_rss / MiB / base,
            ratio_of="× baseline",
        )
    )


def run(ctx: Context) -> None:
    sizes = sizes_for(ctx)
    case_throughput(ctx, sizes)
    case_small_files(ctx, sizes)
    case_swarm(ctx, sizes)
    case_entries(ctx, sizes)
