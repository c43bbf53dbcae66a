"""Where `get` and `share` spend their time during benchmark 2: py-spy samples both processes while one
file goes from one to the other, then the functions with the most samples are listed (self time: the
function itself was running; total: it was on the stack). Not part of `make bench`.

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile [--size 1G] [--wire binary|json] [--tls] [--native] [--keep DIR]

--tls runs every process with mutual TLS (certificates from trustme, as benchmark 2b); --native also
samples C frames (OpenSSL, uvloop), which are otherwise counted in the Python frame that called them.

--keep DIR also writes the raw stacks (collapsed format, for flamegraph.pl or speedscope) into DIR.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sys
from pathlib import Path

from bench.common import (
    HOST,
    P2PFS,
    TRANSFER_TIMEOUT,
    BenchError,
    Proc,
    check_file,
    child_env,
    children,
    interrupt_on_termination,
    make_file,
    size_label,
    start_share,
    start_tracker,
    tmpfs_workdir,
    wire_env,
)

RATE = 250  # samples per second


def tls_options(folder: Path) -> dict[str, list[str]]:
    from bench.tls import make_certificates  # (imports trustme only when asked for TLS)

    return make_certificates(folder)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def summarise(path: Path, label: str, top: int) -> None:
    """Print the functions with the most samples in a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";")]
        # the first frame is the thread ("process 123:..." or a thread name): not a function
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    print(
        f"\n{label}: {samples} samples at {RATE}/s while busy ({samples / RATE:.2f} s of CPU on Python frames)"
    )
    print(f"  {'self':>6}  {'total':>6}  function")
    for frame, count in own.most_common(top):
        print(f"  {count / samples:6.1%}  {total[frame] / samples:6.1%}  {frame}")
    print("  -- most time on the stack (total) --")
    for frame, count in total.most_common(top):
        if frame.split(" ")[0] in (
            "<module>",
            "_run_module_as_main",
            "_run_code",
            "run",
            "main",
            "run_until_complete",
        ):
            continue
        print(f"  {own[frame] / samples:6.1%}  {count / samples:6.1%}  {frame}")


def short(frame: str) -> str:
    """`func (/long/path/p2pfs/peer/transfer.py:123)` -> `func (p2pfs/peer/transfer.py:123)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/p2pfs/", "/asyncio/", "/site-packages/"):
        if marker in where:
            where = marker.strip("/") + "/" + where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size: 512M, 1G, ... (default 1G)")
    parser.add_argument("--wire", choices=("binary", "json"), default="binary")
    parser.add_argument("--tls", action="store_true", help="mutual TLS on every process (benchmark 2b)")
    parser.add_argument("--native", action="store_true", help="sample C frames too (py-spy --native)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="directory for the raw stack files")
    args = parser.parse_args()
    units = {"M": 1 << 20, "G": 1 << 30}
    size = int(float(args.size[:-1]) * units[args.size[-1].upper()])
    spy = py_spy()
    interrupt_on_termination()
    with tmpfs_workdir("p2pfs-profile-") as work:
        src = make_file(work / "payload.bin", size)
        env = child_env(wire_env(args.wire))
        share_out, get_out = work / "share.txt", work / "get.txt"
        tls = tls_options(work) if args.tls else {"tracker": [], "share": [], "get": []}
        # (py-spy cannot sample C frames without pausing the process: --native replaces --nonblocking)
        native = ["--native"] if args.native else ["--nonblocking"]
        mode = args.wire + (", TLS" if args.tls else "")
        with children() as procs:
            tracker = start_tracker(procs, tls["tracker"])
            share = start_share(procs, src, tracker, env, flags=tls["share"])
            spy_share = Proc(
                [
                    spy,
                    "record",
                    "--pid",
                    str(share.pid),
                    "--rate",
                    str(RATE),
                    *native,
                    "--format",
                    "raw",
                    "--output",
                    str(share_out),
                ],
                label="py-spy share",
            )
            procs.append(spy_share)
            dest = work / "copy.bin"
            get_cmd = [*P2PFS, "get", src.name, str(dest), "--tracker", tracker, "--host", HOST, *tls["get"]]
            spy_get = Proc(
                [
                    spy,
                    "record",
                    "--rate",
                    str(RATE),
                    *native,
                    "--format",
                    "raw",
                    "--output",
                    str(get_out),
                    "--",
                    *get_cmd,
                ],
                env=env,
                label="py-spy get",
            )
            if spy_get.wait(TRANSFER_TIMEOUT) != 0:
                raise BenchError(f"get under py-spy failed: {spy_get.describe()}")
            assert spy_get.ended is not None
            check_file(dest, size)
            print(f"get of {size_label(size)} ({mode}) under py-spy: {spy_get.ended - spy_get.started:.2f} s")
            os.kill(spy_share.pid, signal.SIGINT)  # py-spy writes its file when interrupted
            spy_share.wait(30)
        summarise(get_out, f"get ({mode})", args.top)
        summarise(share_out, f"share ({mode})", args.top)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in (get_out, share_out):
                shutil.copy(path, args.keep / f"{path.stem}-{args.wire}{'-tls' if args.tls else ''}.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
