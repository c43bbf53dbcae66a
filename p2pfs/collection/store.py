"""A collection's bytes on disk: the manifest, zeros to the next chunk boundary, then every member file's
bytes in manifest order, read and written chunk by chunk across file boundaries.

`MemberIndex` says where each member with bytes starts in that stream with two arrays (16 bytes a
member, whatever its path), so a collection of a million files costs tens of MB, not a Python object per
member. A member's path is read back from its manifest line when its file is opened. Open files are kept
in a small cache (FD_CACHE), each opened relative to the tree's root directory and never through a
symbolic link at its last component; members are files the walk or the manifest check found regular.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from p2pfs.collection import manifest
from p2pfs.peer.storage import ChunkFile, StorageError
from p2pfs.protocol import messages as m

#: Member files open at once per collection (the process's limit is often 1024 descriptors).
FD_CACHE = 64


def padded(size: int, chunk_size: int) -> int:
    """`size` rounded up to a whole number of chunks."""
    return -(-size // chunk_size) * chunk_size


@dataclass
class MemberIndex:
    """Where each member with bytes lies: `starts[i]` its offset in the data (after the manifest),
    `lines[i]` the offset of its line in the manifest."""

    starts: array[int] = field(default_factory=lambda: array("Q"))
    lines: array[int] = field(default_factory=lambda: array("Q"))
    #: bytes of all members together
    size: int = 0

    def add(self, line_offset: int, size: int) -> None:
        if size > 0:
            self.starts.append(self.size)
            self.lines.append(line_offset)
            self.size += size

    def __len__(self) -> int:
        return len(self.starts)

    def find(self, offset: int) -> int:
        """The member holding data offset `offset` (0 <= offset < size)."""
        return bisect.bisect_right(self.starts, offset) - 1

    def length(self, i: int) -> int:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        return end - self.starts[i]


class _Fds:
    """A small LRU of open member files; a descriptor in use by a thread is never closed under it."""

    def __init__(self, limit: int = FD_CACHE) -> None:
        self.limit = limit
        self._open: OrderedDict[int, int] = OrderedDict()
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()

    def take(self, key: int, opener: object) -> int:
        with self._lock:
            fd = self._open.get(key)
            if fd is not None:
                self._open.move_to_end(key)
                self._users[key] = self._users.get(key, 0) + 1
                return fd
        fd = opener()  # type: ignore[operator]
        with self._lock:
            if key in self._open:  # (another thread opened it meanwhile)
                os.close(fd)
                fd = self._open[key]
            else:
                self._open[key] = fd
            self._users[key] = self._users.get(key, 0) + 1
            self._evict()
            return fd

    def give(self, key: int) -> None:
        with self._lock:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
            self._evict()

    def _evict(self) -> None:
        if len(self._open) <= self.limit:
            return
        for key in list(self._open):
            if len(self._open) <= self.limit:
                break
            if key not in self._users:
                os.close(self._open.pop(key))

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()


class CollectionStore(ChunkFile):
    """The chunks of a collection. `fd` is the manifest's file; `root_fd` the tree's root directory (None
    until the tree exists, for a download still fetching its manifest: then only the manifest's chunks
    can be read or written)."""

    def __init__(
        self,
        name: str,
        path: Path,
        filesize: int,
        chunk_size: int,
        manifest_fd: int,
        manifest_size: int,
        writable: bool,
    ) -> None:
        super().__init__(name, path, filesize, chunk_size, manifest_fd)
        self.manifest_size = manifest_size
        self.data_start = padded(manifest_size, chunk_size)
        self.writable = writable
        self.index: MemberIndex | None = None
        #: the manifest's header, once the manifest is known
        self.header: manifest.Header | None = None
        self.root_fd = -1
        self._fds = _Fds()

    @property
    def collection(self) -> m.Collection:
        """What the tracker is told of this collection (REQUEST_PUBLISH's `collection`)."""
        assert self.header is not None
        return m.Collection(files=self.header.files, size=self.header.size, manifestsize=self.manifest_size)

    @property
    def manifest_chunks(self) -> int:
        return self.data_start // self.chunk_size

    def attach_tree(self, root_fd: int, index: MemberIndex) -> None:
        """The tree exists (published, or created for a download): member chunks can be read and written."""
        if self.data_start + index.size != self.filesize:
            raise StorageError(f"{self.name}: the manifest's members do not add up to the collection's size")
        self.root_fd = root_fd
        self.index = index

    def member_path(self, i: int) -> str:
        """The manifest path of member `i` (read back from its manifest line)."""
        assert self.index is not None
        pos = self.index.lines[i]
        raw = os.pread(self.fd, 512, pos)  # (most lines are short; read more only for a long one)
        if b"\n" not in raw:
            raw = os.pread(self.fd, manifest.MAX_LINE_BYTES, pos)
        return manifest.decode_entry(raw.split(b"\n", 1)[0]).path

    def _open_member(self, i: int) -> int:
        path = self.member_path(i)
        flags = (os.O_RDWR if self.writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, dir_fd=self.root_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(f"{self.name}: member {path!r} became a symbolic link") from None
            raise StorageError(f"{self.name}: cannot open member {path!r}: {exc.strerror}") from None
        st = os.fstat(fd)
        assert self.index is not None
        if not stat.S_ISREG(st.st_mode) or st.st_size != self.index.length(i):
            os.close(fd)
            raise StorageError(f"{self.name}: member {path!r} changed on disk")
        return fd

    def _extents(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(member or -1 for the manifest or -2 for padding, offset in it, offset in the request, length)."""
        done = 0
        while done < length:
            at = offset + done
            if at < self.manifest_size:
                n = min(length - done, self.manifest_size - at)
                yield -1, at, done, n
            elif at < self.data_start:
                n = min(length - done, self.data_start - at)
                yield -2, 0, done, n
            else:
                index = self.index
                if index is None:
                    raise StorageError(f"{self.name}: member chunks before the manifest is known")
                data_at = at - self.data_start
                i = index.find(data_at)
                inside = data_at - index.starts[i]
                n = min(length - done, index.length(i) - inside)
                yield i, inside, done, n
            done += n

    def read_into(self, chunk: int, view: memoryview) -> int:
        """Read chunk `chunk` into `view` (its length at least the chunk's); returns the bytes read (less
        than the chunk's length if a member is shorter than it should be)."""
        return self.read_range_into(chunk * self.chunk_size, view[: self.chunk_length(chunk)])

    def read_range_into(self, offset: int, view: memoryview) -> int:
        """Read the stream's bytes [offset, offset + len(view)) into `view` (a member's chunk is not the
        collection's); returns the bytes read (fewer if a member is shorter than it should be)."""
        length = len(view)
        got = 0
        for member, at, into, n in self._extents(offset, length):
            part = view[into : into + n]
            if member == -2:
                part[:] = bytes(n)
                read = n
            elif member == -1:
                read = os.preadv(self.fd, [part], at)
            else:
                fd = self._fds.take(member, lambda m=member: self._open_member(m))
                try:
                    read = os.preadv(fd, [part], at)
                finally:
                    self._fds.give(member)
            got += read
            if read != n:
                break
        return got

    def read_chunk(self, chunk: int) -> bytes:
        length = self.chunk_length(chunk)
        buf = bytearray(length)
        if self.read_into(chunk, memoryview(buf)) != length:
            raise StorageError(f"{self.name}: short read of chunk {chunk} (a member changed on disk?)")
        return bytes(buf)

    def read_range(self, offset: int, length: int) -> bytes:
        """The stream's bytes [offset, offset + length) (a member's chunk, served as a plain file's)."""
        buf = bytearray(length)
        if self.read_range_into(offset, memoryview(buf)) != length:
            raise StorageError(f"{self.name}: short read at byte {offset} (a member changed on disk?)")
        return bytes(buf)

    def write_at(self, chunk: int, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            for member, at, into, n in self._extents(chunk * self.chunk_size, len(view)):
                if member == -2:
                    continue
                part = view[into : into + n]
                if member == -1:
                    _pwrite_all(self.fd, part, at)
                    continue
                fd = self._fds.take(member, lambda m=member: self._open_member(m))
                try:
                    _pwrite_all(fd, part, at)
                finally:
                    self._fds.give(member)

    def sync(self) -> None:
        """Make every member's bytes durable before the tree is renamed into place: one syncfs(2) of the
        file system holding the tree (fsync of each of a million files would be a million journal
        commits), or sync(2) where syncfs is not available."""
        os.fsync(self.fd)
        if not _syncfs(self.root_fd if self.root_fd >= 0 else self.fd):
            os.sync()

    def close(self) -> None:
        self._fds.close()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1
        super().close()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _syncfs(fd: int) -> bool:
    """syncfs(2) (Linux) of the file system holding `fd`; False if it cannot be called."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.syncfs(fd) == 0)
    except (OSError, AttributeError):
        return False
