"""Display safety: nothing a remote side sends can crash a shell or act on the operator's terminal.

Names with rich markup (`[/x]`) or emoji codes (`:smile:`) are legal and are shown exactly as written;
control characters (ESC, OSC, C1, DEL, bidi overrides) never reach stdout or stderr raw, only as visible
escapes (`\\x1b`). The tracker shell is fed by a raw-socket client; the peer side (`ls`, `get`, the peer
shell) by a hostile fake tracker. Every process is real and every wait is for an output line.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from rich.console import Console

from p2pfs.cli import render
from p2pfs.cli.shell import Shell as CommandShell
from p2pfs.peer.transfer import Progress as DownloadProgress
from p2pfs.safetext import literal, unsafe_character
from tests.integration.test_shells import Shell, start_tracker
from tests.procs import Proc, make_file, run

# A wide console, so that no table cell is wrapped and every name is found whole on one line.
WIDE = {"COLUMNS": "200"}

#: Names that look like rich markup or emoji codes: shown exactly as written. A hostile tracker may
#: send any of them; `[/x]` (a closing tag matching nothing) made rich raise MarkupError.
BRACKET_NAMES = ["[red]lit[/red] [/x].bin", ":smile: [bold]x"]
#: The same kind of names that a tracker accepts for publishing (a published name holds no `/`): rich
#: would have styled or swallowed the tags and put an emoji in place of `:smile:`.
PUBLISHABLE_NAMES = ["[red]lit[red] [bold]x.bin", ":smile: [blink]x", "[@click=(]boom.bin"]

#: Names a terminal would act on: clear screen, set the title, OSC 52 clipboard write, C1 CSI, DEL,
#: a right-to-left override, a newline that would forge a second line.
HOSTILE_NAMES = [
    "\x1b[2Jclear.bin",
    "\x1b]0;pwned\x07title.bin",
    "\x1b]52;c;cHduZWQ=\x07clip.bin",
    "\x9b31mcsi.bin",
    "del\x7f.bin",
    "bidi\u202etxt.exe",
    "nl\nforged line.bin",
]

#: What the fake tracker answers every request it does not serve with.
HOSTILE_MESSAGE = "go away \x1b]0;pwned\x07 [/x] [bold]loud\x1b[2J :smile: \x9b1m"


def assert_all_literal(lines: list[str], what: str) -> None:
    """No line holds a character a terminal acts on (ESC, C1 CSI U+009B, any C0/C1, DEL, bidi)."""
    for line in lines:
        assert unsafe_character(line) is None, f"{what}: raw {unsafe_character(line)} in {line!r}"


def assert_output_literal(text: str, what: str) -> None:
    assert "\x1b" not in text and "\x9b" not in text, f"{what}: {text!r}"
    assert_all_literal(text.split("\n"), what)


# -- a raw client of the real tracker -------------------------------------------------------------------
class RawClient:
    """Framed JSON over a plain socket (docs/PROTOCOL.md section 2): one request, one answer."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(message).encode()  # (ensure_ascii: control characters travel as \u escapes)
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        (length,) = struct.unpack(">I", self._read(4))
        reply: dict[str, Any] = json.loads(self._read(length))
        return reply

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.sock.recv(n - len(data))
            assert more, "tracker closed the connection"
            data += more
        return data

    def close(self) -> None:
        self.sock.close()


def publish(client: RawClient, name: str, hashed: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "REQUEST_PUBLISH", "filename": name, "fileinfo": [2048, 2], "chunksize": 1024}
    if hashed:
        message["chunkhashes"] = base64.b64encode(bytes(range(64))).decode()
    return client.ask(message)


def test_tracker_shell_shows_remote_names_literally_and_survives(procs: Callable[..., Proc]) -> None:
    shell = Shell(procs("tracker", stdin=True, env=WIDE))
    taddr = start_tracker(shell)
    client = RawClient(taddr)
    try:
        assert client.ask({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 4242]}) == {
            "type": "REPLY_REGISTER",
            "address": ["127.0.0.1", 4242],
        }
        for i, name in enumerate(PUBLISHABLE_NAMES):
            assert publish(client, name, hashed=i == 0) == {"type": "REPLY_PUBLISH", "result": True, "message": ""}
        # a name with a `/` is no file name: refused, whatever it looks like
        assert publish(client, BRACKET_NAMES[0], hashed=False)["type"] == "ERROR"

        # Names and hosts a terminal would act on are refused where they enter, with an ERROR.
        for name in HOSTILE_NAMES:
            assert publish(client, name, hashed=False)["type"] == "ERROR", name
            assert client.ask({"type": "REQUEST_FILE_LOCATION", "filename": name})["type"] == "ERROR", name
        for host in ("\x1b[2J", "h\x9b1m", "\u202eevil", "x\x7f"):
            intruder = RawClient(taddr)
            try:
                assert intruder.ask({"type": "REQUEST_REGISTER", "address": [host, 4343]})["type"] == "ERROR", host
            finally:
                intruder.close()
        # An unknown message type is logged by the tracker (stderr): that log line must be literal too.
        unknown = client.ask({"type": "\x1b]0;pwned\x07"})
        assert unknown["type"] == "ERROR" and unknown["request"] == "\x1b]0;pwned\x07"

        peers = shell.run("list_peers")
        assert len([line for line in peers if re.search(r" 127\.0\.0\.1:4242 ", line)]) == 1, peers
        assert not any(re.search(r":4343\b", line) for line in peers), peers  # no intruder was registered

        files = shell.run("list_file")
        for name in PUBLISHABLE_NAMES:
            rows = [line for line in files if f" {name} " in line]
            assert len(rows) == 1, (name, files)
        hashed_row = next(line for line in files if PUBLISHABLE_NAMES[0] in line)
        unverified_row = next(line for line in files if PUBLISHABLE_NAMES[1] in line)
        assert "2048" in hashed_row and "unverified" not in hashed_row
        assert "2048" in unverified_row and "unverified" in unverified_row
        assert all("\U0001f604" not in line for line in files)  # the emoji code was not replaced

        # the shell is still there, and answers
        helptext = shell.run("help")
        assert any(line.strip().startswith("list_file") for line in helptext), helptext
    finally:
        client.close()
    shell.exit("exit")  # (asserts a clean end, with the status the commands earned)
    assert_all_literal(shell.proc.stdout, "tracker shell stdout")
    assert_all_literal(shell.proc.stderr, "tracker shell stderr")
    # the warning about the unknown type is there, with its escape sequence made visible
    assert any("\\x1b]0;pwned\\x07" in line for line in shell.proc.stderr), shell.proc.stderr


# -- a hostile fake tracker -----------------------------------------------------------------------------
class HostileTracker:
    """An asyncio tracker (on its own thread) that lists names full of markup and escape sequences and
    answers everything else with HOSTILE_MESSAGE. With `accept_register` it lets peers register, and
    tells them they are known by a host made of escape sequences."""

    def __init__(self, accept_register: bool) -> None:
        self.accept_register = accept_register
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self.requests: list[str] = []

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(20), "the fake tracker did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                request = json.loads(await reader.readexactly(length))
                kind = request.get("type")
                self.requests.append(str(kind))
                if kind == "REQUEST_CHUNK_REGISTER":
                    continue  # (never answered)
                reply = self._answer(request)
                body = json.dumps(reply, ensure_ascii=False).encode()  # (U+009B goes as raw UTF-8)
                writer.write(struct.pack(">I", len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("type")
        if kind == "REQUEST_FILE_LIST":
            names = [*BRACKET_NAMES, *HOSTILE_NAMES]
            return {
                "type": "REPLY_FILE_LIST",
                "filelist": {name: [1000 + i, 1] for i, name in enumerate(names)},
                "contentids": {BRACKET_NAMES[0]: "\x1b]0;cid\x07" + "a" * 58, HOSTILE_NAMES[0]: "[/x]" * 16},
            }
        if kind == "REQUEST_REGISTER" and self.accept_register:
            return {"type": "REPLY_REGISTER", "address": ["\x1b]0;pwned\x07", request["address"][1]]}
        if kind == "PEER_PING_PONG":
            return request
        return {"type": "ERROR", "message": HOSTILE_MESSAGE, "request": kind}


@pytest.fixture
def hostile_tracker() -> Iterator[HostileTracker]:
    with HostileTracker(accept_register=True) as tracker:
        yield tracker


def assert_file_table_literal(lines: list[str]) -> None:
    """The fake tracker's file list, as a table: every name once, literal."""
    for name in [*BRACKET_NAMES, *HOSTILE_NAMES]:
        shown = literal(name)
        assert len([line for line in lines if f" {shown} " in line]) == 1, (shown, lines)
    assert "\\x1b[2Jclear.bin" in "\n".join(lines)  # (what literal gives, spelled out once)
    assert not any(line.strip().startswith("forged line") for line in lines), lines
    cid_row = next(line for line in lines if BRACKET_NAMES[0] in line)
    assert "\\x1b]0;cid\\x07aaaa" in cid_row, cid_row  # the first 16 characters of the content id
    assert "[/x][/x][/x][/x]" in next(line for line in lines if literal(HOSTILE_NAMES[0]) in line)


def test_ls_shows_a_hostile_file_list_literally(hostile_tracker: HostileTracker) -> None:
    got = run("ls", "--tracker", hostile_tracker.address, env=WIDE)
    assert got.returncode == 0, got.stderr
    assert_output_literal(got.stdout + got.stderr, "ls")
    assert_file_table_literal(got.stdout.splitlines())
    assert got.stderr == ""


@pytest.mark.parametrize("accept_register", [False, True], ids=["register-refused", "location-refused"])
def test_get_reports_a_hostile_error_in_one_literal_line(tmp_path: Path, accept_register: bool) -> None:
    with HostileTracker(accept_register) as tracker:
        got = run("get", "some.bin", str(tmp_path / "out.bin"), "--tracker", tracker.address, env=WIDE)
    assert got.returncode != 0
    assert_output_literal(got.stdout + got.stderr, "get")
    assert got.stdout == ""
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pfs: error: "), lines
    assert literal(HOSTILE_MESSAGE) in lines[0], lines
    assert "\\x1b]0;pwned\\x07 [/x] [bold]loud\\x1b[2J :smile: \\x9b1m" in lines[0]
    assert ("REQUEST_FILE_LOCATION" in tracker.requests) == accept_register
    assert not (tmp_path / "out.bin").exists()


def test_peer_shell_survives_a_hostile_tracker(
    tmp_path: Path, procs: Callable[..., Proc], hostile_tracker: HostileTracker
) -> None:
    proc = procs("peer", "--host", "127.0.0.1", stdin=True, env=WIDE)
    proc.listening()
    shell = Shell(proc)
    host, port = hostile_tracker.address.rsplit(":", 1)
    assert shell.run(f"connect {host} {port}") == [f"connected to tracker {hostile_tracker.address}"]

    assert_file_table_literal(shell.run("list_file"))

    refused = shell.one_error(f"download some.bin {tmp_path / 'out.bin'}")
    assert literal(HOSTILE_MESSAGE) in refused, refused
    src = make_file(tmp_path / "mine.bin", 3000)
    refused = shell.one_error(f"publish {src}")
    assert literal(HOSTILE_MESSAGE) in refused, refused

    helptext = shell.run("help")
    assert any(line.strip().startswith("list_file") for line in helptext), helptext
    assert_file_table_literal(shell.run("list_file"))  # and once more, after the errors
    shell.exit("exit")  # (asserts a clean end, with the status the commands earned)
    assert_all_literal(proc.stdout, "peer shell stdout")
    assert_all_literal(proc.stderr, "peer shell stderr")


# -- in-process: the shell's last line of defence, and the progress bar ---------------------------------
def run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (its handler awaits nothing) to its end, in this thread."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("the coroutine suspended")


def test_shell_turns_an_unexpected_exception_into_one_literal_line(capsys: pytest.CaptureFixture[str]) -> None:
    shell = CommandShell("test> ")

    async def boom() -> None:
        raise KeyError("reply held \x1b]0;pwned\x07 [/x]")

    async def interrupted() -> None:
        raise KeyboardInterrupt

    async def cancelled() -> None:
        raise asyncio.CancelledError

    async def exits() -> None:
        raise SystemExit(3)

    shell.add("boom", (), "fails", boom)
    shell.add("interrupted", (), "is interrupted", interrupted)
    shell.add("cancelled", (), "is cancelled", cancelled)
    shell.add("exits", (), "exits", exits)

    run_now(shell.execute("boom"))
    err = capsys.readouterr().err
    assert err == "error: internal error: KeyError: 'reply held \\x1b]0;pwned\\x07 [/x]'\n"
    run_now(shell.execute("help"))  # still answering
    assert "boom" in capsys.readouterr().out

    with pytest.raises(KeyboardInterrupt):
        run_now(shell.execute("interrupted"))
    with pytest.raises(asyncio.CancelledError):
        run_now(shell.execute("cancelled"))
    with pytest.raises(SystemExit):
        run_now(shell.execute("exits"))
    assert capsys.readouterr().out == ""


def test_say_and_error_print_literal_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from p2pfs.cli.shell import error, say

    say("tracker \x1b]0;pwned\x07 is back [/x]")
    error("no \x9b1m\nforged")
    printed = capsys.readouterr()
    assert printed.out == "tracker \\x1b]0;pwned\\x07 is back [/x]\n"
    assert printed.err == "error: no \\x9b1m\\x0aforged\n"


def progress(name: str, chunks_done: int, bytes_done: int) -> DownloadProgress:
    return DownloadProgress(
        name=name, filesize=2048, chunk_count=2, chunks_done=chunks_done, bytes_done=bytes_done, holders=3, sources=Counter()
    )


def test_progress_bar_shows_a_hostile_name_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    # a recording console that would interpret markup and emoji if it were handed a str
    monkeypatch.setattr(render, "stderr", Console(file=buffer, width=200, force_terminal=False))
    name = "[red]lit[/red] [/x] :smile: \x1b]0;pwned\x07"
    with render.ProgressBar(name, enabled=True) as bar:
        bar.update(progress(name, 1, 1024))
        bar.update(progress(name, 2, 2048))
    shown = buffer.getvalue()
    assert "[red]lit[/red] [/x] :smile: \\x1b]0;pwned\\x07" in shown, shown
    assert "3 holders" in shown
    assert_output_literal(shown, "progress bar")
