"""Shared fixtures: a tracker process, sharing peers, and clean-up of every process a test started."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import Proc
from tests.redis_server import RedisServer


@pytest.fixture(scope="session", autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every p2pfs process the tests start (and every in-process Peer) uses directories of this test
    session: no config file, shell history or control socket of the user's leaks in or is left behind."""
    base = tmp_path_factory.mktemp("user")
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "P2PFS_RUNTIME_DIR", "P2PFS_CONFIG")}
    os.environ["XDG_CONFIG_HOME"] = str(base / "config")
    os.environ["XDG_STATE_HOME"] = str(base / "state")
    os.environ["P2PFS_RUNTIME_DIR"] = str(base / "run")
    os.environ.pop("P2PFS_CONFIG", None)
    for name in ("P2PFS_TRACKER", "P2PFS_CHUNK_SIZE", "P2PFS_SECRET_FILE", "P2PFS_TLS_CERT", "P2PFS_TLS_KEY", "P2PFS_TLS_CA"):
        saved[name] = os.environ.pop(name, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    """Start p2pfs processes; every one still running at the end of the test is killed."""
    started: list[Proc] = []

    def start(*args: str, **kwargs: object) -> Proc:
        proc = Proc(*args, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill9()


@pytest.fixture
def tracker(procs: Callable[..., Proc]) -> tuple[Proc, str]:
    """A running tracker on a free loopback port: (process, "127.0.0.1:PORT")."""
    proc = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
    return proc, proc.listening()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own (the test module skips where none is installed)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill9()
