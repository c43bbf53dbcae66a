"""The wire protocol as a pure machine: message schemas, framing and limits; no sockets, no asyncio."""

from p2pfs.protocol.framing import FrameDecoder, body_length, decode, encode, peek_type
from p2pfs.protocol.messages import *
from p2pfs.protocol.messages import AnyMessage, Message

__all__ = ["AnyMessage", "FrameDecoder", "Message", "body_length", "decode", "encode", "peek_type"]
