"""Chunks on disk: files this peer serves (published or being downloaded) and the `.part` file a download
writes into. Chunks are read with `os.pread` and written with `os.pwrite` at `chunk_number * chunk_size`;
no file is ever held in memory whole.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from p2pfs.errors import P2PFSError
from p2pfs.peer.hashing import ChunkHasher
from p2pfs.protocol import hashes
from p2pfs.protocol.limits import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_FILENAME_BYTES,
    MIN_CHUNK_SIZE,
)

PART_SUFFIX = ".part"

log = logging.getLogger("p2pfs.peer")


class StorageError(P2PFSError):
    """A local file cannot be read, written or published."""


def chunk_count_for(filesize: int, chunk_size: int) -> int:
    return -(-filesize // chunk_size)


def check_chunk_size(chunk_size: int) -> int:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise StorageError(f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")
    return chunk_size


def check_name(name: str) -> str:
    """A published name is a plain file name (what the protocol's `Filename` accepts)."""
    if (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\x00")
        or len(name.encode("utf-8", "surrogateescape")) > MAX_FILENAME_BYTES
    ):
        raise StorageError(f"invalid file name {name!r}: a published name is a plain file name")
    return name


@dataclass
class ChunkFile:
    """One file this peer can serve chunks of, by published name. `fd` stays open for reads (and writes
    while downloading), so a rename of the underlying file does not disturb serving."""

    name: str
    path: Path
    filesize: int
    chunk_size: int
    fd: int
    #: chunk numbers held (all of them for a published or finished file)
    have: set[int] = field(default_factory=set)
    #: SHA-256 hex of each held chunk, computed once (at publish, or when the chunk was verified)
    digests: dict[int, str] = field(default_factory=dict)
    #: published from a local file by this peer (not downloaded): its chunks are super-seeded
    origin: bool = False

    @property
    def chunk_count(self) -> int:
        return chunk_count_for(self.filesize, self.chunk_size)

    @property
    def complete(self) -> bool:
        return len(self.have) == self.chunk_count

    def chunk_hashes(self) -> bytes:
        """Every chunk's SHA-256, concatenated (the `chunkhashes` extension); the file must be complete."""
        return hashes.join([self.digests[c] for c in range(self.chunk_count)])

    def chunk_length(self, chunk: int) -> int:
        start = chunk * self.chunk_size
        return max(0, min(self.chunk_size, self.filesize - start))

    def read_chunk(self, chunk: int) -> bytes:
        length = self.chunk_length(chunk)
        data = os.pread(self.fd, length, chunk * self.chunk_size)
        if len(data) != length:
            raise StorageError(f"{self.path}: short read of chunk {chunk} (file changed on disk?)")
        return data

    def read_into(self, chunk: int, view: memoryview) -> int:
        """Read chunk `chunk` into `view` (at least the chunk's length); returns the bytes read."""
        return os.preadv(self.fd, [view[: self.chunk_length(chunk)]], chunk * self.chunk_size)

    def write_chunk(self, chunk: int, data: bytes | bytearray | memoryview, digest: str) -> None:
        self.write_at(chunk, data)
        self.mark(chunk, digest)

    def write_at(self, chunk: int, data: bytes | bytearray | memoryview) -> None:
        """Write a chunk's bytes in place (I/O only: safe in a worker thread; `mark` it afterwards)."""
        with memoryview(data) as whole:
            view = whole
            offset = chunk * self.chunk_size
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written

    def mark(self, chunk: int, digest: str) -> None:
        """Record a written, verified chunk as held (from the event loop's thread)."""
        self.have.add(chunk)
        self.digests[chunk] = digest

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_to_publish(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, name: str | None = None) -> ChunkFile:
    """Open a local file to publish (checked, not hashed yet: see `set_published_digests`)."""
    check_chunk_size(chunk_size)
    name = check_name(name if name is not None else path.name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise StorageError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise StorageError(f"not a file: {path}") from None
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"not a regular file: {path}")
        if chunk_count_for(st.st_size, chunk_size) > MAX_CHUNKS:
            raise StorageError(too_large(path, st.st_size, chunk_size))
        return ChunkFile(name, path, st.st_size, chunk_size, fd, origin=True)
    except BaseException:
        os.close(fd)
        raise


def too_large(path: Path, filesize: int, chunk_size: int) -> str:
    """Why a file cannot be published with `chunk_size`, and the chunk size that would do."""
    reason = f"{path} is too large for chunks of {human_bytes(chunk_size)} (more than {MAX_CHUNKS} chunks)"
    needed = -(-filesize // MAX_CHUNKS)
    if needed > MAX_CHUNK_SIZE:
        return f"{reason}; even the largest chunk size ({human_bytes(MAX_CHUNK_SIZE)}) is too small"
    suggested = 1 << max(needed - 1, 1).bit_length()
    return f"{reason}: use --chunk-size {human_bytes(suggested)} or more"


def human_bytes(n: int) -> str:
    """A power-of-two size as `--chunk-size` takes it (`64K`, `4M`), else bytes."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def open_held(path: Path, name: str, filesize: int, chunk_size: int) -> ChunkFile:
    """Open an existing local copy (a finished download's DEST) to check it and serve it; not through a
    symbolic link, and only a regular file of `filesize` bytes. Not hashed yet."""
    fd = open_no_follow(path, os.O_RDONLY, "open")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != filesize:
            raise StorageError(f"{path} changed while it was being checked")
        return ChunkFile(name, path, filesize, chunk_size, fd)
    except BaseException:
        os.close(fd)
        raise


def open_local_copy(path: Path) -> int:
    """Open a regular local file to read it (`p2pfs verify`); StorageError with one line otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise StorageError(f"file not found: {path}") from None
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StorageError(f"not a regular file: {path}")
    return fd


def set_published_digests(shared: ChunkFile, digests: dict[int, str | None]) -> None:
    """Record the hashes of a file being published: every chunk is then held. StorageError if a chunk
    could not be read whole (the file changed while it was hashed)."""
    for chunk in range(shared.chunk_count):
        digest = digests.get(chunk)
        if digest is None:
            raise StorageError(f"{shared.path}: file changed while being published")
        shared.digests[chunk] = digest
        shared.have.add(chunk)


def open_for_publish(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, name: str | None = None) -> ChunkFile:
    """Open a local file to publish and hash every chunk once, in this thread (blocking). Peer.publish
    hashes on several threads with progress instead (p2pfs.peer.hashing)."""
    shared = open_to_publish(path, chunk_size, name)
    try:
        set_published_digests(shared, ChunkHasher(shared.fd, shared.filesize, chunk_size).run())
    except BaseException:
        shared.close()
        raise
    return shared


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def open_no_follow(path: Path, flags: int, what: str = "create") -> int:
    """`os.open(path, flags | O_NOFOLLOW, 0o644)`: a download's own files are never opened through a
    symbolic link, so a link planted at `DEST.part` (say, to `~/.bashrc`) cannot make a download
    truncate or write another file. StorageError (one line) if it cannot be opened."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StorageError(f"cannot {what} {path}: it is a symbolic link (refusing to follow it)") from None
        raise StorageError(f"cannot {what} {path}: {exc.strerror}") from None


def create_part(dest: Path, name: str, filesize: int, chunk_size: int, keep: bool = False) -> ChunkFile:
    """Create `DEST.part`, sized to the whole file, to receive chunks in any order (`keep`: reuse the
    bytes of an existing one, for a resumed download). Never through a symbolic link."""
    part = part_path(dest)
    fd = open_no_follow(part, os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC))
    try:
        os.ftruncate(fd, filesize)
        if filesize:
            _allocate(fd, filesize)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ENOSPC:
            raise StorageError(f"not enough space for {part}: {filesize} bytes needed") from None
        raise StorageError(f"cannot size {part} to {filesize} bytes: {exc.strerror}") from None
    return ChunkFile(name, part, filesize, chunk_size, fd)


def _allocate(fd: int, size: int) -> None:
    """Reserve the file's blocks up front (like aria2c's --file-allocation=falloc): a full disk is found
    before the transfer, not in the middle of it, and the file system allocates in one go instead of on
    every write (on tmpfs, concurrent downloads writing fresh pages otherwise contend in the kernel).
    File systems that cannot do it are left sparse."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        raise


def finish_part(shared: ChunkFile, dest: Path) -> None:
    """Every chunk is verified: move `DEST.part` to `DEST` (atomic on one file system), then sync the
    directory, so that after a power loss `DEST` is there (the rename is durable only once its
    directory is synced) rather than neither name."""
    try:
        os.fsync(shared.fd)
        os.replace(shared.path, dest)
    except OSError as exc:
        raise StorageError(f"cannot move {shared.path} to {dest}: {exc.strerror}") from None
    shared.path = dest
    sync_directory(dest.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory (its entries: renames, creations). The file is in place whatever happens here,
    so a failure is a warning, not an error: some file systems cannot sync a directory at all."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("cannot open %s to sync it: %s", directory, exc.strerror)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            log.warning("cannot sync directory %s: %s", directory, exc.strerror)
    finally:
        os.close(fd)


def discard_part(shared: ChunkFile) -> None:
    shared.close()
    try:
        os.unlink(shared.path)
    except FileNotFoundError:
        pass
