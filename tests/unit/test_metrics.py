"""The observability parts that need no network: counters, rates, availability bins, the collectors'
Prometheus output (parsed back with prometheus_client's own parser), dashboard snapshots, PEER_STATS."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from p2pfs.address import Address
from p2pfs.errors import ProtocolError
from p2pfs.observe import metrics
from p2pfs.observe.dashboard import MAX_BINS, Dashboard, availability_bins
from p2pfs.observe.rates import STALE_AFTER, PeerRates
from p2pfs.observe.stats import Histogram
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.tracker.server import TrackerServer

A, B, C = Address("10.0.0.1", 7001), Address("10.0.0.2", 7002), Address("10.0.0.3", 7003)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() -> None:
    h = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(seconds)
    assert h.counts == [2, 2, 1]  # (a bound is inclusive: Prometheus' `le`)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(8.65)


def test_rates_come_from_successive_totals_and_read_zero_once_reports_stop() -> None:
    rates = PeerRates()
    rates.report(A, 0, 0, now=100.0)
    first = rates.get(A, now=100.0)
    assert first is not None and first.upload_rate is None  # (one report says no rate yet)
    rates.report(A, 3_000_000, 1_000_000, now=102.0)
    report = rates.get(A, now=102.5)
    assert report is not None
    assert (report.upload_rate, report.download_rate) == (1_500_000, 500_000)
    stale = rates.get(A, now=102.0 + STALE_AFTER + 0.1)
    assert stale is not None and (stale.upload_rate, stale.download_rate) == (0.0, 0.0)
    assert stale.uploaded == 3_000_000
    rates.report(A, 10, 10, now=103.0)  # totals went down: the peer restarted
    restarted = rates.get(A, now=103.0)
    assert restarted is not None and restarted.upload_rate is None
    assert rates.get(B) is None
    rates.forget(A)
    assert rates.get(A) is None and len(rates) == 0


def test_availability_bins_hold_the_mean_holders_of_their_chunks() -> None:
    assert availability_bins([3, 1, 2], max_bins=8) == ([3, 1, 2], 1)
    assert availability_bins([3, 1, 2, 2, 5], max_bins=2) == ([2.0, 3.5], 3)  # (the last bin is short)
    bins, per_bin = availability_bins([1] * 1_000_000)
    assert len(bins) <= MAX_BINS and per_bin * len(bins) >= 1_000_000


def tracker_with_swarm() -> TrackerServer:
    """A tracker's bookkeeping (no sockets) with a publisher A of f.bin (8 chunks), B holding 3 of them
    and C registered but holding nothing."""
    server = TrackerServer()
    registry = server.registry
    for peer in (A, B, C):
        registry.add_peer(peer)
    registry.publish(A, "f.bin", 8 * 1024, 8, 1024, b"\x01" * 32 * 8)
    registry.register_chunks(B, "f.bin", [0, 1, 2])
    return server


def test_tracker_metrics_name_the_registry_and_the_server_counters() -> None:
    server = tracker_with_swarm()
    stats = server.stats
    stats.messages[m.RequestChunkRegister] += 5
    stats.messages[m.RequestFileList] += 2
    stats.invalid += 1
    stats.refused += 3
    stats.request_duration.observe(0.0002)
    stats.request_duration.observe(0.3)
    values = samples(metrics.exposition(metrics.tracker_registry(server)).decode())
    assert values[("p2pfs_tracker_peers", ())] == 3
    assert values[("p2pfs_tracker_files", ())] == 1
    assert values[("p2pfs_tracker_messages_total", (("type", "REQUEST_CHUNK_REGISTER"),))] == 5
    assert values[("p2pfs_tracker_messages_total", (("type", "REQUEST_FILE_LIST"),))] == 2
    assert values[("p2pfs_tracker_messages_total", (("type", "PEER_STATS"),))] == 0  # every type has a series
    assert values[("p2pfs_tracker_messages_total", (("type", "invalid"),))] == 1
    assert values[("p2pfs_tracker_connections_refused_total", ())] == 3
    assert values[("p2pfs_tracker_store_errors_total", ())] == 0
    assert values[("p2pfs_tracker_request_duration_seconds_count", ())] == 2
    assert values[("p2pfs_tracker_request_duration_seconds_bucket", (("le", "0.00025"),))] == 1
    assert values[("p2pfs_tracker_request_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert values[("p2pfs_tracker_request_duration_seconds_sum", ())] == pytest.approx(0.3002)
    # no label names a peer or a chunk: the series are as many whatever the swarm
    assert {label for _, labels in values for label, _ in labels} <= {"type", "le"}


def test_two_trackers_in_one_process_keep_their_own_metrics() -> None:
    first, second = tracker_with_swarm(), TrackerServer()
    first_registry, second_registry = metrics.tracker_registry(first), metrics.tracker_registry(second)
    assert samples(metrics.exposition(first_registry).decode())[("p2pfs_tracker_peers", ())] == 3
    assert samples(metrics.exposition(second_registry).decode())[("p2pfs_tracker_peers", ())] == 0


def test_a_dashboard_snapshot_shows_files_peers_rates_and_throughput() -> None:
    server = tracker_with_swarm()
    server.peer_rates.report(B, 0, 0, now=10.0)
    server.peer_rates.report(B, 0, 2048, now=11.0)
    board = Dashboard(server)
    board.tick(now=10.0)
    server.registry.register_chunks(B, "f.bin", [3, 4])  # two more chunks of 1024 bytes in 0.5 s
    server.stats.count_registered("f.bin", 2)  # (as the server counts a REQUEST_CHUNK_REGISTER)
    server.stats.count_registered("other.bin", 9)  # (a name the dashboard did not ask about: not kept)
    assert "other.bin" not in server.stats.registered
    board.tick(now=10.5)
    (row,) = board.files
    assert row["name"] == "f.bin" and row["chunks"] == 8 and row["holders"] == 2 and row["seeders"] == 1
    assert row["completeness"] == pytest.approx((8 + 5) / 16)
    assert row["rate"] == 4096
    peers = {p["address"]: p for p in board.peers}
    assert peers[str(B)]["chunks"] == 5 and peers[str(B)]["download_rate"] == 2048
    assert peers[str(C)]["files"] == 0 and peers[str(C)]["download_rate"] is None  # (never reported)
    assert board.totals == {"files": 1, "peers": 3, "reporting": 1, "upload_rate": 0, "download_rate": 2048}
    detail = board.detail("f.bin")
    assert detail is not None
    assert detail["availability"] == {
        "bins": [2, 2, 2, 2, 2, 1, 1, 1],
        "chunks_per_bin": 1,
        "max": 2,
        "rarest": 1,
    }
    assert detail["throughput"]["rates"] == [4096]
    assert [h["address"] for h in detail["holder_list"]] == [str(A), str(B)]
    assert board.detail("nope") is None


def test_peer_stats_is_a_message_with_two_non_negative_totals() -> None:
    message = framing.decode(b'{"type":"PEER_STATS","uploaded":5,"downloaded":7}')
    assert message == m.PeerStats(uploaded=5, downloaded=7)
    assert msgspec.json.decode(framing.encode(message)[4:]) == {
        "type": "PEER_STATS",
        "uploaded": 5,
        "downloaded": 7,
    }
    with pytest.raises(ProtocolError):
        framing.decode(b'{"type":"PEER_STATS","uploaded":-1,"downloaded":0}')
