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

from p2pfs.collection.manifest import ManifestError
from p2pfs.collection.part import CollectionPart
from p2pfs.errors import ProtocolError
from p2pfs.peer.storage import StorageError
from p2pfs.peer.transfer import Download, DownloadResult
from p2pfs.protocol import messages as m


def tree_destination(dest: Path, name: str) -> Path:
    """Where a collection goes: DEST itself if it does not exist (it becomes the tree's root), DEST/NAME
    if DEST is a directory. The final name must not exist yet (and its directory must)."""
    final = dest / name if dest.is_dir() else dest
    if not final.parent.is_dir():
        why = "does not exist" if not final.parent.exists() else "is not a directory"
        raise StorageError(f"cannot download to {dest}: directory {final.parent} {why}")
    if final.exists() or final.is_symlink():
        raise StorageError(f"cannot download {name!r} to {final}: it exists (a collection is fetched to a new name)")
    return final


async def download_collection(
    dl: Download, location: m.ReplyFileLocation, filesize: int, chunk_count: int, chunk_size: int, started: float
) -> DownloadResult:
    """Fetch the collection `dl.name` (located by `dl.locate()`) to `dl.dest`."""
    info = location.collection
    assert info is not None
    if location.contentid is None or dl.expected is None:
        raise ProtocolError(f"tracker listed the collection {dl.name!r} without its chunk hashes")
    final = tree_destination(dl.dest, dl.name)
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
