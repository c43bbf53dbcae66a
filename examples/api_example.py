"""The p2pfs library API in one script: share a file and a directory tree, download both, check them.

Run a tracker (`p2pfs tracker --port 6969 --no-shell &`), then `python examples/api_example.py
127.0.0.1:6969`, or set P2PFS_TRACKER (or the config file's tracker) and give no argument.
"""

from __future__ import annotations

import asyncio
import filecmp
import os
import sys
import tempfile
from pathlib import Path

import p2pfs


def show(progress: p2pfs.Progress) -> None:
    """A progress callback: one line, rewritten in place."""
    percent = 100 * progress.bytes_done // max(progress.filesize, 1)
    end = "\n" if progress.bytes_done == progress.filesize else ""
    print(f"\r  {progress.stage} {progress.name}: {percent}%", end=end, flush=True)


async def fetch_again(name: str, dest: Path, tracker: str | None) -> p2pfs.Result:
    """The same download from inside an event loop: DEST already holds the bytes, so nothing is fetched."""
    return await p2pfs.aio.get(name, dest, tracker)


def main() -> int:
    tracker = sys.argv[1] if len(sys.argv) > 1 else None  # None: P2PFS_TRACKER, then the config file
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "example.bin"
        data.write_bytes(os.urandom(5 << 20))
        tree = work / "example-tree"
        (tree / "docs").mkdir(parents=True)
        (tree / "docs" / "notes.txt").write_text("hello from p2pfs\n")
        (tree / "example.bin").write_bytes(data.read_bytes())
        try:
            with p2pfs.share([data, tree], tracker=tracker) as shared:  # serves until the block ends
                print(f"sharing {', '.join(shared.names)} on {shared.address}")
                got = p2pfs.get("example.bin", work / "copy.bin", tracker=tracker, progress=show)
                print(
                    f"got {got.name}: {got.filesize} bytes in {got.seconds:.2f} s ({got.mib_per_s:.0f} MiB/s)"
                )
                assert filecmp.cmp(data, got.dest, shallow=False)
                got = p2pfs.get("example-tree", work / "tree-copy", tracker=tracker)
                print(f"got {got.name}/: {got.files} files, {got.filesize} bytes")
                assert (got.dest / "docs" / "notes.txt").read_text() == "hello from p2pfs\n"
                again = asyncio.run(fetch_again("example.bin", work / "copy.bin", tracker))
                print(f"again: already={again.already}")
        except p2pfs.P2PFSError as exc:  # every p2pfs error is one readable line
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
