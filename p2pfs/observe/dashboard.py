"""What the tracker's dashboard shows, as plain data: the files (size, chunks, content id, holders,
completeness, throughput), the peers (files, chunks held, rates from PEER_STATS) and, for one file, its
chunk availability map (binned) and its throughput over the last minutes. A snapshot is taken once per
TICK for every viewer at once (the JSON API and the Server-Sent Events stream read the same one)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from p2pfs.address import Address
from p2pfs.protocol.limits import DEFAULT_CHUNK_SIZE

if TYPE_CHECKING:
    from p2pfs.tracker.registry import FileRecord
    from p2pfs.tracker.server import TrackerServer

#: Seconds between snapshots: the dashboard's update rate (and the throughput series' resolution).
TICK = 1.0
#: Snapshots kept for the throughput series: five minutes.
HISTORY = 300
#: Most rows of files, peers and holders a snapshot lists (the totals are always given): a page of
#: 65,536 files would help nobody and cost every viewer megabytes a second.
MAX_ROWS = 500
#: Most bins of an availability map: a file of 2^20 chunks is drawn as 2,048 bins of 512 chunks, each
#: showing the mean holders of its chunks (a canvas re-bins further when it has fewer pixels).
MAX_BINS = 2048

JSON = dict[str, Any]


def availability_bins(availability: list[int], max_bins: int = MAX_BINS) -> tuple[list[float], int]:
    """(mean holders of the chunks of each bin, chunks per bin): the map of a file's availability. The
    mean, not the minimum: a swarm that filled every other chunk shows half-filled bins, not empty ones
    (the rarest chunk of the file is given apart)."""
    per_bin = max(1, -(-len(availability) // max_bins))
    if per_bin == 1:
        return list(map(float, availability)), 1
    n = len(availability)
    return [
        round(sum(availability[i : i + per_bin]) / min(per_bin, n - i), 2) for i in range(0, n, per_bin)
    ], per_bin


class Dashboard:
    """Snapshots of one tracker server, refreshed every TICK by `run()`."""

    def __init__(self, server: TrackerServer) -> None:
        self.server = server
        #: wall-clock time of each snapshot in the throughput series, oldest first
        self.times: deque[float] = deque(maxlen=HISTORY)
        #: bytes/s of each file at each of `times` (newest last; a file seen later has a shorter series)
        self.throughput: dict[str, deque[float]] = {}
        #: the swarm's download rate (sum of the peers' reported rates) at each of `times`
        self.swarm_rate: deque[float] = deque(maxlen=HISTORY)
        self._last_tick: float | None = None
        self.files: list[JSON] = []
        self.peers: list[JSON] = []
        self.totals: JSON = {}
        self._details: dict[str, JSON | None] = {}
        self._ticked = asyncio.Event()

    async def run(self) -> None:
        """Take a snapshot every TICK until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(TICK)  # (the dashboard's clock, not a wait for something to happen)

    async def next_snapshot(self) -> None:
        """Return once the next snapshot is taken."""
        await self._ticked.wait()

    def tick(self, now: float | None = None) -> None:
        """Take a snapshot now."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._last_tick if self._last_tick is not None else None
        self._last_tick = now
        registry, rates = self.server.registry, self.server.peer_rates
        peer_files: Counter[Address] = Counter()
        peer_chunks: Counter[Address] = Counter()
        registered = self.server.stats.take_registered(registry.files)
        files: list[JSON] = []
        for name in sorted(registry.files):
            record = registry.files[name]
            held = 0
            seeders = 0
            for holder, chunks in record.holders.items():
                count = len(chunks)
                held += count
                seeders += count == record.chunk_count
                peer_files[holder] += 1
                peer_chunks[holder] += count
            # what the swarm fetched: chunks newly registered by downloaders (a complete copy joining
            # by publish moved no bytes and is not counted)
            rate = 0.0
            if elapsed is not None and elapsed > 0:
                rate = registered.get(name, 0) * (record.chunk_size or DEFAULT_CHUNK_SIZE) / elapsed
            if len(files) < MAX_ROWS:
                files.append(_file_row(record, len(record.holders), seeders, held, rate))
            self._record_throughput(name, rate)
        for name in list(self.throughput):
            if name not in registry.files:
                del self.throughput[name]
        self.times.append(time.time())
        peers: list[JSON] = []
        up = down = 0.0
        for address in sorted(registry.peers):
            report = rates.get(address, now)
            if report is not None:
                up += report.upload_rate or 0.0
                down += report.download_rate or 0.0
            if len(peers) < MAX_ROWS:
                peers.append(
                    {
                        "address": str(address),
                        "files": peer_files[address],
                        "chunks": peer_chunks[address],
                        "upload_rate": _rounded(report.upload_rate if report else None),
                        "download_rate": _rounded(report.download_rate if report else None),
                        "uploaded": report.uploaded if report else None,
                        "downloaded": report.downloaded if report else None,
                    }
                )
        self.swarm_rate.append(down)
        self.files, self.peers = files, peers
        self.totals = {
            "files": len(registry.files),
            "peers": len(registry.peers),
            "reporting": len(rates),
            "upload_rate": round(up),
            "download_rate": round(down),
        }
        self._details = {}
        ticked, self._ticked = self._ticked, asyncio.Event()
        ticked.set()

    def _record_throughput(self, name: str, rate: float) -> None:
        series = self.throughput.get(name)
        if series is None:
            if not rate:
                return  # (an idle file has no series: most files of a big tracker are idle)
            series = self.throughput[name] = deque(maxlen=HISTORY)
        series.append(rate)
        if not any(series) and len(series) == HISTORY:
            del self.throughput[name]  # idle for the whole window

    def snapshot(self) -> JSON:
        """The files, the peers and the totals of the last snapshot."""
        return {
            "time": self.times[-1] if self.times else time.time(),
            "totals": self.totals,
            "files": self.files,
            "peers": self.peers,
        }

    def detail(self, name: str) -> JSON | None:
        """One file: its row, its holders, its availability map and its throughput series; None if the
        name is not listed. Computed once per snapshot and name."""
        if name in self._details:
            return self._details[name]
        record = self.server.registry.files.get(name)
        detail = None if record is None else self._detail(record)
        self._details[name] = detail
        return detail

    def _detail(self, record: FileRecord) -> JSON:
        holders: list[JSON] = []
        held = seeders = 0
        for address in sorted(record.holders):
            count = len(record.holders[address])
            held += count
            seeders += count == record.chunk_count
            if len(holders) < MAX_ROWS:
                holders.append(
                    {"address": str(address), "chunks": count, "complete": count == record.chunk_count}
                )
        rate_series = list(self.throughput.get(record.name, ()))
        times = list(self.times)[-len(rate_series) :] if rate_series else []
        bins, per_bin = availability_bins(record.availability)
        row = _file_row(record, len(record.holders), seeders, held, rate_series[-1] if rate_series else 0.0)
        return {
            **row,
            "holder_list": holders,
            "publishers": sorted(str(a) for a in record.publishers)[:MAX_ROWS],
            "availability": {
                "bins": bins,
                "chunks_per_bin": per_bin,
                "max": max(record.availability, default=0),
                "rarest": min(record.availability, default=0),
            },
            "throughput": {"times": times, "rates": [round(r) for r in rate_series]},
        }


def _file_row(record: FileRecord, holders: int, seeders: int, held: int, rate: float) -> JSON:
    chunks = record.chunk_count
    return {
        "name": record.name,
        "size": record.filesize,
        "chunks": chunks,
        "chunk_size": record.chunk_size or DEFAULT_CHUNK_SIZE,
        "content_id": record.content_id,
        "collection_files": record.collection.files if record.collection is not None else None,
        "holders": holders,
        "seeders": seeders,
        # how far the swarm is: chunks held over chunks its holders would hold if all were complete
        "completeness": held / (holders * chunks) if holders and chunks else 1.0,
        "rate": round(rate),
    }


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)
