"""A real redis-server of a test's own (Debian's `redis-server`), on a free loopback port, saving
nothing to disk: used by the Redis store tests and the fault trials. `REDIS_SERVER` is None where it is
not installed (the callers skip with one line)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Started with `start` (again after `kill9`: same port, empty), stopped with `kill9`."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.popen: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start it and return once it accepts connections (it says so); AssertionError if it does not."""
        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.popen = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.popen.stdout is not None
        seen = []
        for line in self.popen.stdout:  # (awaited: redis-server says when it accepts connections)
            seen.append(line)
            if "Ready to accept connections" in line:
                # (its later output is drained, so a full pipe never stalls it)
                threading.Thread(target=self.popen.stdout.read, daemon=True).start()
                break
        else:
            raise AssertionError(f"redis-server did not start on port {self.port}: {''.join(seen)}")
        assert self.cli("PING") == "PONG"

    def cli(self, *command: str) -> str:
        """One command through a plain socket (RESP), the reply as text (a status, a bulk or an integer)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            parts = [f"*{len(command)}\r\n"] + [f"${len(c.encode())}\r\n{c}\r\n" for c in command]
            s.sendall("".join(parts).encode())
            replies = s.makefile("rb")
            reply = replies.readline().decode().rstrip("\r\n")
            if reply.startswith("$") and reply != "$-1":  # (a bulk string: its bytes on the next line)
                reply = "$" + replies.readline().decode().rstrip("\r\n")
        return reply[1:]

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
