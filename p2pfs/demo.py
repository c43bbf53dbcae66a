"""`make demo`: a swarm on 127.0.0.1 — a tracker and four peers as separate processes.

Peer A publishes a generated 64 MiB file; B, C and D download it at the same time (and serve what they
have to each other), with live progress; then a summary: time, MiB/s, which peer served how many chunks
to whom, and the SHA-256 of every copy. Every process started here is stopped at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

FILE_SIZE = 64 * 1024 * 1024
NAME = "demo-64MiB.bin"
DOWNLOADERS = ("B", "C", "D")
console = Console(highlight=False)


class Child:
    def __init__(self, label: str, proc: asyncio.subprocess.Process) -> None:
        self.label = label
        self.proc = proc

    async def line(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            raise RuntimeError(f"peer {self.label} exited: {err.decode(errors='replace').strip()}")
        return raw.decode().rstrip("\n")

    async def expect(self, prefix: str) -> str:
        while True:
            line = await self.line()
            if line.startswith(prefix):
                return line


async def spawn(label: str, *args: str) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pfs", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Child(label, proc)


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.writelines(os.urandom(1 << 20) for _ in range(size // (1 << 20)))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


async def demo(workdir: Path) -> int:
    children: list[Child] = []
    try:
        src = workdir / "A" / NAME
        src.parent.mkdir()
        make_file(src, FILE_SIZE)
        console.print(f"generated {NAME} ({FILE_SIZE >> 20} MiB) in {workdir}")

        tracker = await spawn("tracker", "tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
        children.append(tracker)
        taddr = (await tracker.expect("listening on ")).split()[-1]
        console.print(f"tracker  listening on {taddr}")

        seeder = await spawn("A", "share", str(src), "--tracker", taddr, "--host", "127.0.0.1")
        children.append(seeder)
        names = {(await seeder.expect("listening on ")).split()[-1]: "A"}
        await seeder.expect("published ")
        console.print(f"peer A   {next(iter(names))} published {NAME}")

        started = time.monotonic()
        downloaders: list[Child] = []
        for label in DOWNLOADERS:
            (workdir / label).mkdir()
            child = await spawn(
                label, "get", NAME, str(workdir / label / NAME), "--tracker", taddr, "--seed", "--json",
                "--host", "127.0.0.1",
            )
            children.append(child)
            downloaders.append(child)

        results: dict[str, dict[str, object]] = {}
        finished_at: dict[str, float] = {}
        columns = (TextColumn("peer {task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TextColumn("{task.fields[holders]} holders"))
        with Progress(*columns, console=console) as progress:
            tasks = {c.label: progress.add_task(c.label, total=FILE_SIZE, holders=0) for c in downloaders}

            async def follow(child: Child) -> None:
                while True:
                    event = json.loads(await child.expect("{"))
                    if event["event"] == "listening":
                        names[event["address"]] = child.label
                    elif event["event"] == "progress":
                        progress.update(tasks[child.label], completed=event["bytes_done"], holders=event["holders"])
                    elif event["event"] == "done":
                        finished_at[child.label] = time.monotonic() - started
                        results[child.label] = event
                        progress.update(tasks[child.label], completed=FILE_SIZE)
                        return

            await asyncio.gather(*(follow(c) for c in downloaders))
        makespan = max(finished_at.values())

        console.print()
        sources = ["A", *DOWNLOADERS]
        summary = Table(title=f"{NAME}: chunks received, by downloader and holder", show_edge=False)
        for header in ("peer", "done at", "MiB/s", *(f"from {s}" for s in sources)):
            summary.add_column(header, justify="left" if header == "peer" else "right")
        served = dict.fromkeys(sources, 0)
        for label in DOWNLOADERS:
            event = results[label]
            event_sources: dict[str, int] = event["sources"]  # type: ignore[assignment]
            got = {names.get(addr, addr): n for addr, n in event_sources.items()}
            for s, n in got.items():
                served[s] = served.get(s, 0) + n
            summary.add_row(
                label,
                f"{finished_at[label]:.2f} s",
                f"{float(event['mib_per_s']):.0f}",  # type: ignore[arg-type]
                *(str(got.get(s, 0)) if s != label else "-" for s in sources),
            )
        summary.add_row("served", "", "", *(str(served[s]) for s in sources), style="bold")
        console.print(summary)
        console.print("done at: seconds since the downloads started; MiB/s: each download alone")

        digests = {"A": sha256_of(src)} | {label: sha256_of(workdir / label / NAME) for label in DOWNLOADERS}
        equal = len(set(digests.values())) == 1
        for label, digest in digests.items():
            console.print(f"  sha256 {label}: {digest}")
        total = FILE_SIZE * len(DOWNLOADERS) / (1 << 20)
        console.print(f"digests equal: {'yes' if equal else 'NO'}")
        console.print(
            f"makespan {makespan:.2f} s for {len(DOWNLOADERS)} x {FILE_SIZE >> 20} MiB: "
            f"{total / makespan:.0f} MiB/s delivered in total"
        )
        return 0 if equal else 1
    finally:
        for child in children:
            if child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.wait_for(child.proc.wait(), 10)
            except TimeoutError:
                child.proc.kill()
                await child.proc.wait()
        console.print(f"stopped {len(children)} processes")


def main() -> int:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="p2pfs-demo-", dir=base))
    try:
        return asyncio.run(demo(workdir))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        console.print(f"demo failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
