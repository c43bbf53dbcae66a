"""Ctrl-C while a shell command runs (SIGINT to this process, in-process): that command is cancelled, the
shell goes on, and SIGINT is handled as before once the command is over."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from p2pfs.cli.shell import Cancelled, Shell


async def test_sigint_cancels_the_running_command_only(capsys: pytest.CaptureFixture[str]) -> None:
    shell = Shell("test> ")
    running = asyncio.Event()
    cleaned_up: list[str] = []

    async def forever() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append("forever")

    async def download() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert shell.interrupted
            raise Cancelled("download of x cancelled; 3 verified chunks kept in x.part for resume") from None

    shell.add("forever", (), "never ends", forever)
    shell.add("download", (), "says what it kept", download)
    before = signal.getsignal(signal.SIGINT)

    for command, line in (("forever", "cancelled"), ("download", "download of x cancelled; 3 verified")):
        running.clear()
        task = asyncio.create_task(shell._execute_interruptible(command))
        await running.wait()
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(task, 10)
        assert capsys.readouterr().out.startswith(line)
        assert not shell.interrupted and not shell.failed and shell.running
    assert cleaned_up == ["forever"]
    assert signal.getsignal(signal.SIGINT) == before  # (the handler from before is back)
    assert await shell.execute("help")
