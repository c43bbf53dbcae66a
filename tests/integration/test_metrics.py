"""`--http`: /metrics of real processes in a real 1 -> 2 swarm (bytes add up, the peer gauge follows
peers joining and leaving, messages are counted by type), the JSON API, PEER_STATS with an older
tracker that does not know it, and the option's errors."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from p2pfs.address import Address
from p2pfs.net import Connection
from p2pfs.peer.node import Peer
from p2pfs.protocol import messages as m
from p2pfs.tracker.server import TrackerServer
from tests.procs import Proc, make_file, run

CHUNK = 16 * 1024
HTTP_LINE = r"p2pfs: (?:dashboard|metrics) on http://([^/\s]+)/"


def http_of(proc: Proc) -> str:
    """HOST:PORT of a process's --http server, from its stderr line."""
    return proc.expect_err(HTTP_LINE).group(1)


def get_text(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def get_json(url: str) -> Any:
    status, _, body = get_text(url)
    assert status == 200, body
    return json.loads(body)


def scrape(http: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of http://HTTP/metrics, parsed with prometheus_client's parser."""
    status, content_type, body = get_text(f"http://{http}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `condition` (an HTTP read: nothing else says when a periodic report has arrived) until it
    returns something true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_tracker(procs: Callable[..., Proc]) -> tuple[Proc, str, str]:
    """A tracker with --http (and -v, so it logs peers leaving): (process, tracker H:P, http H:P)."""
    proc = procs("-v", "tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", "--http", "127.0.0.1:0")
    address = proc.listening()
    return proc, address, http_of(proc)


def test_a_swarm_s_metrics_add_up(procs: Callable[..., Proc], tmp_path: Path) -> None:
    tracker, taddr, thttp = start_tracker(procs)
    src = make_file(tmp_path / "data.bin", 200 * CHUNK + 123)
    chunks = 201
    slow = {"P2PFS_TEST_DELAY": "0.002"}  # (so both downloaders also fetch from each other)
    share = procs(
        "share",
        str(src),
        "--tracker",
        taddr,
        "--host",
        "127.0.0.1",
        "--chunk-size",
        "16K",
        "--http",
        "127.0.0.1:0",
        env=slow,
    )
    share.expect("published data.bin")
    share_http = http_of(share)
    assert metric(scrape(thttp), "p2pfs_tracker_peers") == 1
    assert metric(scrape(thttp), "p2pfs_tracker_files") == 1

    gets = [
        procs(
            "get",
            "data.bin",
            str(tmp_path / f"out{i}.bin"),
            "--tracker",
            taddr,
            "--host",
            "127.0.0.1",
            "--seed",
            "--http",
            "127.0.0.1:0",
            env=slow,
        )
        for i in range(2)
    ]
    get_https = [http_of(g) for g in gets]
    for g in gets:
        g.expect("seeding data.bin", timeout=60)
    for i in range(2):
        assert (tmp_path / f"out{i}.bin").read_bytes() == src.read_bytes()

    peers = [scrape(h) for h in (share_http, *get_https)]
    uploaded = sum(metric(p, "p2pfs_peer_uploaded_bytes_total") for p in peers)
    downloaded = sum(metric(p, "p2pfs_peer_downloaded_bytes_total") for p in peers)
    size = src.stat().st_size
    for values in peers[1:]:
        assert metric(values, "p2pfs_peer_chunks_verified_total") == chunks
        assert metric(values, "p2pfs_peer_downloaded_bytes_total") >= size
        assert metric(values, "p2pfs_peer_hash_failures_total") == 0
        assert metric(values, "p2pfs_peer_active_downloads") == 0
        assert metric(values, "p2pfs_peer_chunk_fetch_duration_seconds_count") >= chunks
    assert metric(peers[0], "p2pfs_peer_downloaded_bytes_total") == 0
    assert metric(peers[0], "p2pfs_peer_chunks_verified_total") == 0
    # Every chunk body one peer sent, another received: the totals agree, up to end-game duplicates
    # still in flight when a downloader closed its connections (at most a window of chunks each).
    assert downloaded <= uploaded <= downloaded + 2 * 16 * CHUNK, (uploaded, downloaded)
    assert downloaded >= 2 * size

    values = scrape(thttp)
    assert metric(values, "p2pfs_tracker_peers") == 3
    assert metric(values, "p2pfs_tracker_messages_total", type="REQUEST_REGISTER") == 3
    # (each verified chunk is registered once; a chunk the tracker did not list yet may be again)
    assert metric(values, "p2pfs_tracker_messages_total", type="REQUEST_CHUNK_REGISTER") >= 2 * chunks
    assert (
        metric(values, "p2pfs_tracker_messages_total", type="REQUEST_PUBLISH") == 3
    )  # (+ both finished gets)
    assert metric(values, "p2pfs_tracker_messages_total", type="invalid") == 0
    assert metric(values, "p2pfs_tracker_request_duration_seconds_count") >= 2 * chunks + 6
    assert metric(values, "p2pfs_tracker_connections_refused_total") == 0

    # PEER_STATS: the tracker's view of each peer's totals catches up with the peer's own
    share_address = share.stdout[0].split()[-1]
    share_sent = metric(peers[0], "p2pfs_peer_uploaded_bytes_total")

    def share_reported() -> bool:
        listed = {p["address"]: p for p in get_json(f"http://{thttp}/api/peers")["peers"]}
        return listed[share_address]["uploaded"] == share_sent

    until(share_reported, "the share's PEER_STATS")

    gets[0].interrupt()
    tracker.expect_err(r"peer \S+ left")
    assert metric(scrape(thttp), "p2pfs_tracker_peers") == 2
    share.interrupt()
    tracker.expect_err(r"peer \S+ left")
    assert metric(scrape(thttp), "p2pfs_tracker_peers") == 1
    assert metric(scrape(thttp), "p2pfs_tracker_files") == 1  # (the remaining get seeds it whole)


def test_the_json_api(procs: Callable[..., Proc], tmp_path: Path) -> None:
    _, taddr, thttp = start_tracker(procs)
    src = make_file(tmp_path / "a.bin", 10 * CHUNK)
    tree = tmp_path / "ds"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x" * 5000)
    share = procs(
        "share", str(src), str(tree), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "16K"
    )
    share.expect("published ds/")
    files = until(
        lambda: (
            len(get_json(f"http://{thttp}/api/files")["files"]) == 2 and get_json(f"http://{thttp}/api/files")
        ),
        "two files listed",
    )
    by_name = {f["name"]: f for f in files["files"]}
    assert by_name["a.bin"]["size"] == 10 * CHUNK and by_name["a.bin"]["chunks"] == 10
    assert re.fullmatch(r"[0-9a-f]{64}", by_name["a.bin"]["content_id"])
    assert by_name["a.bin"]["holders"] == 1 and by_name["a.bin"]["completeness"] == 1.0
    assert by_name["ds"]["collection_files"] == 1
    assert files["totals"]["files"] == 2 and files["totals"]["peers"] == 1

    detail = get_json(f"http://{thttp}/api/files/a.bin")
    assert detail["availability"] == {"bins": [1] * 10, "chunks_per_bin": 1, "max": 1, "rarest": 1}
    assert [h["complete"] for h in detail["holder_list"]] == [True]

    peers = get_json(f"http://{thttp}/api/peers")["peers"]
    assert len(peers) == 1 and peers[0]["files"] == 2 and peers[0]["chunks"] == 10 + by_name["ds"]["chunks"]

    for name in ("nope.bin", "ds/sub/x.txt"):  # (a name with / reaches the route: the 404 is ours)
        status, content_type, body = get_text(f"http://{thttp}/api/files/{name}")
        assert status == 404 and content_type.startswith("application/json")
        assert json.loads(body) == {"error": "file not found", "name": name}

    status, content_type, page = get_text(f"http://{thttp}/")
    assert status == 200 and content_type.startswith("text/html") and "/static/dashboard.js" in page
    status, content_type, script = get_text(f"http://{thttp}/static/dashboard.js")
    assert status == 200 and "textContent" in script and "innerHTML" not in script
    assert get_text(f"http://{thttp}/static/../http.py")[0] == 404


def test_the_event_stream_sends_a_snapshot_each_second(procs: Callable[..., Proc], tmp_path: Path) -> None:
    _, taddr, thttp = start_tracker(procs)
    share = procs(
        "share", str(make_file(tmp_path / "a.bin", 3 * CHUNK)), "--tracker", taddr, "--chunk-size", "16K"
    )
    share.expect("published a.bin")
    with urllib.request.urlopen(f"http://{thttp}/events?file=a.bin", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = []
        while len(events) < 3:
            line = stream.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert all(e["file"]["name"] == "a.bin" for e in events)
    assert events[0]["time"] < events[1]["time"] < events[2]["time"]  # (new snapshots, not one repeated)
    assert [f["name"] for f in events[-1]["files"]] == ["a.bin"]


async def test_a_peer_keeps_working_with_a_tracker_that_refuses_peer_stats(tmp_path: Path) -> None:
    """A tracker from before PEER_STATS answers it with ERROR (an unknown type): the peer stops sending
    it, and its requests' replies stay matched to them."""

    class OldTracker(TrackerServer):
        async def handle(self, conn: Connection, message: m.AnyMessage) -> None:
            if isinstance(message, m.PeerStats):  # (what the tracker before the extension answered)
                self.refused_stats = getattr(self, "refused_stats", 0) + 1
                conn.send(
                    m.Error(
                        message="invalid message: Invalid value 'PEER_STATS' - at `$.type`",
                        request="PEER_STATS",
                    )
                )
                return
            await super().handle(conn, message)

    tracker = OldTracker()
    address = await tracker.start("127.0.0.1", 0)
    peer = Peer("127.0.0.1", 0, control=False)
    try:
        await peer.start()
        await peer.connect(Address("127.0.0.1", address.port))
        src = make_file(tmp_path / "a.bin", 3 * CHUNK)
        peer.tracker.send_stats(1, 2)
        shared = await peer.publish(src, chunk_size=CHUNK)  # (its reply is REPLY_PUBLISH, not the ERROR)
        assert shared.name == "a.bin"
        listing = await peer.file_list()
        assert set(listing.filelist) == {"a.bin"}
        assert not peer.tracker.reports_stats
        peer.tracker.send_stats(3, 4)  # not sent again to this tracker
        assert set((await peer.file_list()).filelist) == {"a.bin"}
        assert getattr(tracker, "refused_stats", 0) == 1
    finally:
        await peer.stop()
        await tracker.stop()


def test_http_option_errors_are_one_line(procs: Callable[..., Proc], tmp_path: Path) -> None:
    result = run("tracker", "--no-shell", "--port", "0", "--http", "nope")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--http" in result.stderr and "Traceback" not in result.stderr
    _, _, thttp = start_tracker(procs)
    result = run("tracker", "--host", "127.0.0.1", "--no-shell", "--port", "0", "--http", thttp)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"p2pfs: error: cannot listen on {thttp} for --http: address already in use"
    ]
