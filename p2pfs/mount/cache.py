"""The mount's chunk cache: every chunk it fetched, as one file per chunk under the cache directory
(`DIR/CONTENT_ID/CHUNK_NUMBER`), bounded in bytes (the least recently read chunks go first), served to the
swarm while it is there, and kept across mounts.

A chunk file is written beside its final name and renamed into place only once the chunk was verified,
so the directory listing is the cache's state log. On a remount nothing is trusted: a chunk file is
hashed against the publisher's hash before its bytes are used or served, and one that does not match is
deleted. Files published without chunk hashes (unverified) are cached for this mount only: the same name
could stand for other bytes next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from p2pfs.mount.policy import LeastRecentlyRead
from p2pfs.peer.storage import ChunkFile, StorageError

log = logging.getLogger("p2pfs.mount")

#: Where files without a content id are cached (emptied when a mount starts).
UNVERIFIED = "unverified"

#: Chunk files kept open for reads, across the mount (a sequential reader makes several reads per chunk, and
#: an open per read cost ~10 % of a sequential read's time in a profile).
OPEN_CHUNKS = 16

#: A cache entry: (the file's cache key, chunk number)
Key = tuple[str, int]


class ChunkCache:
    """The cache directory and its byte budget across every file of the mount."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.lru: LeastRecentlyRead[Key] = LeastRecentlyRead(budget)
        #: files opened this mount, by cache key
        self.files: dict[str, CachedFile] = {}
        #: chunk files found on disk at start, by cache key (not verified yet)
        self.found: dict[str, set[int]] = {}
        #: descriptors of the chunk files read last (event loop only), least recently used first
        self.fds: OrderedDict[Key, int] = OrderedDict()

    def descriptor(self, key: Key, path: Path) -> int:
        """An open descriptor of the chunk file `path` of `key` (FileNotFoundError if it is gone)."""
        fd = self.fds.get(key)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            self.fds[key] = fd
            if len(self.fds) > OPEN_CHUNKS:
                os.close(self.fds.popitem(last=False)[1])
        else:
            self.fds.move_to_end(key)
        return fd

    def forget_descriptor(self, key: Key) -> None:
        fd = self.fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    @property
    def budget(self) -> int:
        """Bytes of chunks the cache keeps (--max-cache), besides what reads in progress have pinned."""
        return self.lru.budget

    def open(self) -> None:
        """Create the directory, forget unverified leftovers, and take stock of what earlier mounts left
        (oldest first by modification time, so the budget evicts those first)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.root / UNVERIFIED, ignore_errors=True)
            entries: list[tuple[float, Key, int]] = []
            for directory in self.root.iterdir():
                if not directory.is_dir() or directory.name == UNVERIFIED:
                    continue
                for item in directory.iterdir():
                    if item.name.endswith(".tmp"):
                        item.unlink(missing_ok=True)
                        continue
                    if not item.name.isdigit():
                        continue
                    st = item.stat()
                    entries.append((st.st_mtime, (directory.name, int(item.name)), st.st_size))
        except OSError as exc:
            raise StorageError(f"cannot use the cache directory {self.root}: {exc.strerror}") from None
        for _, key, nbytes in sorted(entries):
            self.found.setdefault(key[0], set()).add(key[1])
            self._evict(self.lru.add(key, nbytes))

    def file(
        self, name: str, content_id: str | None, filesize: int, chunk_size: int, expected: list[str] | None
    ) -> CachedFile:
        """The cached chunks of one published file (content id None: unverified, cached for this mount)."""
        key = content_id if content_id is not None else f"{UNVERIFIED}/{hashlib.sha256(name.encode()).hexdigest()}"
        cached = self.files.get(key)
        if cached is None:
            directory = self.root / key
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {directory}: {exc.strerror}") from None
            cached = CachedFile(self, key, name, directory, filesize, chunk_size, expected)
            cached.on_disk = {c for c in self.found.pop(key, set()) if c < cached.chunk_count}
            self.files[key] = cached
        return cached

    def added(self, cached: CachedFile, chunk: int, unread: bool = False) -> None:
        """A chunk is held now (`unread`: fetched, not read yet; else found from an earlier mount)."""
        self._evict(self.lru.add((cached.key, chunk), cached.chunk_length(chunk), unread))

    def touch(self, cached: CachedFile, chunks: range) -> None:
        for chunk in chunks:
            self.lru.touch((cached.key, chunk))

    def pin(self, cached: CachedFile, chunks: range) -> None:
        """A read needs these chunks (held or still to come): none is evicted until `unpin`, so the
        cache may exceed its budget by what reads in progress cover."""
        self.lru.pin((cached.key, chunk) for chunk in chunks)

    def unpin(self, cached: CachedFile, chunks: range) -> None:
        """The read is over (its bytes copied out, or it failed): the evictions it held back happen now."""
        self._evict(self.lru.unpin((cached.key, chunk) for chunk in chunks))

    def _evict(self, keys: list[Key]) -> None:
        for key, chunk in keys:
            cached = self.files.get(key)
            if cached is not None:
                cached.drop(chunk)
            else:
                self.found.get(key, set()).discard(chunk)
                with contextlib.suppress(OSError):
                    os.unlink(self.root / key / str(chunk))


class CachedFile(ChunkFile):
    """The chunks of one file that this mount holds, as the chunk server and the transfer engine see a
    file (a ChunkFile with no descriptor of its own: each chunk is a file in `path`)."""

    def __init__(
        self,
        cache: ChunkCache,
        key: str,
        name: str,
        directory: Path,
        filesize: int,
        chunk_size: int,
        expected: list[str] | None,
    ) -> None:
        super().__init__(name, directory, filesize, chunk_size, -1)
        self.cache = cache
        self.key = key
        self.expected = expected
        #: chunk files left by an earlier mount, not verified yet
        self.on_disk: set[int] = set()
        #: called on the event loop when a chunk becomes held (verified and in place)
        self.on_chunk: Callable[[int], None] | None = None
        #: chunks that became held by a fetch (for the figures at unmount)
        self.fetched = 0

    def chunk_path(self, chunk: int) -> Path:
        return self.path / str(chunk)

    def write_at(self, chunk: int, data: bytes | bytearray | memoryview) -> None:
        """In a verify thread: the verified chunk's bytes to its file (renamed into place complete)."""
        final = self.chunk_path(chunk)
        tmp = final.with_name(f"{chunk}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            with memoryview(data) as view:
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, final)

    def mark(self, chunk: int, digest: str) -> None:
        super().mark(chunk, digest)
        self.on_disk.discard(chunk)
        self.fetched += 1
        self._held(chunk, unread=True)

    def _held(self, chunk: int, unread: bool = False) -> None:
        self.cache.added(self, chunk, unread)
        if self.on_chunk is not None and chunk in self.have:
            self.on_chunk(chunk)

    def read_range(self, chunk: int, start: int, length: int) -> bytes:
        """On the event loop: `length` bytes of a held chunk from `start` within it. FileNotFoundError if
        it was evicted."""
        data = os.pread(self.cache.descriptor((self.key, chunk), self.chunk_path(chunk)), length, start)
        if len(data) != length:
            raise StorageError(f"{self.chunk_path(chunk)}: short chunk file (changed on disk?)")
        return data

    def read_range_into(self, chunk: int, start: int, view: memoryview) -> None:
        """On the event loop: fill `view` from a held chunk's bytes at `start` within it (as read_range)."""
        fd = self.cache.descriptor((self.key, chunk), self.chunk_path(chunk))
        if os.preadv(fd, [view], start) != len(view):
            raise StorageError(f"{self.chunk_path(chunk)}: short chunk file (changed on disk?)")

    def read_chunk(self, chunk: int) -> bytes:
        try:
            return self.read_range(chunk, 0, self.chunk_length(chunk))
        except FileNotFoundError:
            raise StorageError(f"chunk {chunk} of {self.name} left the cache") from None

    def read_into(self, chunk: int, view: memoryview) -> int:
        data = self.read_chunk(chunk)
        view[: len(data)] = data
        return len(data)

    def verify_on_disk(self, chunk: int) -> bool:
        """Blocking (a thread): hash a chunk file an earlier mount left; True if it matches the
        publisher's hash (then `keep_verified` it on the event loop), else it is deleted."""
        if self.expected is None:
            return False
        try:  # (a descriptor of its own: this runs in a thread, the open ones belong to the event loop)
            fd = os.open(self.chunk_path(chunk), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                data = os.pread(fd, self.chunk_length(chunk), 0)
            finally:
                os.close(fd)
        except OSError:
            data = b""
        if hashlib.sha256(data).hexdigest() == self.expected[chunk]:
            return True
        with contextlib.suppress(OSError):
            os.unlink(self.chunk_path(chunk))
        return False

    def keep_verified(self, chunk: int) -> None:
        """On the event loop: a chunk file from an earlier mount was verified; it is held again."""
        assert self.expected is not None
        if chunk not in self.on_disk:  # (evicted while it was being hashed: its file is gone)
            return
        self.on_disk.discard(chunk)
        if chunk not in self.have:
            super().mark(chunk, self.expected[chunk])
            self._held(chunk)

    def discard_on_disk(self, chunk: int) -> None:
        """On the event loop: a chunk file from an earlier mount did not verify (and was deleted)."""
        self.on_disk.discard(chunk)
        self.cache.lru.remove((self.key, chunk))

    def drop(self, chunk: int) -> None:
        """Evicted: no longer held or served, and its file goes."""
        self.have.discard(chunk)
        self.digests.pop(chunk, None)
        self.on_disk.discard(chunk)
        self.cache.lru.remove((self.key, chunk))
        self.cache.forget_descriptor((self.key, chunk))
        with contextlib.suppress(OSError):
            os.unlink(self.chunk_path(chunk))

    def close(self) -> None:
        pass
