"""The wire format as plain bytes: message round trips, exact JSON field names, hostile bodies, framing."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfs.errors import FrameTooLarge, ProtocolError
from p2pfs.protocol import messages as m
from p2pfs.protocol.framing import (
    HEADER_SIZE,
    FrameDecoder,
    body_length,
    decode,
    encode,
    encode_body,
    frame,
    peek_type,
)
from p2pfs.protocol.limits import (
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_FILENAME_BYTES,
    MAX_FRAME_SIZE,
    MIN_CHUNK_SIZE,
)

DIGEST = hashlib.sha256(b"chunk").hexdigest()


def body_of(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def wire(message: m.Message) -> dict[str, Any]:
    """The JSON object a message becomes on the wire (frame body, parsed by the standard library)."""
    frame_bytes = encode(message)
    (length,) = struct.unpack(">I", frame_bytes[:HEADER_SIZE])
    assert length == len(frame_bytes) - HEADER_SIZE
    parsed = json.loads(frame_bytes[HEADER_SIZE:])
    assert isinstance(parsed, dict)
    return parsed


# -- one example of every message type, with the exact JSON keys the seed uses ---------------------------
EXAMPLES: list[tuple[m.Message, set[str]]] = [
    (m.RequestRegister(address=("127.0.0.1", 8888)), {"type", "address"}),
    (m.ReplyRegister(), {"type"}),
    (m.ReplyRegister(address=("10.0.0.7", 9000)), {"type", "address"}),
    (m.RequestPublish(filename="movie.mkv", fileinfo=(10_485_760, 10)), {"type", "filename", "fileinfo"}),
    (
        m.RequestPublish(filename="a.bin", fileinfo=(3000, 3), chunksize=1024),
        {"type", "filename", "fileinfo", "chunksize"},
    ),
    (m.ReplyPublish(result=True), {"type", "result", "message"}),
    (
        m.ReplyPublish(result=False, message="a file named 'x' is already published"),
        {"type", "result", "message"},
    ),
    (m.RequestFileList(), {"type"}),
    (m.ReplyFileList(filelist={"a.bin": (3000, 3), "empty": (0, 0)}), {"type", "filelist"}),
    (m.RequestFileLocation(filename="a.bin"), {"type", "filename"}),
    (
        m.ReplyFileLocation(filename="a.bin", chunkinfo={'["10.0.0.1", 8001]': [0, 1, 2], "h2": [2]}),
        {"type", "filename", "chunkinfo"},
    ),
    (
        m.ReplyFileLocation(filename="a.bin", chunkinfo={}, fileinfo=(3000, 3), chunksize=1024),
        {"type", "filename", "chunkinfo", "fileinfo", "chunksize"},
    ),
    (m.RequestChunkRegister(filename="a.bin", chunknum=2), {"type", "filename", "chunknum"}),
    (m.PeerRequestChunk(filename="a.bin", chunknum=MAX_CHUNKS - 1), {"type", "filename", "chunknum"}),
    (
        m.PeerReplyChunk(filename="a.bin", chunknum=0, data=b"\x00\xff chunk \n", digest=DIGEST),
        {"type", "filename", "chunknum", "data", "digest"},
    ),
    (m.PeerPingPong(), {"type"}),
    (m.Error(message="unknown file 'nope'"), {"type", "message"}),
    (m.Error(message="bad", request="REQUEST_PUBLISH"), {"type", "message", "request"}),
]

TAGS = {
    m.RequestRegister: "REQUEST_REGISTER",
    m.ReplyRegister: "REPLY_REGISTER",
    m.RequestPublish: "REQUEST_PUBLISH",
    m.ReplyPublish: "REPLY_PUBLISH",
    m.RequestFileList: "REQUEST_FILE_LIST",
    m.ReplyFileList: "REPLY_FILE_LIST",
    m.RequestFileLocation: "REQUEST_FILE_LOCATION",
    m.ReplyFileLocation: "REPLY_FILE_LOCATION",
    m.RequestChunkRegister: "REQUEST_CHUNK_REGISTER",
    m.PeerRequestChunk: "PEER_REQUEST_CHUNK",
    m.PeerReplyChunk: "PEER_REPLY_CHUNK",
    m.PeerPingPong: "PEER_PING_PONG",
    m.Error: "ERROR",
}


def test_examples_cover_every_seed_type() -> None:
    assert set(TAGS.values()) == set(m.SEED_TYPES) | {"ERROR"}
    assert {type(msg) for msg, _ in EXAMPLES} == set(TAGS)


@pytest.mark.parametrize(
    ("message", "keys"), EXAMPLES, ids=lambda v: type(v).__name__ if isinstance(v, m.Message) else ""
)
def test_round_trip_and_exact_field_names(message: m.Message, keys: set[str]) -> None:
    obj = wire(message)
    assert set(obj) == keys
    assert obj["type"] == TAGS[type(message)]
    decoded = decode(encode(message)[HEADER_SIZE:])
    assert type(decoded) is type(message)
    assert decoded == message


def test_body_and_frame_agree() -> None:
    msg = m.RequestPublish(filename="a.bin", fileinfo=(3000, 3))
    assert frame(encode_body(msg)) == encode(msg)
    assert encode_body(msg) == encode(msg)[HEADER_SIZE:]


def test_field_values_on_the_wire_match_the_seed() -> None:
    assert wire(m.RequestRegister(address=("127.0.0.1", 8888)))["address"] == ["127.0.0.1", 8888]
    assert wire(m.RequestPublish(filename="f", fileinfo=(10, 1)))["fileinfo"] == [10, 1]
    assert wire(m.ReplyFileList(filelist={"f": (10, 1)}))["filelist"] == {"f": [10, 1]}
    assert wire(m.ReplyPublish(result=False, message="why"))["result"] is False
    assert wire(m.ReplyFileLocation(filename="f", chunkinfo={"p": [0, 3]}))["chunkinfo"] == {"p": [0, 3]}


def test_chunk_data_is_standard_base64() -> None:
    data = bytes(range(256)) * 3
    obj = wire(m.PeerReplyChunk(filename="f", chunknum=7, data=data, digest=DIGEST))
    assert obj["data"] == base64.b64encode(data).decode("ascii")
    assert obj["chunknum"] == 7
    assert obj["digest"] == DIGEST


def test_decodes_hand_written_seed_json() -> None:
    data = b"hello chunk"
    cases: list[tuple[dict[str, Any], m.Message]] = [
        (
            {"type": "REQUEST_REGISTER", "address": ["127.0.0.1", 8001]},
            m.RequestRegister(address=("127.0.0.1", 8001)),
        ),
        ({"type": "REPLY_REGISTER"}, m.ReplyRegister()),
        ({"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [10, 1]}, m.RequestPublish("f", (10, 1))),
        ({"type": "REPLY_PUBLISH", "result": True, "message": "ok"}, m.ReplyPublish(True, "ok")),
        ({"type": "REPLY_PUBLISH", "result": True}, m.ReplyPublish(True)),
        ({"type": "REQUEST_FILE_LIST"}, m.RequestFileList()),
        ({"type": "REPLY_FILE_LIST", "filelist": {"f": [10, 1]}}, m.ReplyFileList({"f": (10, 1)})),
        ({"type": "REQUEST_FILE_LOCATION", "filename": "f"}, m.RequestFileLocation("f")),
        (
            {"type": "REPLY_FILE_LOCATION", "filename": "f", "chunkinfo": {'["h", 1]': [0]}},
            m.ReplyFileLocation("f", {'["h", 1]': [0]}),
        ),
        ({"type": "REQUEST_CHUNK_REGISTER", "filename": "f", "chunknum": 0}, m.RequestChunkRegister("f", 0)),
        ({"type": "PEER_REQUEST_CHUNK", "filename": "f", "chunknum": 3}, m.PeerRequestChunk("f", 3)),
        (
            {
                "type": "PEER_REPLY_CHUNK",
                "filename": "f",
                "chunknum": 3,
                "data": base64.b64encode(data).decode(),
                "digest": hashlib.sha256(data).hexdigest(),
            },
            m.PeerReplyChunk(filename="f", chunknum=3, data=data, digest=hashlib.sha256(data).hexdigest()),
        ),
        ({"type": "PEER_PING_PONG"}, m.PeerPingPong()),
    ]
    for obj, expected in cases:
        assert decode(body_of(obj)) == expected, obj


def test_ping_pong_with_extra_fields_decodes() -> None:
    body = body_of(
        {"type": "PEER_PING_PONG", "peer_id": "abc", "time": 12.5, "nested": {"x": [1, None, True]}}
    )
    assert decode(body) == m.PeerPingPong()


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {"type": "REQUEST_FILE_LOCATION", "filename": "f", "future": {"a": [1, 2]}},
            m.RequestFileLocation("f"),
        ),
        ({"type": "REPLY_PUBLISH", "result": False, "message": "m", "code": 17}, m.ReplyPublish(False, "m")),
        ({"extra": 1, "type": "REQUEST_FILE_LIST"}, m.RequestFileList()),
        (
            {"type": "PEER_REQUEST_CHUNK", "priority": "high", "filename": "f", "chunknum": 1},
            m.PeerRequestChunk("f", 1),
        ),
    ],
)
def test_unknown_extra_fields_are_ignored(obj: dict[str, Any], expected: m.Message) -> None:
    assert decode(body_of(obj)) == expected


# -- hostile bodies: every one is a ProtocolError, never KeyError / ValueError / anything else ----------
GOOD_CHUNK_REPLY = {
    "type": "PEER_REPLY_CHUNK",
    "filename": "f",
    "chunknum": 0,
    "data": "aGk=",
    "digest": DIGEST,
}

HOSTILE_BODIES: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"   \n",
    "invalid utf-8 at top level": b"\xff\xfe\xfd",
    "invalid utf-8 inside a string": b'{"type":"ERROR","message":"\xc3\x28"}',
    "lone surrogate escape": b'{"type":"ERROR","message":"\\ud800"}',
    "utf-8 BOM": b'\xef\xbb\xbf{"type":"PEER_PING_PONG"}',
    "truncated json": b'{"type":"PEER_PING_PONG"',
    "not json": b"REQUEST_FILE_LIST",
    "trailing garbage": b'{"type":"PEER_PING_PONG"} x',
    "json array": b'["REQUEST_FILE_LIST"]',
    "json string": b'"REQUEST_FILE_LIST"',
    "json number": b"42",
    "json null": b"null",
    "json true": b"true",
    "no type": b"{}",
    "type null": b'{"type":null}',
    "type number": b'{"type":1}',
    "type list": b'{"type":["PEER_PING_PONG"]}',
    "unknown type": b'{"type":"REQUEST_EVERYTHING"}',
    "lower-case type": b'{"type":"peer_ping_pong"}',
    "empty type": b'{"type":""}',
    "NaN literal": b'{"type":"PEER_REQUEST_CHUNK","filename":"f","chunknum":NaN}',
    # missing fields
    "register without address": body_of({"type": "REQUEST_REGISTER"}),
    "publish without fileinfo": body_of({"type": "REQUEST_PUBLISH", "filename": "f"}),
    "publish without filename": body_of({"type": "REQUEST_PUBLISH", "fileinfo": [1, 1]}),
    "reply publish without result": body_of({"type": "REPLY_PUBLISH", "message": "x"}),
    "file list without filelist": body_of({"type": "REPLY_FILE_LIST"}),
    "location request without filename": body_of({"type": "REQUEST_FILE_LOCATION"}),
    "location reply without chunkinfo": body_of({"type": "REPLY_FILE_LOCATION", "filename": "f"}),
    "chunk register without chunknum": body_of({"type": "REQUEST_CHUNK_REGISTER", "filename": "f"}),
    "chunk request without filename": body_of({"type": "PEER_REQUEST_CHUNK", "chunknum": 0}),
    "chunk reply without data": body_of({k: v for k, v in GOOD_CHUNK_REPLY.items() if k != "data"}),
    "chunk reply without digest": body_of({k: v for k, v in GOOD_CHUNK_REPLY.items() if k != "digest"}),
    "error without message": body_of({"type": "ERROR"}),
    # wrong field types
    "address as string": body_of({"type": "REQUEST_REGISTER", "address": "127.0.0.1:80"}),
    "address too long": body_of({"type": "REQUEST_REGISTER", "address": ["h", 80, 1]}),
    "address port string": body_of({"type": "REQUEST_REGISTER", "address": ["h", "80"]}),
    "address port out of range": body_of({"type": "REQUEST_REGISTER", "address": ["h", 65536]}),
    "address port zero": body_of({"type": "REQUEST_REGISTER", "address": ["h", 0]}),
    "address port negative": body_of({"type": "REQUEST_REGISTER", "address": ["h", -1]}),
    "address host too long": body_of({"type": "REQUEST_REGISTER", "address": ["h" * 254, 80]}),
    "address host number": body_of({"type": "REQUEST_REGISTER", "address": [127, 80]}),
    "filename number": body_of({"type": "REQUEST_FILE_LOCATION", "filename": 7}),
    "filename list": body_of({"type": "REQUEST_FILE_LOCATION", "filename": ["f"]}),
    "fileinfo object": body_of({"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": {"size": 1}}),
    "fileinfo one item": body_of({"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [1]}),
    "fileinfo three items": body_of({"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [1, 1, 1]}),
    "fileinfo negative size": body_of({"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [-1, 0]}),
    "fileinfo float": body_of({"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [1.5, 1]}),
    "fileinfo too many chunks": body_of(
        {"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [1, MAX_CHUNKS + 1]}
    ),
    "fileinfo huge": b'{"type":"REQUEST_PUBLISH","filename":"f","fileinfo":[1e400,1]}',
    "chunksize too small": body_of(
        {"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [1, 1], "chunksize": MIN_CHUNK_SIZE - 1}
    ),
    "chunksize too big": body_of(
        {"type": "REQUEST_PUBLISH", "filename": "f", "fileinfo": [1, 1], "chunksize": MAX_CHUNK_SIZE + 1}
    ),
    "result string": body_of({"type": "REPLY_PUBLISH", "result": "yes"}),
    "result number": body_of({"type": "REPLY_PUBLISH", "result": 1}),
    "message number": body_of({"type": "REPLY_PUBLISH", "result": True, "message": 5}),
    "filelist as list": body_of({"type": "REPLY_FILE_LIST", "filelist": [["f", [1, 1]]]}),
    "filelist bad fileinfo": body_of({"type": "REPLY_FILE_LIST", "filelist": {"f": "1,1"}}),
    "chunkinfo values not lists": body_of(
        {"type": "REPLY_FILE_LOCATION", "filename": "f", "chunkinfo": {"p": 1}}
    ),
    "chunkinfo negative chunk": body_of(
        {"type": "REPLY_FILE_LOCATION", "filename": "f", "chunkinfo": {"p": [-1]}}
    ),
    "chunkinfo string chunk": body_of(
        {"type": "REPLY_FILE_LOCATION", "filename": "f", "chunkinfo": {"p": ["0"]}}
    ),
    "data number": body_of({**GOOD_CHUNK_REPLY, "data": 12}),
    "data list": body_of({**GOOD_CHUNK_REPLY, "data": [1, 2]}),
    "data invalid base64 chars": body_of({**GOOD_CHUNK_REPLY, "data": "!!!!"}),
    "data bad base64 padding": body_of({**GOOD_CHUNK_REPLY, "data": "QQ"}),
    "data base64 with junk": body_of({**GOOD_CHUNK_REPLY, "data": "aGk=*"}),
    "digest short": body_of({**GOOD_CHUNK_REPLY, "digest": DIGEST[:-1]}),
    "digest long": body_of({**GOOD_CHUNK_REPLY, "digest": DIGEST + "0"}),
    "digest not hex": body_of({**GOOD_CHUNK_REPLY, "digest": "z" * 64}),
    "digest number": body_of({**GOOD_CHUNK_REPLY, "digest": 0}),
    "error message null": body_of({"type": "ERROR", "message": None}),
}

BAD_CHUNKNUMS: dict[str, Any] = {
    "negative": -1,
    "very negative": -(2**63),
    "at MAX_CHUNKS": MAX_CHUNKS,
    "huge": 2**64,
    "enormous": 10**100,
    "float": 1.5,
    "integral float": 1.0,
    "exponent float": 1e3,
    "string": "1",
    "bool": True,
    "null": None,
    "list": [1],
}

BAD_FILENAMES: dict[str, Any] = {
    "slash": "a/b",
    "leading slash": "/etc/passwd",
    "trailing slash": "dir/",
    "backslash": "a\\b",
    "dot dot": "..",
    "dot": ".",
    "dot dot path": "../secret",
    "nul": "a\x00b",
    "only nul": "\x00",
    "empty": "",
    "256 ascii bytes": "a" * (MAX_FILENAME_BYTES + 1),
    "very long": "a" * 10_000,
}

# Messages whose filename is a name to look up or store, and the rest of a valid instance.
FILENAME_CARRIERS: dict[str, dict[str, Any]] = {
    "REQUEST_PUBLISH": {"fileinfo": [10, 1]},
    "REQUEST_FILE_LOCATION": {},
    "REQUEST_CHUNK_REGISTER": {"chunknum": 0},
    "PEER_REQUEST_CHUNK": {"chunknum": 0},
    "REQUEST_UNPUBLISH": {},
    "REPLY_UNPUBLISH": {"result": True},
}

CHUNKNUM_CARRIERS: dict[str, dict[str, Any]] = {
    "REQUEST_CHUNK_REGISTER": {"filename": "f"},
    "PEER_REQUEST_CHUNK": {"filename": "f"},
    "PEER_REPLY_CHUNK": {"filename": "f", "data": "aGk=", "digest": DIGEST},
}


def assert_protocol_error(body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(body)
    assert str(info.value)  # the error says something, for the ERROR reply
    return info.value


@pytest.mark.parametrize("body", list(HOSTILE_BODIES.values()), ids=list(HOSTILE_BODIES))
def test_hostile_body_is_a_protocol_error(body: bytes) -> None:
    assert_protocol_error(body)


@pytest.mark.parametrize("carrier", list(CHUNKNUM_CARRIERS))
@pytest.mark.parametrize("chunknum", list(BAD_CHUNKNUMS.values()), ids=list(BAD_CHUNKNUMS))
def test_bad_chunknum_is_a_protocol_error(carrier: str, chunknum: Any) -> None:
    assert_protocol_error(body_of({"type": carrier, **CHUNKNUM_CARRIERS[carrier], "chunknum": chunknum}))


@pytest.mark.parametrize("carrier", list(CHUNKNUM_CARRIERS))
def test_chunknum_bounds_are_inclusive_of_valid_range(carrier: str) -> None:
    for good in (0, MAX_CHUNKS - 1):
        msg = decode(body_of({"type": carrier, **CHUNKNUM_CARRIERS[carrier], "chunknum": good}))
        assert msgspec.structs.asdict(msg)["chunknum"] == good


@pytest.mark.parametrize("carrier", list(FILENAME_CARRIERS))
@pytest.mark.parametrize("filename", list(BAD_FILENAMES.values()), ids=list(BAD_FILENAMES))
def test_bad_filename_is_a_protocol_error(carrier: str, filename: Any) -> None:
    body = body_of({"type": carrier, **FILENAME_CARRIERS[carrier], "filename": filename})
    if filename == "a/b" and carrier in ("REQUEST_FILE_LOCATION", "REQUEST_CHUNK_REGISTER", "PEER_REQUEST_CHUNK"):
        # a collection member NAME/REL/PATH is valid where a name is looked up (docs/PROTOCOL.md §14)
        assert msgspec.structs.asdict(decode(body))["filename"] == filename
        return
    assert_protocol_error(body)


@pytest.mark.parametrize("carrier", list(FILENAME_CARRIERS))
@pytest.mark.parametrize(
    "filename",
    ["a", "...", ".hidden", "a..b", "name with spaces.txt", "ünïcødé-файл", "a" * MAX_FILENAME_BYTES],
)
def test_plain_file_names_are_accepted(carrier: str, filename: str) -> None:
    msg = decode(body_of({"type": carrier, **FILENAME_CARRIERS[carrier], "filename": filename}))
    assert msgspec.structs.asdict(msg)["filename"] == filename


@pytest.mark.parametrize("carrier", list(FILENAME_CARRIERS))
def test_filename_limit_is_in_utf8_bytes(carrier: str) -> None:
    name = "é" * 128
    assert len(name.encode("utf-8")) == MAX_FILENAME_BYTES + 1
    assert_protocol_error(body_of({"type": carrier, **FILENAME_CARRIERS[carrier], "filename": name}))


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
        b'{"type":"PEER_PING_PONG","x":' + b"[" * 1000 + b"]" * 1000 + b"}",
    ],
    ids=["nested objects", "nested array in an ignored field"],
)
def test_deeply_nested_json_is_a_protocol_error(body: bytes) -> None:
    assert len(body) < MAX_FRAME_SIZE
    assert_protocol_error(body)


def test_moderately_nested_unknown_field_is_ignored() -> None:
    body = b'{"type":"PEER_PING_PONG","x":' + b"[" * 100 + b"]" * 100 + b"}"
    assert decode(body) == m.PeerPingPong()


def test_error_names_the_bad_field() -> None:
    err = assert_protocol_error(body_of({"type": "PEER_REQUEST_CHUNK", "filename": "f", "chunknum": -1}))
    assert "chunknum" in str(err)


def test_peek_type_names_an_invalid_request_and_gives_up_on_garbage() -> None:
    assert peek_type(body_of({"type": "REQUEST_PUBLISH", "filename": 7})) == "REQUEST_PUBLISH"
    assert peek_type(b"\xff\xfe") is None
    assert peek_type(b"[1, 2]") is None
    assert peek_type(b"{}") is None


# -- framing ----------------------------------------------------------------------------------------------
def frames_of(*bodies: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in bodies)


def test_frame_split_at_every_byte_boundary() -> None:
    body = encode_body(m.PeerReplyChunk(filename="f", chunknum=1, data=b"x" * 50, digest=DIGEST))
    data = frames_of(body)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(data[:cut])
        second = decoder.feed(data[cut:])
        assert first + second == [body], cut
        assert decoder.pending == 0


def test_frame_fed_one_byte_at_a_time() -> None:
    bodies = [b"{}", b"", b'{"type":"PEER_PING_PONG"}']
    decoder = FrameDecoder()
    out: list[bytes] = []
    for byte in frames_of(*bodies):
        out += decoder.feed(bytes([byte]))
    assert out == bodies
    assert decoder.pending == 0


def test_several_frames_in_one_feed_and_a_partial_tail() -> None:
    bodies = [encode_body(m.RequestFileList()), encode_body(m.PeerPingPong()), b"x" * 300]
    tail = frames_of(b"next-body")
    decoder = FrameDecoder()
    assert decoder.feed(frames_of(*bodies) + tail[:7]) == bodies
    assert decoder.pending == 7
    assert decoder.feed(tail[7:]) == [b"next-body"]
    assert decoder.pending == 0


def test_four_gib_length_prefix_is_refused_before_any_body() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\xff\xff\xff\xff")
    assert decoder.pending <= HEADER_SIZE


def test_oversized_prefix_is_refused_even_with_a_little_body_attached() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", 2**32 - 1) + b"A" * 100)
    assert decoder.pending <= HEADER_SIZE + 100


def test_oversized_prefix_after_a_good_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frames_of(b"ok")) == [b"ok"]
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))


def test_frame_limit_boundary() -> None:
    at_limit = FrameDecoder()
    assert at_limit.feed(struct.pack(">I", MAX_FRAME_SIZE)) == []
    assert at_limit.pending == HEADER_SIZE  # waiting for the body, not refused
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME_SIZE + 1))


def test_frame_decoder_custom_limit() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    assert decoder.feed(frames_of(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FrameTooLarge):
        decoder.feed(frames_of(b"0123456789A"))


def test_frame_too_large_is_a_protocol_error() -> None:
    assert issubclass(FrameTooLarge, ProtocolError)


def test_body_length() -> None:
    assert body_length(struct.pack(">I", 0)) == 0
    assert body_length(struct.pack(">I", 1234)) == 1234
    assert body_length(struct.pack(">I", MAX_FRAME_SIZE)) == MAX_FRAME_SIZE
    with pytest.raises(FrameTooLarge):
        body_length(struct.pack(">I", MAX_FRAME_SIZE + 1))
    with pytest.raises(FrameTooLarge):
        body_length(b"\xff\xff\xff\xff")


def test_frame_refuses_an_oversized_body() -> None:
    with pytest.raises(FrameTooLarge):
        frame(bytes(MAX_FRAME_SIZE + 1))


# -- properties -------------------------------------------------------------------------------------------
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "address",
        "filename",
        "fileinfo",
        "result",
        "message",
        "filelist",
        "chunkinfo",
        "chunknum",
        "data",
        "digest",
        "chunksize",
        "request",
    ]
)
known_types = st.sampled_from([*m.SEED_TYPES, "ERROR"])
json_messages = st.builds(
    lambda t, fields: json.dumps({"type": t, **fields}).encode(),
    st.one_of(known_types, json_values),
    st.dictionaries(field_names, json_values, max_size=6),
)


@PROPERTY_SETTINGS
@given(st.one_of(st.binary(max_size=200), json_messages, json_values.map(lambda v: json.dumps(v).encode())))
def test_decode_only_returns_a_message_or_raises_protocol_error(body: bytes) -> None:
    try:
        result = decode(body)
    except ProtocolError:
        return
    assert isinstance(result, m.Message)


# (control characters and bidirectional overrides are refused in names and hosts: see p2pfs.safetext)
names_alphabet = st.characters(codec="utf-8", exclude_categories=("Cc",), exclude_characters="/\\\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
filenames = st.text(alphabet=names_alphabet, min_size=1, max_size=60).filter(lambda s: s not in (".", ".."))
chunk_numbers = st.integers(0, MAX_CHUNKS - 1)
fileinfos = st.tuples(st.integers(0, MAX_CHUNKS * MAX_CHUNK_SIZE), st.integers(0, MAX_CHUNKS))
chunk_sizes = st.one_of(st.none(), st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE))
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
ports = st.integers(1, 65535)  # port 0 cannot be reached, so REQUEST_REGISTER refuses it
digests = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)

valid_messages = st.one_of(
    st.builds(m.RequestRegister, address=st.tuples(st.text(alphabet=names_alphabet, max_size=40), ports)),
    st.builds(m.ReplyRegister, address=st.one_of(st.none(), st.tuples(texts, ports))),
    st.builds(m.RequestPublish, filename=filenames, fileinfo=fileinfos, chunksize=chunk_sizes),
    st.builds(m.ReplyPublish, result=st.booleans(), message=texts),
    st.just(m.RequestFileList()),
    st.builds(m.ReplyFileList, filelist=st.dictionaries(texts, fileinfos, max_size=5)),
    st.builds(m.RequestFileLocation, filename=filenames),
    st.builds(
        m.ReplyFileLocation,
        filename=texts,
        chunkinfo=st.dictionaries(texts, st.lists(chunk_numbers, max_size=5), max_size=4),
        fileinfo=st.one_of(st.none(), fileinfos),
        chunksize=chunk_sizes,
    ),
    st.builds(m.RequestChunkRegister, filename=filenames, chunknum=chunk_numbers),
    st.builds(m.PeerRequestChunk, filename=filenames, chunknum=chunk_numbers),
    st.builds(
        m.PeerReplyChunk, filename=texts, chunknum=chunk_numbers, data=st.binary(max_size=300), digest=digests
    ),
    st.just(m.PeerPingPong()),
    st.builds(m.Error, message=texts, request=st.one_of(st.none(), texts)),
)


@PROPERTY_SETTINGS
@given(valid_messages)
def test_valid_messages_round_trip(message: m.Message) -> None:
    data = encode(message)
    bodies = FrameDecoder().feed(data)
    assert len(bodies) == 1
    assert decode(bodies[0]) == message


@PROPERTY_SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_frame_decoder_reassembles_any_chunking(bodies: list[bytes], data: st.DataObject) -> None:
    stream = frames_of(*bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts"))
    decoder = FrameDecoder()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == bodies
    assert decoder.pending == 0


def test_location_ranges_extension_round_trips_and_expands() -> None:
    asked = m.RequestFileLocation(filename="f", ranges=True)
    assert json.loads(encode_body(asked)) == {"type": "REQUEST_FILE_LOCATION", "filename": "f", "ranges": True}
    # the seed's form stays exactly the seed's: no `ranges` key unless asked
    assert json.loads(encode_body(m.RequestFileLocation(filename="f"))) == {
        "type": "REQUEST_FILE_LOCATION",
        "filename": "f",
    }
    body = b'{"type":"REPLY_FILE_LOCATION","filename":"f","chunkinfo":{},"chunkranges":{"h:1":[[0,3],[5,6]]}}'
    reply = decode(body)
    assert isinstance(reply, m.ReplyFileLocation)
    assert reply.holder_chunks() == {"h:1": [0, 1, 2, 5]}
    seed = decode(b'{"type":"REPLY_FILE_LOCATION","filename":"f","chunkinfo":{"h:1":[4,2]}}')
    assert isinstance(seed, m.ReplyFileLocation) and seed.holder_chunks() == {"h:1": [4, 2]}
    for bad in (b"[[0]]", b"[[-1,2]]", b"[[0,0]]", b'[["a",2]]'):
        with pytest.raises(ProtocolError):
            decode(b'{"type":"REPLY_FILE_LOCATION","filename":"f","chunkinfo":{},"chunkranges":{"h:1":' + bad + b"}}")


def test_holder_runs_gives_runs_whichever_form_the_tracker_used() -> None:
    """A downloader applies locations as runs: `chunkranges` as sent, the seed's lists turned into runs."""
    body = b'{"type":"REPLY_FILE_LOCATION","filename":"f","chunkinfo":{},"chunkranges":{"h:1":[[0,262144]]}}'
    reply = decode(body)
    assert isinstance(reply, m.ReplyFileLocation) and reply.holder_runs() == {"h:1": [(0, 262144)]}
    seed = decode(b'{"type":"REPLY_FILE_LOCATION","filename":"f","chunkinfo":{"h:1":[7,2,3,3,0,8],"h:2":[]}}')
    assert isinstance(seed, m.ReplyFileLocation)
    assert seed.holder_runs() == {"h:1": [(0, 1), (2, 4), (7, 9)], "h:2": []}


# -- REQUEST_UNPUBLISH / REPLY_UNPUBLISH (extension) -----------------------------------------------------
def test_unpublish_messages_round_trip_with_exact_keys() -> None:
    request = m.RequestUnpublish(filename="model.ckpt")
    assert wire(request) == {"type": "REQUEST_UNPUBLISH", "filename": "model.ckpt"}
    done = m.ReplyUnpublish(filename="model.ckpt", result=True)
    assert wire(done) == {"type": "REPLY_UNPUBLISH", "filename": "model.ckpt", "result": True}  # no message
    refused = m.ReplyUnpublish(filename="model.ckpt", result=False, message="this peer does not hold 'model.ckpt'")
    assert wire(refused) == {
        "type": "REPLY_UNPUBLISH",
        "filename": "model.ckpt",
        "result": False,
        "message": "this peer does not hold 'model.ckpt'",
    }
    for message in (request, done, refused):
        assert decode(encode_body(message)) == message
    # as PROTOCOL.md writes them, with an empty message and an unknown field too
    assert decode(b'{"type":"REPLY_UNPUBLISH","filename":"a","result":true,"message":"","x":[1]}') == (
        m.ReplyUnpublish(filename="a", result=True)
    )
    assert m.SEED_TYPES.count("REQUEST_UNPUBLISH") == 0  # an extension, not one of the seed's 12


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "REQUEST_UNPUBLISH"},
        {"type": "REQUEST_UNPUBLISH", "filename": None},
        {"type": "REQUEST_UNPUBLISH", "filename": 7},
        {"type": "REQUEST_UNPUBLISH", "filename": ["a.bin"]},
        {"type": "REQUEST_UNPUBLISH", "filename": "a\u202eb"},
        {"type": "REPLY_UNPUBLISH", "filename": "a", "result": "yes"},
        {"type": "REPLY_UNPUBLISH", "filename": "a", "result": 1},
        {"type": "REPLY_UNPUBLISH", "filename": "a"},
        {"type": "REPLY_UNPUBLISH", "result": True},
        {"type": "REPLY_UNPUBLISH", "filename": "a", "result": False, "message": 5},
        {"type": "REPLY_UNPUBLISH", "filename": "a", "result": False, "message": None},
    ],
    ids=[
        "no filename",
        "filename null",
        "filename number",
        "filename list",
        "filename with a bidi override",
        "result string",
        "result number",
        "reply without result",
        "reply without filename",
        "message number",
        "message null",
    ],
)
def test_hostile_unpublish_messages_are_protocol_errors(obj: dict[str, Any]) -> None:
    assert_protocol_error(body_of(obj))
