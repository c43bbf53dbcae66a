"""libtorrent 2.1.1 doing what benchmarks 2 and 3 time p2pfs doing: one seeding session and N
downloading sessions, each in its own process, on 127.0.0.1. Run with bench/.venv-lt's python, from the
repository root (`bench/.venv-lt/bin/python -m bench.lt_swarm measure ...`); bench/libtorrent_side.py
does that.

    measure --file F --workdir D --downloaders N --runs R   prints one JSON line {"seconds": [...]}
    seed    --torrent T --save DIR                          serves F until SIGTERM
    get     --torrent T --save DIR --port P --peers P1,...  downloads; --exit: exit when complete

The torrent has 1 MiB pieces (created from the file before anything is timed, as `p2pfs share` hashes
before `get` starts). Sessions are TCP only (uTP off), with no DHT, LSD, UPnP or NAT-PMP; they listen on
127.0.0.1 and are connected directly with handle.connect_peer, every downloader to the seed and to every
other downloader (full mesh). Everything else is libtorrent's default, but for two settings: alerts of
the status category are asked for (to hear torrent_finished_alert the moment it happens), and
allow_multiple_connections_per_ip is on — without it a session refuses a second peer from 127.0.0.1,
and a swarm on one machine could not form.

Timing is the same as for p2pfs: one downloader is timed from its process start to its exit; a swarm's
makespan runs from the start of the first downloader to the last `done` line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    PUBLISH_TIMEOUT,
    REPO,
    STARTUP_TIMEOUT,
    TRANSFER_TIMEOUT,
    BenchError,
    MiB,
    Proc,
    check_file,
    child_env,
    children,
    free_port,
    interrupt_on_termination,
    remove,
)

PIECE_SIZE = MiB


def libtorrent() -> Any:
    """The libtorrent module (installed only in bench/.venv-lt, so imported where it is used)."""
    import libtorrent as lt  # type: ignore[import-not-found]

    return lt


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def session(host: str, port: int, same_host: bool = True) -> Any:
    """A TCP-only session listening on host:port; `same_host`: every peer shares one IP address (on
    127.0.0.1), which libtorrent refuses unless allow_multiple_connections_per_ip is on."""
    lt = libtorrent()

    return lt.session(
        {
            "listen_interfaces": f"{host}:{port}",
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "allow_multiple_connections_per_ip": same_host,
            "alert_mask": int(lt.alert_category.status | lt.alert_category.error),
        }
    )


def add_torrent(ses: Any, torrent: Path, save: Path) -> Any:
    lt = libtorrent()

    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(torrent))
    params.save_path = str(save)
    return ses.add_torrent(params)


class Trace:
    """BENCH_LT_TRACE=1: the downloader's progress on stderr, for looking into libtorrent's timeline."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("BENCH_LT_TRACE"))
        self.last = 0.0

    def status(self, handle: Any) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.1:
            self.last = now
            st = handle.status()
            print(
                f"{now:.3f} {st.state} {st.progress:.3f} peers {st.num_peers} down {st.download_rate / MiB:.0f} MiB/s",
                file=sys.stderr,
                flush=True,
            )


class Stop:
    """Set by SIGTERM or SIGINT; the sessions' loops check it between alerts."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True


def serve_until_stopped(ses: Any, stop: Stop) -> None:
    while not stop.requested:
        ses.wait_for_alert(100)
        ses.pop_alerts()


def run_seed(args: argparse.Namespace, listen: tuple[str, int] = (HOST, 0), same_host: bool = True) -> int:
    stop = Stop()
    die_with_parent()
    ses = session(*listen, same_host)
    handle = add_torrent(ses, args.torrent, args.save)
    emit({"event": "listening", "port": ses.listen_port()})
    while not handle.status().is_seeding:  # the seed checks its file once, before anything is timed
        if stop.requested:
            return 0
        ses.wait_for_alert(100)
        ses.pop_alerts()
    emit({"event": "seeding"})
    serve_until_stopped(ses, stop)
    return 0


def run_get(
    args: argparse.Namespace,
    listen: tuple[str, int],
    peers: list[tuple[str, int]],
    same_host: bool = True,
    exit_when_done: bool = False,
) -> int:
    lt = libtorrent()

    stop = Stop()
    die_with_parent()
    ses = session(*listen, same_host)
    handle = add_torrent(ses, args.torrent, args.save)
    for peer in peers:
        handle.connect_peer(peer)
    finished = False
    trace = Trace()
    while not finished:
        if stop.requested:
            return 1
        trace.status(handle)
        ses.wait_for_alert(100)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.torrent_finished_alert):
                finished = True
            elif isinstance(alert, lt.torrent_error_alert):
                print(f"error: {alert.message()}", file=sys.stderr, flush=True)
                return 1
        finished = finished or handle.status().is_finished
    emit({"event": "done"})
    trace.status(handle)
    if not exit_when_done:
        serve_until_stopped(ses, stop)
    return 0


def make_torrent(src: Path, out: Path) -> Path:
    lt = libtorrent()

    creator = lt.create_torrent(lt.list_files(str(src)), PIECE_SIZE)
    lt.set_piece_hashes(creator, str(src.parent))
    out.write_bytes(lt.bencode(creator.generate()))
    return out


def lt_proc(*args: str, label: str) -> Proc:
    return Proc([sys.executable, "-m", "bench.lt_swarm", *args], env=child_env(), cwd=REPO, label=label)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this session process if the `measure` process that started it dies, so a
    killed benchmark leaves no seeding session behind."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def measure(src: Path, workdir: Path, downloaders: int, runs: int) -> list[float]:
    """Seconds per run: a lone downloader's wall time (start to exit), or a swarm's makespan."""
    size = src.stat().st_size
    torrent = make_torrent(src, workdir / "bench.torrent")
    results: list[float] = []
    with children() as procs:
        seed = lt_proc("seed", "--torrent", str(torrent), "--save", str(src.parent), label="libtorrent seed")
        procs.append(seed)
        _, listening = seed.expect_event("listening", STARTUP_TIMEOUT)
        seed.expect_event("seeding", PUBLISH_TIMEOUT)
        seed_port = int(listening["port"])
        for run in range(runs):
            saves = [workdir / f"run{run}-dl{i}" for i in range(downloaders)]
            ports = [free_port() for _ in saves]
            gets: list[Proc] = []
            try:
                for i, save in enumerate(saves):
                    save.mkdir()
                    peers = [seed_port, *(p for j, p in enumerate(ports) if j != i)]
                    flags = ["--exit"] if downloaders == 1 else []
                    gets.append(
                        lt_proc(
                            "get",
                            "--torrent",
                            str(torrent),
                            "--save",
                            str(save),
                            "--port",
                            str(ports[i]),
                            "--peers",
                            ",".join(map(str, peers)),
                            *flags,
                            label=f"libtorrent get {i}",
                        )
                    )
                if downloaders == 1:
                    if gets[0].wait(TRANSFER_TIMEOUT) != 0:
                        raise BenchError(f"libtorrent get failed: {gets[0].describe()}")
                    assert gets[0].ended is not None
                    results.append(gets[0].ended - gets[0].started)
                else:
                    done = [get.expect_event("done", TRANSFER_TIMEOUT)[0] for get in gets]
                    results.append(max(done) - gets[0].started)
            finally:
                for get in gets:
                    get.stop()
            for save in saves:
                check_file(save / src.name, size)
                remove(save)
            print(
                f"libtorrent 1→{downloaders} run {run + 1}: {results[-1]:.3f} s", file=sys.stderr, flush=True
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("measure")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--downloaders", type=int, required=True)
    p.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("seed")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save", type=Path, required=True)
    p = sub.add_parser("get")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--peers", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    p.add_argument("--exit", action="store_true", help="exit once complete (else serve until SIGTERM)")
    args = parser.parse_args()
    if args.role == "seed":
        return run_seed(args)
    if args.role == "get":
        peers = [(HOST, port) for port in args.peers]
        return run_get(args, (HOST, args.port), peers, exit_when_done=args.exit)
    interrupt_on_termination()  # a SIGTERM from libtorrent_side still stops the sessions started here
    started = time.monotonic()
    seconds = measure(args.file, args.workdir, args.downloaders, args.runs)
    emit({"seconds": seconds, "total": time.monotonic() - started})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
