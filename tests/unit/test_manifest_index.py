"""ManifestIndex and MemberSpan (p2pfs.collection.index): a lookup by path agrees with a linear scan of the
manifest, for manifests in memory and for a served collection's manifest file; a member's chunks held by
a holder agree with checking every member chunk's bytes one by one; hostile manifests are refused; member
names `NAME/REL/PATH` are valid in the requests that look a name up, and only there; the tracker's cache
of resolved manifests stays within its bytes."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.chunkset import ChunkSet
from p2pfs.collection import manifest
from p2pfs.collection.index import FEW_CHUNKS, ManifestIndex, Member, MemberSpan
from p2pfs.collection.manifest import Entry, ManifestError
from p2pfs.collection.store import MemberIndex
from p2pfs.errors import ProtocolError
from p2pfs.protocol.framing import decode
from p2pfs.tracker.members import MemberResolver

# (components that sort differently as text and as UTF-8 bytes, with spaces, digits and case)
COMPONENTS = ["a", "b", "a b", "A", "é", "z", "10", "2", "ab", "\u6f22", "x.txt"]


@st.composite
def trees(draw: st.DrawFn) -> list[Entry]:
    """A tree's entries in canonical order (every directory listed before its contents)."""
    leaves = draw(st.sets(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map(tuple), max_size=25))
    dirs = {leaf[:i] for leaf in leaves for i in range(1, len(leaf))}
    entries = []
    for parts in sorted(dirs | leaves, key=lambda p: [c.encode() for c in p]):
        path = "/".join(parts)
        if parts in dirs:
            entries.append(Entry(path, "dir"))
            continue
        kind = draw(st.sampled_from(["file", "file", "file", "empty", "link", "dir"]))
        if kind == "file":
            entries.append(Entry(path, size=draw(st.integers(1, 5000)), x=draw(st.booleans())))
        elif kind == "empty":
            entries.append(Entry(path))
        elif kind == "link":
            entries.append(Entry(path, "link", target=parts[-1] + "x"))
        else:
            entries.append(Entry(path, "dir"))
    return entries


def manifest_bytes(entries: list[Entry], name: str = "ds") -> bytes:
    counts = {kind: sum(e.type == kind for e in entries) for kind in ("file", "dir", "link")}
    size = sum(e.size for e in entries if e.is_file)
    header = manifest.Header(manifest.VERSION, name, counts["file"], counts["dir"], counts["link"], size)
    return manifest.encode_header(header) + b"".join(manifest.encode_entry(e) for e in entries)


def linear_scan(entries: list[Entry], path: str, with_bytes_only: bool = False) -> Member | None:
    start = 0
    for entry in entries:
        if entry.path == path and entry.is_file and (entry.size or not with_bytes_only):
            return Member(entry.path, start, entry.size, entry.x)
        if entry.is_file:
            start += entry.size
    return None


queries = st.one_of(
    st.lists(st.sampled_from([*COMPONENTS, "..", ".", "", "nope"]), min_size=1, max_size=4).map("/".join),
    st.sampled_from(["", "/a", "a/", "a//b", "./a", "a/../a", "\x1b[2J"]),
)


@settings(max_examples=150, deadline=None)
@given(trees(), st.lists(queries, max_size=10))
def test_lookup_agrees_with_a_linear_scan(entries: list[Entry], extra: list[str]) -> None:
    index = ManifestIndex.from_bytes(manifest_bytes(entries))
    assert len(index) == sum(e.is_file for e in entries)
    assert index.size == sum(e.size for e in entries if e.is_file)
    for path in [e.path for e in entries] + extra:
        assert index.find(path) == linear_scan(entries, path), path


@settings(max_examples=60, deadline=None)
@given(trees(), st.lists(queries, max_size=5))
def test_a_served_collections_index_reads_its_manifest_file(entries: list[Entry], extra: list[str]) -> None:
    """A peer's index: the arrays of its MemberIndex (members with bytes) and its manifest file."""
    data = manifest_bytes(entries)
    members = MemberIndex()
    offset = data.index(b"\n") + 1
    for entry in entries:
        members.add(offset, entry.size if entry.is_file else 0)
        offset += len(manifest.encode_entry(entry))
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        index = ManifestIndex.of_members(f.fileno(), members)
        for path in [e.path for e in entries] + extra:
            assert index.find(path) == linear_scan(entries, path, with_bytes_only=True), path


def test_a_long_line_is_read_whole_from_a_file() -> None:
    deep = "/".join(["d" * 200] * 5)
    entries = [Entry("/".join(["d" * 200] * i), "dir") for i in range(1, 5)] + [Entry(deep, size=7)]
    data = manifest_bytes(entries)
    members = MemberIndex()
    members.add(data.rindex(b"{"), 7)
    fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR)
    try:
        os.write(fd, data)
        assert ManifestIndex.of_members(fd, members).find(deep) == Member(deep, 0, 7, False)
    finally:
        os.close(fd)


HOSTILE = {
    "out of order": [Entry("b", size=1), Entry("a", size=1)],
    "listed twice": [Entry("a", size=1), Entry("a", size=1)],
    "dot dot": [Entry("..", size=1)],
    "a dot dot component": [Entry("a", "dir"), Entry("a/../b", size=1)],
    "absolute": [Entry("/etc", size=1)],
    "no directory first": [Entry("a/b", size=1)],
    "control character": [Entry("\x1b[2J", size=1)],
    "link out": [Entry("l", "link", target="../x")],
}


@pytest.mark.parametrize("entries", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_manifest_is_refused(entries: list[Entry]) -> None:
    with pytest.raises(ManifestError):
        ManifestIndex.from_bytes(manifest_bytes(entries))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json\n",
        manifest_bytes([Entry("a", size=1)]).replace(b'"files":1', b'"files":2'),  # counts disagree
        manifest_bytes([Entry("a", size=1)]).rstrip(b"\n"),  # no final newline
        manifest_bytes([Entry("a", size=1)]).replace(b'"manifest":1', b'"manifest":9'),
    ],
)
def test_a_broken_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        ManifestIndex.from_bytes(data)


# -- a member's chunks ---------------------------------------------------------------------------------
def held_by_brute_force(span: MemberSpan, held: ChunkSet) -> list[int]:
    """Member chunk j, byte by byte: every collection chunk its bytes lie in is held."""
    out = []
    for j in range(span.chunk_count):
        lo = span.offset + j * span.chunk_size
        hi = span.offset + min((j + 1) * span.chunk_size, span.size)
        if all(b // span.chunk_size in held for b in range(lo, hi)):
            out.append(j)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.integers(16, 64),
    st.integers(0, 400),
    st.integers(0, 64 * (FEW_CHUNKS + 40)),
    st.integers(0, 3),
    st.data(),
)
def test_held_member_chunks_agree_with_checking_every_byte(
    chunk_size: int, offset: int, size: int, tail: int, data: st.DataObject
) -> None:
    span = MemberSpan(offset, size, chunk_size)
    total = -(-(offset + size) // chunk_size) + tail  # (the collection may go on after the member)
    how = data.draw(st.sampled_from(["random", "runs", "full", "empty"]))
    if how == "full":
        held = ChunkSet(total, full=True)
    elif how == "empty":
        held = ChunkSet(total)
    elif how == "runs":
        cuts = sorted(data.draw(st.lists(st.integers(0, total), max_size=8)))
        held = ChunkSet.from_runs(total, list(zip(cuts[::2], cuts[1::2], strict=False)))
    else:
        held = ChunkSet.from_numbers(total, data.draw(st.lists(st.integers(0, max(total - 1, 0)), max_size=total)))
    runs = span.held_runs(held)
    assert [c for a, b in runs for c in range(a, b)] == held_by_brute_force(span, held)
    assert all(a < b for a, b in runs) and all(runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1))


def test_a_member_chunk_lies_in_one_or_two_collection_chunks() -> None:
    aligned, unaligned = MemberSpan(1024, 2500, 1024), MemberSpan(1000, 2500, 1024)
    assert [aligned.covering(j) for j in range(3)] == [range(1, 2), range(2, 3), range(3, 4)]
    assert [unaligned.covering(j) for j in range(3)] == [range(2), range(1, 3), range(2, 4)]
    assert unaligned.byte_range(2) == (1000 + 2048, 452)
    assert MemberSpan(5, 0, 1024).chunk_count == 0 and MemberSpan(5, 0, 1024).held_runs(ChunkSet(1, True)) == []


# -- member names on the wire --------------------------------------------------------------------------
def body(obj: dict[str, Any]) -> bytes:
    return msgspec.json.encode(obj)


LOOKUPS = {
    "REQUEST_FILE_LOCATION": {},
    "REQUEST_CHUNK_REGISTER": {"chunknum": 0},
    "PEER_REQUEST_CHUNK": {"chunknum": 0},
}


@pytest.mark.parametrize("kind", list(LOOKUPS))
@pytest.mark.parametrize("name", ["ds/a", "ds/a b/\u00e9.txt", "ds/../x", "ds/a\\b", "ds/" + "p" * 4096])
def test_a_member_name_is_valid_where_a_name_is_looked_up(kind: str, name: str) -> None:
    assert decode(body({"type": kind, "filename": name, **LOOKUPS[kind]})).filename == name  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", list(LOOKUPS))
@pytest.mark.parametrize(
    "name", ["ds/", "/a", "../a", "./a", "ds/\x1b[2J", "ds/a\x00", "ds/x\u202e", "n" * 256 + "/a", "ds/" + "p" * 4097]
)
def test_a_bad_member_name_is_invalid(kind: str, name: str) -> None:
    with pytest.raises(ProtocolError):
        decode(body({"type": kind, "filename": name, **LOOKUPS[kind]}))


@pytest.mark.parametrize("kind", ["REQUEST_PUBLISH", "REQUEST_UNPUBLISH"])
def test_a_member_is_never_published_or_unpublished_by_name(kind: str) -> None:
    with pytest.raises(ProtocolError):
        decode(body({"type": kind, "filename": "ds/a", "fileinfo": [1, 1]}))


# -- the tracker's cache of resolved manifests -----------------------------------------------------------
def test_the_cache_of_manifests_is_bounded_in_bytes_least_recently_used_out() -> None:
    indexes = {key: ManifestIndex.from_bytes(manifest_bytes([Entry("f" * 200, size=1)], key)) for key in "abc"}
    cost = indexes["a"].manifest_bytes + indexes["a"].cost
    resolver = MemberResolver(cache_bytes=2 * cost + 10)
    resolver._keep("a", indexes["a"])
    resolver._keep("b", indexes["b"])
    resolver._cache.move_to_end("a")  # (as a lookup of `a` does)
    resolver._keep("c", indexes["c"])
    assert list(resolver._cache) == ["a", "c"] and resolver.cached_bytes <= resolver.cache_bytes
    small = MemberResolver(cache_bytes=cost - 1)
    small._keep("a", indexes["a"])  # (larger than the whole cache: not kept)
    assert not small._cache and small.cached_bytes == 0
