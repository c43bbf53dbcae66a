"""p2pfs.safetext: which characters a name may not hold, how remote text is made literal, and log lines."""

from __future__ import annotations

import logging
import sys

import pytest

from p2pfs.safetext import LiteralFormatter, literal, unsafe_character

# Every class of character a terminal acts on, with the visible escape it must become.
UNSAFE = [
    ("\x00", "\\x00"),
    ("\x07", "\\x07"),  # BEL: ends an OSC sequence
    ("\t", "\\x09"),
    ("\n", "\\x0a"),  # a newline would forge a second output line
    ("\r", "\\x0d"),  # a carriage return would overwrite the start of the line
    ("\x1b", "\\x1b"),  # ESC: starts every escape sequence
    ("\x1f", "\\x1f"),
    ("\x7f", "\\x7f"),  # DEL
    ("\x80", "\\x80"),  # first C1 control
    ("\x9b", "\\x9b"),  # CSI as a single C1 character
    ("\x9d", "\\x9d"),  # OSC as a single C1 character
    ("\x9f", "\\x9f"),  # last C1 control
    ("\u202a", "\\u202a"),  # LEFT-TO-RIGHT EMBEDDING
    ("\u202e", "\\u202e"),  # RIGHT-TO-LEFT OVERRIDE ("Trojan Source")
    ("\u2066", "\\u2066"),  # LEFT-TO-RIGHT ISOLATE
    ("\u2069", "\\u2069"),  # POP DIRECTIONAL ISOLATE
]

# Text that is legal and must come out unchanged: markup-like brackets, emoji codes, non-ASCII letters,
# and the characters just outside the unsafe ranges.
SAFE = [
    "plain.bin",
    "[red]lit[/red] [/x].bin",
    ":smile: [bold]x",
    "naïve ěšč 日本語 🙂.bin",
    " ~",  # U+0020 and U+007E, the neighbours of C0 and DEL
    "\xa0\xff",  # just above C1
    "\u2029\u202f\u2065\u206a",  # just outside the bidi ranges
    "back\\x1bslash",  # already looks like an escape: left as it is
]


@pytest.mark.parametrize(("char", "escape"), UNSAFE)
def test_every_unsafe_character_is_found_and_escaped(char: str, escape: str) -> None:
    assert unsafe_character(f"a{char}b") == f"U+{ord(char):04X}"
    assert literal(f"a{char}b") == f"a{escape}b"


@pytest.mark.parametrize("text", SAFE)
def test_safe_text_is_unchanged(text: str) -> None:
    assert unsafe_character(text) is None
    assert literal(text) == text


def test_unsafe_character_names_the_first_one() -> None:
    assert unsafe_character("ok\u202eno\x1b") == "U+202E"
    assert unsafe_character("") is None


def test_literal_of_escape_sequences_is_one_visible_line() -> None:
    assert literal("\x1b[2J\x1b]0;pwned\x07") == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert literal("\x9b31mred") == "\\x9b31mred"
    assert literal("first\nsecond") == "first\\x0asecond"


def test_literal_is_idempotent_and_takes_any_object() -> None:
    once = literal("\x1b[1m\u202e")
    assert literal(once) == once
    assert unsafe_character(once) is None
    assert literal(ValueError("bad \x1b")) == "bad \\x1b"
    assert literal(42) == "42"


# -- LiteralFormatter --------------------------------------------------------------------------------
def _record(msg: str, *args: object, exc_info: object = None, stack_info: str | None = None) -> logging.LogRecord:
    return logging.LogRecord("p2pfs.test", logging.WARNING, __file__, 1, msg, args, exc_info, None, stack_info)  # type: ignore[arg-type]


def test_formatter_makes_the_message_one_literal_line() -> None:
    formatter = LiteralFormatter("p2pfs: %(levelname)s: %(message)s")
    line = formatter.format(_record("%s: invalid message type %r", "127.0.0.1:5", "\x1b]0;pwned\x07\nforged"))
    assert line == "p2pfs: WARNING: 127.0.0.1:5: invalid message type '\\x1b]0;pwned\\x07\\nforged'"
    # (%r already escaped that one; a %s argument is the dangerous case)
    line = formatter.format(_record("peer said %s", "\x1b[2J\nforged line"))
    assert line == "p2pfs: WARNING: peer said \\x1b[2J\\x0aforged line"
    assert "\n" not in line and unsafe_character(line) is None


def test_formatter_keeps_a_traceback_readable_and_literal() -> None:
    formatter = LiteralFormatter("p2pfs: %(levelname)s: %(message)s")
    try:
        raise RuntimeError("reply held \x1b]0;pwned\x07")
    except RuntimeError:
        exc_info = sys.exc_info()
    text = formatter.format(_record("reader failed", exc_info=exc_info))
    lines = text.split("\n")
    assert lines[0] == "p2pfs: WARNING: reader failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.strip().startswith("raise RuntimeError(") for line in lines)  # the source line, as it was
    assert lines[-1] == "RuntimeError: reply held \\x1b]0;pwned\\x07"
    assert all(unsafe_character(line) is None for line in lines)


def test_formatter_escapes_an_exception_text_cached_by_another_formatter() -> None:
    try:
        raise ValueError("\x1b[2J")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record("failed", exc_info=exc_info)
    logging.Formatter().format(record)  # fills record.exc_text, unescaped
    assert record.exc_text is not None and "\x1b" in record.exc_text
    text = LiteralFormatter("%(message)s").format(record)
    assert text.endswith("ValueError: \\x1b[2J")
    assert all(unsafe_character(line) is None for line in text.split("\n"))
    # the same with only the cached text left (as when exc_info was cleared)
    record.exc_info = None
    text = LiteralFormatter("%(message)s").format(record)
    assert text.endswith("ValueError: \\x1b[2J") and "\x1b" not in text


def test_formatter_escapes_stack_info() -> None:
    text = LiteralFormatter("%(message)s").format(_record("here", stack_info="Stack (most recent call last):\n  at \x1b[2J"))
    assert text == "here\nStack (most recent call last):\n  at \\x1b[2J"
