"""The counters a tracker or a peer keeps as it works: plain attributes and lists, no locks and no
dependencies, so the hot paths pay an integer increment each. p2pfs.observe.metrics reads them when
/metrics is scraped (a Prometheus custom collector), so nothing is formatted until someone asks."""

from __future__ import annotations

import typing
from bisect import bisect_left
from collections.abc import Iterable

from p2pfs.protocol import messages as m

#: Upper bounds (seconds) of the tracker's request latency buckets: a request is ~20 µs unloaded and
#: seconds only under a flood (bench/tracker_load.py), so the buckets span 100 µs to 2.5 s.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Upper bounds (seconds) of the chunk fetch buckets: a 1 MiB chunk takes ~1 ms on a LAN and up to the
#: chunk timeout (30 s) from a slow holder.
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: Every message type a server can decode (the classes of messages.AnyMessage).
MESSAGE_CLASSES: tuple[type[m.Message], ...] = typing.get_args(m.AnyMessage)


class Histogram:
    """Observations counted per bucket (not cumulative; the last slot is above every bound)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations at or below it), ending with +Inf."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class ServerStats:
    """What a FrameServer counts: messages by type (keyed by message class; named at scrape time),
    frames it could not read, how long each took to handle, connections refused by the limits."""

    def __init__(self) -> None:
        # (a plain dict with every type present: an increment is the cheapest Python has)
        self.messages: dict[type, int] = dict.fromkeys(MESSAGE_CLASSES, 0)
        #: frames refused before or while decoding (answered with ERROR)
        self.invalid = 0
        self.refused = 0
        self.request_duration = Histogram(REQUEST_BUCKETS)


class TrackerStats(ServerStats):
    """A tracker's ServerStats; the chunks newly registered per file, for the files the dashboard asked
    about (its per-file throughput: only a reader adds names, so nothing grows without one); and the
    failures of its store (none yet: the store is in memory; a shared store such as Redis will count
    its failed operations here)."""

    def __init__(self) -> None:
        super().__init__()
        self.registered: dict[str, int] = {}
        self.store_errors = 0

    def count_registered(self, name: str, chunks: int) -> None:
        registered = self.registered
        if name in registered:
            registered[name] += chunks

    def take_registered(self, names: Iterable[str]) -> dict[str, int]:
        """The registrations counted since the last call; from now on, count those of `names`."""
        taken, self.registered = self.registered, dict.fromkeys(names, 0)
        return taken


class TransferStats:
    """What a peer counts of its transfers: chunk bytes sent and received (every chunk body read or
    written, duplicates included), chunks verified and written, chunks failing their hash, holders
    dropped, and how long each chunk took from request to reply."""

    def __init__(self) -> None:
        self.uploaded_bytes = 0
        self.downloaded_bytes = 0
        self.chunks_verified = 0
        self.hash_failures = 0
        self.holders_dropped = 0
        #: requests this peer's chunk server answered PEER_BUSY (every upload slot taken)
        self.busy_replies = 0
        #: PEER_BUSY replies its downloads were given by holders
        self.busy_replies_received = 0
        self.chunk_fetch_duration = Histogram(FETCH_BUCKETS)
