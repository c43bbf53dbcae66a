"""The tracker and peer shells, driven over a pipe: one command per line in, results as stdout lines,
errors as `error: ...` lines on stderr.

Every command's output is collected exactly with `Shell.run`: after the command it sends a unique
unknown-command marker and awaits the marker's error line on stderr. The harness reads stdout before
each piece of stderr (tests.procs.Proc), so the stdout lines printed since the last marker are that
command's whole output, and the `error:` lines since then its errors (no sleeping, no guessing how many
lines will come). Each marker is a failed command: a shell driven by `run` ends with status 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.procs import P2PFS, Proc, make_file, run

# 127.0.0.1:1 — a privileged port nothing listens on in the test environment: connecting is refused.
REFUSED_PORT = "1"


STATUS_LINE = re.compile(r"^(tracker \S+ is (unreachable|back)|lost the connection to tracker)")


class Shell:
    """A shell process on a pipe; `run(command)` returns exactly the stdout lines that command printed
    (and fails if it printed an error: `run_both` and `one_error` are for commands that may fail)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self._marks = 0

    def run_both(self, command: str, timeout: float = 30.0) -> tuple[list[str], list[str]]:
        """The command's stdout lines and its `error: ...` lines (stderr)."""
        # Everything printed so far has been awaited (the previous marker, or a startup line), so it is
        # already in proc.stdout / proc.stderr and the starts are exact.
        self._marks += 1
        marker = f"__end_of_output_{self._marks}__"
        out_start, err_start = len(self.proc.stdout), len(self.proc.stderr)
        self.proc.send(command)
        self.proc.send(marker)
        self.proc.expect_err(rf"^error: unknown command: {marker}\b", timeout)
        out = self.proc.stdout[out_start:]
        err = self.proc.stderr[err_start:]
        assert err and marker in err[-1], err
        assert not any(marker in line for line in out), out  # (errors never go to stdout)
        # tracker status lines ("... is unreachable", "... is back") come whenever the tracker comes and goes
        results = [line for line in out if not STATUS_LINE.match(line)]
        # (stderr also has the log's `p2pfs: LEVEL: ...` lines)
        errors = [line for line in err[:-1] if line.startswith("error: ")]
        return results, errors

    def run(self, command: str, timeout: float = 30.0) -> list[str]:
        """The stdout lines of a command that must not fail."""
        out, errors = self.run_both(command, timeout)
        assert not errors, f"{command!r} failed: {errors}; printed {out}"
        return out

    def one_error(self, command: str) -> str:
        """Run a command that must fail with exactly one `error: ...` line (on stderr, nothing on stdout);
        return that line."""
        out, errors = self.run_both(command)
        assert len(errors) == 1 and not out, f"{command!r} printed {out} and errors {errors}"
        return errors[0]

    def exit(self, command: str | None = "exit") -> int:
        """End the shell (`command`, or end of input if None); it must end cleanly, with the status the
        commands earn: 1 once any failed (every `run` marker does), else 0. Returns the status."""
        if command is None:
            self.proc.close_stdin()
        else:
            self.proc.send(command)
        rc = self.proc.wait(20)
        assert_no_traceback(self.proc)
        assert not [line for line in self.proc.stderr if line.startswith("p2pfs: error")], self.proc.stderr
        assert rc == (1 if self._marks else 0), (rc, self.proc.stderr)
        return rc


def assert_no_traceback(proc: Proc) -> None:
    for line in proc.stdout + proc.stderr:
        assert "Traceback" not in line, f"{proc.args}: stdout {proc.stdout}; stderr {proc.stderr}"


def script(*args: str, lines: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a shell (`p2pfs ARGS`) on a whole script piped in, to its end."""
    return subprocess.run(
        [*P2PFS, *args],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def tracker_shell(procs: Callable[..., Proc], *args: str) -> Shell:
    return Shell(procs("tracker", *args, stdin=True))


def start_tracker(shell: Shell) -> str:
    shell.proc.send("start 127.0.0.1 0")
    return shell.proc.listening()


def peer_shell(procs: Callable[..., Proc], *args: str) -> tuple[Shell, str]:
    """A peer shell serving on loopback: (shell, its chunk-server address)."""
    proc = procs("peer", "--host", "127.0.0.1", *args, stdin=True)
    return Shell(proc), proc.listening()


def connect(shell: Shell, taddr: str) -> None:
    host, port = taddr.rsplit(":", 1)
    assert shell.run(f"connect {host} {port}") == [f"connected to tracker {taddr}"]


def ls_json(taddr: str) -> dict[str, list[int]]:
    got = run("ls", "--tracker", taddr, "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


# -- tracker shell -------------------------------------------------------------------------------------
def test_tracker_shell_commands_and_errors(procs: Callable[..., Proc]) -> None:
    shell = tracker_shell(procs)
    taddr = start_tracker(shell)
    assert int(taddr.rsplit(":", 1)[1]) != 0
    assert shell.proc.stdout == [f"listening on {taddr}"]

    again = shell.one_error("start 127.0.0.1 0")
    assert "already listening" in again and taddr in again

    assert shell.run("list_peers") == ["no peers connected"]
    assert shell.run("list_file") == ["no files published"]

    helptext = shell.run("help")
    for usage in ("start <host> <port>", "list_peers", "list_file", "exit", "help"):
        assert any(line.strip().startswith(usage) for line in helptext), (usage, helptext)

    assert shell.one_error("frobnicate now").startswith("error: unknown command: frobnicate")
    assert shell.one_error("start 127.0.0.1") == "error: usage: start <host> <port>"
    assert shell.one_error("list_peers everyone") == "error: usage: list_peers"
    assert shell.one_error("exit now") == "error: usage: exit"
    assert shell.one_error('start "127.0.0.1 0').startswith("error: cannot parse")

    # after all those errors the shell still works, and it really is listening
    assert shell.run("list_peers") == ["no peers connected"]
    assert run("ls", "--tracker", taddr).stdout.strip() == "no files published"

    shell.exit("exit")
    # `exit` shut the tracker down: nothing listens there any more
    gone = run("ls", "--tracker", taddr)
    assert gone.returncode != 0 and "connection refused" in gone.stderr


def test_tracker_shell_start_errors_leave_it_usable(procs: Callable[..., Proc]) -> None:
    shell = tracker_shell(procs)
    assert "bad port" in shell.one_error("start 127.0.0.1 notaport")
    assert "bad port" in shell.one_error("start 127.0.0.1 70000")
    # a failed start must not count as listening: a good start afterwards works
    taddr = start_tracker(shell)
    host, port = taddr.rsplit(":", 1)
    # a second tracker cannot take the same port: one clear line, and it can still start elsewhere
    other = tracker_shell(procs)
    busy = other.one_error(f"start {host} {port}")
    assert "cannot listen" in busy and port in busy
    other_addr = start_tracker(other)
    assert other_addr != taddr
    other.exit("exit")
    shell.exit("exit")


def test_tracker_shell_lists_connected_peers_and_published_files(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    shell = tracker_shell(procs)
    taddr = start_tracker(shell)
    assert shell.run("list_peers") == ["no peers connected"]

    peer = procs("peer", "--tracker", taddr, "--host", "127.0.0.1", "--no-shell")
    paddr = peer.listening()
    peer.expect(rf"^connected to tracker {re.escape(taddr)}$")
    listing = shell.run("list_peers")
    assert any(paddr in line for line in listing), listing
    assert "no peers connected" not in listing

    src = make_file(tmp_path / "listed.bin", 200_000, seed=11)
    sharer = procs("share", str(src), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K")
    saddr = sharer.listening()
    sharer.expect(r"^published listed\.bin ")
    listing = shell.run("list_peers")
    assert any(paddr in line for line in listing) and any(saddr in line for line in listing), listing

    files = shell.run("list_file")
    row = [line for line in files if "listed.bin" in line]
    assert len(row) == 1, files
    assert "200000" in row[0] and re.search(r"\b4\b", row[0]), row  # bytes and chunk count (64 KiB chunks)

    # the --no-shell peer runs until SIGTERM, and then exits cleanly
    assert peer.popen.poll() is None
    assert peer.interrupt(signal.SIGTERM) == 0
    assert_no_traceback(peer)
    shell.exit(None)  # end of input ends the shell


def test_tracker_with_port_listens_at_once_and_ends_at_eof(procs: Callable[..., Proc]) -> None:
    shell = tracker_shell(procs, "--port", "0")  # default host: the wildcard
    taddr = shell.proc.listening()
    assert shell.proc.stdout[0].startswith("listening on "), shell.proc.stdout
    assert int(taddr.rsplit(":", 1)[1]) != 0
    assert "already listening" in shell.one_error("start 127.0.0.1 0")
    assert run("ls", "--tracker", taddr).stdout.strip() == "no files published"
    shell.exit(None)


# -- peer shell ----------------------------------------------------------------------------------------
def test_peer_shell_needs_a_tracker_first(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    src = make_file(tmp_path / "x.bin", 10_000)
    shell, _ = peer_shell(procs)
    assert "not connected" in shell.one_error("list_file")
    assert "not connected" in shell.one_error(f"publish {src}")
    assert "not connected" in shell.one_error(f"download x.bin {tmp_path / 'out'}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()

    refused = shell.one_error(f"connect 127.0.0.1 {REFUSED_PORT}")
    assert "connection refused" in refused
    # a refused connect leaves it still unconnected, and still working
    assert "not connected" in shell.one_error("list_file")

    assert "bad port" in shell.one_error("connect 127.0.0.1 notaport")
    assert shell.one_error("connect 127.0.0.1") == "error: usage: connect <trackerip> <trackerport>"
    assert shell.one_error("download x.bin") == "error: usage: download <remote_file> <local_path>"
    assert shell.one_error("publish") == "error: usage: publish <localfile>"
    assert shell.one_error("get x.bin").startswith("error: unknown command: get")
    helptext = shell.run("help")
    for usage in (
        "connect <trackerip> <trackerport>",
        "publish <localfile>",
        "list_file",
        "download",
        "exit",
    ):
        assert any(line.strip().startswith(usage) for line in helptext), (usage, helptext)
    shell.exit(None)


def test_peer_shell_publish_list_download(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "data.bin", 3_000_000, seed=5)  # default 1 MiB chunks: 3 chunks
    a, aaddr = peer_shell(procs)
    connect(a, taddr)

    missing = a.one_error(f"publish {tmp_path / 'nope.bin'}")
    assert "nope.bin" in missing
    assert a.run(f"publish {src}") == ["published data.bin (2.9 MiB, 3 chunks)"]
    assert ls_json(taddr) == {"data.bin": [3_000_000, 3]}

    b, _ = peer_shell(procs)
    connect(b, taddr)
    (tmp_path / "other").mkdir()
    rival = make_file(tmp_path / "other" / "data.bin", 1000, seed=6)
    refused = b.one_error(f"publish {rival}")
    assert "already published" in refused and "data.bin" in refused
    assert ls_json(taddr) == {"data.bin": [3_000_000, 3]}  # the first publisher's record is untouched

    files = b.run("list_file")
    assert any("data.bin" in line and "3000000" in line for line in files), files

    dest = tmp_path / "out.bin"
    done = b.run(f"download data.bin {dest}")
    assert len(done) == 1 and done[0].startswith(f"downloaded data.bin to {dest}"), done
    assert aaddr in done[0]  # the only holder was peer A
    assert dest.read_bytes() == src.read_bytes()
    assert not (tmp_path / "out.bin.part").exists()

    unknown = b.one_error(f"download nothing.bin {tmp_path / 'n.bin'}")
    assert "nothing.bin" in unknown
    assert not (tmp_path / "n.bin").exists() and not (tmp_path / "n.bin.part").exists()

    b.exit("exit")
    a.exit("exit")


def test_peer_shell_survives_tracker_exit_and_reconnects(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    t1 = tracker_shell(procs)
    t1addr = start_tracker(t1)
    peer, _ = peer_shell(procs)
    connect(peer, t1addr)
    assert peer.run("list_file") == ["no files published"]
    t1.exit("exit")

    # the tracker is gone: asking it is one error line, and the peer keeps running
    lost = peer.one_error("list_file")
    assert "tracker" in lost
    assert peer.proc.popen.poll() is None

    _, t2addr = tracker
    connect(peer, t2addr)
    src = make_file(tmp_path / "after.bin", 5000, seed=7)
    assert peer.run(f"publish {src}") == ["published after.bin (4.9 KiB, 1 chunk)"]
    assert ls_json(t2addr) == {"after.bin": [5000, 1]}
    peer.exit("exit")


def test_peer_can_publish_again_after_reconnecting(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    t1 = tracker_shell(procs)
    t1addr = start_tracker(t1)
    src = make_file(tmp_path / "kept.bin", 5000, seed=8)
    peer, _ = peer_shell(procs)
    connect(peer, t1addr)
    assert peer.run(f"publish {src}") == ["published kept.bin (4.9 KiB, 1 chunk)"]
    t1.exit("exit")

    _, t2addr = tracker
    connect(peer, t2addr)
    # Either the peer re-publishes what it shares when it connects, or `publish` lets the user do it;
    # either way the new tracker must end up listing the file the peer still serves.
    peer.run_both(f"publish {src}")
    assert ls_json(t2addr) == {"kept.bin": [5000, 1]}


def test_peer_no_shell_runs_until_sigterm(procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    peer = procs("peer", "--tracker", taddr, "--host", "127.0.0.1", "--no-shell")
    peer.listening()
    peer.expect(rf"^connected to tracker {re.escape(taddr)}$")
    # it reads no input (stdin is /dev/null) and so does not stop at end of input: still serving here
    assert run("ls", "--tracker", taddr).returncode == 0
    assert peer.popen.poll() is None
    assert peer.interrupt(signal.SIGTERM) == 0
    assert_no_traceback(peer)


def test_peer_no_shell_with_unreachable_tracker_fails_in_one_line(procs: Callable[..., Proc]) -> None:
    peer = procs("peer", "--tracker", f"127.0.0.1:{REFUSED_PORT}", "--host", "127.0.0.1", "--no-shell")
    assert peer.wait(20) != 0
    assert len(peer.stderr) == 1 and "connection refused" in peer.stderr[0], peer.stderr
    assert_no_traceback(peer)


def test_same_peer_publishing_same_file_twice_is_not_an_error(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "twice.bin", 3000, seed=12)
    other = make_file(tmp_path / "other" / "twice.bin", 10, seed=13) if (tmp_path / "other").mkdir() is None else None
    peer, _ = peer_shell(procs)
    connect(peer, taddr)
    assert peer.run(f"publish {src}") == ["published twice.bin (2.9 KiB, 1 chunk)"]
    assert peer.run(f"publish {src}") == ["published twice.bin (2.9 KiB, 1 chunk)"]
    # a different file under the same name is still refused
    assert "already shared" in peer.one_error(f"publish {other}")
    assert ls_json(taddr) == {"twice.bin": [3000, 1]}
    peer.exit()


# -- piped shells: exit status, errors on stderr ---------------------------------------------------------
def test_piped_tracker_shell_exits_0_after_good_commands_and_1_after_a_failed_one() -> None:
    good = script("tracker", lines=["start 127.0.0.1 0", "list_peers", "list_file", "help", "exit"])
    assert good.returncode == 0, good.stderr
    assert good.stderr == ""
    out = good.stdout.splitlines()
    assert out[0].startswith("listening on 127.0.0.1:") and out[1:3] == ["no peers connected", "no files published"]
    assert not any(line.startswith("error:") for line in out), out

    # an unknown command, then good ones: the shell goes on, the error is on stderr, and the status is 1
    bad = script("tracker", lines=["frobnicate", "start 127.0.0.1", "list_peers", "exit"])
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert bad.stdout.splitlines() == ["no peers connected"]
    assert bad.stderr.splitlines() == [
        "error: unknown command: frobnicate (type help for the commands)",
        "error: usage: start <host> <port>",
    ]

    # the same at end of input (no exit)
    eof = script("tracker", lines=["list_peers", 'start "127.0.0.1 0'])
    assert eof.returncode == 1 and eof.stdout.splitlines() == ["no peers connected"], eof
    assert len(eof.stderr.splitlines()) == 1 and eof.stderr.startswith("error: cannot parse"), eof.stderr
    assert script("tracker", lines=[]).returncode == 0


def test_piped_peer_shell_status_follows_its_commands(tmp_path: Path, tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    host, port = taddr.rsplit(":", 1)
    src = make_file(tmp_path / "ok.bin", 70_000, seed=21)
    good = script("peer", "--host", "127.0.0.1", lines=[f"connect {host} {port}", f"publish {src}", "list_file"])
    assert good.returncode == 0, good.stderr
    assert good.stderr == ""
    assert "published ok.bin (68.4 KiB, 1 chunk)" in good.stdout.splitlines()

    # a P2PFSError (not connected), an OSError-born error (no such file): each one line on stderr
    bad = script(
        "peer",
        "--host",
        "127.0.0.1",
        lines=["list_file", f"connect {host} {port}", f"publish {tmp_path / 'missing.bin'}", "help", "exit"],
    )
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    errors = bad.stderr.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors), errors
    assert "not connected" in errors[0] and "missing.bin" in errors[1]
    out = bad.stdout.splitlines()
    assert f"connected to tracker {taddr}" in out and not any("error" in line for line in out), out
    assert any(line.strip().startswith("unpublish <name>") for line in out), out  # help lists every command


def test_piped_shell_ends_at_sigint_in_one_line(procs: Callable[..., Proc]) -> None:
    """SIGINT to a piped shell stops it at once (it does not wait for more input): 130, `interrupted`."""
    shell, _ = peer_shell(procs)
    assert shell.run("help")
    assert shell.proc.interrupt(signal.SIGINT) == 130
    assert shell.proc.stderr[-1] == "p2pfs: interrupted", shell.proc.stderr
    assert [line for line in shell.proc.stderr if not line.startswith("error: unknown command: __end")] == [
        "p2pfs: interrupted"
    ]
    assert_no_traceback(shell.proc)


def test_peer_shell_unpublish(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "gone.bin", 5000, seed=22)
    kept = make_file(tmp_path / "kept.bin", 5000, seed=23)
    peer, _ = peer_shell(procs)
    connect(peer, taddr)
    assert peer.run(f"publish {src}") == ["published gone.bin (4.9 KiB, 1 chunk)"]
    assert peer.run(f"publish {kept}") == ["published kept.bin (4.9 KiB, 1 chunk)"]
    assert peer.run("unpublish gone.bin") == ["unpublished gone.bin"]
    # its only holder stopped sharing it: the tracker delists it; the peer still serves the other file
    assert ls_json(taddr) == {"kept.bin": [5000, 1]}
    got = run("get", "kept.bin", str(tmp_path / "copy.bin"), "--tracker", taddr)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "copy.bin").read_bytes() == kept.read_bytes()

    again = peer.one_error("unpublish gone.bin")
    assert "gone.bin" in again
    assert peer.one_error("unpublish") == "error: usage: unpublish <name>"
    assert src.exists()  # the file itself is untouched
    peer.exit("exit")
