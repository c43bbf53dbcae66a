"""The peer object a user (shell or one-shot command) holds: its chunk server, its tracker connection,
the library of files it serves, and the downloads it runs."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pfs import ratelimit
from p2pfs.address import Address
from p2pfs.collection import tree as collection_tree
from p2pfs.collection.member import Manifest, fetch_manifest
from p2pfs.collection.store import CollectionStore
from p2pfs.errors import FileNotPublished, P2PFSError, ProtocolError, TrackerError, TrackerUnavailable
from p2pfs.observe.rates import REPORT_INTERVAL
from p2pfs.peer import hashing, storage
from p2pfs.peer.chunk_server import ChunkServer
from p2pfs.peer.control import ControlServer
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
        control: bool = True,
        max_upload_rate: int | None = None,
        max_download_rate: int | None = None,
    ) -> None:
        #: listen on a local control socket once started, for `p2pfs unpublish` (see p2pfs.peer.control)
        self.control = control
        self._control: ControlServer | None = None
        #: names a download() is running for (from its start until its final announce)
        self._downloading: set[str] = set()
        #: use the binary chunk path (False: only the seed's base64 JSON, as P2PFS_WIRE=json asks)
        self.raw = raw
        self.host = host
        self.port = port
        self.library: dict[str, ChunkFile] = {}
        # P2PFS_WIRE=json (raw False): the seed's behaviour only, so no super-seeding substitutes either
        self.security = security
        #: the caps on what this peer sends and fetches, bytes/s over all its transfers (None: none)
        self.upload_limit = ratelimit.limit(max_upload_rate)
        self.download_limit = ratelimit.limit(max_download_rate)
        self.server = ChunkServer(
            self.library,
            delay=serve_delay,
            raw=raw,
            super_seed=raw and os.environ.get("P2PFS_SUPER_SEED", "1") != "0",
            security=security,
            upload=self.upload_limit,
            upload_slots=upload_slots_from_env(),
        )
        self.tracker = TrackerClient(on_status=on_tracker_status, on_reconnected=self.announce, security=security)
        self.address: Address | None = None
        #: chunk bytes sent and received, chunks verified...: the chunk server's, shared by the downloads
        self.transfers = self.server.transfers
        self._reporter: asyncio.Task[None] | None = None

    async def start(self) -> Address:
        """Start serving chunks; returns the address actually bound."""
        self.address = await self.server.start(self.host, self.port)
        if self.control and self._control is None:
            self._control = await ControlServer.start_for(self)
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report_stats())
        return self.address

    async def stop(self) -> None:
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.cancel()
        control, self._control = self._control, None
        if control is not None:
            await control.stop()
        await self.tracker.close()
        await self.server.stop()
        for shared in self.library.values():
            shared.close()
        self.library.clear()

    async def _report_stats(self) -> None:
        """Send the tracker this peer's transfer totals (PEER_STATS) every REPORT_INTERVAL while they
        change (the tracker reads a peer whose reports stopped as idle)."""
        sent = (0, 0)
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            totals = (self.transfers.uploaded_bytes, self.transfers.downloaded_bytes)
            if totals != sent:
                self.tracker.send_stats(*totals)
                sent = totals

    @property
    def active_downloads(self) -> int:
        return len(self._downloading)

    @property
    def self_address(self) -> Address | None:
        """How other peers reach us: as the tracker recorded us, else as we bound."""
        return self.tracker.registered_as or self.address

    async def connect(self, tracker: Address) -> None:
        """Register with `tracker`, then announce what this peer already holds: whole files are published
        again and chunks of unfinished downloads registered, so a new or restarted tracker knows them."""
        assert self.address is not None, "start() first"
        if tracker not in self.tracker.trackers:  # (a tracker named alone: no other to fail over to)
            self.tracker.trackers = [tracker]
        await self.tracker.connect(tracker, self.address)
        await self.announce()

    async def connect_first(self, trackers: Sequence[Address], register: bool = True) -> Address:
        """Connect to the first of `trackers` that answers (registering, and announcing what this peer
        holds, unless not `register`: then only to ask, as `p2pfs ls` does); the tracker used. The last
        one's TrackerUnavailable if none answers."""
        last: TrackerUnavailable | None = None
        self.tracker.trackers = list(trackers)  # (the ones a lost tracker fails over to)
        for tracker in trackers:
            try:
                if register:
                    await self.connect(tracker)
                else:
                    await self.tracker.connect(tracker, None)
                return tracker
            except TrackerUnavailable as exc:
                last = exc
                if len(trackers) > 1:
                    log.info("tracker %s unavailable: %s", tracker, exc)
        if last is None:
            raise TrackerUnavailable("no tracker given")
        raise last

    async def announce(self) -> None:
        """Publish every whole file again and register the chunks of unfinished downloads (batch form)."""
        for shared in list(self.library.values()):
            if self.library.get(shared.name) is not shared:
                continue  # (unpublished meanwhile)
            if shared.complete:
                try:
                    await self._publish_to_tracker(shared)
                except TrackerError as exc:
                    log.warning("could not publish %s again: %s", shared.name, exc)
            elif shared.have:
                self.tracker.register_chunks(shared.name, sorted(shared.have))

    async def _publish_to_tracker(self, shared: ChunkFile) -> None:
        await self.tracker.publish(
            shared.name,
            shared.filesize,
            shared.chunk_count,
            shared.chunk_size,
            shared.chunk_hashes(),
            shared.collection if isinstance(shared, CollectionStore) else None,
        )
        await self._watch_holders(shared)

    async def _watch_holders(self, shared: ChunkFile) -> None:
        """As the origin of `shared`, hear from the tracker which holders have its chunks, so the
        super-seeder can hold off a downloader whose chunks reach no other holder (SuperSeeder.seen, BEP
        16's rule). The rule starts with the first pushed update: a tracker that does not push (or does
        not watch one more file for this connection) leaves super-seeding as it was."""
        seeder = self.server.super_seeder
        # (P2PFS_HOLD_OFF=0: super-seeding without the hold-off, for benchmarks that compare both)
        if seeder is None or not shared.origin or os.environ.get("P2PFS_HOLD_OFF", "1") == "0":
            return
        name, chunk_count = shared.name, shared.chunk_count
        publishers: set[str] = set()

        def on_update(update: m.ReplyFileLocation) -> None:
            if self.library.get(name) is not shared:
                self.tracker.unwatch(name)  # (unpublished, or published again: that one watches)
                return
            if update.update:
                seeder.watch(name)
            publishers.update(update.publishers or ())
            me = str(self.self_address)
            for holder, runs in update.holder_runs().items():
                if holder != me and holder not in publishers:
                    chunks = (c for first, end in runs for c in range(max(0, first), min(end, chunk_count)))
                    seeder.seen(name, chunk_count, holder, chunks)

        digests = shared.chunk_hashes()
        known = hashes.content_id(digests) if digests else None  # (so the reply leaves the hashes out)
        self.tracker.watch(name, on_update)
        try:
            on_update(await self.tracker.locations(name, watch=True, known_content_id=known))
        except (TrackerError, TrackerUnavailable, FileNotPublished) as exc:  # (a seed-only tracker: no watch)
            self.tracker.unwatch(name)
            log.info("not watching the holders of %s: %s", name, exc)

    async def publish(
        self,
        path: Path,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_progress: Callable[[int, int], None] | None = None,
        name: str | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> ChunkFile:
        """Publish a file, or a directory tree as one collection (see `publish_collection`), under `name`
        (default: its base name): hash its chunks (on hashing.THREADS threads; `on_progress(bytes_hashed,
        total)`), list it with the tracker, and serve it."""
        if not self.tracker.connected:
            raise TrackerUnavailable("not connected to a tracker (use connect <ip> <port>)")
        if path.is_dir():
            return await self.publish_collection(path, name, chunk_size, on_progress, on_warning)
        name = storage.check_name(name if name is not None else path.name)
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
        shared = await asyncio.to_thread(storage.open_to_publish, path, chunk_size, name)
        return await self._hash_and_list(shared, on_progress)

    async def publish_collection(
        self,
        root: Path,
        name: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_progress: Callable[[int, int], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> CollectionStore:
        """Publish the directory tree `root` as one collection, under `name` (default: its base name):
        walk it into a manifest, hash the collection's chunks, list it with the tracker, and serve it.
        What cannot be shared (special files, links out of the tree) is skipped with a warning."""
        if not self.tracker.connected:
            raise TrackerUnavailable("not connected to a tracker (use connect <ip> <port>)")
        name = storage.check_name(name if name is not None else Path(os.path.abspath(root)).name)
        if name in self.library:
            raise StorageError(f"another file named {name!r} is already shared by this peer")
        warn = on_warning or (lambda line: log.warning("%s", line))
        store = await asyncio.to_thread(collection_tree.open_to_publish, root, name, chunk_size, warn)
        await self._hash_and_list(store, on_progress)
        return store

    async def _hash_and_list(self, shared: ChunkFile, on_progress: Callable[[int, int], None] | None) -> ChunkFile:
        """Hash a file opened to publish, then serve it and list it with the tracker (closed on failure)."""
        try:
            digests = await hashing.hash_chunks(
                shared.fd, shared.filesize, shared.chunk_size, on_progress=on_progress, reader=shared.read_into
            )
            storage.set_published_digests(shared, digests)
        except BaseException:
            shared.close()
            raise
        if shared.name in self.library:  # (published meanwhile, by a concurrent publish of the same name)
            shared.close()
            raise StorageError(f"another file named {shared.name!r} is already shared by this peer")
        self.library[shared.name] = shared
        try:
            await self._publish_to_tracker(shared)
        except BaseException:
            self.library.pop(shared.name, None)
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

    def new_download(self, name: str, dest: Path, **options: Any) -> Download:
        """A Download of `name` through this peer: its tracker, library, wire, security, download cap
        and transfer counters (`options`: Download's others, e.g. `serve=False`, `on_progress`)."""
        return Download(
            self.tracker,
            self.library,
            name,
            dest,
            self_address=self.self_address,
            raw=self.raw,
            security=self.security,
            rate_limit=self.download_limit,
            transfers=self.transfers,
            **options,
        )

    async def manifest(self, name: str) -> Manifest:
        """Fetch and check the manifest of the collection `name` (not served; `close()` it after use)."""
        return await fetch_manifest(self.new_download(name, Path("."), serve=False))

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
        first = name not in self._downloading  # (a second download of the name is refused by Download)
        self._downloading.add(name)
        try:
            result = await self.new_download(name, dest, on_progress=on_progress, force=force).run()
            if result.content_id is not None and name in self.library:
                # Now a complete holder: publish (joining the listed file) so the tracker counts this copy
                # whole even if a chunk registration was lost, or if the file was delisted meanwhile.
                try:
                    await self._publish_to_tracker(self.library[name])
                except (TrackerError, TrackerUnavailable) as exc:
                    log.info("could not announce the finished %s: %s", name, exc)
        finally:
            if first:
                self._downloading.discard(name)
        return result

    async def unpublish(self, name: str) -> None:
        """Stop sharing `name` without stopping the peer: it leaves the library (the chunk server answers
        ERROR "file not shared here" for it from now on), its file is closed (and left untouched on disk),
        and the tracker is told (REQUEST_UNPUBLISH), which delists the file if no complete holder is left.

        P2PFSError, with nothing changed, if `name` is being downloaded or not shared here. TrackerError
        after the local stop if the tracker refused or does not support unpublish. Without a tracker
        connection (or if it is lost meanwhile) the local stop is all: the tracker forgets this peer's
        chunks with its connection, and a reconnection does not announce `name` again."""
        shared = self.library.get(name)
        if name in self._downloading or (shared is not None and not shared.complete):
            raise StorageError(
                f"{name!r} is being downloaded; wait for the download to finish (or stop it), then unpublish"
            )
        if shared is None:
            raise P2PFSError(f"this peer does not share {name!r}")
        del self.library[name]
        shared.close()
        seeder = self.server.super_seeder
        if seeder is not None:
            seeder.forget(name)  # (a file published again under this name is super-seeded afresh)
        if not self.tracker.connected:
            return
        try:
            await self.tracker.unpublish(name)
        except TrackerUnavailable as exc:
            log.info("unpublished %s without telling the tracker: %s", name, exc)
        except TrackerError as exc:
            raise TrackerError(f"stopped sharing {name!r} here, but {exc}") from None


def upload_slots_from_env() -> int | None:
    """P2PFS_UPLOAD_SLOTS: `auto` (or unset) sizes the upload slots from the measured uplink, 0 turns them
    off (every requester is sent to at once: benchmarks compare both), N fixes them at N."""
    text = os.environ.get("P2PFS_UPLOAD_SLOTS", "auto").strip().lower()
    if text in ("", "auto"):
        return None
    try:
        return max(0, int(text))
    except ValueError:
        log.warning("P2PFS_UPLOAD_SLOTS=%r is not a number or auto; sizing upload slots automatically", text)
        return None
