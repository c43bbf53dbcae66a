"""The publisher's chunk hashes and the content id derived from them (pure functions, no I/O).

`chunkhashes` is the concatenation of every chunk's 32-byte SHA-256, in chunk order. The content id of a
file is the SHA-256 (hex) of its `chunkhashes`: two publishers of the same bytes with the same chunk
size get the same content id, and a changed byte anywhere changes it.
"""

from __future__ import annotations

import hashlib

from p2pfs.protocol.limits import DIGEST_SIZE


def content_id(chunkhashes: bytes) -> str:
    return hashlib.sha256(chunkhashes).hexdigest()


def split(chunkhashes: bytes) -> list[str]:
    """The hex digest of each chunk, from the concatenated binary form."""
    return [chunkhashes[i : i + DIGEST_SIZE].hex() for i in range(0, len(chunkhashes), DIGEST_SIZE)]


def join(hex_digests: list[str]) -> bytes:
    """The concatenated binary form of per-chunk hex digests."""
    return b"".join(bytes.fromhex(d) for d in hex_digests)


def short(cid: str | None) -> str:
    """The first 16 hex digits, for tables and progress lines."""
    return cid[:16] if cid else "unverified"
