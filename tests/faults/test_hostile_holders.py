"""Holders that answer with chunks nobody asked for, against real tracker, seeder and downloader
processes: only a publisher is allowed to substitute, and even a publisher that sends nothing but
chunks we already have is dropped after a few replies. The hostile holder is `tests/liar.py --mode
chunk0` (a valid copy of chunk 0, whatever chunk is asked for)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from p2pfs.peer.transfer import USELESS_REPLY_LIMIT
from p2pfs.peer.window import INITIAL_WINDOW, MAX_WINDOW
from tests import liar
from tests.procs import Proc, make_file, run

CHUNK = 16 * 1024
CHUNKS = 48
NAME = "f.bin"


def share(procs: Callable[..., Proc], tracker: str, path: Path, env: dict[str, str]) -> str:
    proc = procs(
        "share", str(path), "--tracker", tracker, "--host", "127.0.0.1", "--chunk-size", "16K", env=env
    )
    address = proc.listening()
    proc.expect(rf"published {re.escape(path.name)} ")
    return address


def publishers(tracker: str) -> list[str]:
    """The `publishers` of NAME in the tracker's REPLY_FILE_LOCATION."""
    from tests.faults.test_integrity import tracker_request

    reply = tracker_request(tracker, {"type": "REQUEST_FILE_LOCATION", "filename": NAME})
    return sorted(reply.get("publishers", []))  # type: ignore[arg-type]


def download(tracker: str, dest: Path) -> tuple[dict[str, object], str]:
    """`get` to the end: its last JSON line (the result) and its stderr."""
    got = run("-v", "get", NAME, str(dest), "--tracker", tracker, "--json", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    done = json.loads(got.stdout.splitlines()[-1])
    assert done["event"] == "done", got.stdout
    return done, got.stderr  # type: ignore[no-any-return]


def asked(hostile: Proc) -> list[str]:
    """Every request the hostile holder answered, once its (only) connection has closed."""
    hostile.expect(r"^connection closed ")  # (every line before it has been read)
    return [line for line in hostile.stdout if line.startswith("served chunk ")]


def test_a_publisher_sending_only_chunks_we_have_is_dropped_after_a_few_replies(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / NAME, CHUNKS * CHUNK - 300, seed=21)
    # the honest seeder is slow and the hostile one fast, so the hostile one is asked, and would be asked
    # again and again if nothing dropped it (before the fix: 2,755 times for one download)
    honest = share(procs, taddr, src, env={"P2PFS_TEST_DELAY": "0.02"})
    hostile, hostile_addr = liar.start(procs, taddr, NAME, "--mode", "chunk0", "--path", str(src), "--join")
    assert publishers(taddr) == sorted([honest, hostile_addr])  # so it is allowed substitutes
    dest = tmp_path / "out.bin"
    done, stderr = download(taddr, dest)
    assert dest.read_bytes() == src.read_bytes()
    requests = asked(hostile)
    assert all(line.endswith(" substitute") for line in requests), requests  # asked as a publisher
    # found useless after USELESS_REPLY_LIMIT replies in a row; the rest were pipelined before that
    assert USELESS_REPLY_LIMIT <= len(requests) <= MAX_WINDOW + USELESS_REPLY_LIMIT, requests
    assert re.search(
        rf"holder {re.escape(hostile_addr)} sent {USELESS_REPLY_LIMIT} chunks in a row that we had.*"
        r"dropped for this file",
        stderr,
    ), stderr
    assert sum(line.startswith("connection open ") for line in hostile.stdout) == 1  # never asked again
    sources: dict[str, int] = done["sources"]  # type: ignore[assignment]
    assert sources.get(hostile_addr, 0) <= 1 and sum(sources.values()) == CHUNKS  # (chunk 0 at most)


def test_a_holder_that_is_not_a_publisher_is_never_asked_for_substitutes_and_is_dropped_for_one(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / NAME, CHUNKS * CHUNK - 300, seed=22)
    honest = share(procs, taddr, src, env={"P2PFS_TEST_DELAY": "0.02"})
    hostile, hostile_addr = liar.start(procs, taddr, NAME, "--mode", "chunk0", "--path", str(src))
    assert publishers(taddr) == [honest]  # it only registered chunks
    dest = tmp_path / "out.bin"
    done, stderr = download(taddr, dest)
    assert dest.read_bytes() == src.read_bytes()
    requests = asked(hostile)
    assert requests and not any(line.endswith(" substitute") for line in requests), requests
    # its first reply that is not the chunk asked for is a protocol error: dropped and banned at once
    # (a request for chunk 0 itself is answered right, and may have let its window grow first)
    limit = MAX_WINDOW + 1 if any(line.startswith("served chunk 0 ") for line in requests) else INITIAL_WINDOW
    assert len(requests) <= limit, requests
    assert re.search(
        rf"holder {re.escape(hostile_addr)} answered a request for chunk \d+ with chunk 0 unasked; "
        r"dropped for this file",
        stderr,
    ), stderr
    assert sum(line.startswith("connection open ") for line in hostile.stdout) == 1
    sources: dict[str, int] = done["sources"]  # type: ignore[assignment]
    assert sources.get(hostile_addr, 0) <= 1 and sum(sources.values()) == CHUNKS
