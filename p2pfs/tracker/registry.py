"""The tracker's bookkeeping, with no sockets: which peers are connected, which files are listed, and
which peer holds which chunk of each file.

Invariant: a file is listed only while it has at least one holder and every chunk has at least one
holder. Removing a peer (clean close or crash), or a peer unpublishing a file, removes its chunks (of
that file) and delists the files it leaves incomplete.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pfs.address import Address
from p2pfs.chunkset import ChunkSet
from p2pfs.protocol import hashes
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE, MAX_CHUNKS

# (ChunkSet lives in p2pfs.chunkset; it is still exported from here for the tracker server and tests)
__all__ = [
    "MAX_FILES",
    "MAX_HOLDER_BITS",
    "MAX_HOLDER_RECORDS",
    "MAX_LISTED_CHUNKS",
    "MAX_PUBLISHED_CHUNKS_PER_PEER",
    "MAX_UNHASHED_CHUNKS_PER_PEER",
    "NOT_REGISTERED",
    "ChunkSet",
    "FileRecord",
    "PublishRefused",
    "Registry",
    "UnpublishRefused",
]

#: Most chunks one peer may publish in all (4 files of MAX_CHUNKS): publishing costs the tracker memory
#: (a bit per chunk per holder and a counter per chunk, ~2 MB for the largest file), so a single
#: connection cannot buy unbounded memory with a few small frames.
MAX_PUBLISHED_CHUNKS_PER_PEER = 4 * MAX_CHUNKS
#: Most chunks one peer may publish without chunk hashes (the seed's form, 64 GiB at 1 MiB chunks): a
#: publish with hashes pays for its reservation with 32 bytes sent per chunk, one without costs ~30 bytes
#: for up to 2 MB of tracker memory.
MAX_UNHASHED_CHUNKS_PER_PEER = 1 << 16

# Global caps, whatever the number of peers: what the tracker's memory can grow to under any load.
#: Listed names.
MAX_FILES = 65536
#: Chunks of all listed files together (an availability counter each: 8 bytes; 32 Mi chunks, 256 MiB).
MAX_LISTED_CHUNKS = 1 << 25
#: (file, holder) records: each holder of each file.
MAX_HOLDER_RECORDS = 1 << 20
#: Chunk bits of all holder records together (their bitmaps: 2^31 bits, 256 MiB).
MAX_HOLDER_BITS = 1 << 31


@dataclass
class FileRecord:
    name: str
    filesize: int
    chunk_count: int
    chunk_size: int | None  # None when the publisher did not say (seed-only peers): default assumed
    #: the publisher's chunk hashes and the content id derived from them; None for seed-only publishers
    chunk_hashes: bytes | None = None
    content_id: str | None = None
    holders: dict[Address, ChunkSet] = field(default_factory=dict)
    #: how many holders each chunk has, kept in step with `holders` so completeness checks are O(1)
    availability: list[int] = field(default_factory=list)
    #: values derived from the record's fixed fields (such as the encoded chunk hashes), made once
    memo: dict[str, object] = field(default_factory=dict)
    #: holders that published the file from their own copy (REQUEST_PUBLISH): the super-seeders
    publishers: set[Address] = field(default_factory=set)
    #: a collection's description (REQUEST_PUBLISH's `collection`); None for a plain file
    collection: m.Collection | None = None

    def __post_init__(self) -> None:
        if not self.availability:
            self.availability = [0] * self.chunk_count

    @property
    def fileinfo(self) -> tuple[int, int]:
        return (self.filesize, self.chunk_count)

    @property
    def complete(self) -> bool:
        """Every chunk has a holder, and somebody holds the file (an empty file needs its publisher)."""
        return bool(self.holders) and (self.chunk_count == 0 or min(self.availability) > 0)


def _differs(
    name: str,
    existing: FileRecord,
    filesize: int,
    chunk_size: int | None,
    chunk_hashes: bytes | None,
    collection: m.Collection | None,
) -> str:
    """Why a publish of `name` does not join the listed file of that name: what differs, in words."""
    listed = f"a file named {name!r} is already published"
    if (existing.collection is None) != (collection is None):
        kind = "a collection" if existing.collection is not None else "a plain file"
        return f"{listed}, as {kind}"
    if existing.filesize != filesize:
        return f"{listed} with other content ({existing.filesize} bytes, not {filesize})"
    theirs, ours = existing.chunk_size or DEFAULT_CHUNK_SIZE, chunk_size or DEFAULT_CHUNK_SIZE
    if theirs != ours:
        return (
            f"{listed} with another chunk size ({theirs} bytes, not {ours}): publish it with "
            f"--chunk-size {theirs} to join it, or under another name"
        )
    if chunk_hashes is None or existing.chunk_hashes is None:
        return f"{listed}; without chunk hashes on both sides the copies cannot be compared"
    return f"{listed} with different content (same size, other bytes)"


class PublishRefused(Exception):
    """Why a REQUEST_PUBLISH was refused; the text goes into REPLY_PUBLISH.message."""


class UnpublishRefused(Exception):
    """Why a REQUEST_UNPUBLISH was refused; the text goes into REPLY_UNPUBLISH.message."""


#: The refusal of a request that needs a registered connection.
NOT_REGISTERED = "peer is not registered (send REQUEST_REGISTER first)"


class Registry:
    """Peers, files and chunk holders. Every method is a plain, synchronous state change."""

    def __init__(
        self,
        max_files: int = MAX_FILES,
        max_listed_chunks: int = MAX_LISTED_CHUNKS,
        max_holder_records: int = MAX_HOLDER_RECORDS,
        max_holder_bits: int = MAX_HOLDER_BITS,
    ) -> None:
        self.peers: set[Address] = set()
        self.files: dict[str, FileRecord] = {}
        #: files each peer holds chunks of, so removing a peer touches only those files
        self._files_of: dict[Address, set[str]] = {}
        self.max_files = max_files
        self.max_listed_chunks = max_listed_chunks
        self.max_holder_records = max_holder_records
        self.max_holder_bits = max_holder_bits
        #: what the caps count: chunks of listed files, holder records, and their chunk bits
        self.listed_chunks = 0
        self.holder_records = 0
        self.holder_bits = 0

    # -- peers ---------------------------------------------------------------------------------
    def add_peer(self, address: Address) -> None:
        self.peers.add(address)
        self._files_of.setdefault(address, set())

    def remove_peer(self, address: Address) -> list[str]:
        """Forget a peer and its chunks; return the names of the files this delists."""
        self.peers.discard(address)
        return [name for name in sorted(self._files_of.pop(address, set())) if self._leave(address, name)]

    def unpublish(self, address: Address, name: str) -> bool:
        """`address` stops holding `name` (REQUEST_UNPUBLISH): all its chunks of it are removed, as when it
        leaves; True if this delists the file (a chunk is left with no holder). UnpublishRefused if the
        peer is not registered or holds nothing of `name`. No other holder's chunks are touched."""
        if address not in self.peers:
            raise UnpublishRefused(NOT_REGISTERED)
        record = self.files.get(name)
        if record is None:
            raise UnpublishRefused(f"{name!r} is not listed")
        if address not in record.holders:
            raise UnpublishRefused(f"this peer does not hold {name!r}")
        self._files_of[address].discard(name)
        return self._leave(address, name)

    def _leave(self, address: Address, name: str) -> bool:
        """`address` is no longer a holder of `name` (it left, or unpublished it); True if that delists
        the file. The one code path for a holder leaving a file: the listing invariant is kept here."""
        record = self.files.get(name)
        if record is None:
            return False
        held = record.holders.pop(address, None)
        if held is not None:
            self._dropped_record(record)
            for chunk in held:
                record.availability[chunk] -= 1
        record.publishers.discard(address)
        if not record.complete:
            self._delist(name)
            return True
        return False

    # -- files ---------------------------------------------------------------------------------
    def publish(
        self,
        address: Address,
        name: str,
        filesize: int,
        chunk_count: int,
        chunk_size: int | None,
        chunk_hashes: bytes | None = None,
        collection: m.Collection | None = None,
    ) -> FileRecord:
        """List a file (or a collection) held whole by `address`, or add `address` as a holder of every
        chunk when the same name is already listed with the same content. PublishRefused says why not."""
        if address not in self.peers:
            raise PublishRefused(NOT_REGISTERED)
        published = sum(self.files[n].chunk_count for n in self._files_of[address] if n in self.files)
        if published + chunk_count > MAX_PUBLISHED_CHUNKS_PER_PEER:
            raise PublishRefused(
                f"this peer already publishes {published} chunks; the limit is {MAX_PUBLISHED_CHUNKS_PER_PEER}"
            )
        if chunk_hashes is None:
            unhashed = sum(
                self.files[n].chunk_count
                for n in self._files_of[address]
                if n in self.files and self.files[n].chunk_hashes is None
            )
            if unhashed + chunk_count > MAX_UNHASHED_CHUNKS_PER_PEER:
                raise PublishRefused(
                    f"this peer already publishes {unhashed} chunks without chunk hashes; the limit is "
                    f"{MAX_UNHASHED_CHUNKS_PER_PEER} (publish with chunkhashes for more)"
                )
        existing = self.files.get(name)
        if existing is not None:
            same_content = (
                chunk_hashes is not None
                and existing.chunk_hashes == chunk_hashes
                and existing.fileinfo == (filesize, chunk_count)
                and (existing.chunk_size or DEFAULT_CHUNK_SIZE) == (chunk_size or DEFAULT_CHUNK_SIZE)
            )
            if not same_content or existing.collection != collection:
                raise PublishRefused(_differs(name, existing, filesize, chunk_size, chunk_hashes, collection))
            if address not in existing.holders:  # joining as a new holder of every chunk: no per-chunk work
                self._check_room(new_records=1, new_bits=chunk_count)
                existing.holders[address] = ChunkSet(chunk_count, full=True)
                self._added_record(existing)
                existing.availability = [a + 1 for a in existing.availability]
                self._files_of[address].add(name)
            else:
                self.register_chunks(address, name, range(chunk_count))
            existing.publishers.add(address)
            return existing
        size = chunk_size or DEFAULT_CHUNK_SIZE
        expected = -(-filesize // size)
        if chunk_count != expected:
            raise PublishRefused(
                f"fileinfo is inconsistent: {filesize} bytes in chunks of {size} make {expected} chunks, "
                f"not {chunk_count}"
            )
        if len(self.files) >= self.max_files:
            raise PublishRefused(f"tracker full: {len(self.files)} files listed (the limit)")
        if self.listed_chunks + chunk_count > self.max_listed_chunks:
            raise PublishRefused(f"tracker full: {self.listed_chunks} chunks listed; the limit is {self.max_listed_chunks}")
        self._check_room(new_records=1, new_bits=chunk_count)
        record = FileRecord(name, filesize, chunk_count, chunk_size, chunk_hashes, collection=collection)
        if chunk_hashes is not None:
            record.content_id = hashes.content_id(chunk_hashes)
        self.files[name] = record
        self.listed_chunks += chunk_count
        record.holders[address] = ChunkSet(chunk_count, full=True)
        self._added_record(record)
        record.availability = [1] * chunk_count
        record.publishers.add(address)
        self._files_of[address].add(name)
        return record

    def register_chunk(self, address: Address, name: str, chunk: int) -> bool:
        """Record that `address` now holds `chunk` of `name`; False if that makes no sense (ignored)."""
        return bool(self.register_chunks(address, name, (chunk,))) or self._holds(address, name, chunk)

    def register_chunks(self, address: Address, name: str, chunks: Iterable[int]) -> list[int]:
        """Record that `address` now holds `chunks` of `name`; returns those it did not hold yet. Numbers
        that make no sense (no such file or chunk, an unregistered peer, the tracker full) are ignored."""
        record = self.files.get(name)
        if record is None or address not in self.peers:
            return []
        held = record.holders.get(address)
        new = held is None
        if held is None:
            if not self._has_room(1, record.chunk_count):
                return []
            held = ChunkSet(record.chunk_count)
        count, availability, add = record.chunk_count, record.availability, held.add
        gained = [c for c in chunks if 0 <= c < count and add(c)]
        if new and gained:  # (a holder record only for a holder of something)
            record.holders[address] = held
            self._added_record(record)
            self._files_of[address].add(name)
        for chunk in gained:
            availability[chunk] += 1
        return gained

    def restore(
        self,
        name: str,
        filesize: int,
        chunk_count: int,
        chunk_size: int | None,
        chunk_hashes: bytes | None,
        collection: m.Collection | None,
        holders: dict[Address, ChunkSet],
        publishers: Iterable[Address] = (),
        gained: dict[Address, list[int]] | None = None,
    ) -> FileRecord | None:
        """List `name` as a shared store describes it (holders with any chunks, not necessarily one with
        all), or add the holders' chunks to the listed file of that name: how a tracker sharing its state
        takes in what other trackers recorded. None if the file is not listed afterwards (incomplete,
        other content, or the tracker full). Holders become peers. `gained`, if given, receives each
        holder's chunks that were not recorded before (what watchers have not heard of yet)."""
        for holder in holders:
            self.add_peer(holder)
        record = self.files.get(name)
        if record is None:
            if (
                len(self.files) >= self.max_files
                or self.listed_chunks + chunk_count > self.max_listed_chunks
                or chunk_count != -(-filesize // (chunk_size or DEFAULT_CHUNK_SIZE))
            ):
                return None
            record = FileRecord(name, filesize, chunk_count, chunk_size, chunk_hashes, collection=collection)
            if chunk_hashes is not None:
                record.content_id = hashes.content_id(chunk_hashes)
            self.files[name] = record
            self.listed_chunks += chunk_count
        elif record.chunk_hashes != chunk_hashes or record.fileinfo != (filesize, chunk_count):
            return None
        for holder, held in holders.items():
            new = self.register_chunks(holder, name, held)
            if gained is not None and new:
                gained[holder] = new
        record.publishers.update(p for p in publishers if p in record.holders)
        if not record.complete:
            self._delist(name)
            return None
        return record

    def _holds(self, address: Address, name: str, chunk: int) -> bool:
        record = self.files.get(name)
        held = record.holders.get(address) if record is not None else None
        return held is not None and chunk in held

    # -- the global caps -------------------------------------------------------------------------------
    def _has_room(self, new_records: int, new_bits: int) -> bool:
        return (
            self.holder_records + new_records <= self.max_holder_records
            and self.holder_bits + new_bits <= self.max_holder_bits
        )

    def _check_room(self, new_records: int, new_bits: int) -> None:
        if not self._has_room(new_records, new_bits):
            raise PublishRefused(
                f"tracker full: {self.holder_records} holder records of {self.holder_bits} chunks "
                f"(limits {self.max_holder_records} and {self.max_holder_bits})"
            )

    def _added_record(self, record: FileRecord) -> None:
        self.holder_records += 1
        self.holder_bits += record.chunk_count

    def _dropped_record(self, record: FileRecord) -> None:
        self.holder_records -= 1
        self.holder_bits -= record.chunk_count

    def file_list(self) -> dict[str, tuple[int, int]]:
        return {name: record.fileinfo for name, record in self.files.items()}

    def collections(self) -> dict[str, m.Collection]:
        """The listed names that are collections, with what describes them."""
        return {name: r.collection for name, r in self.files.items() if r.collection is not None}

    def content_ids(self) -> dict[str, str]:
        """Content id of every listed file that was published with chunk hashes."""
        return {name: r.content_id for name, r in self.files.items() if r.content_id is not None}

    def locations(self, name: str) -> FileRecord | None:
        return self.files.get(name)

    def _delist(self, name: str) -> None:
        record = self.files.pop(name)
        self.listed_chunks -= record.chunk_count
        for _ in record.holders:
            self._dropped_record(record)
        for holder in record.holders:
            files = self._files_of.get(holder)
            if files is not None:
                files.discard(name)
