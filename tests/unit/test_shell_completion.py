"""Completion in the shells (no terminal needed: a prompt_toolkit Document in, completions out)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent, Completer
from prompt_toolkit.document import Document

from p2pfs.cli import shells
from p2pfs.cli.shell import Shell, make_completer
from p2pfs.peer.node import Peer
from p2pfs.protocol import messages as m
from p2pfs.tracker.server import TrackerServer


def offered(completer: Completer, text: str) -> list[str]:
    """The texts offered with the cursor at the end of `text`, each as the line would read after it."""
    document = Document(text, len(text))
    return [
        text[: len(text) + c.start_position] + c.text
        for c in completer.get_completions(document, CompleteEvent(completion_requested=True))
    ]


@pytest.fixture
def peer_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Shell:
    """A peer shell (its peer never started) whose `list_file` gets four names; cwd a directory holding
    `local.bin` and `logs/`."""
    peer = Peer("127.0.0.1", 0, control=False)
    shell = shells.peer_shell(peer)

    async def file_list() -> m.ReplyFileList:
        return m.ReplyFileList(
            filelist={"data.bin": (10, 1), "dataset.tar": (20, 1), "model.ckpt": (30, 1), "my file.bin": (1, 1)}
        )

    monkeypatch.setattr(peer, "file_list", file_list)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.bin").write_bytes(b"x")
    (tmp_path / "logs").mkdir()
    return shell


def test_first_word_completes_command_names(peer_shell: Shell) -> None:
    completer = make_completer(peer_shell.commands)
    assert offered(completer, "") == ["connect", "download", "exit", "help", "list_file", "publish", "unpublish"]
    assert offered(completer, "d") == ["download"]
    assert offered(completer, "  li") == ["  list_file"]
    assert offered(completer, "x") == []


def test_arguments_never_offer_command_names(peer_shell: Shell) -> None:
    completer = make_completer(peer_shell.commands)
    for text in ("connect ", "connect 127.0.0.1 ", "list_file ", "help ", "frobnicate ", "exit "):
        assert offered(completer, text) == [], text
    assert offered(completer, "download data.bin out.bin ") == []  # (beyond the last argument)
    assert not [line for line in offered(completer, "publish ") if "download" in line]


def test_publish_completes_local_paths(peer_shell: Shell) -> None:
    completer = make_completer(peer_shell.commands)
    assert offered(completer, "publish lo") == ["publish local.bin", "publish logs"]
    assert offered(completer, "publish loc") == ["publish local.bin"]


async def test_download_completes_the_last_listed_names_then_local_paths(peer_shell: Shell) -> None:
    names = make_completer(peer_shell.commands)
    assert offered(names, "download ") == []  # nothing listed yet
    assert await peer_shell.execute("list_file")  # (the shell remembers the names it listed)
    assert offered(names, "download dat") == ["download data.bin", "download dataset.tar"]
    assert offered(names, "download m") == ["download model.ckpt", "download 'my file.bin'"]  # quoted
    assert offered(names, "download ") == [
        "download data.bin",
        "download dataset.tar",
        "download model.ckpt",
        "download 'my file.bin'",
    ]
    # the second argument is a local path
    assert offered(names, "download data.bin lo") == ["download data.bin local.bin", "download data.bin logs"]
    assert offered(names, "download data.bin da") == []


def test_tracker_shell_completes_commands_only() -> None:
    completer = make_completer(shells.tracker_shell(TrackerServer()).commands)
    assert offered(completer, "") == ["exit", "help", "list_file", "list_peers", "start"]
    assert offered(completer, "list_") == ["list_file", "list_peers"]
    assert offered(completer, "start ") == [] and offered(completer, "start 0.0.0.0 ") == []
