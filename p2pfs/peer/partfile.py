"""A download in progress on disk: `DEST.part` (the chunks, at their offsets) and `DEST.part.state`
(which chunks were verified), so an interrupted download resumes where it stopped.

The state file is a JSON header line (name, filesize, chunksize, contentid) followed by one line per
verified chunk, `CHUNK_NUMBER SHA256HEX`, appended as chunks are written (no flush per chunk: a line lost
in a crash only means that chunk is fetched again). On resume nothing is trusted: every chunk the log
names is read back and hashed against the publisher's hash. Files without publisher hashes (unverified)
are never resumed: the same name could now stand for other bytes of the same size. A truncated or corrupt `.part` therefore loses only the chunks that do not match.
A lock on the state file keeps two downloads from writing the same `.part`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Self

import msgspec

from p2pfs.peer import destination, storage
from p2pfs.peer.hashing import ChunkHasher
from p2pfs.peer.storage import ChunkFile, StorageError

STATE_SUFFIX = ".state"


class StateHeader(msgspec.Struct):
    name: str
    filesize: int
    chunksize: int
    contentid: str | None = None


def state_path(dest: Path) -> Path:
    part = storage.part_path(dest)
    return part.with_name(part.name + STATE_SUFFIX)


class PartFile:
    """Owns `DEST.part` (as a ChunkFile the chunk server can read while we write) and its state log."""

    def __init__(self, dest: Path, shared: ChunkFile, state_fd: int, candidates: dict[int, str]) -> None:
        self.dest = dest
        self.shared = shared
        self._state_fd = state_fd
        #: chunks the state log says were verified before; checked by `verify_resumed`
        self.candidates = candidates

    @classmethod
    def open(
        cls,
        dest: Path,
        name: str,
        filesize: int,
        chunk_size: int,
        content_id: str | None,
        create: Callable[[bool], ChunkFile] | None = None,
    ) -> Self:
        """Resume `DEST.part` if its state matches this file, else start a fresh one. Neither file is
        opened through a symbolic link (StorageError). `create(keep)` makes what holds the chunks
        (default: the file `DEST.part`; `keep`: reuse what an earlier attempt left)."""
        state = state_path(dest)
        state_fd = storage.open_no_follow(state, os.O_RDWR | os.O_CREAT)
        fresh = False
        try:
            fcntl.flock(state_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(state_fd)
            raise StorageError(f"{storage.part_path(dest)} is in use by another download") from None
        try:
            header = StateHeader(name, filesize, chunk_size, content_id)
            # Only a file with a content id can be resumed: without the publisher's hashes nothing proves
            # that the bytes on disk belong to the file now published under this name.
            resumable = content_id is not None and storage.part_path(dest).exists()
            candidates = _read_state(state_fd, header) if resumable else None
            if candidates is None:  # nothing to resume: a fresh state log and a fresh .part
                fresh = True
                os.ftruncate(state_fd, 0)
                os.lseek(state_fd, 0, os.SEEK_SET)
                os.write(state_fd, msgspec.json.encode(header) + b"\n")
                candidates = {}
            else:
                os.lseek(state_fd, 0, os.SEEK_END)
            if create is None:
                shared = storage.create_part(dest, name, filesize, chunk_size, keep=bool(candidates))
            else:
                shared = create(bool(candidates))
        except BaseException:
            if fresh:  # (an empty log of ours: nothing to keep; a log with chunks stays for a resume)
                with contextlib.suppress(OSError):
                    os.unlink(state)
            os.close(state_fd)
            raise
        return cls(dest, shared, state_fd, candidates)

    def verify_resumed(self, expected: list[str] | None) -> list[int]:
        """Hash every chunk the log names in this thread (blocking); keep those that match."""
        shared = self.shared
        hasher = ChunkHasher(shared.fd, shared.filesize, shared.chunk_size, self.resume_chunks())
        return self.keep_resumed(hasher.run(), expected)

    def resume_chunks(self) -> list[int]:
        """The chunks the log names (within the file): to be hashed again before they are trusted."""
        return sorted(c for c in self.candidates if 0 <= c < self.shared.chunk_count)

    def keep_resumed(self, digests: dict[int, str | None], expected: list[str] | None) -> list[int]:
        """Keep the logged chunks whose fresh digest matches the publisher's hash (or, for a file without
        hashes, the digest logged when it was verified); returns them."""
        shared = self.shared
        kept: list[int] = []
        for chunk in self.resume_chunks():
            want = expected[chunk] if expected is not None else self.candidates[chunk]
            digest = digests.get(chunk)
            if digest is not None and digest == want:
                shared.have.add(chunk)
                shared.digests[chunk] = digest
                kept.append(chunk)
        self.candidates = {}
        return kept

    def record(self, chunk: int, digest: str) -> None:
        """Log a verified, written chunk (one small unbuffered append; no fsync). StorageError if the
        log cannot be written (a full disk)."""
        try:
            os.write(self._state_fd, f"{chunk} {digest}\n".encode())
        except OSError as exc:
            raise StorageError(f"cannot write to {state_path(self.dest)}: {exc.strerror}") from None

    def finish(self) -> None:
        """Every chunk verified: DEST.part -> DEST, and the state log goes. Refused (the .part kept) if
        something other than a regular file or a link has appeared at DEST meanwhile."""
        destination.check_replaceable(self.dest)
        storage.finish_part(self.shared, self.dest)
        self._remove_state()

    def keep_for_resume(self) -> None:
        """An interrupted download: leave DEST.part and its state for the next attempt."""
        self.shared.close()
        self._close_state()

    def discard(self) -> None:
        storage.discard_part(self.shared)
        self._remove_state()

    def _remove_state(self) -> None:
        try:
            os.unlink(state_path(self.dest))
        except FileNotFoundError:
            pass
        self._close_state()

    def _close_state(self) -> None:
        if self._state_fd >= 0:
            os.close(self._state_fd)
            self._state_fd = -1


def _read_state(fd: int, header: StateHeader) -> dict[int, str] | None:
    """The verified chunks the log names, if its header matches `header`; None if it does not."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while piece := os.read(fd, 1 << 20):
        chunks.append(piece)
    lines = b"".join(chunks).split(b"\n")
    try:
        found = msgspec.json.decode(lines[0], type=StateHeader)
    except msgspec.DecodeError:
        return None
    if found != header:
        return None
    logged: dict[int, str] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 64:
            logged[int(parts[0])] = parts[1].decode("ascii", "replace")
    return logged
