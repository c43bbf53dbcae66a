"""Getting a collection: the transfer engine driven in two rounds over the collection's chunks.

First the manifest's chunks (it is the first bytes of the collection, verified against the publisher's
chunk hashes like any chunk); then the manifest is checked whole and the tree created under
`DEST.part/`; then every other chunk, written across member files as it is verified. Finally the tree is
renamed to DEST. Both rounds serve what they hold, and both resume from the state log.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from p2pfs.collection import tree as collection_tree
from p2pfs.collection.manifest import ManifestError
from p2pfs.collection.part import CollectionPart
from p2pfs.collection.store import CollectionStore
from p2pfs.errors import ProtocolError
from p2pfs.peer import hashing, storage
from p2pfs.peer.storage import StorageError
from p2pfs.peer.transfer import Download, DownloadResult
from p2pfs.protocol import messages as m


def tree_destination(dest: Path, name: str) -> tuple[Path, bool]:
    """Where a collection goes: DEST itself if it does not exist (it becomes the tree's root), DEST/NAME
    if DEST is a directory; and whether a directory (not a link) is there already, to be compared. Its
    directory must exist; anything else at the final name is refused."""
    final = dest / name if dest.is_dir() else dest
    if not final.parent.is_dir():
        why = "does not exist" if not final.parent.exists() else "is not a directory"
        raise StorageError(f"cannot download to {dest}: directory {final.parent} {why}")
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise StorageError(f"cannot download {name!r} to {final}: it exists and is not a directory")
    return final, final.exists()


async def existing_tree(dl: Download, final: Path, filesize: int, chunk_size: int) -> CollectionStore:
    """The tree at `final`, opened as the collection would be published from it and hashed: returned
    (every chunk held, to be served) if it is the published collection, byte for byte, executable bits,
    links and empty directories included; StorageError if it is anything else. Trees are never replaced:
    there is no --force for them."""
    skipped: list[str] = []
    store = await asyncio.to_thread(collection_tree.open_to_publish, final, dl.name, chunk_size, skipped.append)
    try:
        if store.filesize == filesize and not skipped:
            digests = await hashing.hash_chunks(
                store.fd,
                store.filesize,
                store.chunk_size,
                on_progress=dl.hash_progress("check", store.chunk_count),
                reader=store.read_into,
            )
            if [digests.get(c) for c in range(store.chunk_count)] == dl.expected:
                storage.set_published_digests(store, digests)
                store.origin = False  # (a copy, not the publisher's: no super-seeding from it)
                return store
    except BaseException:
        store.close()
        raise
    store.close()
    raise StorageError(
        f"cannot download {dl.name!r} to {final}: a directory with other content is there (trees are never "
        "replaced: remove it, or choose another DEST)"
    )


async def download_collection(
    dl: Download, location: m.ReplyFileLocation, filesize: int, chunk_count: int, chunk_size: int, started: float
) -> DownloadResult:
    """Fetch the collection `dl.name` (located by `dl.locate()`) to `dl.dest`."""
    info = location.collection
    assert info is not None
    if location.contentid is None or dl.expected is None:
        raise ProtocolError(f"tracker listed the collection {dl.name!r} without its chunk hashes")
    final, exists = tree_destination(dl.dest, dl.name)
    if exists:
        held = await existing_tree(dl, final, filesize, chunk_size)
        dl.library[dl.name] = held
        return DownloadResult(
            dl.name,
            final,
            filesize,
            chunk_count,
            time.monotonic() - started,
            content_id=location.contentid,
            already=True,
            files=held.header.files if held.header is not None else None,
        )
    part = CollectionPart.open_collection(final, dl.name, filesize, chunk_size, location.contentid, info.manifestsize)
    store = part.shared
    logged = part.candidates
    ok = False
    keep = True
    try:
        manifest_chunks = store.manifest_chunks
        part.candidates = {c: d for c, d in logged.items() if c < manifest_chunks}
        resumed = await dl.fetch(part, location, True, skip=range(manifest_chunks, chunk_count))
        try:
            header = await asyncio.to_thread(part.build_tree)
        except ManifestError as exc:
            keep = False  # (a manifest that breaks the rules: nothing of it is kept)
            raise ProtocolError(f"refused the manifest of {dl.name!r}: {exc}") from None
        part.candidates = {c: d for c, d in logged.items() if c >= manifest_chunks}
        if len(store.have) < chunk_count or part.candidates:
            # fresh holders for the second round (the first one's connections are closed)
            fresh = await dl.tracker.locations(dl.name, watch=True, known_content_id=location.contentid)
            if fresh.contentid != location.contentid:
                raise ProtocolError(f"{dl.name!r} was published again with other content during the download")
            resumed += await dl.fetch(part, fresh, True)
        await asyncio.to_thread(part.finish)
        ok = True
    finally:
        if not ok:
            dl.library.pop(dl.name, None)
            if keep and (store.have or part.candidates or logged):
                part.keep_for_resume()
            else:
                part.discard()
    return DownloadResult(
        dl.name,
        final,
        filesize,
        chunk_count,
        time.monotonic() - started,
        dl.sources,
        location.contentid,
        len(resumed),
        files=header.files,
    )
