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


async def test_a_request_whose_send_raised_leaves_no_reply_owed(  # type: ignore[no-untyped-def]
    fake_tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that could not even be encoded (too large for a frame) is not queued: the next reply
    goes to the next request, not to a future nobody waits for."""
    from p2pfs.errors import FrameTooLarge
    from p2pfs.net import framing

    real_encode = framing.encode

    def encode(message):  # type: ignore[no-untyped-def]
        if getattr(message, "filename", None) == "big":
            raise FrameTooLarge("REQUEST_PUBLISH of 20000000 bytes exceeds the frame limit")
        return real_encode(message)

    monkeypatch.setattr(framing, "encode", encode)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        writer.write(frame({"type": "REPLY_FILE_LIST", "filelist": {"a": [1, 1]}}))
        await writer.drain()
        await reader.read()

    address = await fake_tracker(handler)
    client = TrackerClient()
    await client.connect(address, None)
    with pytest.raises(FrameTooLarge):
        await client.publish("big", 1 << 20, 1, 1 << 20)
    assert (await client.file_list()).filelist == {"a": (1, 1)}
    await client.close()


async def test_a_cancelled_request_takes_its_own_reply_with_it(fake_tracker) -> None:  # type: ignore[no-untyped-def]
    """The asker of the first request gives up before its reply comes: that reply is dropped with it, and
    the second request gets its own reply (not the first one's)."""
    first_seen = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        first_seen.set()
        await read_frame(reader)
        writer.write(frame({"type": "REPLY_FILE_LIST", "filelist": {"first": [1, 1]}}))
        writer.write(frame({"type": "REPLY_FILE_LIST", "filelist": {"second": [2, 1]}}))
        await writer.drain()
        await reader.read()

    address = await fake_tracker(handler)
    client = TrackerClient()
    await client.connect(address, None)
    first = asyncio.create_task(client.file_list())
    await first_seen.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await client.file_list()).filelist == {"second": (2, 1)}
    await client.close()


async def test_a_lost_tracker_during_the_announce_after_a_reconnection_starts_no_second_one(
    fake_tracker,  # type: ignore[no-untyped-def]
) -> None:
    """The connection is lost again while the peer re-announces after reconnecting: the one reconnection
    task goes on (no second task announcing concurrently), and the client ends up registered."""
    connections = 0
    registered_twice = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        n = connections
        await read_frame(reader)  # REQUEST_REGISTER
        writer.write(frame({"type": "REPLY_REGISTER", "address": ["127.0.0.1", 9]}))
        await writer.drain()
        if n <= 2:  # the first connection, and the first reconnection (during its announce), are cut
            writer.close()
            return
        registered_twice.set()
        await reader.read()

    address = await fake_tracker(handler)
    announcing: list[asyncio.Task[object] | None] = []

    async def on_reconnected() -> None:
        announcing.append(asyncio.current_task())
        await asyncio.sleep(0.05)  # (an announce takes a moment; the loss lands meanwhile)

    client = TrackerClient(on_reconnected=on_reconnected)
    await client.connect(address, Address("127.0.0.1", 9))
    async with asyncio.timeout(20):
        await registered_twice.wait()
        while client._reconnecting is not None or not client.connected:
            await asyncio.sleep(0.01)
    assert len(set(map(id, announcing))) == 1, "a second reconnection task was started"
    assert client.connected
    await client.close()
