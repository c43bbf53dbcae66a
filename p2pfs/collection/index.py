"""Finding one member of a collection by its path, and which chunks carry it (pure: no sockets).

`ManifestIndex` keeps two arrays for the file members of a checked manifest (the offset of each one's
manifest line, and where its bytes start among the members' data), 16 bytes a member, and finds a path
by binary search: the manifest's canonical order is the lexicographic order of the paths' component
tuples, so O(log n) line decodes answer a lookup among a million members, with no Python object per
member. `MemberSpan` is a member's place in the collection's byte stream, cut into chunks of its own
(docs/PROTOCOL.md §14, "One member"): what the tracker answers for `NAME/REL/PATH` and what a holder
serves for it.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from p2pfs.chunkset import ChunkSet
from p2pfs.collection import manifest
from p2pfs.collection.manifest import Entry, ManifestError
from p2pfs.collection.store import MemberIndex, padded

#: Bytes of a manifest line read at a time from a file (most lines are shorter; longer ones read again).
LINE_READ = 512
#: A member covering at most this many collection chunks is checked chunk by chunk against a holder's
#: set; a bigger one through the holder's runs (one C-speed pass over its bitmap).
FEW_CHUNKS = 64
#: Bytes an index costs per file member (its two array entries), for cache accounting.
BYTES_PER_MEMBER = 16

ReadLine = Callable[[int], bytes]


@dataclass(frozen=True)
class Member:
    """A file member: its path, where its bytes start among the members' data (after the manifest and
    its padding), its size and its executable bit."""

    path: str
    start: int
    size: int
    executable: bool


class ManifestIndex:
    """The file members of a checked manifest, found by path (`find`). `read_line(offset)` returns the
    manifest line (without its newline) that starts at `offset`."""

    __slots__ = ("_read_line", "lines", "manifest_bytes", "size", "starts")

    def __init__(
        self, read_line: ReadLine, lines: array[int], starts: array[int], size: int, manifest_bytes: int = 0
    ) -> None:
        self._read_line = read_line
        #: bytes of the manifest this index holds in memory (0 when it reads lines from a file)
        self.manifest_bytes = manifest_bytes
        #: the offset of each file member's line, in manifest (canonical) order
        self.lines = lines
        #: where each file member's bytes start among the members' data
        self.starts = starts
        #: bytes of all members together
        self.size = size

    @classmethod
    def from_bytes(cls, data: bytes) -> ManifestIndex:
        """Check a whole manifest (every rule of p2pfs.collection.manifest) and index its file members,
        empty ones included. ManifestError if it breaks a rule. Memory: the manifest (kept, to read lines
        back) and 16 bytes a file member. Blocking for a big manifest: run it in a thread."""
        end = data.find(b"\n")
        if end < 0:
            raise ManifestError(
                "the manifest does not end with a newline" if data.strip() else "the manifest is empty"
            )
        checker = manifest.Checker(manifest.decode_header(data[:end]))
        lines, starts = array("Q"), array("Q")
        total = 0
        pos = end + 1
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                if data[pos:].strip():
                    raise ManifestError("the manifest does not end with a newline")
                break
            if end - pos > manifest.MAX_LINE_BYTES:
                raise ManifestError("a manifest line is too long")
            line = data[pos:end]
            if line.strip():
                entry = checker.check(manifest.decode_entry(line))
                if entry.is_file:
                    lines.append(pos)
                    starts.append(total)
                    total += entry.size
            pos = end + 1
        checker.finish()
        return cls(_bytes_reader(data), lines, starts, total, len(data))

    @classmethod
    def of_members(cls, fd: int, members: MemberIndex) -> ManifestIndex:
        """The index of a collection a peer serves, over the arrays of its MemberIndex (shared, not copied)
        and its manifest file `fd`: members with bytes only (an empty member has no chunk to serve)."""
        return cls(_file_reader(fd), members.lines, members.starts, members.size)

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def cost(self) -> int:
        """Bytes this index holds beyond the manifest itself."""
        return BYTES_PER_MEMBER * len(self.lines)

    def entry(self, i: int) -> Entry:
        """The manifest entry of file member `i`."""
        return manifest.decode_entry(self._read_line(self.lines[i]))

    def find(self, path: str) -> Member | None:
        """The file member at `path`; None if there is none (no such entry, a directory, a link, or a path
        no manifest could hold: empty, absolute, with `.` or `..` components...)."""
        try:
            manifest.check_path(path)
        except ManifestError:
            return None
        key = manifest.components(path)
        lo, hi = 0, len(self.lines)
        while lo < hi:
            mid = (lo + hi) // 2
            entry = self.entry(mid)
            here = manifest.components(entry.path)
            if here == key:
                return Member(entry.path, self.starts[mid], entry.size, entry.x)
            if here < key:
                lo = mid + 1
            else:
                hi = mid
        return None


def _bytes_reader(data: bytes) -> ReadLine:
    def read_line(offset: int) -> bytes:
        end = data.find(b"\n", offset)
        return data[offset : end if end >= 0 else len(data)]

    return read_line


def _file_reader(fd: int) -> ReadLine:
    def read_line(offset: int) -> bytes:
        raw = os.pread(fd, LINE_READ, offset)
        if b"\n" not in raw:
            raw = os.pread(fd, manifest.MAX_LINE_BYTES + 1, offset)
        return raw.split(b"\n", 1)[0]

    return read_line


@dataclass(frozen=True)
class MemberSpan:
    """A member's bytes [offset, offset + size) in its collection's byte stream, cut into member chunks of
    `chunk_size`: member chunk j is the stream's bytes [offset + j*cs, offset + min((j+1)*cs, size)), which
    lie in one collection chunk (a member that starts on a chunk boundary) or two."""

    offset: int
    size: int
    chunk_size: int

    @classmethod
    def of(cls, member: Member, manifest_size: int, chunk_size: int) -> MemberSpan:
        return cls(padded(manifest_size, chunk_size) + member.start, member.size, chunk_size)

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def byte_range(self, j: int) -> tuple[int, int]:
        """(offset in the collection's stream, length) of member chunk j."""
        first = j * self.chunk_size
        return self.offset + first, min(self.chunk_size, self.size - first)

    def covering(self, j: int) -> range:
        """The collection chunks that hold member chunk j (one or two)."""
        at, length = self.byte_range(j)
        return range(at // self.chunk_size, (at + length - 1) // self.chunk_size + 1)

    def held_runs(self, held: ChunkSet) -> list[tuple[int, int]]:
        """The member chunks whose bytes lie entirely in collection chunks of `held`, as runs [first, end)
        ascending and maximal. A complete holder costs nothing; a big member a pass over `held`'s runs."""
        n = self.chunk_count
        if n == 0 or not len(held):
            return []
        if len(held) == held.size:
            return [(0, n)]
        cs = self.chunk_size
        first = self.offset // cs
        last = (self.offset + self.size - 1) // cs  # the collection chunk holding the member's last byte
        if last - first < FEW_CHUNKS:
            return _runs([j for j in range(n) if all(c in held for c in self.covering(j))])
        # Member chunk j < n-1 needs collection chunks first+j .. first+j+extra; the last one needs
        # first+n-1 .. last. Runs of collection chunks are maximal (separated by a missing chunk), so the
        # member runs they give are never adjacent: no merging, except for the last member chunk.
        extra = 1 if self.offset % cs else 0
        runs: list[tuple[int, int]] = []
        last_held = False
        for a, b in held.runs():
            if b <= first or a > last:
                continue
            lo, hi = max(a - first, 0), min(b - first - extra, n - 1)
            if lo < hi:
                runs.append((lo, hi))
            if a <= first + n - 1 and last < b:
                last_held = True
        if last_held:
            if runs and runs[-1][1] == n - 1:
                runs[-1] = (runs[-1][0], n)
            else:
                runs.append((n - 1, n))
        return runs


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Ascending distinct numbers as maximal runs [first, end)."""
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and runs[-1][1] == number:
            runs[-1] = (runs[-1][0], number + 1)
        else:
            runs.append((number, number + 1))
    return runs
