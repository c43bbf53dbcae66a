"""The file system itself (pyfuse3, on the asyncio loop the peer runs on): the tracker's list as the root
directory (files, and collections as directories with their members), reads answered by each file's
Fetcher. Read-only: the mount is `ro`, and an open for writing is refused with EROFS.

`ls` and `stat` answer from the last list the tracker gave: it is refreshed in the background and, for a
listing of the root, at most LIST_TIMEOUT is spent asking again, so a tracker that does not answer leaves
the last known list in place, never a hang.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast

import pyfuse3

from p2pfs.collection.member import Manifest
from p2pfs.errors import P2PFSError
from p2pfs.mount import policy
from p2pfs.mount.cache import ChunkCache
from p2pfs.mount.fetcher import Fetcher, ReadFailed
from p2pfs.peer.node import Peer
from p2pfs.protocol import messages as m

log = logging.getLogger("p2pfs.mount")

#: Seconds between background refreshes of the tracker's list.
LIST_INTERVAL = 2.0
#: Seconds a listing of the root waits for a fresh list before answering from the last one.
LIST_TIMEOUT = 1.0
#: A list younger than this is not asked for again by a listing or a lookup of an unknown name.
LIST_FRESH = 1.0
#: Seconds the kernel may keep names and attributes before asking again (the list changes rarely).
ATTR_TIMEOUT = 1.0

T = TypeVar("T")
P = ParamSpec("P")


def _errors_to_eio(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Whatever goes wrong in a handler is an errno for that call, never the end of the mount (pyfuse3
    stops its main loop on any exception that is not a FUSEError)."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ReadFailed as exc:
            log.warning("%s", exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except (P2PFSError, OSError) as exc:
            log.warning("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed (internal error)", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class Node:
    inode: int
    kind: Literal["dir", "file", "link"]
    #: the published name this node belongs to (a file, or the collection it is a member of)
    name: str
    content_id: str | None = None
    size: int = 0
    executable: bool = False
    #: where the node's bytes start in the published byte stream (a member's offset in its collection)
    offset: int = 0
    #: the byte stream's own size (the collection's, for a member)
    stream_size: int = 0
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)
    #: a collection's root: its members are read from the manifest on first use
    collection: m.Collection | None = None
    loaded: bool = False


@dataclass
class OpenFile:
    node: Node
    fetcher: Fetcher
    readahead: policy.ReadAhead


class MountFS(pyfuse3.Operations):
    """Inodes for the tracker's names (stable per name and content id while mounted), the members of
    collections, and the open files."""

    def __init__(self, peer: Peer, cache: ChunkCache, read_timeout: float) -> None:
        super().__init__()
        self.peer = peer
        self.cache = cache
        self.read_timeout = read_timeout
        self.uid, self.gid = os.getuid(), os.getgid()
        self.mounted_ns = time.time_ns()
        root = Node(pyfuse3.ROOT_INODE, "dir", "", loaded=True)
        self.nodes: dict[int, Node] = {root.inode: root}
        self._by_name: dict[tuple[str, str | None], int] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._open: dict[int, OpenFile] = {}
        #: how many of them read sequentially now (kept up to date by `read`, not counted per read)
        self._sequential = 0
        self._next_fh = 1
        self.fetchers: dict[tuple[str, str | None], Fetcher] = {}
        self._locks: dict[tuple[str, str | None], asyncio.Lock] = {}
        self._listed_at = -1e9
        self._listing: asyncio.Task[bool] | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def root(self) -> Node:
        return self.nodes[pyfuse3.ROOT_INODE]

    # -- the tracker's list ----------------------------------------------------------------------
    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(LIST_INTERVAL)  # (a period, not a synchronisation)
            await self.refresh(LIST_TIMEOUT * 2)

    async def refresh(self, timeout: float = LIST_TIMEOUT) -> bool:
        """Ask the tracker for its list (one request at a time), waiting at most `timeout`; False if the
        last known list stays."""
        if self._listing is None or self._listing.done():
            self._listing = asyncio.create_task(self._ask_list())
        try:
            return await asyncio.wait_for(asyncio.shield(self._listing), timeout)
        except TimeoutError:
            return False

    async def _ask_list(self) -> bool:
        try:
            reply = await self.peer.file_list()
        except P2PFSError as exc:
            log.info("tracker list not refreshed: %s", exc)
            return False
        self.apply_list(reply)
        return True

    def apply_list(self, reply: m.ReplyFileList) -> None:
        self._listed_at = time.monotonic()
        contentids = reply.contentids or {}
        collections = reply.collections or {}
        children: dict[bytes, int] = {}
        for name, (filesize, _) in reply.filelist.items():
            key = (name, contentids.get(name))
            inode = self._by_name.get(key)
            if inode is None:
                inode = self._new_inode()
                info = collections.get(name)
                kind: Literal["dir", "file"] = "dir" if info is not None else "file"
                self.nodes[inode] = Node(
                    inode, kind, name, key[1], filesize, stream_size=filesize, collection=info
                )
                self._by_name[key] = inode
            children[os.fsencode(name)] = inode
        self.root.children = children

    def _new_inode(self) -> int:
        inode = self._next_inode
        self._next_inode += 1
        return inode

    # -- collections -----------------------------------------------------------------------------
    async def _load_collection(self, node: Node) -> None:
        """A collection's members, from its manifest (fetched privately, verified like any chunk)."""
        if node.loaded:
            return
        key = (node.name, node.content_id)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if node.loaded:
                return
            dl = self.peer.new_download(node.name, Path(node.name), serve=False)
            from p2pfs.collection.member import fetch_manifest

            async with asyncio.timeout(self.read_timeout):
                manifest = await fetch_manifest(dl)
            try:
                self._add_members(node, manifest)
            finally:
                manifest.close()
            node.loaded = True

    def _add_members(self, root: Node, manifest: Manifest) -> None:
        if manifest.location.contentid != root.content_id:
            raise P2PFSError(f"{root.name!r} was published again with other content; remount to see it")
        store = manifest.store
        dirs: dict[str, Node] = {"": root}
        number = 0
        for entry in manifest.entries():
            parent_path, _, base = entry.path.rpartition("/")
            parent = dirs[parent_path]
            inode = self._new_inode()
            if entry.type == "dir":
                node = Node(inode, "dir", root.name, root.content_id, loaded=True)
                dirs[entry.path] = node
            elif entry.type == "link":
                node = Node(inode, "link", root.name, root.content_id, target=os.fsencode(entry.target or ""))
                node.size = len(node.target)
            else:
                offset = store.data_start
                if entry.size > 0:
                    offset += manifest.index.starts[number]
                    number += 1
                node = Node(
                    inode,
                    "file",
                    root.name,
                    root.content_id,
                    entry.size,
                    entry.x,
                    offset,
                    root.stream_size,
                )
            self.nodes[inode] = node
            parent.children[os.fsencode(base)] = inode

    # -- reads -----------------------------------------------------------------------------------
    async def fetcher(self, node: Node) -> Fetcher:
        key = (node.name, node.content_id)
        found = self.fetchers.get(key)
        if found is not None:
            return found
        async with self._locks.setdefault(key, asyncio.Lock()):
            found = self.fetchers.get(key)
            if found is not None:
                return found
            peer = self.peer
            dl = peer.new_download(node.name, Path(node.name))
            async with asyncio.timeout(self.read_timeout):
                location, filesize, _, chunk_size = await dl.locate()
            if location.contentid != node.content_id or filesize != node.stream_size:
                raise P2PFSError(f"{node.name!r} was published again with other content; remount to see it")
            cached = self.cache.file(node.name, location.contentid, filesize, chunk_size, dl.expected)
            peer.library[node.name] = cached  # (served from now on: what it holds, and more as it comes)
            if cached.have:
                peer.tracker.register_chunks(node.name, sorted(cached.have))
            found = self.fetchers[key] = Fetcher(dl, cached, location, self.read_timeout)
            return found

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for fetcher in self.fetchers.values():
            await fetcher.close()

    # -- the handlers ----------------------------------------------------------------------------
    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        if node.kind == "dir":
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
        elif node.kind == "link":
            attrs.st_mode = stat.S_IFLNK | 0o777
            attrs.st_nlink = 1
        else:
            attrs.st_mode = stat.S_IFREG | (0o555 if node.executable else 0o444)
            attrs.st_nlink = 1
        attrs.st_size = node.size if node.kind != "dir" else 0
        attrs.st_blksize = 1 << 17
        attrs.st_blocks = -(-attrs.st_size // 512)
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self.mounted_ns
        attrs.entry_timeout = attrs.attr_timeout = ATTR_TIMEOUT
        return attrs

    def _node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    @_errors_to_eio
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if parent.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._attrs(parent)
        if name == b"..":
            return self._attrs(self.root)  # (the kernel tracks parents itself; only NFS asks this)
        if not parent.loaded:
            await self._load_collection(parent)
        inode = parent.children.get(name)
        if inode is None and parent is self.root and time.monotonic() - self._listed_at > LIST_FRESH:
            await self.refresh()
            inode = parent.children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(self.nodes[inode])

    @_errors_to_eio
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @_errors_to_eio
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind != "link":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @_errors_to_eio
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node is self.root and time.monotonic() - self._listed_at > LIST_FRESH:
            await self.refresh()
        if not node.loaded:
            await self._load_collection(node)
        return inode

    @_errors_to_eio
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        entries = sorted(node.children.items())
        for i in range(start_id, len(entries)):
            name, inode = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attrs(self.nodes[inode]), i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    @_errors_to_eio
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind == "dir" else errno.ELOOP)
        fetcher = await self.fetcher(node) if node.size else None
        fh = self._next_fh
        self._next_fh += 1
        if fetcher is not None:
            cached = fetcher.cached
            self._open[fh] = OpenFile(node, fetcher, policy.ReadAhead(cached.chunk_size, cached.filesize))
        # The bytes of a content id never change: the kernel may keep what it read across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_errors_to_eio
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._open.get(fh)
        if handle is None:
            return b""  # (an empty file)
        node = handle.node
        if off >= node.size or size <= 0:
            return b""
        size = min(size, node.size - off)
        start = node.offset + off
        cached = handle.fetcher.cached
        # the read-ahead windows of every open stream (of any file) share one part of the cache budget
        was_sequential = handle.readahead.sequential
        streams = self._sequential + (0 if was_sequential else 1)  # (this one, and the sequential others)
        limit = policy.window_limit(self.cache.budget, streams, cached.chunk_size)
        ahead = handle.readahead.on_read(start, size, time.monotonic(), limit)
        self._sequential += handle.readahead.sequential - was_sequential
        log.debug("read of %d bytes at %d of %s (chunks ahead: %s)", size, start, node.name, ahead)
        if ahead:
            last = policy.covering(node.offset, node.size, cached.chunk_size, cached.filesize)
            ahead = range(ahead.start, min(ahead.stop, last.stop))
        # (pyfuse3 replies from any contiguous buffer (PyObject_GetBuffer), though typed bytes: a read
        # across chunks is a bytearray filled in place, saving a copy)
        return cast(bytes, await handle.fetcher.read(start, size, fh, ahead))

    async def release(self, fh: int) -> None:
        handle = self._open.pop(fh, None)
        if handle is not None:
            self._sequential -= handle.readahead.sequential
            handle.fetcher.forget_stream(fh)

    @_errors_to_eio
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 1 << 17
        total = sum(n.size for n in self.nodes.values() if n.kind == "file" and n.offset == 0)
        data.f_blocks = -(-total // data.f_frsize)
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.nodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data
