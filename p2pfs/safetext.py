"""Text that came from the network: which characters a name may not contain, and how any remote string
is made literal before it reaches a terminal.

A terminal acts on control characters: ESC (and the C1 CSI, U+009B) starts escape sequences that can
clear the screen, move the cursor, set the window title or, on some terminals, write to the clipboard.
Bidirectional overrides reorder what is shown ("Trojan Source"). Names carrying any of these are
refused where they enter (publish, registration), and whatever a remote side sent is shown with such
characters replaced by visible escapes, so an operator always sees what was sent, never its effect.
`LiteralFormatter` does the same for log lines, which quote remote strings too.
"""

from __future__ import annotations

import logging
import re

#: C0 controls, DEL, C1 controls, and the Unicode bidirectional embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def unsafe_character(text: str) -> str | None:
    """The first character of `text` that may not appear in a name or host, as `U+XXXX`; None if none."""
    match = _UNSAFE.search(text)
    return None if match is None else f"U+{ord(match.group()):04X}"


def literal(text: object) -> str:
    """`text` with every unsafe character written as a visible escape (`\\x1b`, `\\u202e`): safe to print
    on a terminal, and still telling the reader exactly what was sent. Other text is unchanged."""
    return _UNSAFE.sub(_escape, str(text))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _literal_lines(text: str) -> str:
    return "\n".join(literal(line) for line in text.split("\n"))


class LiteralFormatter(logging.Formatter):
    """A logging Formatter whose every line is literal. The message (which may quote a remote string)
    becomes one line: a newline in it is escaped too, so it cannot forge a log line. A traceback or stack
    keeps its line breaks, so a genuine bug stays readable, and each of its lines is made literal (an
    exception's text can quote a remote string as well)."""

    def format(self, record: logging.LogRecord) -> str:
        # As logging.Formatter.format, but the exception text is never taken from record.exc_text, which
        # another handler's formatter may have filled without escaping.
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        parts = [literal(self.formatMessage(record))]
        if record.exc_info:
            parts.append(_literal_lines(self.formatException(record.exc_info)))
        elif record.exc_text:
            parts.append(_literal_lines(record.exc_text))
        if record.stack_info:
            parts.append(_literal_lines(self.formatStack(record.stack_info)))
        return "\n".join(part for part in parts if part)
