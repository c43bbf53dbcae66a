"""Walking a local directory tree into a manifest (the publisher's side).

The walk is depth first, each directory's entries sorted by the UTF-8 bytes of their names (the
manifest's canonical order), one directory's listing in memory at a time. What cannot be shared is
skipped with a warning: special files (devices, FIFOs, sockets), names that are not UTF-8 or hold
control characters, and symbolic links that point outside the tree (absolute, or climbing above it).
A symbolic link inside the tree is published as a link, never followed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from p2pfs.collection import manifest
from p2pfs.collection.manifest import Entry, ManifestError
from p2pfs.collection.store import CollectionStore, MemberIndex, padded
from p2pfs.peer import storage
from p2pfs.peer.storage import StorageError
from p2pfs.protocol.limits import MAX_CHUNKS

Warn = Callable[[str], None]


def walk(root: Path, warn: Warn) -> Iterator[Entry]:
    """The entries of the tree under `root`, in canonical order (`root` itself is not an entry)."""
    yield from _walk(root, "", warn)


def _walk(directory: Path, prefix: str, warn: Warn) -> Iterator[Entry]:
    try:
        with os.scandir(directory) as it:
            found = list(it)
    except OSError as exc:
        warn(f"skipped {directory}: {exc.strerror}")
        return
    named: list[tuple[bytes, str, os.DirEntry[str]]] = []
    for item in found:
        try:
            key = item.name.encode("utf-8")
        except UnicodeEncodeError:
            warn(f"skipped {os.path.join(directory, item.name)!r}: its name is not UTF-8")
            continue
        named.append((key, item.name, item))
    named.sort(key=lambda t: t[0])
    for _, name, item in named:
        path = f"{prefix}{name}"
        try:
            manifest.check_path(path)
        except ManifestError as exc:
            warn(f"skipped {os.path.join(directory, name)!r}: {exc}")
            continue
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as exc:
            warn(f"skipped {item.path}: {exc.strerror}")
            continue
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(item.path)
            except OSError as exc:
                warn(f"skipped link {item.path}: {exc.strerror}")
                continue
            if not manifest.link_target_inside(path, target):
                warn(f"skipped link {item.path} -> {target}: it points outside the tree")
                continue
            yield Entry(path, "link", target=target)
        elif stat.S_ISDIR(st.st_mode):
            yield Entry(path, "dir")
            yield from _walk(Path(item.path), f"{path}/", warn)
        elif stat.S_ISREG(st.st_mode):
            yield Entry(path, "file", size=st.st_size, x=bool(st.st_mode & stat.S_IXUSR))
        else:
            warn(f"skipped {item.path}: not a regular file, directory or link")


#: Bytes kept for the header line, written last (when the counts are known) over spaces: JSON allows
#: the trailing blanks. A name of 255 bytes, escaped, and five counts fit.
HEADER_BYTES = 2048
#: Manifest bytes gathered before each write.
WRITE_BLOCK = 1 << 20


def build_manifest(root: Path, name: str, out_fd: int, warn: Warn) -> tuple[manifest.Header, MemberIndex, int]:
    """Walk `root` and write its manifest to `out_fd` (an empty file) as it goes; returns the header,
    the member index and the manifest's size in bytes. Memory: one directory listing and one block."""
    os.pwrite(out_fd, b" " * (HEADER_BYTES - 1) + b"\n", 0)
    offset = HEADER_BYTES
    index = MemberIndex()
    counts = {"file": 0, "dir": 0, "link": 0}
    block = bytearray()
    block_at = offset
    for entry in walk(root, warn):
        line = manifest.encode_entry(entry)
        index.add(offset, entry.size if entry.is_file else 0)
        counts[entry.type] += 1
        block += line
        offset += len(line)
        if len(block) >= WRITE_BLOCK:
            _write_all(out_fd, block, block_at)
            block_at += len(block)
            block.clear()
    _write_all(out_fd, block, block_at)
    header = manifest.Header(manifest.VERSION, name, counts["file"], counts["dir"], counts["link"], index.size)
    head = manifest.encode_header(header)
    if len(head) > HEADER_BYTES:
        raise ManifestError(f"the manifest header of {name!r} is too long")
    os.pwrite(out_fd, head[:-1].ljust(HEADER_BYTES - 1) + b"\n", 0)
    return header, index, offset


def _write_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def open_to_publish(root: Path, name: str, chunk_size: int, warn: Warn) -> CollectionStore:
    """Walk `root` into a manifest (an unnamed temporary file) and open the tree to serve it (not hashed
    yet). Blocking: run it in a thread. StorageError (one line) if it cannot be published."""
    storage.check_chunk_size(chunk_size)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StorageError(f"directory not found: {root}") from None
    except OSError as exc:
        raise StorageError(f"cannot open {root}: {exc.strerror}") from None
    manifest_fd = -1
    try:
        manifest_fd = anonymous_file()
        header, index, manifest_size = build_manifest(root, name, manifest_fd, warn)
        filesize = padded(manifest_size, chunk_size) + index.size
        if storage.chunk_count_for(filesize, chunk_size) > MAX_CHUNKS:
            raise StorageError(storage.too_large(root, filesize, chunk_size))
        store = CollectionStore(name, root, filesize, chunk_size, manifest_fd, manifest_size, writable=False)
    except BaseException:
        os.close(root_fd)
        if manifest_fd >= 0:
            os.close(manifest_fd)
        raise
    store.origin = True
    store.header = header
    store.attach_tree(root_fd, index)
    return store


def anonymous_file() -> int:
    """A read-write file with no name (gone when closed), in the temporary directory."""
    try:
        return os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(prefix="p2pfs-manifest-")
        os.unlink(path)
        return fd
