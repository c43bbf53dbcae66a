"""The Prometheus view of a tracker or a peer: custom collectors that read the plain counters of
p2pfs.observe.stats (and the registry's sizes) at scrape time, in a CollectorRegistry of their own per
tracker or peer, so several servers in one process never share a metric."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from p2pfs.observe.stats import MESSAGE_CLASSES, Histogram, ServerStats

if TYPE_CHECKING:
    from p2pfs.peer.node import Peer
    from p2pfs.tracker.server import TrackerServer

#: The `type` label of frames that could not be read as a message (answered with ERROR).
INVALID = "invalid"
#: Every message type a server can receive, by class: each gets a series, 0 until one arrives.
MESSAGE_TYPES: dict[type, str] = {cls: str(cls.__struct_config__.tag) for cls in MESSAGE_CLASSES}


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.cumulative(), sum_value=histogram.sum)


def _messages(name: str, documentation: str, stats: ServerStats) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["type"])
    seen = stats.messages
    for cls, tag in MESSAGE_TYPES.items():
        family.add_metric([tag], seen.get(cls, 0))
    family.add_metric([INVALID], stats.invalid)
    return family


class TrackerCollector(Collector):
    """p2pfs_tracker_*: peers, files, messages by type, request latency, refusals, store errors."""

    def __init__(self, server: TrackerServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server, registry, stats = self.server, self.server.registry, self.server.stats
        yield GaugeMetricFamily("p2pfs_tracker_peers", "Registered peers.", len(registry.peers))
        yield GaugeMetricFamily(
            "p2pfs_tracker_files", "Listed names (files and collections).", len(registry.files)
        )
        yield GaugeMetricFamily(
            "p2pfs_tracker_listed_chunks", "Chunks of all listed files together.", registry.listed_chunks
        )
        yield GaugeMetricFamily(
            "p2pfs_tracker_connections",
            "Connections being served (registered or not).",
            server.connection_count,
        )
        yield _messages("p2pfs_tracker_messages_total", "Messages received, by type.", stats)
        yield _histogram(
            "p2pfs_tracker_request_duration_seconds",
            "Time from a frame read to its reply queued (decode and handling).",
            stats.request_duration,
        )
        yield CounterMetricFamily(
            "p2pfs_tracker_connections_refused_total",
            "Connections refused by the connection limits (in all and per host).",
            stats.refused,
        )
        yield CounterMetricFamily(
            "p2pfs_tracker_store_errors_total",
            "Failed operations of the tracker's store (0 for the in-memory store).",
            stats.store_errors,
        )


class PeerCollector(Collector):
    """p2pfs_peer_*: bytes sent and received, chunks verified, hash failures, holders dropped, transfers
    running, chunk fetch latency."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def collect(self) -> Iterator[Metric]:
        peer, transfers = self.peer, self.peer.transfers
        for name, documentation, value in (
            ("uploaded_bytes", "Chunk bytes sent to other peers.", transfers.uploaded_bytes),
            (
                "downloaded_bytes",
                "Chunk bytes received from holders (duplicates included).",
                transfers.downloaded_bytes,
            ),
            (
                "chunks_verified",
                "Chunks that matched their hash and were written.",
                transfers.chunks_verified,
            ),
            (
                "hash_failures",
                "Chunks received that failed their hash (their holder is dropped).",
                transfers.hash_failures,
            ),
            (
                "holders_dropped",
                "Holders dropped by a download (failed, misbehaved or left).",
                transfers.holders_dropped,
            ),
            (
                "busy_replies",
                "Chunk requests this peer answered PEER_BUSY (all its upload slots were taken).",
                transfers.busy_replies,
            ),
            (
                "busy_replies_received",
                "PEER_BUSY replies this peer's downloads got from holders (asked elsewhere, then again).",
                transfers.busy_replies_received,
            ),
        ):
            yield CounterMetricFamily(f"p2pfs_peer_{name}_total", documentation, value)
        yield GaugeMetricFamily("p2pfs_peer_active_downloads", "Downloads running.", peer.active_downloads)
        yield GaugeMetricFamily(
            "p2pfs_peer_active_uploads",
            "Downloader connections this peer serves.",
            peer.server.connection_count,
        )
        shared = sum(1 for f in peer.library.values() if f.complete)
        yield GaugeMetricFamily(
            "p2pfs_peer_shared_files", "Files and collections held whole and served.", shared
        )
        yield GaugeMetricFamily(
            "p2pfs_peer_tracker_connected",
            "1 while the tracker connection is up.",
            int(peer.tracker.connected),
        )
        yield _histogram(
            "p2pfs_peer_chunk_fetch_duration_seconds",
            "Time from a chunk request sent to its reply read (pipelined requests wait their turn).",
            transfers.chunk_fetch_duration,
        )


def tracker_registry(server: TrackerServer) -> CollectorRegistry:
    """The metrics of one tracker (and of its process)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TrackerCollector(server))
    ProcessCollector(registry=registry)
    return registry


def peer_registry(peer: Peer) -> CollectorRegistry:
    """The metrics of one peer (and of its process)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PeerCollector(peer))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
