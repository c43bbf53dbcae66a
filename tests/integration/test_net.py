"""The connection layer over real loopback sockets: frames split and merged arbitrarily by TCP, raw chunk
bodies read straight into a caller's buffer, large frames, and a peer that vanishes mid-body."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from p2pfs.address import Address
from p2pfs.net import READ_BUFFER_SIZE, Connection, ConnectionClosed, connect, serve

MiB = 1 << 20


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def server_side() -> tuple[asyncio.Server, Address, asyncio.Queue[Connection]]:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(conn: Connection) -> None:
        await accepted.put(conn)
        await done.wait()

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Address("127.0.0.1", port), accepted


async def test_frames_split_into_single_bytes_and_merged_arrive_whole_and_in_order() -> None:
    server, address, accepted = await server_side()
    client = await connect(address)
    conn = await accepted.get()
    bodies = [b'{"type":"PEER_PING_PONG"}', b"x" * 70_000, b"", b"y" * 5]
    stream = b"".join(frame(b) for b in bodies)
    for i in range(200):  # the first 200 bytes one at a time, the rest in one write
        client.send_raw(stream[i : i + 1])
        await client.drain()
    client.send_raw(stream[200:])
    got = [bytes(await conn.recv_body(5)) for _ in bodies]
    assert got == bodies
    client.close()
    server.close()


async def test_raw_body_larger_than_the_read_ahead_lands_in_the_callers_buffer() -> None:
    server, address, accepted = await server_side()
    client = await connect(address)
    conn = await accepted.get()
    payload = os.urandom(3 * MiB + 17)
    header = frame(b'{"type":"PEER_REPLY_CHUNK"}')
    # the header, the payload and a following frame in one write: part of the payload is read ahead
    client.send_raw(header + payload + frame(b"after"))
    await client.drain()
    assert bytes(await conn.recv_body(5)) == b'{"type":"PEER_REPLY_CHUNK"}'
    buf = bytearray(4 * MiB)
    await conn.recv_raw_into(memoryview(buf)[: len(payload)])
    assert buf[: len(payload)] == payload
    assert bytes(await conn.recv_body(5)) == b"after"
    client.close()
    server.close()


@pytest.mark.parametrize("size", [READ_BUFFER_SIZE // 2 + 1, 2 * MiB + 3])
async def test_frames_larger_than_the_read_ahead(size: int) -> None:
    server, address, accepted = await server_side()
    client = await connect(address)
    conn = await accepted.get()
    body = os.urandom(size)
    client.send_raw(frame(body) + frame(b"next"))
    assert bytes(await conn.recv_body(5)) == body
    assert bytes(await conn.recv_body(5)) == b"next"
    client.close()
    server.close()


async def test_peer_that_vanishes_mid_raw_body_is_connection_closed() -> None:
    server, address, accepted = await server_side()
    client = await connect(address)
    conn = await accepted.get()
    client.send_raw(b"z" * 1000)
    await client.drain()
    client.close()
    with pytest.raises(ConnectionClosed):
        await conn.recv_raw_into(memoryview(bytearray(MiB)))
    server.close()


async def test_half_closed_client_still_gets_replies_to_what_it_sent() -> None:
    """EOF from the client: frames already received are still answered before the server closes."""
    replied = asyncio.Event()

    async def handler(conn: Connection) -> None:
        body = await conn.recv_body(5)
        conn.send_raw(frame(bytes(body)))
        await conn.drain()
        replied.set()

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame(b"hello"))
    writer.write_eof()
    assert await asyncio.wait_for(reader.readexactly(9), 5) == frame(b"hello")
    await replied.wait()
    writer.close()
    server.close()


async def test_two_senders_waiting_to_drain_are_both_released() -> None:
    """Two tasks send on one connection whose peer does not read: both wait in `drain`, and both are
    released when the peer reads (one waiter was kept before, so the other hung until the frame timeout)."""
    server, address, accepted = await server_side()
    client = await connect(address)
    conn = await accepted.get()
    conn._stream.transport.pause_reading()  # type: ignore[union-attr]  # (the peer reads nothing for now)
    chunk = b"x" * (1 << 20)

    async def sender() -> None:
        while not client._stream._write_paused:
            client.send_raw(chunk)
            await asyncio.sleep(0)
        await client.drain()

    tasks = [asyncio.create_task(sender()) for _ in range(2)]
    while len(client._stream._drain_waiters) < 2:
        await asyncio.sleep(0.01)
    conn._stream.transport.resume_reading()  # type: ignore[union-attr]
    drained = 0

    async def reader() -> None:
        nonlocal drained
        buf = memoryview(bytearray(1 << 16))
        while True:
            await conn.recv_raw_into(buf)
            drained += len(buf)

    read = asyncio.create_task(reader())
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    read.cancel()
    client.close()
    server.close()
