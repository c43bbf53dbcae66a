"""Test harness: real `p2pfs` processes, with their output lines awaited (never slept on)."""

from __future__ import annotations

import codecs
import contextlib
import io
import locale
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

P2PFS = [sys.executable, "-m", "p2pfs"]
LISTENING = re.compile(r"listening on (\S+):(\d+)")


class Proc:
    """A running p2pfs process whose stdout and stderr lines are collected by a reader thread.

    One thread reads both pipes, and before it takes stderr data it takes whatever stdout holds: a line
    the process printed on stdout before a stderr line is therefore in `stdout` (and `lines`) by the time
    that stderr line can be awaited with `expect_err`. `output` has every line as (stream, line).
    """

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
        #: stdout lines as they come (None at its end), for `expect`
        self.lines: queue.Queue[str | None] = queue.Queue()
        #: stderr lines as they come (None at its end), for `expect_err`
        self.err_lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.output: list[tuple[str, str]] = []
        self._threads = [threading.Thread(target=self._pump, daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None and self.popen.stderr is not None
        # The pipes are read as bytes beneath their text wrappers (never used), decoded as those would be.
        out, err = self.popen.stdout.fileno(), self.popen.stderr.fileno()
        streams = {
            out: _Stream("stdout", self.stdout, self.lines, self.output),
            err: _Stream("stderr", self.stderr, self.err_lines, self.output),
        }
        with selectors.DefaultSelector() as selector:
            for fd in streams:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)

            def read(fd: int) -> bool:
                """Take what `fd` holds now; False if nothing is there now (or ever again)."""
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    return False
                if not data:
                    streams.pop(fd).close()
                    selector.unregister(fd)
                    return False
                streams[fd].feed(data)
                return True

            while streams:
                ready = [key.fd for key, _ in selector.select()]
                if err in ready and out in streams:
                    # whatever stdout holds was printed before this stderr data: take all of it first
                    while out in streams and read(out):
                        pass
                for fd in ready:
                    if fd in streams:
                        read(fd)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait for a stdout line matching `pattern` (regex search); fail with what was seen."""
        return self._expect(self.lines, "stdout", pattern, timeout)

    def expect_err(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait for a stderr line matching `pattern` (regex search); every stdout line printed before it
        is in `stdout` by then."""
        return self._expect(self.err_lines, "stderr", pattern, timeout)

    def _expect(self, lines: queue.Queue[str | None], name: str, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {name} line matching {pattern!r} within {timeout}s; saw {seen}; "
                    f"stdout {self.stdout}; stderr {self.stderr}"
                )
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited (rc={self.popen.wait()}) before {pattern!r} on {name}; saw {seen}; "
                    f"stdout {self.stdout}; stderr {self.stderr}"
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


class _Stream:
    """One pipe's lines: decoded and newlines translated (as text mode would), each appended to `sink`
    and `output` and put on `lines` (None at the end)."""

    def __init__(
        self, name: str, sink: list[str], lines: queue.Queue[str | None], output: list[tuple[str, str]]
    ) -> None:
        self.name = name
        self.sink = sink
        self.lines = lines
        self.output = output
        decoder = codecs.getincrementaldecoder(locale.getpreferredencoding(False))(errors="replace")
        self._decoder = io.IncrementalNewlineDecoder(decoder, translate=True)
        self._partial = ""

    def feed(self, data: bytes, final: bool = False) -> None:
        *complete, self._partial = (self._partial + self._decoder.decode(data, final)).split("\n")
        for line in complete:
            self._line(line)

    def close(self) -> None:
        self.feed(b"", final=True)
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self.lines.put(None)

    def _line(self, line: str) -> None:
        self.sink.append(line)
        self.output.append((self.name, line))
        self.lines.put(line)


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


#: escape sequences a terminal program writes (CSI, OSC, charset and keypad selections), and carriage returns
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")


#: what prompt_toolkit writes when a prompt starts (bracketed paste on)
PROMPT_STARTS = "\x1b[?2004h"

_CONTROLLING_TERMINAL_THEN_EXEC = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
)


class TerminalProc:
    """A p2pfs process on a pseudo-terminal of its own (stdin, stdout and stderr, its controlling
    terminal: Ctrl-C written to it sends SIGINT), `rows` x `cols`. What it writes is collected by a
    reader thread; `expect` awaits a pattern in that text with the escape sequences taken out."""

    def __init__(
        self,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        rows: int = 50,
        cols: int = 200,
    ) -> None:
        import fcntl
        import struct
        import termios

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TERM": "xterm",
            "NO_COLOR": "1",
            # (nothing here answers prompt_toolkit's cursor position requests)
            "PROMPT_TOOLKIT_NO_CPR": "1",
            **(env or {}),
        }
        full_env.pop("COLUMNS", None)
        full_env.pop("LINES", None)

        self.args = args
        self.popen = subprocess.Popen(
            # in a session of its own (setsid), the pty made its controlling terminal, then p2pfs
            [sys.executable, "-c", _CONTROLLING_TERMINAL_THEN_EXEC, *P2PFS, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self._raw = bytearray()
        self._decoded = ""
        self._changed = threading.Condition()
        self._ended = False
        #: where the next `expect` starts looking (in `text`)
        self.pos = 0
        #: where the next `prompt` starts looking (in `raw`): after the last thing typed
        self._mark = 0
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:  # (EIO: every process holding the terminal has closed it)
                data = b""
            with self._changed:
                if not data:
                    self._ended = True
                    self._changed.notify_all()
                    return
                self._raw += data
                self._decoded += decoder.decode(data)
                self._changed.notify_all()

    @property
    def raw(self) -> str:
        """Everything written so far, escape sequences and all."""
        with self._changed:
            return self._decoded

    @property
    def text(self) -> str:
        """Everything written so far, escape sequences and carriage returns taken out."""
        return _ESCAPES.sub("", self.raw)

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait for `pattern` (regex search) in `text` after `pos`; `pos` moves past the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = rx.search(_ESCAPES.sub("", self._decoded), self.pos)
                if match:
                    self.pos = match.end()
                    return match
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    why = "the terminal closed" if self._ended else f"{timeout}s passed"
                    tail = _ESCAPES.sub("", self._decoded)[self.pos :]
                    raise AssertionError(f"{why} before {pattern!r}; after pos: {tail[-3000:]!r}")
                self._changed.wait(remaining)

    def prompt(self, timeout: float = 30.0) -> None:
        """Wait for a prompt that began after the last thing typed (prompt_toolkit turns bracketed paste
        on when a prompt starts, with the terminal already in its raw mode: what is typed from then on
        goes to that prompt, never echoed by the terminal itself)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._decoded.find(PROMPT_STARTS, self._mark)
                if found >= 0:
                    self._mark = found + len(PROMPT_STARTS)
                    return
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    why = "the terminal closed" if self._ended else f"{timeout}s passed"
                    tail = _ESCAPES.sub("", self._decoded)[self.pos :]
                    raise AssertionError(f"{why} before a prompt; after pos: {tail[-3000:]!r}")
                self._changed.wait(remaining)

    def write(self, data: str | bytes) -> None:
        """Type `data` (b"\\x03" is Ctrl-C, "\\r" Enter, "\\x04" Ctrl-D at an empty line)."""
        with self._changed:
            self._mark = len(self._decoded)
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def typed(self, data: str | bytes, timeout: float = 30.0) -> str:
        """Type `data` and wait for the program to write something after it (a prompt redraws after every
        key); returns `text` as it is then."""
        self.write(data)
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._decoded) <= self._mark:
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    raise AssertionError(f"nothing written after {data!r}")
                self._changed.wait(remaining)
            return _ESCAPES.sub("", self._decoded)

    def line(self, command: str) -> None:
        """Wait for the next prompt, then type `command` and Enter."""
        self.prompt()
        self.write(command + "\r")

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.popen.wait(timeout)
        self._thread.join(5)
        return rc

    def kill9(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._thread.join(5)
        with contextlib.suppress(OSError):
            os.close(self.master)
