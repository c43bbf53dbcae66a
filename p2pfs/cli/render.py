"""Rendering with rich: the file table, the peer table, the download progress bar, sizes.

Names, hosts and content ids come from the network: every one is put in a table or bar as a rich `Text`
made by `remote_text` (never a markup string), so brackets (`[/x]`) and emoji codes (`:smile:`) are shown
as written and control characters as visible escapes. The consoles interpret no markup either.
"""

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
from rich.text import Text

from p2pfs.address import Address
from p2pfs.peer.transfer import DownloadResult
from p2pfs.peer.transfer import Progress as DownloadProgress
from p2pfs.protocol import hashes
from p2pfs.safetext import literal

# markup/emoji off: a str that slips through is still printed as written, not parsed (a name holding
# `[/x]` would otherwise raise rich.errors.MarkupError in the middle of a command).
stdout = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
stderr = Console(stderr=True, markup=False, emoji=False, highlight=False)


def remote_text(value: object, style: str = "") -> Text:
    """`value` (anything a remote side sent, or made from it) as a rich Text: literal, never markup, with
    control characters written as visible escapes."""
    return Text(literal(value), style=style)


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
    # fold, not the default ellipsis: a long name is wrapped, never cut (two names that differ only at
    # the end must not look the same)
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("chunks", justify="right")
    table.add_column("content id", overflow="fold")
    for name, (size, chunks) in sorted(filelist.items()):
        table.add_row(
            remote_text(name),
            Text(human_size(size)),
            Text(str(size)),
            Text(str(chunks)),
            remote_text(hashes.short((content_ids or {}).get(name))),
        )
    return table


def peer_table(peers: Iterable[tuple[Address, Address]]) -> Table:
    table = Table(show_edge=False)
    table.add_column("peer (registered address)", overflow="fold")
    table.add_column("connected from", overflow="fold")
    for registered, remote in peers:
        table.add_row(remote_text(registered), remote_text(remote))
    return table


def print_table(table: Table) -> None:
    stdout.print(table)
    sys.stdout.flush()


def result_line(result: DownloadResult) -> str:
    """One line (holder addresses come from the tracker: print it with `say`, which makes it literal)."""
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
            # markup=False: the description (the file's name) is shown as written, never parsed
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[holders]} peers", markup=False),
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
            self._task = self._progress.add_task(literal(self._name), total=p.filesize, holders=p.holders)
        now = time.monotonic()
        if now - self._last >= 0.1 or p.chunks_done == p.chunk_count:
            self._last = now
            self._progress.update(self._task, completed=p.bytes_done, holders=p.holders)
