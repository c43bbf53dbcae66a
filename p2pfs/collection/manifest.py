"""A collection's manifest: the list of its members, one JSON line each, and the rules a downloader checks
before it writes anything (pure: bytes and strings in, entries or ManifestError out; no I/O).

Format (UTF-8, one JSON object per line, `\\n` after each):

    {"manifest": 1, "name": "ds", "files": 3, "dirs": 2, "links": 1, "size": 5000}
    {"path": "a", "type": "dir"}
    {"path": "a/run.sh", "size": 1000, "x": true}
    {"path": "a/z", "type": "link", "target": "run.sh"}
    {"path": "b", "type": "dir"}
    {"path": "b/data.bin", "size": 4000}
    {"path": "empty.txt", "size": 0}

Entries come in the canonical order: depth first, the entries of a directory sorted by the UTF-8 bytes
of their names, a directory right before its contents. Every directory is listed (empty ones too). The
collection's bytes are the manifest, zeros up to the next chunk boundary, then the bytes of every file
in manifest order (packed across file boundaries, as BitTorrent v1 does), so a 4 KiB file costs no chunk
of its own.

A downloader refuses (ManifestError) any path that is empty, absolute, has an empty, `.` or `..`
component, a NUL or control character, a component over 255 bytes; entries out of the canonical order
(which is how duplicates are found without remembering every path); a member whose directory was not
listed before it; a link whose target is absolute, not normalised, or leads out of the tree; counts or
sizes that disagree with the header. Checking needs memory for one path per directory level only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from typing import Literal

import msgspec

from p2pfs.safetext import unsafe_character

VERSION = 1
#: Longest member path, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Longest component (NAME_MAX).
MAX_COMPONENT_BYTES = 255
#: Longest manifest line: a path of MAX_PATH_BYTES escaped by JSON (up to 6 bytes a byte) and a target.
MAX_LINE_BYTES = 2 * 6 * MAX_PATH_BYTES + 256


class ManifestError(ValueError):
    """A manifest that breaks the rules above; the message names the entry."""


class Header(msgspec.Struct, forbid_unknown_fields=False):
    manifest: int
    name: str
    files: int
    dirs: int
    links: int
    size: int


class Entry(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    path: str
    type: Literal["file", "dir", "link"] = "file"
    size: int = 0
    #: the executable bit (files only)
    x: bool = False
    #: where a link points, relative to the link's directory (links only)
    target: str | None = None

    @property
    def is_file(self) -> bool:
        return self.type == "file"


_header_decoder = msgspec.json.Decoder(Header)
_entry_decoder = msgspec.json.Decoder(Entry)
_encoder = msgspec.json.Encoder()


def encode_header(header: Header) -> bytes:
    return _encoder.encode(header) + b"\n"


def encode_entry(entry: Entry) -> bytes:
    return _encoder.encode(entry) + b"\n"


def components(path: str) -> list[bytes]:
    """The path's components as UTF-8 bytes: the sort key of the canonical order."""
    return [c.encode("utf-8", "surrogateescape") for c in path.split("/")]


def check_path(path: str) -> None:
    """A member path the downloader may create under DEST."""
    if not path:
        raise ManifestError("an entry has an empty path")
    bad = unsafe_character(path)
    if bad is not None:
        raise ManifestError(f"entry {path!r} has a control character ({bad})")
    if path.startswith("/"):
        raise ManifestError(f"entry {path!r} is an absolute path")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"entry {path!r} is not valid UTF-8") from None
    if len(raw) > MAX_PATH_BYTES:
        raise ManifestError(f"entry {path[:64]!r}... is longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            what = f"a {part!r}" if part else "an empty"
            raise ManifestError(f"entry {path!r} has {what} component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ManifestError(f"entry {path!r} has a component longer than {MAX_COMPONENT_BYTES} bytes")


def link_target_inside(link_path: str, target: str) -> bool:
    """Whether a link at `link_path` pointing to `target` stays inside the tree, in a form whose meaning
    does not depend on other links: relative, normalised, `..` only at its start, and never above the
    tree's root. (A `..` after a component could climb out through another link: `x/d/..` where `x/d`
    is itself a link to `..`.)"""
    if not target or target.startswith("/") or unsafe_character(target) is not None:
        return False
    if posixpath.normpath(target) != target:
        return False
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        return False
    depth = link_path.count("/")  # (directories above the link, inside the tree)
    return ups <= depth


class Checker:
    """Checks entries one at a time, in order, with memory for the current directory chain only."""

    def __init__(self, header: Header) -> None:
        if header.manifest != VERSION:
            raise ManifestError(f"manifest version {header.manifest} is not supported (this p2pfs reads {VERSION})")
        if min(header.files, header.dirs, header.links, header.size) < 0:
            raise ManifestError("the manifest header has a negative count")
        self.header = header
        self._previous: list[bytes] | None = None
        #: the directories enclosing the last entry, outermost first
        self._dirs: list[str] = []
        self.files = self.dirs = self.links = self.size = 0

    def check(self, entry: Entry) -> Entry:
        check_path(entry.path)
        key = components(entry.path)
        if self._previous is not None and key <= self._previous:
            why = "listed twice" if key == self._previous else "out of order (or listed twice)"
            raise ManifestError(f"entry {entry.path!r} is {why}")
        self._previous = key
        parent = entry.path.rpartition("/")[0]
        while self._dirs and self._dirs[-1] != parent:
            self._dirs.pop()
        if parent and (not self._dirs or self._dirs[-1] != parent):
            raise ManifestError(f"entry {entry.path!r} comes before its directory {parent!r}")
        if entry.type == "dir":
            self._dirs.append(entry.path)
            self.dirs += 1
            if entry.size or entry.x or entry.target is not None:
                raise ManifestError(f"directory entry {entry.path!r} has file fields")
        elif entry.type == "link":
            self.links += 1
            if entry.target is None or not link_target_inside(entry.path, entry.target):
                raise ManifestError(f"link {entry.path!r} points outside the tree ({entry.target!r})")
        else:
            if entry.size < 0 or entry.target is not None:
                raise ManifestError(f"file entry {entry.path!r} has a bad size or a target")
            self.files += 1
            self.size += entry.size
        if self.files > self.header.files or self.dirs > self.header.dirs or self.links > self.header.links:
            raise ManifestError("the manifest has more entries than its header says")
        if self.size > self.header.size:
            raise ManifestError("the manifest's files are larger than its header says")
        return entry

    def finish(self) -> None:
        h = self.header
        if (self.files, self.dirs, self.links, self.size) != (h.files, h.dirs, h.links, h.size):
            raise ManifestError(
                f"the manifest lists {self.files} file(s), {self.dirs} directory(ies), {self.links} link(s) "
                f"and {self.size} bytes; its header says {h.files}, {h.dirs}, {h.links} and {h.size}"
            )


def decode_header(line: bytes) -> Header:
    try:
        return _header_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"the manifest header is invalid: {exc}") from None


def decode_entry(line: bytes) -> Entry:
    try:
        return _entry_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"a manifest entry is invalid: {exc}") from None


def read(lines: Iterable[bytes]) -> tuple[Header, Iterator[Entry]]:
    """Parse and check a manifest given as lines (without or with their `\\n`): the header, and the
    entries as a generator that checks each before yielding it and checks the totals at the end."""
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise ManifestError("the manifest is empty") from None
    header = decode_header(first)
    checker = Checker(header)

    def entries() -> Iterator[Entry]:
        for line in it:
            if len(line) > MAX_LINE_BYTES:
                raise ManifestError("a manifest line is too long")
            if line.strip():
                yield checker.check(decode_entry(line))
        checker.finish()

    return header, entries()
