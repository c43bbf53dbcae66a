"""Rendering with rich: the file table, the peer table, the download progress bar, sizes."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from p2pfs.address import Address
from p2pfs.peer.transfer import DownloadResult
from p2pfs.peer.transfer import Progress as DownloadProgress
from p2pfs.protocol import hashes

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def file_table(filelist: dict[str, tuple[int, int]], content_ids: dict[str, str] | None = None) -> Table:
    """The file list; `content id` is the publisher's (first 16 hex digits), or `unverified` for a file
    published without chunk hashes (its chunks are checked only against each holder's own digest)."""
    table = Table(title=None, show_edge=False)
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("chunks", justify="right")
    table.add_column("content id")
    for name, (size, chunks) in sorted(filelist.items()):
        table.add_row(name, human_size(size), str(size), str(chunks), hashes.short((content_ids or {}).get(name)))
    return table


def peer_table(peers: Iterable[tuple[Address, Address]]) -> Table:
    table = Table(show_edge=False)
    table.add_column("peer (registered address)")
    table.add_column("connected from")
    for registered, remote in peers:
        table.add_row(str(registered), str(remote))
    return table


def print_table(table: Table) -> None:
    stdout.print(table)
    sys.stdout.flush()


def result_line(result: DownloadResult) -> str:
    holders = ", ".join(f"{addr} {count}" for addr, count in result.sources.most_common())
    resumed = f"; {result.resumed} chunks kept from an earlier attempt" if result.resumed else ""
    return (
        f"downloaded {result.name} to {result.dest}: {human_size(result.filesize)} in {result.seconds:.2f} s "
        f"({result.mib_per_s:.1f} MiB/s); content id {result.content_id or 'unverified'}; chunks from "
        f"{len(result.sources)} holder{'s' if len(result.sources) != 1 else ''}"
        + (f": {holders}" if holders else "")
        + resumed
    )


class ProgressBar:
    """A rich progress bar on stderr (only when it is a terminal) fed by the transfer engine's callback."""

    def __init__(self, name: str, enabled: bool | None = None) -> None:
        self.enabled = stderr.is_terminal if enabled is None else enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[holders]} peers"),
            console=stderr,
            transient=False,
        )
        self._task: TaskID | None = None
        self._name = name
        self._last = 0.0

    def __enter__(self) -> Self:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, p: DownloadProgress) -> None:
        if not self.enabled:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._name, total=p.filesize, holders=p.holders)
        now = time.monotonic()
        if now - self._last >= 0.1 or p.chunks_done == p.chunk_count:
            self._last = now
            self._progress.update(self._task, completed=p.bytes_done, holders=p.holders)
