"""Hostile clients against real tracker and peer processes: fuzzed frames, path escapes, holders that never
answer, thousands of idle sockets, slow-loris senders and lying length prefixes.

Each hostile input must get a documented ERROR frame or a closed connection; the servers must stay up,
keep serving everyone else, and not grow in memory. All sockets go to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfs.protocol.limits import (
    MAX_CHUNK_SERVER_FRAME,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_FRAME_SIZE,
    MAX_SMALL_FRAME,
    MAX_TRACKER_FRAME,
)
from tests.procs import Proc, make_file, run

MiB = 1 << 20
CHUNK = 64 * 1024
#: How much a server's resident memory may grow under an attack before we call it growth.
RSS_BOUND = 64 * MiB
HEADER = struct.Struct(">I")
NAME = "w.bin"
SIZE = 200_000  # 4 chunks of 64 KiB, the last one short
DIGEST = "ab" * 32
#: Hypothesis examples for the fuzz test (each is one connection to the tracker and one to the peer).
FUZZ_EXAMPLES = 1000

#: The largest frame each server accepts (PROTOCOL.md §9): a chunk server is sent only small requests.
FRAME_LIMIT = {"tracker": MAX_TRACKER_FRAME, "peer": MAX_CHUNK_SERVER_FRAME}

#: Every ERROR text PROTOCOL.md §8 lists that a hostile frame can provoke.
DOCUMENTED_ERROR = re.compile(
    rf"frame of \d+ bytes announced; the limit is ({MAX_TRACKER_FRAME}|{MAX_CHUNK_SERVER_FRAME})"
    r"|frame of \d+ bytes refused: only a REQUEST_PUBLISH .+"
    r"|malformed JSON: .+"
    r"|invalid message: .+"
    r"|unexpected message type \S+ for a (tracker|peer)"
    r"|file not found: .*"
    r"|file not shared here: .*"
    r"|chunk \d+ of .* not held here",
    re.DOTALL,
)


# -- process helpers -----------------------------------------------------------------------------------
def rss(pid: int) -> int:
    """Resident memory of a process in bytes, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(needed: int) -> None:
    """Lift this process's soft RLIMIT_NOFILE (processes started afterwards inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def assert_healthy(*procs: Proc) -> None:
    for proc in procs:
        assert proc.popen.poll() is None, (
            f"{proc.args} died: rc={proc.popen.returncode}; stderr {proc.stderr[-20:]}"
        )
        for i, line in enumerate(proc.stderr):
            assert "Traceback" not in line, (
                f"{proc.args} logged a traceback: {proc.stderr[max(0, i - 1) : i + 12]}"
            )


@dataclass
class Swarm:
    tracker: Proc
    taddr: str
    sharer: Proc
    paddr: str
    src: Path
    #: a file beside the shared one that was never published
    secret: Path


def start_swarm(
    procs: Callable[..., Proc],
    tmp_path: Path,
    tracker_env: dict[str, str] | None = None,
    sharer_env: dict[str, str] | None = None,
    size: int = SIZE,
) -> Swarm:
    """A tracker, and a peer that shares `w.bin` in 64 KiB chunks; the peer runs in the shared file's folder,
    so a server that opened request names as paths would find `secret.txt` there."""
    tracker = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", env=tracker_env)
    taddr = tracker.listening()
    folder = tmp_path / "share"
    folder.mkdir(exist_ok=True)
    src = make_file(folder / NAME, size, seed=9)
    secret = folder / "secret.txt"
    secret.write_bytes(b"TOP SECRET: never published\n" * 100)
    with contextlib.suppress(OSError):
        (folder / "link.bin").symlink_to(secret)
    sharer = procs(
        "share",
        str(src),
        "--tracker",
        taddr,
        "--host",
        "127.0.0.1",
        "--chunk-size",
        "64K",
        cwd=folder,
        env=sharer_env,
    )
    paddr = sharer.listening()
    sharer.expect(rf"published {NAME} ")
    return Swarm(tracker, taddr, sharer, paddr, src, secret)


def get_ok(swarm: Swarm, dest: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A normal `p2pfs get` of the shared file: exit 0, exact bytes; returns the `done` event."""
    got = run(
        *extra,
        "get",
        NAME,
        str(dest),
        "--tracker",
        swarm.taddr,
        "--json",
        "--host",
        "127.0.0.1",
        env=env,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == swarm.src.read_bytes()
    done = json.loads(got.stdout.splitlines()[-1])
    assert done["event"] == "done"
    done["stderr"] = got.stderr
    return done  # type: ignore[no-any-return]


def ls_ok(swarm: Swarm) -> None:
    listed = run("ls", "--tracker", swarm.taddr, "--json", timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout).get(NAME) == [
        swarm.src.stat().st_size,
        -(-swarm.src.stat().st_size // CHUNK),
    ]


# -- a raw client --------------------------------------------------------------------------------------
class Client:
    """A blocking socket to 127.0.0.1 that sends frames (or any bytes) and reads length-prefixed replies."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1", address
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, body: bytes) -> None:
        self.send_raw(HEADER.pack(len(body)) + body)

    def send(self, obj: object) -> None:
        self.send_body(json.dumps(obj).encode())

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            piece = self.sock.recv(min(n - len(buf), 1 << 20))
            if not piece:
                raise EOFError(f"server closed the connection after {len(buf)} of {n} bytes")
            buf += piece
        return bytes(buf)

    def recv_body(self) -> bytes:
        (n,) = HEADER.unpack(self._recv_exact(4))
        assert n <= MAX_FRAME_SIZE, f"server sent a frame of {n} bytes"
        return self._recv_exact(n)

    def recv(self) -> dict[str, Any]:
        reply = json.loads(self.recv_body())
        assert isinstance(reply, dict), reply
        return reply

    def request(self, obj: object) -> dict[str, Any]:
        self.send(obj)
        return self.recv()

    def eof_within(self, seconds: float) -> float | None:
        """Seconds until the server closes the connection, discarding anything it sends first; None if it
        is still open after `seconds`."""
        start = time.monotonic()
        self.sock.settimeout(seconds)
        try:
            while True:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
                remaining = seconds - (time.monotonic() - start)
                if remaining <= 0:
                    return None
                self.sock.settimeout(remaining)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - start


def assert_error(reply: dict[str, Any]) -> str:
    """`reply` is a documented ERROR frame; returns its message."""
    assert reply.get("type") == "ERROR", reply
    assert set(reply) <= {"type", "message", "request"}, reply
    message = reply["message"]
    assert isinstance(message, str) and DOCUMENTED_ERROR.fullmatch(message), reply
    assert reply.get("request") is None or isinstance(reply["request"], str), reply
    return message


def ping_ok(address: str) -> None:
    with Client(address) as c:
        assert c.request({"type": "PEER_PING_PONG", "alive": True}) == {
            "type": "PEER_PING_PONG",
            "alive": True,
        }


# -- 1. fuzzed hostile frames --------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One frame body and what either server must answer to it.

    kind: malformed | invalid | bad (either of those) | unexpected | not_shared | not_held | not_found |
    ping (echoed exactly) | echo_or_error | honest (a normal request, answered correctly).
    request: the `request` field the ERROR must carry (invalid, unexpected). detail: a name or chunk number.
    """

    body: bytes
    kind: str
    request: str | None = None
    detail: str | int | None = None

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what Hypothesis prints for a failure
        printer.text(repr(self))

    def __repr__(self) -> str:
        shown = self.body if len(self.body) <= 120 else self.body[:100] + b"...(%d bytes)" % len(self.body)
        return f"Step({shown!r}, {self.kind}, request={self.request!r}, detail={self.detail!r})"


@dataclass(frozen=True)
class End:
    """How a fuzzed connection ends: close | truncated (header + part of a body, then close) | oversize
    (ERROR, then the server closes) | garbage (raw bytes, then our write side shut: only ERRORs, then EOF)."""

    kind: str
    data: bytes = b""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        return f"End({self.kind}, {self.data[:60]!r}{'...' if len(self.data) > 60 else ''})"


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


BAD_NAMES = [
    "../w.bin", "/etc/passwd", "w.bin/../../etc/passwd", "..", ".", "a/b", "w.bin/", "/", "a\\b",
    "..\\..\\w.bin", "C:\\Windows\\win.ini", "w.bin\x00", "\x00", "w\x00.bin", "", "x" * 256, "x" * 300,
    "\u00e9" * 128, "\U0001f600" * 64, "\x1b[2J.bin", "\x1b]0;pwned\x07", "a\x7fb", "\x9b31m", "x\u202egnp.exe",
]  # fmt: skip
bad_names = st.one_of(
    st.sampled_from(BAD_NAMES),
    st.tuples(st.text(max_size=10), st.sampled_from(["/", "\\", "\x00"]), st.text(max_size=10)).map("".join),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="/\\"),
        min_size=256,
        max_size=300,
    ),
)
good_names = st.text(
    st.characters(
        blacklist_categories=["Cs", "Cc"],
        blacklist_characters="/\\\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
    ),
    min_size=1,
    max_size=30,
).filter(lambda s: s not in (".", "..", NAME))
not_a_string: st.SearchStrategy[Any] = st.sampled_from([0, 1.5, None, True, [], {}, ["w.bin"]])
#: Where a name is looked up, a collection member NAME/REL/PATH is valid (docs/PROTOCOL.md §14): it is
#: answered "not found" / "not shared here", not refused. Bad names for those requests leave such names out.
LOOKUP_KINDS = ("PEER_REQUEST_CHUNK", "REQUEST_FILE_LOCATION", "REQUEST_CHUNK_REGISTER")
bad_lookup_names = bad_names.filter(
    lambda n: not re.fullmatch(r"(?!\.\.?/)[^/\\\x00]{1,255}/[^\x00]+", n)
    or len(n.partition("/")[0].encode("utf-8", "surrogatepass")) > 255
    or any(c in n for c in "\x1b\x07\x7f\x9b\u202e")
)
CHUNKNUM_TOKENS = [
    b"-1", b"-9223372036854775808", b"9223372036854775808", b"18446744073709551616", b"1" + b"0" * 100,
    b"262144", b"1.0", b"1.5", b"1e3", b"1e400", b"-0.0", b'"1"', b'"0x1"', b"true", b"false", b"null",
    b"[]", b"{}", b"[0]", b"0x10", b"01", b"+1", b"NaN", b"Infinity", b".5", b"-",
]  # fmt: skip
chunknum_tokens = st.one_of(
    st.sampled_from(CHUNKNUM_TOKENS),
    st.integers(max_value=-1).map(lambda n: str(n).encode()),
    st.integers(min_value=MAX_CHUNKS).map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(float(f)).encode()),
)
INVALID_BASE64 = [
    "!!!!",
    "abc",
    "YWJj\n",
    "YW Jj",
    "YW-_",
    "====",
    "a",
    "YQ",
    "YQ=",
    "Y===",
    "\u00e9\u00e9\u00e9\u00e9",
]
INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82",
    b"\x80",
    b"\xf4\x90\x80\x80",
]


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return b'"' not in data and b"\\" not in data
    return False


invalid_utf8 = st.one_of(
    st.sampled_from(INVALID_UTF8), st.binary(min_size=1, max_size=8).filter(_invalid_utf8)
)

#: A valid example of each message type whose fields we break, and the fields that are required.
TEMPLATES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "REQUEST_REGISTER": ({"address": ["127.0.0.1", 40000]}, ("address",)),
    "REQUEST_PUBLISH": (
        {"filename": "x.bin", "fileinfo": [100, 1], "chunksize": 1024},
        ("filename", "fileinfo"),
    ),
    "REQUEST_FILE_LOCATION": ({"filename": NAME}, ("filename",)),
    "REQUEST_CHUNK_REGISTER": ({"filename": NAME, "chunknum": 0}, ("filename", "chunknum")),
    "PEER_REQUEST_CHUNK": ({"filename": NAME, "chunknum": 0}, ("filename", "chunknum")),
    "PEER_REPLY_CHUNK": (
        {"filename": NAME, "chunknum": 0, "data": "AAAA", "digest": DIGEST},
        ("filename", "chunknum", "digest", "data"),
    ),
    "ERROR": ({"message": "boo"}, ("message",)),
    "REPLY_PUBLISH": ({"result": True, "message": ""}, ("result",)),
}
#: Values that break each field (of the right JSON type but out of range, or of a wrong JSON type).
WRONG: dict[str, list[Any]] = {
    "address": [
        None, "127.0.0.1:80", [], ["127.0.0.1"], ["127.0.0.1", 80, 1], ["127.0.0.1", 0], ["127.0.0.1", 65536],
        ["127.0.0.1", -1], ["127.0.0.1", "80"], ["127.0.0.1", 80.0], [1, 80], [None, 80], ["x" * 254, 80],
        {"host": "127.0.0.1", "port": 80}, ["127.0.0.1", 2**63],
    ],
    "fileinfo": [
        None, [], [1], [1, 1, 1], [-1, 0], [0, -1], [1.0, 1], ["1", 1], [2**63, 1], [1, 2**63], "big",
        [MAX_CHUNKS * MAX_CHUNK_SIZE + 1, 1], [0, MAX_CHUNKS + 1], {"a": 1},
    ],
    "chunksize": [0, 1023, MAX_CHUNK_SIZE + 1, 1.5, "1024", True, [], -1024, 2**64],
    "chunknum": [-1, -(2**63), 2**63, 2**64, MAX_CHUNKS, 1.0, 0.5, "0", True, None, [0], {}],
    "data": [*INVALID_BASE64, 5, [], True, {}],
    "digest": ["xyz", "a" * 63, "a" * 65, "g" * 64, 5, None, ""],
    "message": [5, None, [], {}],
    "result": ["true", 1, None, []],
}  # fmt: skip


@st.composite
def wrong_field(draw: st.DrawFn) -> Step:
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    template, _ = TEMPLATES[kind]
    field = draw(st.sampled_from(sorted(template)))
    if field == "filename":
        # a reply's `filename` echoes the request's and may be any string (PROTOCOL.md, PEER_REPLY_CHUNK)
        names = bad_lookup_names if kind in LOOKUP_KINDS else bad_names
        value = draw(not_a_string if kind == "PEER_REPLY_CHUNK" else st.one_of(names, not_a_string))
    else:
        value = draw(st.sampled_from(WRONG[field]))
    obj = {**template, field: value}
    # `type` may stand anywhere in the object; put it last sometimes
    obj = {**obj, "type": kind} if draw(st.booleans()) else {"type": kind, **obj}
    return Step(compact(obj), "invalid", request=kind)


@st.composite
def missing_field(draw: st.DrawFn) -> Step:
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    template, required = TEMPLATES[kind]
    drop = draw(st.sampled_from(required))
    return Step(
        compact({"type": kind, **{k: v for k, v in template.items() if k != drop}}), "invalid", request=kind
    )


@st.composite
def bad_chunknum(draw: st.DrawFn) -> Step:
    token = draw(chunknum_tokens)
    kind = draw(
        st.sampled_from(
            ["PEER_REQUEST_CHUNK", "REQUEST_CHUNK_REGISTER", "REQUEST_CHUNK_REGISTER[]", "PEER_REPLY_CHUNK"]
        )
    )
    if kind == "REQUEST_CHUNK_REGISTER[]":
        body = (
            b'{"type":"REQUEST_CHUNK_REGISTER","filename":"w.bin","chunknum":0,"chunknums":[0,%s,1]}' % token
        )
        kind = "REQUEST_CHUNK_REGISTER"
    elif kind == "PEER_REPLY_CHUNK":
        body = b'{"type":"PEER_REPLY_CHUNK","filename":"w.bin","chunknum":%s,"data":"AAAA","digest":"%s"}' % (
            token,
            DIGEST.encode(),
        )
    else:
        body = b'{"type":"%s","filename":"w.bin","chunknum":%s}' % (kind.encode(), token)
    return Step(body, "bad")


@st.composite
def bad_filename(draw: st.DrawFn) -> Step:
    kind = draw(
        st.sampled_from(
            ["PEER_REQUEST_CHUNK", "REQUEST_FILE_LOCATION", "REQUEST_CHUNK_REGISTER", "REQUEST_PUBLISH"]
        )
    )
    template, _ = TEMPLATES[kind]
    names = bad_lookup_names if kind in LOOKUP_KINDS else bad_names
    return Step(compact({"type": kind, **template, "filename": draw(names)}), "invalid", request=kind)


@st.composite
def bad_utf8(draw: st.DrawFn) -> Step:
    bad = draw(invalid_utf8)
    if draw(st.booleans()):  # in a field the server reads: the published name
        return Step(b'{"type":"PEER_REQUEST_CHUNK","filename":"w' + bad + b'.bin","chunknum":0}', "malformed")
    return Step(b'{"type":"PEER_' + bad + b'PING_PONG"}', "bad")


@st.composite
def bad_json(draw: st.DrawFn) -> Step:
    valid = compact({"type": "PEER_PING_PONG", "n": draw(st.integers(0, 10**6))})
    how = draw(st.sampled_from(["truncate", "trailing", "fixed"]))
    if how == "truncate":
        return Step(valid[: draw(st.integers(0, len(valid) - 1))], "malformed")
    if how == "trailing":
        return Step(
            valid + draw(st.sampled_from([b"x", b"{}", b",", b"]", b"}", b"\x00", b"null", b'"', valid])),
            "malformed",
        )
    ping = b'{"type":"PEER_PING_PONG"'
    fixed = [
        b"{not json", b"{'type':'PEER_PING_PONG'}", ping + b",}", ping + b" /* c */}", b'{type:"PEER_PING_PONG"}',
        b"\xef\xbb\xbf" + ping + b"}", ping + b',"x":NaN}', ping + b',"x":Infinity}', ping + b',"x":01}',
        ping + b',"x":"\t"}', ping + b',"x":"\\x41"}', ping + b',"x":"\\u12"}', ping + b',"x":"\\ud800"}',
        ping + b',"x":[1,]}', ping + b',"x" 1}', b"", b" ", b"\n", b"\x00" * 8,
    ]  # fmt: skip
    return Step(draw(st.sampled_from(fixed)), "malformed")


@st.composite
def wrong_shape(draw: st.DrawFn) -> Step:
    top = [
        b"[]",
        b"null",
        b"1",
        b'"REQUEST_FILE_LIST"',
        b"true",
        b'[{"type":"PEER_PING_PONG"}]',
        b"{}",
        b'{"filename":"w.bin"}',
    ]
    untyped = [
        b'{"type":5}',
        b'{"type":null}',
        b'{"type":[]}',
        b'{"type":{}}',
        b'{"type":true}',
        b'{"TYPE":"PEER_PING_PONG"}',
    ]
    return Step(draw(st.sampled_from(top + untyped)), "invalid", request=None)


@st.composite
def unknown_type(draw: st.DrawFn) -> Step:
    known = {
        *TEMPLATES,
        "REPLY_REGISTER",
        "REQUEST_FILE_LIST",
        "REPLY_FILE_LIST",
        "REPLY_FILE_LOCATION",
        "PEER_PING_PONG",
    }
    kind = draw(
        st.one_of(
            st.sampled_from(
                ["PEERREQUEST_CHUNK", "request_register", "PEER_PING_PONG ", " PEER_PING_PONG", "ERROR2"]
            ),
            st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40),
        ).filter(lambda t: t not in known)
    )
    return Step(compact({"type": kind, "filename": NAME, "chunknum": 0}), "invalid", request=kind)


@st.composite
def bad_base64(draw: st.DrawFn) -> Step:
    data = draw(st.sampled_from(INVALID_BASE64))
    body = compact(
        {"type": "PEER_REPLY_CHUNK", "filename": NAME, "chunknum": 0, "data": data, "digest": DIGEST}
    )
    return Step(body, "invalid", request="PEER_REPLY_CHUNK")


@st.composite
def deep_nesting(draw: st.DrawFn) -> Step:
    depth = draw(st.sampled_from([100, 1_000, 10_000, 100_000, 1_000_000]))
    how = draw(st.sampled_from(["array", "objects", "unbalanced", "chunknum", "ping"]))
    nest = b"[" * depth + b"]" * depth
    if how == "array":
        return Step(nest, "invalid", request=None)
    if how == "objects":
        return Step(b'{"a":' * depth + b"1" + b"}" * depth, "bad")
    if how == "unbalanced":
        return Step(b"[" * depth, "bad")
    if how == "chunknum":
        return Step(b'{"type":"PEER_REQUEST_CHUNK","filename":"w.bin","chunknum":' + nest + b"}", "bad")
    # nested inside a field the receiver ignores: an exact echo, or ERROR if too deep to skip
    return Step(b'{"type":"PEER_PING_PONG","x":' + nest + b"}", "echo_or_error")


#: Valid messages that neither server handles (replies, ERROR): "unexpected message type T for a ...".
UNEXPECTED: list[dict[str, Any]] = [
    {"type": "REPLY_REGISTER"},
    {"type": "REPLY_REGISTER", "address": ["10.0.0.1", 5]},
    {"type": "REPLY_PUBLISH", "result": True, "message": ""},
    {"type": "REPLY_FILE_LIST", "filelist": {}},
    {"type": "REPLY_FILE_LOCATION", "filename": NAME, "chunkinfo": {}},
    {"type": "PEER_REPLY_CHUNK", "filename": NAME, "chunknum": 0, "data": "AAAA", "digest": DIGEST},
    {"type": "ERROR", "message": "boo"},
]


@st.composite
def misdirected(draw: st.DrawFn) -> Step:
    """Valid messages answered with an ERROR that depends on the server."""
    how = draw(st.sampled_from(["unexpected", "not_shared", "not_held", "not_found"]))
    if how == "unexpected":
        obj = draw(st.sampled_from(UNEXPECTED))
        return Step(compact(obj), "unexpected", request=obj["type"])
    if how == "not_held":
        chunk = draw(st.integers(4, MAX_CHUNKS - 1))
        return Step(
            compact({"type": "PEER_REQUEST_CHUNK", "filename": NAME, "chunknum": chunk}), how, detail=chunk
        )
    name = draw(good_names)
    kind = "PEER_REQUEST_CHUNK" if how == "not_shared" else "REQUEST_FILE_LOCATION"
    obj = {"type": kind, "filename": name, **({"chunknum": 0} if how == "not_shared" else {})}
    return Step(json.dumps(obj).encode(), how, detail=name)


hostile_steps = st.one_of(
    st.binary(max_size=256).map(lambda b: Step(b, "bad")),
    bad_utf8(),
    bad_json(),
    wrong_shape(),
    wrong_field(),
    missing_field(),
    unknown_type(),
    bad_base64(),
    bad_chunknum(),
    bad_filename(),
    deep_nesting(),
    misdirected(),
)
valid_steps = st.one_of(
    st.builds(
        lambda n, s: Step(compact({"type": "PEER_PING_PONG", "nonce": n, "s": s}), "ping"),
        st.integers(),
        st.text(max_size=20),
    ),
    st.integers(0, 3).map(
        lambda k: Step(
            compact({"type": "PEER_REQUEST_CHUNK", "filename": NAME, "chunknum": k}), "honest", detail=k
        )
    ),
)
endings = st.one_of(
    st.just(End("close")),
    st.builds(
        lambda n, k: End("truncated", HEADER.pack(n) + b'{"type":"PEER_PING_PONG"' + b" " * k),
        st.integers(40, MAX_FRAME_SIZE),
        st.integers(0, 15),
    ),
    st.builds(
        lambda n, tail: End("oversize", HEADER.pack(n) + tail),
        st.one_of(
            st.sampled_from([0xFFFFFFFF, MAX_FRAME_SIZE + 1, 1 << 31]),
            st.integers(MAX_FRAME_SIZE + 1, 0xFFFFFFFF),
        ),
        st.binary(max_size=32),
    ),
    st.binary(min_size=1, max_size=512).map(lambda b: End("garbage", b)),
)


def check_reply(step: Step, server: str, body: bytes, src: bytes) -> None:
    """The server's answer to one step is what PROTOCOL.md says: an exact echo, a correct reply, or ERROR."""
    kind = step.kind
    if kind == "ping" or (kind == "echo_or_error" and body == step.body):
        assert body == step.body
        return
    reply = json.loads(body)
    if kind == "honest":
        assert server == "peer", "`play` asks the tracker for the file list instead"
        assert reply["type"] == "PEER_REPLY_CHUNK" and reply["chunknum"] == step.detail, reply
        k = int(step.detail)  # type: ignore[arg-type]
        assert base64.b64decode(reply["data"]) == src[k * CHUNK : (k + 1) * CHUNK]
        return
    if kind == "honest_list":
        assert reply["type"] == "REPLY_FILE_LIST" and reply["filelist"] == {NAME: [SIZE, 4]}, reply
        return
    message = assert_error(reply)
    wrong_server = {"not_shared": "tracker", "not_held": "tracker", "not_found": "peer"}
    request: str | None
    if wrong_server.get(kind) == server:
        kind = "unexpected"
        request = "REQUEST_FILE_LOCATION" if step.kind == "not_found" else "PEER_REQUEST_CHUNK"
    else:
        request = step.request
    if kind == "malformed":
        assert message.startswith("malformed JSON: "), (step, reply)
    elif kind == "invalid":
        assert message.startswith("invalid message: "), (step, reply)
        assert reply.get("request") == request, (step, reply)
    elif kind in ("bad", "echo_or_error"):
        assert message.startswith(("malformed JSON: ", "invalid message: ")), (step, reply)
    elif kind == "unexpected":
        assert reply == {
            "type": "ERROR",
            "message": f"unexpected message type {request} for a {server}",
            "request": request,
        }
    elif kind == "not_shared":
        assert reply == {
            "type": "ERROR",
            "message": f"file not shared here: {step.detail}",
            "request": "PEER_REQUEST_CHUNK",
        }
    elif kind == "not_held":
        assert reply == {
            "type": "ERROR",
            "message": f"chunk {step.detail} of {NAME} not held here",
            "request": "PEER_REQUEST_CHUNK",
        }
    elif kind == "not_found":
        assert reply == {
            "type": "ERROR",
            "message": f"file not found: {step.detail}",
            "request": "REQUEST_FILE_LOCATION",
        }
    else:  # pragma: no cover
        raise AssertionError(f"unknown step kind {kind}")


def play(address: str, server: str, steps: list[Step], end: End, src: bytes) -> None:
    """One hostile connection: every frame answered in order, then the ending; then a fresh client is served."""
    with Client(address) as c:
        for step in steps:
            if step.kind == "honest" and server == "tracker":
                step = Step(compact({"type": "REQUEST_FILE_LIST"}), "honest_list")
            if len(step.body) > FRAME_LIMIT[server]:  # refused unread, and the connection closed
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    c.send_body(step.body)
                assert c.recv() == {
                    "type": "ERROR",
                    "message": f"frame of {len(step.body)} bytes announced; the limit is {FRAME_LIMIT[server]}",
                }
                assert c.eof_within(5) is not None
                ping_ok(address)
                return
            c.send_body(step.body)
            if server == "tracker" and len(step.body) > MAX_SMALL_FRAME:
                reply = json.loads(c.recv_body())
                assert reply["type"] == "ERROR" and reply["message"].startswith(
                    f"frame of {len(step.body)} bytes refused: only a REQUEST_PUBLISH"
                ), reply
                continue
            check_reply(step, server, c.recv_body(), src)
        (announced,) = HEADER.unpack(end.data[:4]) if len(end.data) >= 4 else (0,)
        if end.kind == "truncated" and announced <= FRAME_LIMIT[server]:
            c.send_raw(end.data)
        elif end.kind in ("oversize", "truncated"):
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                c.send_raw(end.data)
            assert c.recv() == {
                "type": "ERROR",
                "message": f"frame of {announced} bytes announced; the limit is {FRAME_LIMIT[server]}",
            }
            assert c.eof_within(5) is not None, "the server kept the connection open after an oversized frame"
        elif end.kind == "garbage":
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                c.send_raw(end.data)
                c.sock.shutdown(socket.SHUT_WR)
            # whatever complete frames the bytes held are answered with ERROR; then the server closes
            while True:
                try:
                    body = c.recv_body()
                except (EOFError, ConnectionResetError):
                    break
                assert_error(json.loads(body))
    ping_ok(address)


def test_fuzzed_hostile_frames_get_errors_and_servers_keep_serving(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    """Generated hostile connections against the tracker and the peer, each frame answered as documented;
    afterwards a normal `get` and `ls` are served and both processes are alive, with no traceback logged."""
    swarm = start_swarm(procs, tmp_path)
    src = swarm.src.read_bytes()
    played: list[int] = []

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(
        steps=st.lists(st.one_of(hostile_steps, hostile_steps, valid_steps), min_size=1, max_size=6),
        end=endings,
    )
    def hostile_connection(steps: list[Step], end: End) -> None:
        for address, server in ((swarm.taddr, "tracker"), (swarm.paddr, "peer")):
            play(address, server, steps, end, src)
        played.append(len(steps))

    hostile_connection()
    assert len(played) >= FUZZ_EXAMPLES // 2, f"only {len(played)} hostile connections were played"
    print(f"fuzz: {len(played)} connections per server, {sum(played)} frames")
    done = get_ok(swarm, tmp_path / "out.bin")
    assert done["sources"] == {swarm.paddr: 4}
    ls_ok(swarm)
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 2. path escapes -----------------------------------------------------------------------------------
ESCAPES = [
    "../w.bin", "/etc/passwd", "w.bin/../../etc/passwd", "../share/secret.txt", "secret.txt", "link.bin",
    "./w.bin", "w.bin/", "..", ".", "..\\secret.txt", "share\\secret.txt", "w.bin\x00", "secret.txt\x00w.bin",
    "%2e%2e%2fsecret.txt", "~/secret.txt", "W.BIN", "w.bin ", " w.bin", "w.bin.", "/proc/self/environ",
]  # fmt: skip


def test_chunk_requests_never_escape_the_published_names(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    swarm = start_swarm(procs, tmp_path)
    secret = swarm.secret.read_bytes()
    names = [*ESCAPES, str(swarm.secret), str(swarm.src), str(swarm.src.parent / ".." / "share" / NAME)]
    with Client(swarm.paddr) as c:
        for name in names:
            for chunk in (0, 1):
                c.send({"type": "PEER_REQUEST_CHUNK", "filename": name, "chunknum": chunk})
                body = c.recv_body()
                reply = json.loads(body)
                message = assert_error(reply)
                assert (
                    message.startswith("invalid message: ") or message == f"file not shared here: {name}"
                ), reply
                assert reply["request"] == "PEER_REQUEST_CHUNK"
                for leak in (
                    secret[:20],
                    base64.b64encode(secret[:48]),
                    base64.b64encode(swarm.src.read_bytes()[:48]),
                ):
                    assert leak not in body, f"{name!r} leaked file content: {body[:200]!r}"
        # the control: the published name on the same connection gives the content
        reply = c.request({"type": "PEER_REQUEST_CHUNK", "filename": NAME, "chunknum": 0})
        assert (
            reply["type"] == "PEER_REPLY_CHUNK"
            and base64.b64decode(reply["data"]) == swarm.src.read_bytes()[:CHUNK]
        )
    assert_healthy(swarm.sharer)


# -- 3. replies that never come ------------------------------------------------------------------------
class FakeHolder:
    """A holder in a thread of the test process: it accepts downloaders, echoes PEER_PING_PONG only if
    `answers_ping`, and never answers PEER_REQUEST_CHUNK."""

    def __init__(self, answers_ping: bool) -> None:
        self.answers_ping = answers_ping
        self.pings = 0
        self.chunk_requests = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def __enter__(self) -> Self:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(HEADER.unpack(header)[0])
                kind = json.loads(body).get("type")
                if kind == "PEER_PING_PONG":
                    self.pings += 1
                    if self.answers_ping:
                        writer.write(header + body)
                        await writer.drain()
                elif kind == "PEER_REQUEST_CHUNK":
                    self.chunk_requests += 1  # and never a reply
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def register_fake_holder(taddr: str, port: int, chunk_count: int) -> Client:
    """Register 127.0.0.1:port as a holder of every chunk of w.bin (raw REQUEST_REGISTER + batch
    REQUEST_CHUNK_REGISTER); the returned connection is its presence and must stay open."""
    c = Client(taddr)
    assert c.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", port]}) == {
        "type": "REPLY_REGISTER",
        "address": ["127.0.0.1", port],
    }
    chunks = list(range(chunk_count))
    c.send({"type": "REQUEST_CHUNK_REGISTER", "filename": NAME, "chunknum": chunks[0], "chunknums": chunks})
    location = c.request({"type": "REQUEST_FILE_LOCATION", "filename": NAME})
    assert location["chunkinfo"][f"127.0.0.1:{port}"] == chunks
    return c


def test_holder_that_never_sends_chunks_is_dropped_after_the_chunk_timeout(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    chunks = 32
    # the honest holder needs ~3.2 s (0.1 s per chunk), longer than the 2 s chunk timeout
    swarm = start_swarm(procs, tmp_path, sharer_env={"P2PFS_TEST_DELAY": "0.1"}, size=chunks * CHUNK)
    with FakeHolder(answers_ping=True) as fake, register_fake_holder(swarm.taddr, fake.port, chunks):
        done = get_ok(swarm, tmp_path / "out.bin", "-v", env={"P2PFS_CHUNK_TIMEOUT": "2"})
        assert fake.pings >= 1 and fake.chunk_requests >= 1, "the downloader never asked the mute holder"
    assert done["sources"] == {swarm.paddr: chunks}
    assert re.search(rf"holder 127\.0\.0\.1:{fake.port} dropped: timed out", done["stderr"]), done["stderr"]
    assert "Traceback" not in done["stderr"]
    assert_healthy(swarm.tracker, swarm.sharer)


def test_holder_that_never_answers_the_ping_is_skipped(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    swarm = start_swarm(procs, tmp_path)
    with FakeHolder(answers_ping=False) as fake, register_fake_holder(swarm.taddr, fake.port, 4):
        done = get_ok(swarm, tmp_path / "out.bin", "-v", env={"P2PFS_PING_TIMEOUT": "1"})
        assert fake.pings >= 1 and fake.chunk_requests == 0
    assert done["sources"] == {swarm.paddr: 4}
    # The download does not wait for a holder's ping before using the others: it may finish before the
    # mute holder's 1 s ping timeout (then its ping is cancelled), or log it unreachable; either way it
    # is never asked for a chunk, and it does not hold the download up to the 3 s default timeout.
    assert "Traceback" not in done["stderr"]
    assert done["seconds"] < 2.8, done
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 4. thousands of idle connections ------------------------------------------------------------------
def open_idle(address: str, count: int, pid: int) -> list[socket.socket]:
    """`count` connections that the server process `pid` has accepted (its open files grew by as many).

    They are opened in batches smaller than the listen backlog: a burst that overflows the accept queue
    leaves connections half-open in the kernel, retried by SYN-ACK for seconds, never seen by the server."""
    host, port = address.rsplit(":", 1)
    base = settled_fds(pid)
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            for _ in range(min(50, count - len(socks))):
                socks.append(socket.create_connection((host, int(port)), timeout=10))
            wait_until(
                lambda: open_fds(pid) >= base + len(socks),
                20,
                f"pid {pid} to accept {len(socks)} connections",
            )
    except BaseException:
        close_all(socks)
        raise
    return socks


def fds_at_most(pid: int, limit: int) -> Callable[[], bool]:
    return lambda: open_fds(pid) <= limit


def settled_fds(pid: int) -> int:
    """The process's open-file count once it stops changing (connections just closed are released)."""
    count = open_fds(pid)
    for _ in range(50):
        time.sleep(0.05)
        now = open_fds(pid)
        if now == count:
            return count
        count = now
    return count


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


def test_thousands_of_idle_connections_cost_little_and_block_nobody(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    raise_nofile(4096)
    swarm = start_swarm(procs, tmp_path)
    tracker_pid, peer_pid = swarm.tracker.pid, swarm.sharer.pid
    ping_ok(swarm.taddr)
    ping_ok(swarm.paddr)
    rss_before = {pid: rss(pid) for pid in (tracker_pid, peer_pid)}
    fds_before = {pid: settled_fds(pid) for pid in (tracker_pid, peer_pid)}
    idle: list[socket.socket] = []
    try:
        # every connection is accepted by the server process, not just queued by the kernel
        idle += open_idle(swarm.taddr, 1500, tracker_pid)
        idle += open_idle(swarm.paddr, 500, peer_pid)
        get_ok(swarm, tmp_path / "out.bin")
        ls_ok(swarm)
        ping_ok(swarm.taddr)
        ping_ok(swarm.paddr)
        for pid, what in ((tracker_pid, "tracker"), (peer_pid, "peer")):
            grown = rss(pid) - rss_before[pid]
            print(f"{what}: RSS +{grown / MiB:.1f} MiB with idle connections")
            assert grown < RSS_BOUND, f"{what} RSS grew by {grown / MiB:.1f} MiB with idle connections"
    finally:
        close_all(idle)
    # the closed connections are forgotten: their sockets are released
    for pid in (tracker_pid, peer_pid):
        wait_until(fds_at_most(pid, fds_before[pid] + 10), 20, f"pid {pid} to release the sockets")
    assert_healthy(swarm.tracker, swarm.sharer)


def test_idle_unregistered_connections_are_closed_registered_ones_kept(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    idle_env = {"P2PFS_IDLE_TIMEOUT": "1"}
    swarm = start_swarm(procs, tmp_path, tracker_env=idle_env, sharer_env=idle_env)
    registered = Client(swarm.taddr)
    try:
        assert (
            registered.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 45000]})["type"]
            == "REPLY_REGISTER"
        )
        assert (
            registered.request({"type": "REQUEST_PUBLISH", "filename": "reg.bin", "fileinfo": [10, 1]})[
                "result"
            ]
            is True
        )
        opened = time.monotonic()
        silent = [Client(swarm.taddr) for _ in range(20)] + [Client(swarm.paddr) for _ in range(5)]
        chatty = Client(swarm.taddr)  # asks once, unregistered, then goes quiet
        assert chatty.request({"type": "REQUEST_FILE_LIST"})["type"] == "REPLY_FILE_LIST"
        closed_at = []
        for c in [*silent, chatty]:
            assert c.eof_within(10) is not None, "an idle connection was not closed"
            closed_at.append(time.monotonic() - opened)
            c.close()
        assert min(closed_at) >= 0.8, f"closed before the idle timeout: {closed_at}"
        assert max(closed_at) < 6, f"closed late: {closed_at}"
        # the registered connection has been silent for well over the idle timeout, and stays open
        assert registered.eof_within(1.5) is None, "the tracker closed a registered peer's connection"
        assert time.monotonic() - opened > 2.2
        filelist = registered.request({"type": "REQUEST_FILE_LIST"})["filelist"]
        assert "reg.bin" in filelist and NAME in filelist
    finally:
        registered.close()
    get_ok(swarm, tmp_path / "out.bin")
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 5. slow-loris -------------------------------------------------------------------------------------
def watch_until_closed(
    socks: list[socket.socket], trickle: set[socket.socket], start: float, limit: float
) -> dict[socket.socket, float]:
    """Seconds from `start` until the server closed each socket (those in `trickle` send one byte every
    0.2 s meanwhile); sockets still open `limit` seconds after `start` are missing from the result."""
    open_socks = list(socks)
    closed: dict[socket.socket, float] = {}
    while open_socks and time.monotonic() - start < limit:
        poller = select.poll()  # not select(): file descriptors may be numbered above 1024
        for sock in open_socks:
            poller.register(sock, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(200)}
        for sock in [s for s in open_socks if s.fileno() in ready]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                closed[sock] = time.monotonic() - start
                open_socks.remove(sock)
        for sock in [s for s in open_socks if s in trickle]:
            try:
                sock.send(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed[sock] = time.monotonic() - start
                open_socks.remove(sock)
    return closed


def test_slow_loris_frames_are_cut_off_while_others_are_served(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    frame_env = {"P2PFS_FRAME_TIMEOUT": "1"}
    swarm = start_swarm(procs, tmp_path, tracker_env=frame_env, sharer_env=frame_env)
    lorises: list[socket.socket] = []
    trickle: set[socket.socket] = set()
    try:
        for address in (swarm.taddr, swarm.paddr):
            for i in range(12):
                sock = Client(address).sock
                # 1000 bytes announced, 10 sent; two of them keep dribbling a byte every 0.2 s
                sock.sendall(HEADER.pack(1000) + b'{"type":"P')
                lorises.append(sock)
                if i < 2:
                    trickle.add(sock)
        started = time.monotonic()
        # everyone else is served meanwhile
        with Client(swarm.taddr) as t, Client(swarm.paddr) as p:
            assert t.request({"type": "REQUEST_FILE_LIST"})["filelist"][NAME] == [SIZE, 4]
            reply = p.request({"type": "PEER_REQUEST_CHUNK", "filename": NAME, "chunknum": 3})
            assert base64.b64decode(reply["data"]) == swarm.src.read_bytes()[3 * CHUNK :]
        served = time.monotonic() - started
        closed = watch_until_closed(lorises, trickle, started, limit=6)
        assert len(closed) == len(lorises), (
            f"{len(lorises) - len(closed)} slow-loris connections still open after 6 s"
        )
        elapsed = sorted(closed.values())
        # cut off after about the 1 s frame timeout (the dribblers too), and not before the others were served
        assert 0.5 <= elapsed[0] and elapsed[-1] < 4, elapsed
        assert served < elapsed[0], f"normal requests took {served:.2f} s: they waited for the slow frames"
    finally:
        close_all(lorises)
    get_ok(swarm, tmp_path / "out.bin")
    assert_healthy(swarm.tracker, swarm.sharer)


# -- 6. lying length prefixes --------------------------------------------------------------------------
def test_announced_but_unsent_frames_do_not_grow_memory(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    raise_nofile(4096)
    swarm = start_swarm(procs, tmp_path)
    for address, proc, server in ((swarm.taddr, swarm.tracker, "tracker"), (swarm.paddr, swarm.sharer, "peer")):
        ping_ok(address)
        rss_before, fds_before = rss(proc.pid), settled_fds(proc.pid)
        pending: list[socket.socket] = []
        announced = min(11 * MiB, FRAME_LIMIT[server])  # (the largest each server would wait for)
        try:
            pending += open_idle(address, 200, proc.pid)
            for sock in pending:
                sock.sendall(HEADER.pack(announced) + b'{"type":"PEER_PING_PONG","x":"')
            for _ in range(20):
                with Client(address) as c:
                    c.send_raw(HEADER.pack(0xFFFFFFFF) + b"{}")
                    assert c.recv() == {
                        "type": "ERROR",
                        "message": f"frame of {0xFFFFFFFF} bytes announced; the limit is {FRAME_LIMIT[server]}",
                    }
                    assert c.eof_within(5) is not None
            ping_ok(address)
            grown = rss(proc.pid) - rss_before
            print(f"{proc.args[0]}: RSS +{grown / MiB:.1f} MiB with 200 announced {announced} byte frames")
            assert grown < RSS_BOUND, (
                f"{proc.args[0]}: RSS grew by {grown / MiB:.1f} MiB for 200 announced {announced} byte frames"
            )
        finally:
            close_all(pending)
        wait_until(fds_at_most(proc.pid, fds_before + 5), 20, "the server to drop the truncated frames")
        grown = rss(proc.pid) - rss_before
        print(f"{proc.args[0]}: RSS +{grown / MiB:.1f} MiB after they closed")
        assert grown < RSS_BOUND, f"{proc.args[0]}: RSS grew by {grown / MiB:.1f} MiB"
        ping_ok(address)
    get_ok(swarm, tmp_path / "out.bin")
    ls_ok(swarm)
    assert_healthy(swarm.tracker, swarm.sharer)


# -- regressions for bugs these tests found -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "server",
    [
        "tracker",
        "peer",
    ],
)
def test_client_gone_before_its_errors_is_not_a_server_error(
    tmp_path: Path, procs: Callable[..., Proc], server: str
) -> None:
    swarm = start_swarm(procs, tmp_path)
    address, proc = (swarm.taddr, swarm.tracker) if server == "tracker" else (swarm.paddr, swarm.sharer)
    fds_before = settled_fds(proc.pid)
    for _ in range(20):
        with Client(address) as c:
            c.send_raw((HEADER.pack(4) + b"{bad") * 50)  # 50 malformed frames, and gone before the ERRORs
    wait_until(lambda: open_fds(proc.pid) <= fds_before, 20, "the server to close the connections")
    ping_ok(address)
    assert_healthy(proc)


def test_invalid_utf8_in_an_ignored_field_is_malformed(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    swarm = start_swarm(procs, tmp_path)
    body = b'{"type":"PEER_PING_PONG","x":"\xff\xfe"}'
    for address in (swarm.taddr, swarm.paddr):
        with Client(address) as c:
            c.send_body(body)
            reply = c.recv_body()
            assert reply != body, f"{address} echoed a body that is not UTF-8"
            assert assert_error(json.loads(reply)).startswith("malformed JSON: ")


def test_publish_frames_cannot_buy_unbounded_tracker_memory(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    tracker = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
    taddr = tracker.listening()
    ping_ok(taddr)
    before = rss(tracker.pid)
    with Client(taddr) as c:
        assert (
            c.request({"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 46000]})["type"]
            == "REPLY_REGISTER"
        )
        for i in range(10):
            huge = {
                "filename": f"huge{i}.bin",
                "fileinfo": [MAX_CHUNKS * MAX_CHUNK_SIZE, MAX_CHUNKS],
                "chunksize": MAX_CHUNK_SIZE,
            }
            reply = c.request({"type": "REQUEST_PUBLISH", **huge})
            assert reply["type"] in ("REPLY_PUBLISH", "ERROR"), reply  # listing or refusing are both fine
        grown = rss(tracker.pid) - before
    assert tracker.popen.poll() is None
    assert grown < RSS_BOUND, f"10 publish frames grew the tracker by {grown / MiB:.0f} MiB"
