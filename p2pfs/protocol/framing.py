"""Framing and codec, with no I/O: a frame is a 4-byte big-endian length N, then N bytes of UTF-8 JSON.

`encode(message) -> bytes` gives a whole frame; `decode(body) -> Message` validates a frame body against
the schemas in `messages`; `FrameDecoder` turns a byte stream into frame bodies. Readers and writers in
the I/O layer only move bytes.
"""

from __future__ import annotations

import re
import struct

import msgspec

from p2pfs.errors import FrameTooLarge, ProtocolError
from p2pfs.protocol.limits import MAX_FRAME_SIZE
from p2pfs.protocol.messages import AnyMessage, Message

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyMessage)


class _TypeOnly(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def encode(message: Message) -> bytearray:
    """The whole frame (length prefix and JSON body) for `message`; FrameTooLarge if the body would exceed
    MAX_FRAME_SIZE (the receiver would refuse it)."""
    buf = bytearray(HEADER_SIZE)
    _encoder.encode_into(message, buf, HEADER_SIZE)
    if len(buf) - HEADER_SIZE > MAX_FRAME_SIZE:
        raise FrameTooLarge(f"{type(message).__name__} of {len(buf) - HEADER_SIZE} bytes exceeds the frame limit")
    HEADER.pack_into(buf, 0, len(buf) - HEADER_SIZE)
    return buf  # no bytes() copy: a 1.4 MB base64 chunk frame would be copied once more per chunk


def raw_json(value: object) -> msgspec.Raw:
    """`value` encoded once, to be placed as it is inside later messages (msgspec copies a Raw verbatim):
    for parts of replies that are sent many times over, such as a holder's chunk numbers."""
    return msgspec.Raw(_encoder.encode(value))


def encode_body(message: Message) -> bytes:
    """The JSON body alone (no length prefix)."""
    return _encoder.encode(message)


def frame(body: bytes | bytearray) -> bytes:
    """Prefix an already-encoded body with its length."""
    if len(body) > MAX_FRAME_SIZE:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME_SIZE}")
    return HEADER.pack(len(body)) + body


def body_length(header: bytes | bytearray, limit: int = MAX_FRAME_SIZE) -> int:
    """The body length announced by a 4-byte header; FrameTooLarge above `limit` (the receiver's: every
    server accepts only frames as large as what it is sent legitimately, see limits)."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise FrameTooLarge(f"frame of {length} bytes announced; the limit is {limit}")
    return int(length)


_LEADING_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Z_]{1,40})"')


def leading_type(body: bytes | bytearray | memoryview) -> str | None:
    """The `type` of a body that begins with it (as p2pfs writes every message), from its first bytes
    only; None otherwise. Lets a server refuse a large frame of the wrong kind without parsing it."""
    match = _LEADING_TYPE.match(bytes(body[:64]))
    return match.group(1).decode("ascii") if match else None


def decode(body: bytes | bytearray | memoryview) -> AnyMessage:
    """Validate one frame body; ProtocolError says what is wrong (bad JSON, unknown type, bad field)."""
    # msgspec skips unknown fields without looking inside them; the protocol says the whole body is
    # UTF-8, so check it (a fast ASCII scan first: chunk data in base64 is ASCII).
    raw = body if isinstance(body, (bytes, bytearray)) else bytes(body)
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("malformed JSON: invalid UTF-8") from None
    try:
        message: AnyMessage = _decoder.decode(body)
        return message
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ProtocolError("malformed JSON: invalid UTF-8") from None
    except RecursionError:
        raise ProtocolError("malformed JSON: nested too deeply") from None


def peek_type(body: bytes | bytearray | memoryview) -> str | None:
    """Best-effort `type` of a body that failed to decode, to name it in the ERROR reply (None when the
    body is not even valid UTF-8 JSON)."""
    try:
        bytes(body).decode("utf-8")
        return _type_decoder.decode(body).type or None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


class FrameDecoder:
    """Sans-I/O reassembly: `feed(bytes)` returns the complete frame bodies received so far.

    Raises FrameTooLarge as soon as a header announces an oversized frame, before buffering its body.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_frame_size

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        bodies: list[bytes] = []
        while len(self._buf) >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(self._buf, 0)
            if length > self._max:
                raise FrameTooLarge(f"frame of {length} bytes announced; the limit is {self._max}")
            end = HEADER_SIZE + length
            if len(self._buf) < end:
                break
            bodies.append(bytes(self._buf[HEADER_SIZE:end]))
            del self._buf[:end]
        return bodies

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
