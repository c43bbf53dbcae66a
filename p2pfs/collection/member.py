"""One collection's manifest without the tree (`p2pfs ls NAME`), and one member file without the rest
(`p2pfs get NAME/REL/PATH DEST`).

Both are private fetches through the transfer engine (`Download(serve=False)`): the chunks are verified
against the publisher's hashes as always, but neither served nor registered, since this peer holds only
parts of them. A member's chunks are the collection's chunks that cover its bytes; only its bytes are
written, to `DEST.part`, renamed to DEST once every covering chunk is verified.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pfs.collection import part as collection_part
from p2pfs.collection import tree
from p2pfs.collection.manifest import Entry, Header, ManifestError, check_path
from p2pfs.collection.store import CollectionStore, MemberIndex
from p2pfs.errors import FileNotPublished, P2PFSError, ProtocolError
from p2pfs.peer import destination, storage
from p2pfs.peer.storage import ChunkFile, StorageError
from p2pfs.peer.transfer import Download, DownloadResult, UnloggedPart
from p2pfs.protocol import messages as m


@dataclass
class Manifest:
    """A collection's manifest, fetched and checked, in an unnamed temporary file (closed with `close`)."""

    name: str
    location: m.ReplyFileLocation
    store: CollectionStore
    header: Header
    index: MemberIndex

    def entries(self) -> Iterator[Entry]:
        return collection_part.entries(self.store.fd, self.store.manifest_size)

    def close(self) -> None:
        self.store.close()


async def fetch_manifest(dl: Download) -> Manifest:
    """Fetch and check the manifest of the collection `dl.name` (only its chunks)."""
    location, filesize, chunk_count, chunk_size = await dl.locate()
    info = location.collection
    if info is None:
        raise P2PFSError(f"{dl.name!r} is a file, not a collection")
    fd = tree.anonymous_file()
    store = CollectionStore(dl.name, Path(dl.name), filesize, chunk_size, fd, info.manifestsize, writable=True)
    try:
        os.ftruncate(fd, info.manifestsize)
        await dl.fetch(UnloggedPart(store), location, False, skip=range(store.manifest_chunks, chunk_count))
        try:
            header, index = collection_part.check(fd, info.manifestsize)
        except ManifestError as exc:
            raise ProtocolError(f"refused the manifest of {dl.name!r}: {exc}") from None
        if store.data_start + index.size != filesize:
            raise ProtocolError(f"refused the manifest of {dl.name!r}: its members do not add up to its size")
    except BaseException:
        store.close()
        raise
    return Manifest(dl.name, location, store, header, index)


def find(manifest: Manifest, path: str) -> tuple[Entry, int | None]:
    """The entry at `path` and, for a file with bytes, its number in the member index."""
    number = 0
    for entry in manifest.entries():
        if entry.path == path:
            return entry, (number if entry.is_file and entry.size > 0 else None)
        if entry.is_file and entry.size > 0:
            number += 1
    raise FileNotPublished(f"{manifest.name!r} has no member {path!r}")


class MemberSlice(ChunkFile):
    """The chunks of a collection that cover one member, writing only the member's bytes to `DEST.part`."""

    def __init__(self, name: str, path: Path, filesize: int, chunk_size: int, fd: int, start: int, size: int):
        super().__init__(name, path, filesize, chunk_size, fd)
        #: the member's bytes in the collection's stream: [start, start + size)
        self.start = start
        self.size = size

    def write_at(self, chunk: int, data: bytes | bytearray | memoryview) -> None:
        begin = chunk * self.chunk_size
        with memoryview(data) as view:
            lo = max(begin, self.start)
            hi = min(begin + len(view), self.start + self.size)
            piece = view[lo - begin : hi - begin]
            offset = lo - self.start
            while piece:
                written = os.pwrite(self.fd, piece, offset)
                piece = piece[written:]
                offset += written

    def read_chunk(self, chunk: int) -> bytes:  # (never served: only parts of these chunks are here)
        raise StorageError(f"{self.name}: a member's copy holds no whole chunk")


async def download_member(dl: Download, collection: str, path: str, started: float) -> DownloadResult:
    """Fetch the member `path` of `collection` to `dl.dest` (the file rule: a directory gets
    DEST/BASENAME; an existing file is refused unless --force)."""
    dl.name = collection
    dl.serve = False
    manifest = await fetch_manifest(dl)
    try:
        entry, number = find(manifest, path)
        if entry.type == "dir":
            raise StorageError(f"{collection}/{path} is a directory: get {collection!r}, or a file in it")
        if entry.type == "link":
            raise StorageError(f"{collection}/{path} is a link to {entry.target!r}: get that member instead")
        store = manifest.store
        final, existing = destination.resolve(dl.dest, path.rpartition("/")[2])
        if existing is not None and not dl.force:
            raise StorageError(f"{final} exists; --force replaces it")
        start = store.data_start + (manifest.index.starts[number] if number is not None else 0)
        fd = storage.open_no_follow(storage.part_path(final), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        member = MemberSlice(collection, storage.part_path(final), store.filesize, store.chunk_size, fd, start, entry.size)
        ok = False
        try:
            os.ftruncate(fd, entry.size)
            if entry.size:
                first = start // store.chunk_size
                end = -(-(start + entry.size) // store.chunk_size)
                others = [c for c in range(store.chunk_count) if not first <= c < end]
                fresh = await dl.tracker.locations(collection, watch=True, known_content_id=manifest.location.contentid)
                await dl.fetch(UnloggedPart(member), fresh, False, skip=others)
            os.fchmod(fd, (0o755 if entry.x else 0o644) & ~collection_part.UMASK)
            destination.check_replaceable(final)
            storage.finish_part(member, final)
            ok = True
        finally:
            if not ok:
                storage.discard_part(member)
            member.close()
    finally:
        manifest.close()
    return DownloadResult(
        f"{collection}/{path}",
        final,
        entry.size,
        len(member.have),
        time.monotonic() - started,
        dl.sources,
        manifest.location.contentid,
    )


def split_member(name: str) -> tuple[str, str] | None:
    """`NAME/REL/PATH` -> (NAME, REL/PATH); None for a plain name."""
    collection, sep, path = name.partition("/")
    if not sep:
        return None
    try:
        storage.check_name(collection)
        check_path(path)
    except (ManifestError, StorageError) as exc:
        raise StorageError(f"invalid member name {name!r}: {exc}") from None
    return collection, path
