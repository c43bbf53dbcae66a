"""A small command shell: prompt_toolkit on a terminal, one command per line from a pipe.

Commands are registered with their argument names; wrong arity gets a usage line, an unknown command a
hint, any P2PFSError one clear line, and any other exception one `error: internal error: ...` line (the
shell goes on). Output goes to stdout, flushed per line, so a program driving the shell over a pipe can
read results as they come; every line is made literal first (p2pfs.safetext), since lines carry names
and messages from the network.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from p2pfs.errors import P2PFSError
from p2pfs.safetext import literal

log = logging.getLogger("p2pfs.shell")

Handler = Callable[..., Awaitable[None]]


@dataclass
class Command:
    name: str
    args: tuple[str, ...]
    help: str
    handler: Handler

    @property
    def usage(self) -> str:
        return " ".join([self.name, *(f"<{a}>" for a in self.args)])


class Shell:
    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.commands: dict[str, Command] = {}
        self.running = True
        self.add("help", (), "show the commands", self._help)

    def add(self, name: str, args: tuple[str, ...], help: str, handler: Handler) -> None:
        self.commands[name] = Command(name, args, help, handler)

    async def _help(self) -> None:
        width = max(len(c.usage) for c in self.commands.values())
        for command in self.commands.values():
            say(f"  {command.usage:<{width}}  {command.help}")

    async def execute(self, line: str) -> None:
        """Run one command line; every problem becomes one line of output."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            error(f"cannot parse the command: {exc}")
            return
        if not words:
            return
        command = self.commands.get(words[0])
        if command is None:
            error(f"unknown command: {words[0]} (type help for the commands)")
            return
        if len(words) - 1 != len(command.args):
            error(f"usage: {command.usage}")
            return
        try:
            await command.handler(*words[1:])
        except P2PFSError as exc:
            error(str(exc))
        except OSError as exc:
            error(exc.strerror or str(exc))
        except Exception as exc:  # a bug (or a reply nobody foresaw) must not end the operator's shell
            # (KeyboardInterrupt, SystemExit and asyncio.CancelledError are not Exceptions: they go on up)
            log.debug("command %r failed", line, exc_info=True)
            error(f"internal error: {type(exc).__name__}: {exc}")

    async def run(self) -> None:
        """Read and run commands until `exit` (handlers set `running = False`) or end of input."""
        if sys.stdin.isatty() and sys.stdout.isatty():
            await self._run_terminal()
        else:
            await self._run_pipe()

    async def _run_pipe(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            await self.execute(line)

    async def _run_terminal(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession(completer=WordCompleter(list(self.commands)))
        while self.running:
            try:
                with patch_stdout():
                    line = await session.prompt_async(self.prompt)
            except EOFError:
                return
            except KeyboardInterrupt:
                continue
            await self.execute(line)


def say(text: str) -> None:
    """Print one line on stdout, literal (control characters as visible escapes)."""
    print(literal(text), flush=True)


def error(text: str) -> None:
    """Print one `error: ...` line on stdout, literal."""
    print(f"error: {literal(text)}", flush=True)
