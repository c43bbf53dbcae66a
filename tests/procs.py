"""Test harness: real `p2pfs` processes, with their output lines awaited (never slept on)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

P2PFS = [sys.executable, "-m", "p2pfs"]
LISTENING = re.compile(r"listening on (\S+):(\d+)")


class Proc:
    """A running p2pfs process whose stdout (and stderr) lines are collected by reader threads."""

    def __init__(self, *args: str, stdin: bool = False, cwd: Path | None = None, env: dict[str, str] | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args
        self.popen = subprocess.Popen(
            [*P2PFS, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=full_env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str], to_queue: bool) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line.rstrip("\n"))
            if to_queue:
                self.lines.put(line.rstrip("\n"))
        if to_queue:
            self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait for a stdout line matching `pattern` (regex search); fail with what was seen."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; saw {seen}; stderr {self.stderr}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited (rc={self.popen.wait()}) before {pattern!r}; saw {seen}; stderr {self.stderr}"
                )
            seen.append(line)
            match = rx.search(line)
            if match:
                return match

    def listening(self, timeout: float = 20.0) -> str:
        """Wait for `listening on HOST:PORT`; return `127.0.0.1:PORT` (wildcard hosts mapped to loopback)."""
        match = self.expect(LISTENING.pattern, timeout)
        host = match.group(1)
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{match.group(2)}"

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def kill9(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def interrupt(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        rc = self.popen.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    @property
    def pid(self) -> int:
        return self.popen.pid


def run(*args: str, timeout: float = 60.0, cwd: Path | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Run a one-shot p2pfs command to completion; returns the CompletedProcess."""
    return subprocess.run(
        [*P2PFS, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def make_file(path: Path, size: int, seed: int = 1) -> Path:
    """A file of `size` pseudo-random bytes (deterministic per seed), written in 1 MiB pieces."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n
    return path
