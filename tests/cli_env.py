"""What the CLI contract tests share: a clean environment per test (no config, state, home or runtime
directory of the user's, none of their P2PFS_* settings) and the contract's "one line" check."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
