"""p2pfs.cli.render: the transfer bars fit the terminal, in binary units, with plurals right."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest
from rich.console import Console

from p2pfs.cli import render
from p2pfs.peer.transfer import Progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize("width", [30, 50, 70, 90, 140])
def test_a_bar_never_wraps_whatever_the_width(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None, markup=False, emoji=False)
    monkeypatch.setattr(render, "stderr", console)
    name = "a-very-long-name-of-a-checkpoint-shard-00017-of-00128.safetensors"
    with render.TransferDisplay(enabled=True) as display:
        update = display.download(name)
        for done in (0, 1 << 20, 3 << 20):
            update(Progress(name, 3 << 20, 3, done >> 20, done, 1, Counter()))
    lines = [ANSI.sub("", line) for line in out.getvalue().replace("\r", "\n").split("\n")]
    shown = [line for line in lines if line.strip()]
    assert shown, "nothing rendered"
    assert all(len(line) <= width for line in shown), shown
    last = shown[-1]
    assert "MiB" in last and "MB/s" not in last  # one unit family: binary
    if width >= 100:
        assert "1 holder" in last and "1 holders" not in last


def test_plural() -> None:
    assert render.plural(1, "chunk") == "1 chunk"
    assert render.plural(0, "holder") == "0 holders"
    assert render.plural(2, "file") == "2 files"
