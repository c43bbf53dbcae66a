"""A collection download in progress: the tree being filled in `DEST.part/`, its manifest in
`DEST.part.manifest`, and the state log `DEST.part.state` that a file download keeps too (so an
interrupted get resumes with every verified chunk).

Nothing appears under DEST until every chunk is verified: the tree is built under `DEST.part/`, and only
then renamed to DEST in one step. The manifest is checked whole before anything is created; the tree is
then created one directory level at a time, each entry relative to its parent directory's descriptor and
never through a symbolic link (links are created last, just before the rename).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from p2pfs.collection import manifest
from p2pfs.collection.manifest import Entry, Header, ManifestError
from p2pfs.collection.store import CollectionStore, MemberIndex
from p2pfs.peer import destination, storage
from p2pfs.peer.partfile import PartFile
from p2pfs.peer.storage import StorageError

#: Manifest bytes read at a time while checking it.
READ_BLOCK = 1 << 20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()


def manifest_path(dest: Path) -> Path:
    return dest.with_name(dest.name + storage.PART_SUFFIX + ".manifest")


def lines(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) of the first `size` bytes of `fd`, a block in memory at a time."""
    offset = 0
    pending = b""
    while offset < size:
        block = os.pread(fd, min(READ_BLOCK, size - offset), offset)
        if not block:
            raise ManifestError("the manifest is shorter than the tracker says")
        start = offset - len(pending)
        data = pending + block
        offset += len(block)
        pos = 0
        while (end := data.find(b"\n", pos)) >= 0:
            yield start + pos, data[pos:end]
            pos = end + 1
        pending = data[pos:]
        if len(pending) > manifest.MAX_LINE_BYTES:
            raise ManifestError("a manifest line is too long")
    if pending.strip():
        raise ManifestError("the manifest does not end with a newline")


def check(fd: int, size: int) -> tuple[Header, MemberIndex]:
    """Check the whole manifest (the rules of p2pfs.collection.manifest); the member index. Memory: one
    block and one path per directory level."""
    it = lines(fd, size)
    try:
        _, first = next(it)
    except StopIteration:
        raise ManifestError("the manifest is empty") from None
    header = manifest.decode_header(first)
    checker = manifest.Checker(header)
    index = MemberIndex()
    for offset, line in it:
        if not line.strip():
            continue
        entry = checker.check(manifest.decode_entry(line))
        if entry.is_file:
            index.add(offset, entry.size)
    checker.finish()
    return header, index


def entries(fd: int, size: int) -> Iterator[Entry]:
    """The entries of a manifest already checked."""
    it = lines(fd, size)
    next(it, None)
    for _, line in it:
        if line.strip():
            yield manifest.decode_entry(line)


class _Dirs:
    """Descriptors of the directories enclosing the current entry, from the tree's root down: the tree is
    walked in manifest order, so a directory's descriptor is open exactly while its entries come."""

    def __init__(self, root_fd: int) -> None:
        self._stack: list[tuple[str, int]] = [("", root_fd)]

    def parent_of(self, path: str) -> tuple[int, str]:
        parent, _, base = path.rpartition("/")
        while self._stack[-1][0] != parent:
            _, fd = self._stack.pop()
            os.close(fd)
        return self._stack[-1][1], base

    def enter(self, path: str, fd: int) -> None:
        self._stack.append((path, fd))

    def close(self) -> None:
        while len(self._stack) > 1:
            os.close(self._stack.pop()[1])


def _open_dir(parent_fd: int, name: str, create: bool) -> int:
    if create:
        try:
            os.mkdir(name, 0o777, dir_fd=parent_fd)
        except FileExistsError:
            pass
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorageError(f"cannot create directory {name!r}: something else is in its place") from None
        raise StorageError(f"cannot create directory {name!r}: {exc.strerror}") from None


class CollectionPart(PartFile):
    """The tree under `DEST.part/` (a CollectionStore: the manifest first, the tree once it is known)."""

    shared: CollectionStore

    @classmethod
    def open_collection(
        cls, dest: Path, name: str, filesize: int, chunk_size: int, content_id: str | None, manifest_size: int
    ) -> CollectionPart:
        staging = storage.part_path(dest)

        def create(keep: bool) -> CollectionStore:
            if not keep:
                _remove(staging)
            flags = os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC)
            fd = storage.open_no_follow(manifest_path(dest), flags)
            try:
                os.ftruncate(fd, manifest_size)
            except OSError as exc:
                os.close(fd)
                raise StorageError(f"cannot size {manifest_path(dest)}: {exc.strerror}") from None
            return CollectionStore(name, staging, filesize, chunk_size, fd, manifest_size, writable=True)

        part = cls.open(dest, name, filesize, chunk_size, content_id, create)
        assert isinstance(part.shared, CollectionStore)
        return part

    def build_tree(self) -> Header:
        """The manifest's chunks are held: check it whole, then create the tree under `DEST.part/` (files
        sized, executable bits set; an earlier attempt's files kept) and attach it to the store.
        Blocking: run it in a thread. ManifestError if the manifest breaks a rule (nothing is created)."""
        store = self.shared
        header, index = check(store.fd, store.manifest_size)
        staging = storage.part_path(self.dest)
        with contextlib.suppress(FileExistsError):
            os.mkdir(staging, 0o777)
        root_fd = self._open_root(staging)
        dirs = _Dirs(root_fd)
        try:
            for entry in entries(store.fd, store.manifest_size):
                parent_fd, base = dirs.parent_of(entry.path)
                if entry.type == "dir":
                    dirs.enter(entry.path, _open_dir(parent_fd, base, create=True))
                elif entry.is_file:
                    _create_file(parent_fd, base, entry)
        except BaseException:
            dirs.close()
            os.close(root_fd)
            raise
        dirs.close()
        store.attach_tree(root_fd, index)
        store.header = header
        return header

    @staticmethod
    def _open_root(staging: Path) -> int:
        try:
            return os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open {staging}: {exc.strerror}") from None

    def finish(self) -> None:
        """Every chunk verified: sync the files, create the links, rename `DEST.part/` to DEST, and drop
        the state log and the manifest's name (its descriptor stays open: the tree is still served)."""
        store = self.shared
        store.sync()
        dirs = _Dirs(store.root_fd)
        try:
            for entry in entries(store.fd, store.manifest_size):
                parent_fd, base = dirs.parent_of(entry.path)
                if entry.type == "dir":
                    dirs.enter(entry.path, _open_dir(parent_fd, base, create=False))
                elif entry.type == "link":
                    assert entry.target is not None
                    with contextlib.suppress(FileExistsError):
                        os.symlink(entry.target, base, dir_fd=parent_fd)
        finally:
            dirs.close()
        if os.path.lexists(self.dest):
            raise StorageError(f"cannot download to {self.dest}: something appeared there meanwhile")
        try:
            os.rename(storage.part_path(self.dest), self.dest)
        except OSError as exc:
            raise StorageError(f"cannot move {storage.part_path(self.dest)} to {self.dest}: {exc.strerror}") from None
        store.path = self.dest
        with contextlib.suppress(FileNotFoundError):
            os.unlink(manifest_path(self.dest))
        storage.sync_directory(self.dest.parent)
        self._remove_state()

    def keep_for_resume(self) -> None:
        self.shared.close()
        self._close_state()

    def discard(self) -> None:
        self.shared.close()
        _remove(storage.part_path(self.dest))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(manifest_path(self.dest))
        self._remove_state()


def _create_file(parent_fd: int, name: str, entry: Entry) -> None:
    mode = 0o755 if entry.x else 0o644
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StorageError(f"cannot create {entry.path!r}: a symbolic link is in its place") from None
        raise StorageError(f"cannot create {entry.path!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"cannot create {entry.path!r}: {destination.kind(st.st_mode)} is in its place")
        if st.st_size != entry.size:
            os.ftruncate(fd, entry.size)
        os.fchmod(fd, mode & ~UMASK)
    except OSError as exc:
        raise StorageError(f"cannot create {entry.path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove what an earlier attempt left at `path` (a tree of ours, or a file); never follows a link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
