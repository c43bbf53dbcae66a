"""Rendering with rich: the file table, the peer table, the download progress bar, sizes.

Names, hosts and content ids come from the network: every one is put in a table or bar as a rich `Text`
made by `remote_text` (never a markup string), so brackets (`[/x]`) and emoji codes (`:smile:`) are shown
as written and control characters as visible escapes. The consoles interpret no markup either.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from p2pfs.address import Address
from p2pfs.peer.transfer import DownloadResult
from p2pfs.peer.transfer import Progress as DownloadProgress
from p2pfs.protocol import hashes
from p2pfs.protocol.messages import Collection
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


def file_table(
    filelist: dict[str, tuple[int, int]],
    content_ids: dict[str, str] | None = None,
    collections: dict[str, Collection] | None = None,
) -> Table:
    """The file list; `content id` is the publisher's (first 16 hex digits), or `unverified` for a file
    published without chunk hashes (its chunks are checked only against each holder's own digest). A
    collection is shown as `NAME/` with its members' total size and file count."""
    table = Table(title=None, show_edge=False)
    # fold, not the default ellipsis: a long name is wrapped, never cut (two names that differ only at
    # the end must not look the same)
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("chunks", justify="right")
    if collections:
        table.add_column("files", justify="right")
    table.add_column("content id", overflow="fold")
    for name, (size, chunks) in sorted(filelist.items()):
        collection = (collections or {}).get(name)
        if collection is not None:
            size = collection.size
        row = [
            remote_text(name + ("/" if collection is not None else ""), "bold blue" if collection else ""),
            Text(human_size(size)),
            Text(str(size)),
            Text(str(chunks)),
        ]
        if collections:
            row.append(Text(str(collection.files) if collection is not None else ""))
        row.append(remote_text(hashes.short((content_ids or {}).get(name))))
        table.add_row(*row)
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
    if result.already:
        return (
            f"already have {result.name} at {result.dest} (content id {result.content_id}): "
            f"{human_size(result.filesize)} checked, nothing fetched"
        )
    holders = ", ".join(f"{addr} {count}" for addr, count in result.sources.most_common())
    resumed = f"; {plural(result.resumed, 'chunk')} kept from an earlier attempt" if result.resumed else ""
    files = f" ({plural(result.files, 'file')})" if result.files is not None else ""
    return (
        f"downloaded {result.name}{files} to {result.dest}: {human_size(result.filesize)} in {result.seconds:.2f} s "
        f"({result.mib_per_s:.1f} MiB/s); content id {result.content_id or 'unverified'}; chunks from "
        f"{plural(len(result.sources), 'holder')}"
        + (f": {holders}" if holders else "")
        + resumed
    )


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 chunk`, `2 chunks`, `0 holders` (`many`: the plural when it is not WORDs)."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


class BinarySpeedColumn(ProgressColumn):
    """Speed in KiB/s, MiB/s (one unit family with the sizes: rich's own column is decimal, MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("?", style="progress.data.speed")
        return Text(f"{human_size(speed)}/s", style="progress.data.speed")


#: stages of a transfer as the bar names them (see transfer.Progress.stage)
_STAGES = {"check": "checking", "resume": "checking kept chunks", "hash": "hashing"}


class TransferDisplay:
    """Rich progress bars on stderr, one per file (a `get` of several names shows them together), only
    when stderr is a terminal and not --quiet. Columns are dropped to fit a narrow terminal: a bar never
    wraps. Fed by the transfer engine's callbacks (`download(name)`) or by hashing (`hashing(name)`)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = stderr.is_terminal if enabled is None else enabled
        width = stderr.width
        name_column = Column(no_wrap=True, overflow="ellipsis", max_width=max(8, width // 4))
        columns: list[ProgressColumn] = [
            # markup=False: the description (the file's name) is shown as written, never parsed
            TextColumn("{task.description}", style="bold", markup=False, table_column=name_column),
        ]
        if width >= 60:
            columns.append(BarColumn(bar_width=max(10, min(40, width - 75))))
        columns += [DownloadColumn(binary_units=True), BinarySpeedColumn()]
        if width >= 80:
            columns.append(TimeRemainingColumn())
        if width >= 100:
            columns.append(TextColumn("{task.fields[holders]}", markup=False))
        self._progress = Progress(*columns, console=stderr, transient=False, expand=False)
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._last: dict[tuple[str, str], float] = {}

    def __enter__(self) -> Self:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def _update(self, name: str, stage: str, done: int, total: int, holders: str, final: bool) -> None:
        key = (name, stage)
        task = self._tasks.get(key)
        if task is None:
            label = literal(name) if stage == "download" else f"{literal(name)} ({_STAGES.get(stage, stage)})"
            task = self._tasks[key] = self._progress.add_task(label, total=total, holders=holders)
        now = time.monotonic()
        if final or now - self._last.get(key, 0.0) >= 0.1:
            self._last[key] = now
            self._progress.update(task, completed=done, total=total, holders=holders)

    def download(self, name: str) -> Callable[[DownloadProgress], None]:
        """A transfer engine `on_progress` callback for `name`."""

        def update(p: DownloadProgress) -> None:
            if self.enabled:
                final = p.bytes_done >= p.filesize
                self._update(name, p.stage, p.bytes_done, p.filesize, plural(p.holders, "holder"), final)

        return update

    def hashing(self, name: str, stage: str = "hash") -> Callable[[int, int], None]:
        """A hashing `on_progress(bytes_done, total)` callback (publishing, verifying)."""

        def update(done: int, total: int) -> None:
            if self.enabled:
                self._update(name, stage, done, total, "", done >= total)

        return update


class ProgressBar(TransferDisplay):
    """One file's bar (kept for the peer shell's `download`): `update` is the engine's callback."""

    def __init__(self, name: str, enabled: bool | None = None) -> None:
        super().__init__(enabled)
        self.update = self.download(name)
