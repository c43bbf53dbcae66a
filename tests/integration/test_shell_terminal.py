"""The peer and tracker shells on a real pseudo-terminal (prompt_toolkit, a controlling terminal, Ctrl-C
as the terminal sends it): interrupting a download, typing during one, history across sessions.

A slow download is made deterministic with the publishing peer's P2PFS_TEST_DELAY (it waits that long
before each chunk reply: 64 chunks take over 3 s). Every wait is for output (a prompt starting, a line),
never a sleep.
"""

from __future__ import annotations

import hashlib
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, TerminalProc, make_file, run

CHUNKS = 64
CHUNK = 64 << 10
#: a progress bar with some bytes of the 4 MiB file done (the bar appears with the first verified chunk)
PROGRESS = r"big\.bin\s.*\d+\.\d/4\.0 MiB"


@pytest.fixture
def terminals() -> Iterator[Callable[..., TerminalProc]]:
    """Start p2pfs processes on pseudo-terminals; every one still running at the end is killed."""
    started: list[TerminalProc] = []

    def start(*args: str, **kwargs: object) -> TerminalProc:
        proc = TerminalProc(*args, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill9()


def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state")}


@pytest.fixture
def slow_big_file(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> tuple[Path, str]:
    """`big.bin` (64 chunks of 64 KiB) published by a peer that waits 50 ms before each chunk reply:
    (the file, the tracker's address)."""
    _, taddr = tracker
    src = make_file(tmp_path / "big.bin", CHUNKS * CHUNK, seed=31)
    sharer = procs(
        "share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K",
        env={"P2PFS_TEST_DELAY": "0.05"},
    )  # fmt: skip
    sharer.listening()
    sharer.expect(r"^published big\.bin ")
    return src, taddr


def peer_terminal(terminals: Callable[..., TerminalProc], tmp_path: Path, taddr: str) -> TerminalProc:
    term = terminals("peer", "--host", "127.0.0.1", "--tracker", taddr, cwd=tmp_path, env=user_env(tmp_path))
    term.expect(rf"connected to tracker {re.escape(taddr)}")
    return term


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ctrl_c_cancels_the_download_only_and_keeps_the_part_for_resume(
    tmp_path: Path, terminals: Callable[..., TerminalProc], slow_big_file: tuple[Path, str]
) -> None:
    src, taddr = slow_big_file
    term = peer_terminal(terminals, tmp_path, taddr)
    mine = make_file(tmp_path / "mine.bin", 100_000, seed=32)
    term.line(f"publish {mine}")
    term.expect(r"published mine\.bin ")

    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    term.line(f"download big.bin {dest}")
    term.expect(PROGRESS)
    term.write(b"\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the shell
    cancelled = term.expect(r"download of big\.bin cancelled; (\d+) verified chunks? kept in (\S+) for resume")
    kept = int(cancelled.group(1))
    assert 1 <= kept < CHUNKS, cancelled.group(0)
    assert cancelled.group(2) == f"{dest}.part"
    assert Path(f"{dest}.part").exists() and Path(f"{dest}.part.state").exists()
    assert not dest.exists()

    # still the shell, at a prompt, answering; and the peer still serves what it shared
    term.line("list_file")
    term.expect(r"big\.bin\s.*4194304")
    got = run("get", "mine.bin", str(tmp_path / "mine.copy"), "--tracker", taddr)
    assert got.returncode == 0, got.stderr
    assert sha256(tmp_path / "mine.copy") == sha256(mine)

    # Ctrl-C at the prompt: a fresh prompt, nothing else
    term.prompt()
    term.write(b"\x03")
    term.line("help")
    term.expect(r"download <remote_file> <local_path>")

    # the same download again resumes and completes, with the right bytes
    term.line(f"download big.bin {dest}")
    done = term.expect(r"downloaded big\.bin to (\S+): .*?(\d+) chunks? kept from an earlier attempt")
    assert done.group(1) == str(dest)
    assert int(done.group(2)) >= 1
    assert sha256(dest) == sha256(src)
    assert not Path(f"{dest}.part").exists() and not Path(f"{dest}.part.state").exists()

    term.line("exit")
    assert term.wait() == 0
    assert "Traceback" not in term.text


def test_text_typed_during_a_download_is_neither_shown_nor_run(
    tmp_path: Path, terminals: Callable[..., TerminalProc], slow_big_file: tuple[Path, str]
) -> None:
    src, taddr = slow_big_file
    term = peer_terminal(terminals, tmp_path, taddr)
    dest = tmp_path / "typed.bin"
    term.line(f"download big.bin {dest}")
    term.expect(PROGRESS)
    start = term.pos
    term.write("hello")  # (no Enter: what a user types while waiting; with Enter it would be the same)
    term.write("\r")
    done = term.expect(r"downloaded big\.bin to ")
    assert "hello" not in term.text[start : done.start()]  # the terminal never showed it
    assert sha256(dest) == sha256(src)

    term.line("list_file")
    term.expect(r"big\.bin\s.*4194304")
    term.line("exit")
    assert term.wait() == 0
    assert "hello" not in term.text  # nor was it run as a command afterwards
    assert "unknown command" not in term.text


def test_history_is_kept_across_sessions(tmp_path: Path, terminals: Callable[..., TerminalProc]) -> None:
    env = user_env(tmp_path)
    first = terminals("peer", "--host", "127.0.0.1", env=env)
    first.line("help")
    first.expect(r"unpublish <name>")
    first.line("exit")
    assert first.wait() == 0

    state = tmp_path / "state" / "p2pfs"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    history = state / "peer_history"
    assert "+help\n" in history.read_text() and "+exit\n" in history.read_text()

    second = terminals("peer", "--host", "127.0.0.1", env=env)
    second.prompt()
    # Up recalls the last command of the last session, `exit`, and Enter runs it. (The prompt loads its
    # history just after it starts: Up is pressed until the line shows it, each press awaited.)
    shown = len(second.text)
    for _ in range(100):
        if "exit" in second.typed("\x1b[A")[shown:]:
            break
    else:
        raise AssertionError(f"Up never recalled the history: {second.text[-500:]!r}")
    second.write("\r")
    assert second.wait() == 0

    tracker = terminals("tracker", env=env)
    tracker.line("list_peers")
    tracker.expect("no peers connected")
    tracker.prompt()
    tracker.write("\x04")  # Ctrl-D ends the shell
    assert tracker.wait() == 0
    assert "+list_peers\n" in (state / "tracker_history").read_text()


def test_a_shell_without_a_writable_state_directory_works_without_history(
    tmp_path: Path, terminals: Callable[..., TerminalProc]
) -> None:
    env = user_env(tmp_path)
    (tmp_path / "state").write_text("a file where the state directory would be")
    term = terminals("peer", "--host", "127.0.0.1", env=env)
    term.expect(r"warning: command history not kept")
    term.line("help")
    term.expect(r"unpublish <name>")
    term.line("exit")
    assert term.wait() == 0
    assert term.text.count("warning:") == 1 and "Traceback" not in term.text
