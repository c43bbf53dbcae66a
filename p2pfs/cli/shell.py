"""A small command shell: prompt_toolkit on a terminal, one command per line from a pipe.

Commands are registered with their argument names; wrong arity gets a usage line, an unknown command a
hint, any P2PFSError one clear line, and any other exception one `error: internal error: ...` line (the
shell goes on). Results go to stdout and every `error: ...` line to stderr, each flushed per line, so a
program driving the shell over a pipe can read results as they come; every line is made literal first
(p2pfs.safetext), since lines carry names and messages from the network. A piped shell ends with status
1 if any command failed, 0 otherwise.

On a terminal:
- Ctrl-C while a command runs cancels that command only (the shell prints what was kept and prompts
  again); at the prompt it clears the line; Ctrl-D or `exit` end the shell.
- what is typed while a command runs is neither echoed (it would land in the progress bar) nor run
  afterwards: echo is off until the command ends, and the typed text is then discarded.
- completion: command names in the first word, then what each argument takes (see `Shell.add`).
- history is kept across sessions in `$XDG_STATE_HOME/p2pfs/` (default `~/.local/state/p2pfs/`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pfs.errors import P2PFSError
from p2pfs.safetext import literal

if TYPE_CHECKING:
    from prompt_toolkit.completion import Completer
    from prompt_toolkit.history import History

log = logging.getLogger("p2pfs.shell")

Handler = Callable[..., Awaitable[None]]
#: an argument that completes to local paths (see `Shell.add`)
PATH = "path"
#: what an argument completes to: PATH, a callable giving the names to offer, or None (nothing)
ArgCompletion = str | Callable[[], Iterable[str]] | None


class Cancelled(Exception):
    """Raised by a handler whose command was interrupted (Ctrl-C, see `Shell.interrupted`) in place of
    the CancelledError, to have the shell print its one line (`str(exc)`) instead of `cancelled`."""


@dataclass
class Command:
    name: str
    args: tuple[str, ...]
    help: str
    handler: Handler
    #: what each argument completes to (see ArgCompletion; missing: nothing)
    complete: tuple[ArgCompletion, ...] = ()
    #: the arguments may be given again, as a whole group, any number of times (`connect H P H P`)
    repeat: bool = False

    @property
    def usage(self) -> str:
        # (the seed's usage line, even where the group may repeat: `help` says so)
        return " ".join([self.name, *(f"<{a}>" for a in self.args)])

    def arity_ok(self, count: int) -> bool:
        if not self.repeat or not self.args:
            return count == len(self.args)
        return count >= len(self.args) and count % len(self.args) == 0


class Shell:
    """`history`: the name of the history file in the state directory (None: no history kept)."""

    def __init__(self, prompt: str, history: str | None = None) -> None:
        self.prompt = prompt
        self.history = history
        self.commands: dict[str, Command] = {}
        self.running = True
        #: some command failed (a piped shell then ends with status 1)
        self.failed = False
        #: the command running now was interrupted by Ctrl-C (its task is being cancelled)
        self.interrupted = False
        self.add("help", (), "show the commands", self._help)

    def add(
        self,
        name: str,
        args: tuple[str, ...],
        help: str,
        handler: Handler,
        complete: Sequence[ArgCompletion] = (),
        repeat: bool = False,
    ) -> None:
        """`complete`: what each argument completes to on a terminal (PATH: local paths; a callable: the
        names it returns; None: nothing). `repeat`: the group of arguments may be given several times."""
        self.commands[name] = Command(name, args, help, handler, tuple(complete), repeat)

    async def _help(self) -> None:
        width = max(len(c.usage) for c in self.commands.values())
        for command in self.commands.values():
            say(f"  {command.usage:<{width}}  {command.help}")

    async def execute(self, line: str) -> bool:
        """Run one command line; every problem becomes one `error:` line on stderr (and False)."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return self._failure(f"cannot parse the command: {exc}")
        if not words:
            return True
        command = self.commands.get(words[0])
        if command is None:
            return self._failure(f"unknown command: {words[0]} (type help for the commands)")
        if not command.arity_ok(len(words) - 1):
            return self._failure(f"usage: {command.usage}")
        try:
            await command.handler(*words[1:])
        except Cancelled as exc:
            say(str(exc))
        except P2PFSError as exc:
            return self._failure(str(exc))
        except OSError as exc:
            return self._failure(exc.strerror or str(exc))
        except Exception as exc:  # a bug (or a reply nobody foresaw) must not end the operator's shell
            # (KeyboardInterrupt, SystemExit and asyncio.CancelledError are not Exceptions: they go on up)
            log.debug("command %r failed", line, exc_info=True)
            return self._failure(f"internal error: {type(exc).__name__}: {exc}")
        return True

    def _failure(self, text: str) -> bool:
        self.failed = True
        error(text)
        return False

    async def run(self) -> int:
        """Read and run commands until `exit` (handlers set `running = False`) or end of input. Returns
        the exit status: 1 if a piped shell had a command fail, else 0."""
        if sys.stdin.isatty() and sys.stdout.isatty():
            await self._run_terminal()
            return 0
        await self._run_pipe()
        return 1 if self.failed else 0

    async def _run_pipe(self) -> None:
        # stdin is read by a daemon thread, not the loop's executor: a thread of the executor blocked in
        # readline would keep the process from ending on SIGINT until more input (or its end) came.
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def put(line: str) -> None:
            with contextlib.suppress(RuntimeError):  # (the loop is closed: the shell has ended)
                loop.call_soon_threadsafe(lines.put_nowait, line)

        def read() -> None:
            try:
                while line := sys.stdin.readline():
                    put(line)
            except (OSError, ValueError) as exc:  # (stdin closed or unreadable: the end of input)
                log.debug("reading stdin: %s", exc)
            put("")

        threading.Thread(target=read, name="p2pfs-stdin", daemon=True).start()
        while self.running:
            line = await lines.get()
            if not line:
                return
            await self.execute(line)

    async def _run_terminal(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession(
            completer=make_completer(self.commands), history=open_history(self.history)
        )
        while self.running:
            try:
                with patch_stdout():
                    line = await session.prompt_async(self.prompt)
            except EOFError:
                return
            except KeyboardInterrupt:
                continue
            await self._execute_interruptible(line)

    async def _execute_interruptible(self, line: str) -> None:
        """Run a command on a terminal: Ctrl-C (SIGINT) cancels it, and only it; typed text is not
        echoed meanwhile and is discarded when the command ends."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self.execute(line))
        self.interrupted = False

        def interrupt() -> None:
            if not self.interrupted:  # (once: a second Ctrl-C must not cut the cancellation's clean-up)
                self.interrupted = True
                task.cancel()

        try:
            with on_sigint(loop, interrupt), quiet_terminal():
                try:
                    await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if not self.interrupted or (current is not None and current.cancelling()):
                        raise  # (the shell itself is being stopped)
                    say("cancelled")
        finally:
            self.interrupted = False


# -- completion --------------------------------------------------------------------------------------
def make_completer(commands: Mapping[str, Command]) -> Completer:
    """The prompt_toolkit completer of these commands: command names for the first word; for the words
    after, what the command's argument takes (`Shell.add`'s `complete`: PATH for local paths, a callable
    for the names it returns, None for nothing). Words are split at white space. (prompt_toolkit is
    imported here only: one-shot commands never load it.)"""
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    paths = PathCompleter(expanduser=True)

    def names(offered: Iterable[str], word: str) -> Iterator[Completion]:
        # only names that can be typed (no control characters), quoted as the shell's parser needs
        for name in sorted(offered):
            if name.startswith(word) and literal(name) == name:
                yield Completion(shlex.quote(name), -len(word), display=name)

    class ShellCompleter(Completer):
        def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
            text = document.text_before_cursor
            words = text.split()
            if not words or text[-1:].isspace():
                words.append("")
            word = words[-1]
            if len(words) == 1:
                yield from names(commands, word)
                return
            command = commands.get(words[0])
            position = len(words) - 2
            if command is None or position >= len(command.args) or position >= len(command.complete):
                return
            what = command.complete[position]
            if what == PATH:
                # the argument alone, cursor at its end: completions replace the same text in the line
                yield from paths.get_completions(Document(word, len(word)), complete_event)
            elif callable(what):
                yield from names(what(), word)

    return ShellCompleter()


# -- history -----------------------------------------------------------------------------------------
def state_dir() -> Path:
    """`$XDG_STATE_HOME/p2pfs` (XDG_STATE_HOME defaults to ~/.local/state; a relative one is ignored,
    as the XDG base directory spec says)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "p2pfs"


def open_history(name: str | None) -> History:
    """The FileHistory `name` in the state directory (created mode 0700, the file 0600); if it cannot
    be created or written, an in-memory history and one warning line on stderr."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    if name is None:
        return InMemoryHistory()
    path: Path | None = None
    try:
        directory = state_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / name
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except (OSError, RuntimeError) as exc:  # (RuntimeError: no home directory to be found)
        where = f" in {path}" if path is not None else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"warning: command history not kept{where}: {reason}", file=sys.stderr, flush=True)
        return InMemoryHistory()

    class SafeFileHistory(FileHistory):
        """A FileHistory that turns to memory only (one warning) when its file cannot be read or written
        any more, instead of raising in the middle of a prompt."""

        broken = False

        def load_history_strings(self) -> Iterable[str]:
            try:
                return list(super().load_history_strings())
            except OSError as exc:
                self._broke(exc)
                return []

        def store_string(self, string: str) -> None:
            if not self.broken:
                try:
                    super().store_string(string)
                except OSError as exc:
                    self._broke(exc)

        def _broke(self, exc: OSError) -> None:
            if not self.broken:
                self.broken = True
                reason = exc.strerror or str(exc)
                print(f"warning: command history not kept in {self.filename!s}: {reason}", file=sys.stderr, flush=True)

    return SafeFileHistory(path)


# -- the terminal while a command runs ---------------------------------------------------------------
@contextlib.contextmanager
def on_sigint(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Iterator[None]:
    """SIGINT calls `callback` (on the loop) inside the block; the handler before it is restored after."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError, ValueError):  # (not the main thread, or no signals here)
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if previous is not None:  # (asyncio's remove puts back Python's default, not what was there)
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def quiet_terminal() -> Iterator[None]:
    """While the block runs, stdin (if a terminal) neither echoes nor edits lines (ECHO and ICANON off;
    ISIG stays on, so Ctrl-C still sends SIGINT); when it ends, whatever was typed is discarded and the
    terminal's settings are restored, whatever happened."""
    try:
        import termios
    except ImportError:  # pragma: no cover - not on a POSIX system
        yield
        return
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            raise OSError("not a terminal")
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (OSError, ValueError, termios.error) as exc:
        log.debug("terminal left as it is: %s", exc)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError, termios.error):
            termios.tcflush(fd, termios.TCIFLUSH)
        with contextlib.suppress(OSError, termios.error):
            # (TCSAFLUSH: what was typed between the flush and now is discarded too)
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def say(text: str) -> None:
    """Print one line on stdout, literal (control characters as visible escapes)."""
    print(literal(text), flush=True)


def error(text: str) -> None:
    """Print one `error: ...` line on stderr, literal."""
    print(f"error: {literal(text)}", file=sys.stderr, flush=True)


def warn(text: str) -> None:
    """Print one `warning: ...` line on stderr, literal."""
    print(f"warning: {literal(text)}", file=sys.stderr, flush=True)
