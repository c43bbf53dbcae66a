"""`p2pfs verify NAME PATH` (issue 10): a local copy hashed against the publisher's chunk hashes; the
chunks that differ are named; another size is said; a missing PATH is one error line. Real processes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_env import isolated_env, one_error_line  # noqa: F401 (isolated_env: an autouse fixture)
from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024
SIZE = 10 * CHUNK + 12_345  # 11 chunks, the last one short
CHUNKS = -(-SIZE // CHUNK)

def one_stdout_line(got: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in got.stderr, got.stderr
    lines = [ln for ln in got.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (got.stdout, got.stderr)
    return lines[0]


def verify(taddr: str, name: str, path: Path) -> subprocess.CompletedProcess[str]:
    return run("verify", name, str(path), "--tracker", taddr)  # type: ignore[no-any-return]


@pytest.fixture
def published(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> tuple[str, Path]:
    """v.bin (11 chunks of 64 KiB) shared on a running tracker: (tracker address, the file)."""
    _, taddr = tracker
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "v.bin", SIZE, seed=41)
    proc = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K")
    proc.expect(r"^published v\.bin ")
    proc.expect(r"^serving")
    return taddr, src


def copy_of(tmp_path: Path, src: Path) -> Path:
    (tmp_path / "local").mkdir()
    path = tmp_path / "local" / "copy.bin"
    shutil.copyfile(src, path)
    return path


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_identical_copy_matches(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, src = published
    path = copy_of(tmp_path, src)
    got = verify(taddr, "v.bin", path)
    assert got.returncode == 0, got.stderr
    line = one_stdout_line(got)
    assert re.match(rf"^{re.escape(str(path))} matches v\.bin \(content id [0-9a-f]{{8,}}", line), line
    assert path.read_bytes() == src.read_bytes()  # verify only reads


def test_changed_chunks_are_named(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, src = published
    path = copy_of(tmp_path, src)
    flip(path, 100)  # chunk 0
    flip(path, 5 * CHUNK + 777)  # chunk 5
    got = verify(taddr, "v.bin", path)
    assert got.returncode == 1, (got.returncode, got.stdout, got.stderr)
    line = one_stdout_line(got)
    assert "differs" in line and f"2 of {CHUNKS} chunks" in line and "0, 5" in line, line
    assert " matches " not in line


def test_one_changed_chunk_is_named(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, src = published
    path = copy_of(tmp_path, src)
    flip(path, SIZE - 1)  # the last (short) chunk
    got = verify(taddr, "v.bin", path)
    assert got.returncode == 1, (got.returncode, got.stdout, got.stderr)
    line = one_stdout_line(got)
    rest = line.replace(str(path), "PATH")  # (the path's digits must not count)
    assert "differs" in rest and f"1 of {CHUNKS} chunks" in rest, line
    assert re.search(rf"\b{CHUNKS - 1}\b", rest.replace(f"of {CHUNKS} chunks", "")), line


@pytest.mark.parametrize("delta", [-1000, +1000], ids=["shorter", "longer"])
def test_another_size_is_said(tmp_path: Path, published: tuple[str, Path], delta: int) -> None:
    taddr, src = published
    (tmp_path / "local").mkdir()
    path = tmp_path / "local" / "sized.bin"
    data = src.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    got = verify(taddr, "v.bin", path)
    assert got.returncode == 1, (got.returncode, got.stdout, got.stderr)
    line = one_stdout_line(got)
    rest = line.replace(str(path), "PATH")
    assert str(SIZE + delta) in rest or str(SIZE) in rest, line
    assert " matches " not in line


def test_missing_path_is_one_error_line(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, _ = published
    missing = tmp_path / "nowhere.bin"
    line = one_error_line(verify(taddr, "v.bin", missing))
    assert str(missing) in line, line
    assert not missing.exists()
