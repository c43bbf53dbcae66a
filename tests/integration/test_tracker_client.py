"""The peer's tracker client against a misbehaving tracker on a real socket: replies stay matched to
requests after an invalid reply, and an oversized frame ends the connection instead of desynchronising it."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from p2pfs.address import Address
from p2pfs.errors import TrackerError, TrackerUnavailable
from p2pfs.peer.tracker_client import TrackerClient

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


def frame(obj: object) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, object]:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return json.loads(await reader.readexactly(n))  # type: ignore[no-any-return]


@pytest.fixture
async def fake_tracker() -> AsyncIterator[Callable[..., asyncio.Future[Address]]]:
    servers: list[asyncio.Server] = []

    async def start(handler) -> Address:  # type: ignore[no-untyped-def]
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return Address("127.0.0.1", server.sockets[0].getsockname()[1])

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


async def test_invalid_reply_fails_only_its_request(fake_tracker) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)  # REQUEST_FILE_LIST #1
        writer.write(frame(b'{"type": "REPLY_FILE_LIST", "filelist": 7}'))  # wrong shape
        await read_frame(reader)  # REQUEST_FILE_LIST #2
        writer.write(frame({"type": "REPLY_FILE_LIST", "filelist": {"a": [1, 1]}}))
        await writer.drain()
        await reader.read()

    address = await fake_tracker(handler)
    client = TrackerClient()
    await client.connect(address, None)
    with pytest.raises(TrackerError, match="invalid reply"):
        await client.file_list()
    assert (await client.file_list()).filelist == {"a": (1, 1)}
    await client.close()


async def test_oversized_frame_drops_the_connection(fake_tracker) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        writer.write(struct.pack(">I", 0xFFFFFFF0) + b"x" * 100)
        await writer.drain()
        await reader.read()

    address = await fake_tracker(handler)
    client = TrackerClient()
    await client.connect(address, None)
    with pytest.raises(TrackerUnavailable):
        await client.file_list()
    assert not client.connected
    with pytest.raises(TrackerUnavailable, match="not connected"):
        await client.file_list()
