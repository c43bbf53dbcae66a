"""`get` with a symbolic link planted at `DEST.part` (say, by another local user in a shared download
folder, pointing at the victim's `~/.bashrc`): the download fails with one clear line and writes nothing
through the link. Real processes: a tracker, a seeder, and `p2pfs get`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import Proc, make_file, run

NAME = "f.bin"


@pytest.mark.parametrize("planted", [".part", ".part.state"])
def test_a_symlink_at_dest_part_fails_the_download_and_is_not_written_through(
    planted: str, tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / NAME, 20 * 4096, seed=41)
    seeder = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "4K")
    seeder.listening()
    seeder.expect(rf"published {re.escape(NAME)} ")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"export PATH=/usr/bin\n")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    dest = downloads / "out.bin"
    link = downloads / f"out.bin{planted}"
    link.symlink_to(victim)
    got = run("get", NAME, str(dest), "--tracker", taddr, "--host", "127.0.0.1")
    assert got.returncode != 0
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "symbolic link" in lines[0] and str(link) in lines[0], got.stderr
    assert victim.read_bytes() == b"export PATH=/usr/bin\n"
    assert link.is_symlink() and link.resolve() == victim.resolve()
    assert sorted(p.name for p in downloads.iterdir()) == [link.name]  # nothing else left behind
