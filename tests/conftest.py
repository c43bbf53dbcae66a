"""Shared fixtures: a tracker process, sharing peers, and clean-up of every process a test started."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.procs import Proc


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
