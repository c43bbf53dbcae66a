"""`p2pfs verify NAME PATH` (issue 10): a local copy hashed against the publisher's chunk hashes; the
chunks that differ are named; another size is said; a missing PATH is one error line. Real processes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, make_file, run

CHUNK = 64 * 1024
SIZE = 10 * CHUNK + 12_345  # 11 chunks, the last one short
CHUNKS = -(-SIZE // CHUNK)

# settings a user's environment could carry into the processes under test
CLEARED_ENV = (
    "P2PFS_TRACKER",
    "P2PFS_CONFIG",
    "P2PFS_SECRET_FILE",
    "P2PFS_TLS_CERT",
    "P2PFS_TLS_KEY",
    "P2PFS_TLS_CA",
    "P2PFS_CHUNK_SIZE",
    "P2PFS_MAX_UPLOAD_RATE",
    "P2PFS_MAX_DOWNLOAD_RATE",
    "P2PFS_REQUEST_TIMEOUT",
    "P2PFS_TEST_DELAY",
    "XDG_RUNTIME_DIR",
)


# -- harness ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every process of the test (the tracker fixture's too: autouse fixtures come first) sees a
    config, state, home and runtime directory of its own, and none of the user's P2PFS_* settings."""
    for name in ("home", "xdg-config", "xdg-state"):
        (tmp_path / name).mkdir()
    runtime = Path(tempfile.mkdtemp(prefix="p2pfs-rt-"))  # short: it holds Unix sockets
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("P2PFS_RUNTIME_DIR", str(runtime))
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    shutil.rmtree(runtime, ignore_errors=True)


def one_error_line(got: subprocess.CompletedProcess[str]) -> str:
    """The contract's "one line": exactly one stderr line, `p2pfs: error: ...`, no traceback, exit 1."""
    err = got.stderr
    assert "Traceback" not in err and "Future exception was never retrieved" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines!r} (stdout {got.stdout!r})"
    assert lines[0].startswith("p2pfs: error: "), lines[0]
    assert got.returncode == 1, (got.returncode, err)
    return lines[0]


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
