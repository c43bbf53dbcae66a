"""A set of chunk numbers of one file as a bitmap (1 bit per chunk): what one holder has, or what a
download already holds. Pure; shared by the tracker's registry and the downloader's picker.

A set of ints costs ~40 bytes per chunk, so a 2^18-chunk file held by 32 holders would cost ~500 MB as
sets; as bitmaps it costs 32 KiB per holder. Bulk operations (runs, unions, differences, listing the
numbers) work at C speed on the bitmap as one big int or as bytes, never chunk by chunk in Python.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class ChunkSet:
    """The chunk numbers in [0, size) that are in the set. Compares equal to a set of the same numbers.

    `memo` keeps values derived from the set (such as its encoded form in a tracker reply) until the set
    changes: a tracker answers the same locations many times between changes."""

    __slots__ = ("_bits", "_count", "_memo", "_size")

    def __init__(self, size: int, full: bool = False) -> None:
        self._size = size
        self._bits = bytearray(b"\xff" * ((size + 7) // 8)) if full else bytearray((size + 7) // 8)
        if full and size % 8:
            self._bits[-1] = (1 << (size % 8)) - 1
        self._count = size if full else 0
        self._memo: dict[str, object] = {}

    @classmethod
    def from_numbers(cls, size: int, numbers: Iterable[int]) -> ChunkSet:
        """The numbers of `numbers` that lie in [0, size) (others are ignored)."""
        chunks = cls(size)
        add = chunks.add
        for chunk in numbers:
            if 0 <= chunk < size:
                add(chunk)
        return chunks

    @classmethod
    def from_runs(cls, size: int, runs: Iterable[tuple[int, int]]) -> ChunkSet:
        chunks = cls(size)
        chunks.add_runs(runs)
        return chunks

    @classmethod
    def _from_int(cls, size: int, value: int) -> ChunkSet:
        chunks = cls(size)
        chunks._bits[:] = value.to_bytes(len(chunks._bits), "little")
        chunks._count = value.bit_count()
        return chunks

    @property
    def size(self) -> int:
        """How many chunk numbers the set can hold (the file's chunk count)."""
        return self._size

    # -- changes ---------------------------------------------------------------------------------------
    def add(self, chunk: int) -> bool:
        """Add `chunk` (0 <= chunk < size: the caller checks); True if it was not there."""
        byte, bit = chunk >> 3, chunk & 7
        if self._bits[byte] >> bit & 1:
            return False
        self._bits[byte] |= 1 << bit
        self._count += 1
        if self._memo:
            self._memo.clear()
        return True

    def discard(self, chunk: int) -> bool:
        """Remove `chunk` if it is there; True if it was."""
        if chunk not in self:
            return False
        self._bits[chunk >> 3] &= ~(1 << (chunk & 7)) & 0xFF
        self._count -= 1
        if self._memo:
            self._memo.clear()
        return True

    def add_runs(self, runs: Iterable[tuple[int, int]]) -> None:
        """Add every chunk of each run [first, end); runs are clipped to [0, size), empty ones ignored.
        Whole bytes are set by slice assignment, so a run of a million chunks costs one bytes operation."""
        bits, size = self._bits, self._size
        changed = False
        for first, end in runs:
            first, end = max(first, 0), min(end, size)
            if first >= end:
                continue
            changed = True
            head, tail = first >> 3, (end - 1) >> 3  # the bytes holding the first and the last chunk
            low, high = first & 7, (end - 1) & 7
            if head == tail:
                bits[head] |= ((1 << (high - low + 1)) - 1) << low
                continue
            bits[head] |= (0xFF << low) & 0xFF
            if tail > head + 1:
                bits[head + 1 : tail] = b"\xff" * (tail - head - 1)
            bits[tail] |= (1 << (high + 1)) - 1
        if changed:
            self._count = int.from_bytes(bits, "little").bit_count()
            if self._memo:
                self._memo.clear()

    def update(self, other: ChunkSet) -> ChunkSet:
        """Add every chunk of `other` (of the same size); returns the chunks that were new."""
        mine, theirs = self._as_int(), other._as_int()
        gained = theirs & ~mine
        if gained:
            self._bits[:] = (mine | theirs).to_bytes(len(self._bits), "little")
            self._count += gained.bit_count()
            if self._memo:
                self._memo.clear()
        return ChunkSet._from_int(self._size, gained)

    # -- queries ---------------------------------------------------------------------------------------
    def count_not_in(self, other: ChunkSet) -> int:
        """How many chunks of this set `other` lacks (|self - other|)."""
        return (self._as_int() & ~other._as_int()).bit_count()

    def difference(self, other: ChunkSet) -> ChunkSet:
        """A new set: the chunks of this set that `other` lacks."""
        return ChunkSet._from_int(self._size, self._as_int() & ~other._as_int())

    def union_of(self, others: Iterable[ChunkSet]) -> ChunkSet:
        """A new set: this one and every chunk of `others` (of the same size)."""
        value = self._as_int()
        for other in others:
            value |= other._as_int()
        return ChunkSet._from_int(self._size, value)

    def complement(self) -> ChunkSet:
        """A new set: the chunks in [0, size) that are not in this one."""
        return ChunkSet._from_int(self._size, ~self._as_int() & ((1 << self._size) - 1))

    def copy(self) -> ChunkSet:
        return ChunkSet._from_int(self._size, self._as_int())

    def memo(self, key: str, make: Callable[[ChunkSet], T]) -> T:
        """`make(self)`, computed once until the set changes."""
        try:
            return self._memo[key]  # type: ignore[return-value]
        except KeyError:
            value = self._memo[key] = make(self)
            return value

    def __contains__(self, chunk: object) -> bool:
        if not isinstance(chunk, int) or not 0 <= chunk < self._size:
            return False
        return bool(self._bits[chunk >> 3] >> (chunk & 7) & 1)

    def __len__(self) -> int:
        return self._count

    def _as_int(self) -> int:
        return int.from_bytes(self._bits, "little")

    def _digits(self) -> bytes:
        """One byte per chunk, b"1" held / b"0" not, lowest chunk first (trailing zeros omitted)."""
        value = self._as_int()
        return format(value, "b").encode("ascii")[::-1] if value else b""

    def numbers(self) -> list[int]:
        """The chunk numbers held, ascending."""
        if self._count == self._size:
            return list(range(self._size))
        digits = self._digits()
        return list(itertools.compress(range(len(digits)), digits.translate(_DIGIT_VALUES)))

    def runs(self) -> list[tuple[int, int]]:
        """The chunks held as runs [first, end) of consecutive numbers, ascending."""
        if self._count == self._size:
            return [(0, self._size)] if self._size else []
        return [match.span() for match in _RUN.finditer(self._digits())]

    def __iter__(self) -> Iterator[int]:
        return iter(self.numbers())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkSet):  # (by content: the sizes may differ)
            return self._count == other._count and self._as_int() == other._as_int()
        if isinstance(other, (set, frozenset)):
            return len(other) == self._count and all(c in self for c in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChunkSet({set(self)!r})"


_DIGIT_VALUES = bytes.maketrans(b"01", b"\x00\x01")
_RUN = re.compile(b"1+")
