"""Error types, raised where a problem is detected and turned into one clear line at the CLI edge."""

from __future__ import annotations


class P2PFSError(Exception):
    """Base of every error p2pfs reports to a user as one line."""


class ProtocolError(P2PFSError):
    """A frame or message that does not follow docs/PROTOCOL.md."""


class FrameTooLarge(ProtocolError):
    """A length prefix above the frame limit; refused before reading or allocating the body."""


class TrackerUnavailable(P2PFSError):
    """No connection to the tracker (never connected, refused, or lost)."""


class TrackerError(P2PFSError):
    """The tracker answered a request with an ERROR message or a refusal."""


class PeerUnavailable(P2PFSError):
    """A holder could not be reached, or its connection broke."""


class NoSourceForChunk(P2PFSError):
    """A download cannot finish: some chunks have no live holder."""

    def __init__(self, filename: str, missing: list[int], kept: str = "") -> None:
        self.filename = filename
        self.missing = missing
        super().__init__(
            f"incomplete transfer of {filename!r}: no holder left for "
            f"{len(missing)} chunk{'s' if len(missing) != 1 else ''} ({format_ranges(missing)})" + kept
        )


class FileNotPublished(P2PFSError):
    """The tracker does not list the requested file."""


def format_ranges(numbers: list[int], limit: int = 8) -> str:
    """`[0, 1, 2, 5, 7, 8]` -> `0-2, 5, 7-8` (at most `limit` ranges, then `...`)."""
    ranges: list[str] = []
    nums = sorted(numbers)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        ranges.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    if len(ranges) > limit:
        return ", ".join(ranges[:limit]) + ", ..."
    return ", ".join(ranges)
