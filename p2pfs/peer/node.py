"""The peer object a user (shell or one-shot command) holds: its chunk server, its tracker connection,
the library of files it serves, and the downloads it runs."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from p2pfs.address import Address
from p2pfs.errors import FileNotPublished, P2PFSError, ProtocolError, TrackerError, TrackerUnavailable
from p2pfs.peer import hashing, storage
from p2pfs.peer.chunk_server import ChunkServer
from p2pfs.peer.storage import ChunkFile, StorageError
from p2pfs.peer.tracker_client import TrackerClient
from p2pfs.peer.transfer import Download, DownloadResult, Progress
from p2pfs.protocol import hashes
from p2pfs.protocol import messages as m
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE
from p2pfs.security import OPEN, Security

log = logging.getLogger("p2pfs.peer")


class Peer:
    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        serve_delay: float = 0.0,
        on_tracker_status: Callable[[str], None] | None = None,
        raw: bool = True,
        security: Security = OPEN,
    ) -> None:
        #: use the binary chunk path (False: only the seed's base64 JSON, as P2PFS_WIRE=json asks)
        self.raw = raw
        self.host = host
        self.port = port
        self.library: dict[str, ChunkFile] = {}
        # P2PFS_WIRE=json (raw False): the seed's behaviour only, so no super-seeding substitutes either
        self.security = security
        self.server = ChunkServer(self.library, delay=serve_delay, raw=raw, super_seed=raw, security=security)
        self.tracker = TrackerClient(on_status=on_tracker_status, on_reconnected=self.announce, security=security)
        self.address: Address | None = None

    async def start(self) -> Address:
        """Start serving chunks; returns the address actually bound."""
        self.address = await self.server.start(self.host, self.port)
        return self.address

    async def stop(self) -> None:
        await self.tracker.close()
        await self.server.stop()
        for shared in self.library.values():
            shared.close()
        self.library.clear()

    @property
    def self_address(self) -> Address | None:
        """How other peers reach us: as the tracker recorded us, else as we bound."""
        return self.tracker.registered_as or self.address

    async def connect(self, tracker: Address) -> None:
        """Register with `tracker`, then announce what this peer already holds: whole files are published
        again and chunks of unfinished downloads registered, so a new or restarted tracker knows them."""
        assert self.address is not None, "start() first"
        await self.tracker.connect(tracker, self.address)
        await self.announce()

    async def announce(self) -> None:
        """Publish every whole file again and register the chunks of unfinished downloads (batch form)."""
        for shared in list(self.library.values()):
            if shared.complete:
                try:
                    await self._publish_to_tracker(shared)
                except TrackerError as exc:
                    log.warning("could not publish %s again: %s", shared.name, exc)
            elif shared.have:
                self.tracker.register_chunks(shared.name, sorted(shared.have))

    async def _publish_to_tracker(self, shared: ChunkFile) -> None:
        await self.tracker.publish(
            shared.name, shared.filesize, shared.chunk_count, shared.chunk_size, shared.chunk_hashes()
        )

    async def publish(
        self,
        path: Path,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ChunkFile:
        """Hash the file's chunks (on hashing.THREADS threads; `on_progress(bytes_hashed, filesize)`), list
        it with the tracker, and serve it."""
        if not self.tracker.connected:
            raise TrackerUnavailable("not connected to a tracker (use connect <ip> <port>)")
        name = storage.check_name(path.name)
        known = self.library.get(name)
        if known is not None:
            if not known.complete or os.path.realpath(known.path) != os.path.realpath(path):
                raise StorageError(f"another file named {name!r} is already shared by this peer")
            # The same file again: announce it to the tracker unless it already lists us as its holder.
            try:
                await self._publish_to_tracker(known)
            except TrackerError:
                location = await self.tracker.locations(name)
                if len(location.holder_chunks().get(str(self.self_address), ())) != known.chunk_count:
                    raise
            return known
        shared = await asyncio.to_thread(storage.open_to_publish, path, chunk_size)
        try:
            digests = await hashing.hash_chunks(shared.fd, shared.filesize, chunk_size, on_progress=on_progress)
            storage.set_published_digests(shared, digests)
        except BaseException:
            shared.close()
            raise
        if name in self.library:  # (published meanwhile, by a concurrent publish of the same name)
            shared.close()
            raise StorageError(f"another file named {name!r} is already shared by this peer")
        self.library[name] = shared
        try:
            await self._publish_to_tracker(shared)
        except BaseException:
            self.library.pop(name, None)
            shared.close()
            raise
        return shared

    async def verify(
        self, name: str, path: Path, on_progress: Callable[[int, int], None] | None = None
    ) -> hashing.Comparison:
        """Hash the local file `path` against the published chunk hashes of `name`."""
        location = await self.tracker.locations(name)
        if not location.chunkhashes or location.contentid is None:
            raise P2PFSError(f"{name!r} was published without chunk hashes: there is nothing to verify against")
        if hashes.content_id(location.chunkhashes) != location.contentid:
            raise ProtocolError(f"tracker gave chunk hashes that do not match the content id of {name!r}")
        expected = hashes.split(location.chunkhashes)
        chunk_size = location.chunksize or DEFAULT_CHUNK_SIZE
        filesize = location.fileinfo[0] if location.fileinfo else (await self._listed_size(name))
        if storage.chunk_count_for(filesize, chunk_size) != len(expected):
            raise ProtocolError(f"tracker gave inconsistent fileinfo for {name!r}")
        fd = await asyncio.to_thread(storage.open_local_copy, path)
        try:
            local_size = os.fstat(fd).st_size
            return await hashing.compare(
                fd, local_size, name, str(path), filesize, chunk_size, expected, location.contentid, on_progress
            )
        finally:
            os.close(fd)

    async def _listed_size(self, name: str) -> int:
        info = (await self.tracker.file_list()).filelist.get(name)
        if info is None:
            raise FileNotPublished(f"{name!r} is not listed by the tracker")
        return info[0]

    async def file_list(self) -> m.ReplyFileList:
        return await self.tracker.file_list()

    async def download(
        self,
        name: str,
        dest: Path,
        on_progress: Callable[[Progress], None] | None = None,
        force: bool = False,
    ) -> DownloadResult:
        """Download `name` to `dest` (see p2pfs.peer.destination for where it goes). A DEST that already
        holds the published bytes is kept and served (`already`); one with other bytes is refused
        unless `force`."""
        result = await Download(
            self.tracker,
            self.library,
            name,
            dest,
            self_address=self.self_address,
            on_progress=on_progress,
            raw=self.raw,
            security=self.security,
            force=force,
        ).run()
        if result.content_id is not None:
            # Now a complete holder: publish (joining the listed file) so the tracker counts this copy
            # whole even if a chunk registration was lost, or if the file was delisted meanwhile.
            try:
                await self._publish_to_tracker(self.library[name])
            except (TrackerError, TrackerUnavailable) as exc:
                log.info("could not announce the finished %s: %s", name, exc)
        return result
