"""p2pfs.collection.manifest: the canonical order, and every rule a downloader checks before writing."""

from __future__ import annotations

import pytest

from p2pfs.collection import manifest
from p2pfs.collection.manifest import Entry, Header, ManifestError


def encode(entries: list[Entry], header: Header | None = None) -> list[bytes]:
    if header is None:
        files = [e for e in entries if e.is_file]
        header = Header(
            1,
            "ds",
            len(files),
            sum(e.type == "dir" for e in entries),
            sum(e.type == "link" for e in entries),
            sum(e.size for e in files),
        )
    return [manifest.encode_header(header)] + [manifest.encode_entry(e) for e in entries]


def parse(lines: list[bytes]) -> list[Entry]:
    _, entries = manifest.read(lines)
    return list(entries)


GOOD = [
    Entry("a", "dir"),
    Entry("a/b", "dir"),
    Entry("a/b/deep.txt", size=3),
    Entry("a/run.sh", size=10, x=True),
    Entry("a/up", "link", target="../top.txt"),
    Entry("a.b", size=1),
    Entry("empty", "dir"),
    Entry("top.txt", size=0),
    Entry("ünï cödé  name", size=2),
]


def test_a_good_manifest_round_trips() -> None:
    assert parse(encode(GOOD)) == GOOD


def test_canonical_order_is_depth_first_by_utf8_bytes() -> None:
    paths = [e.path for e in GOOD]
    assert paths == sorted(paths, key=manifest.components)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (Entry("/etc/passwd", size=1), "absolute"),
        (Entry("../x", size=1), "'..' component"),
        (Entry("a/../../x", size=1), "component"),
        (Entry("./x", size=1), "'.' component"),
        (Entry("x//y", size=1), "empty component"),
        (Entry("x/", size=1), "empty component"),
        (Entry("", size=1), "empty path"),
        (Entry("nul\x00byte", size=1), "control character"),
        (Entry("esc\x1b[2J", size=1), "control character"),
        (Entry("bidi\u202etxt", size=1), "control character"),
        (Entry("x" * 256, size=1), "longer than 255"),
        (Entry("l", "link", target="/etc/passwd"), "outside"),
        (Entry("l", "link", target="../outside"), "outside"),
        (Entry("l", "link", target="a/../../x"), "outside"),
        (Entry("l", "link", target="./x"), "outside"),
        (Entry("l", "link"), "outside"),
        (Entry("d", "dir", size=5), "file fields"),
        (Entry("f", size=-1), "bad size"),
    ],
)
def test_hostile_entries_are_refused(entry: Entry, match: str) -> None:
    header = Header(1, "ds", int(entry.is_file), int(entry.type == "dir"), int(entry.type == "link"), 0)
    with pytest.raises(ManifestError, match=match):
        parse(encode([entry], header))


def test_a_link_may_climb_only_to_the_tree_root() -> None:
    ok = [Entry("a", "dir"), Entry("a/b", "dir"), Entry("a/b/l", "link", target="../../x")]
    assert parse(encode(ok)) == ok
    bad = [Entry("a", "dir"), Entry("a/l", "link", target="../../x")]
    with pytest.raises(ManifestError, match="outside"):
        parse(encode(bad))


def test_duplicates_and_disorder_are_refused() -> None:
    with pytest.raises(ManifestError, match="listed twice"):
        parse(encode([Entry("x", size=1), Entry("x", size=1)]))
    with pytest.raises(ManifestError, match="out of order"):
        parse(encode([Entry("y", size=1), Entry("x", size=1)]))
    with pytest.raises(ManifestError, match="listed twice|out of order"):
        parse(encode([Entry("d", "dir"), Entry("d", size=1)]))


def test_a_member_needs_its_directory_listed_first() -> None:
    with pytest.raises(ManifestError, match="before its directory"):
        parse(encode([Entry("d/x", size=1)]))
    with pytest.raises(ManifestError, match="out of order"):  # (after a sibling of its directory)
        parse(encode([Entry("d", "dir"), Entry("e", size=1), Entry("d/x", size=1)]))


def test_a_link_is_not_a_directory() -> None:
    with pytest.raises(ManifestError, match="before its directory"):
        parse(encode([Entry("d", "link", target="x"), Entry("d/x", size=1)]))


def test_counts_must_match_the_header() -> None:
    entries = [Entry("x", size=5)]
    with pytest.raises(ManifestError, match="header says"):
        parse(encode(entries, Header(1, "ds", 2, 0, 0, 5)))
    with pytest.raises(ManifestError, match="more entries"):
        parse(encode(entries, Header(1, "ds", 0, 0, 0, 0)))
    with pytest.raises(ManifestError, match="larger"):
        parse(encode(entries, Header(1, "ds", 1, 0, 0, 4)))


def test_garbage_and_versions() -> None:
    with pytest.raises(ManifestError, match="empty"):
        parse([])
    with pytest.raises(ManifestError, match="header is invalid"):
        parse([b"not json"])
    with pytest.raises(ManifestError, match="version"):
        parse(encode([], Header(2, "ds", 0, 0, 0, 0)))
    with pytest.raises(ManifestError, match="entry is invalid"):
        parse([*encode([]), b'{"path": 5}'])
