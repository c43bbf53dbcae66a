"""Where a tracker's state lives besides its memory: nowhere (`MemoryStore`, a tracker alone), or Redis
(`RedisStore`: several trackers on one Redis serve one swarm).

Each tracker keeps serving every request from its in-memory Registry, which is a replica of the shared
state. The store writes each change made through this tracker to Redis (batched: one pipeline per turn
of the flusher, however many changes it gathers), publishes it on the swarm's channel so other trackers
apply it to their replicas and push it to their watchers, keeps leases on the peers connected here, and
sweeps the leases of peers whose tracker died. While Redis is unreachable the tracker serves from its
replica, drops what it would have written and, once Redis is back, writes again everything its own
peers hold and reloads the rest. The key layout and the failure cases: docs/OPERATIONS.md, "Several
trackers and Redis".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import secrets
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import msgspec

from p2pfs.address import Address
from p2pfs.chunkset import ChunkSet
from p2pfs.protocol import messages as m
from p2pfs.tracker.registry import FileRecord, PublishRefused, UnpublishRefused

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline, PubSub

    from p2pfs.tracker.server import TrackerServer

log = logging.getLogger("p2pfs.tracker")

#: Seconds a peer's registration may outlive its tracker (`--lease`): the tracker grants leases of
#: LEASE_GRANTED of this and renews them every LEASE_TURN of it, and every tracker sweeps expired ones as
#: often, so a peer that died with its tracker is gone everywhere within this bound (granted + one sweep).
DEFAULT_LEASE = 15.0
LEASE_GRANTED = 0.75
LEASE_TURN = 0.25
#: A registration of at most this many chunks is written bit by bit (SETBIT); a larger one writes the
#: holder's whole bitmap (at most 32 KiB), which costs one command however many chunks it adds.
SETBIT_LIMIT = 64
#: Arguments of one run of the registration script (a flush of many registrations makes several).
REGISTER_ARGS = 8192
#: Seconds between attempts to reach Redis again after a failure (doubling up to the cap).
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 2.0
#: Seconds one Redis command may take before Redis counts as failed (a vanished host is noticed).
COMMAND_TIMEOUT = 3.0
#: Names read from Redis per pipeline when loading (each brings its record and its holders' bitmaps).
LOAD_BATCH = 128
#: Expired leases one sweep takes (the rest at the next sweep).
SWEEP_BATCH = 512


class Store:
    """The hooks TrackerServer calls after each change it made to its Registry. This one keeps nothing
    (the default, `--store memory`): the tracker's memory is all there is, as it always was."""

    def describe(self) -> str:
        return "memory"

    async def start(self, server: TrackerServer) -> None:
        """Called before the tracker listens: a shared store loads the swarm's state into the registry."""

    async def stop(self) -> None:
        pass

    def registered(self, peer: Address) -> None:
        """`peer` registered through this tracker."""

    def moved_away(self, peer: Address) -> bool:
        """True if `peer`, whose connection here closed, is registered through another tracker now (so it
        is not removed)."""
        return False

    def left(self, peer: Address, delisted: list[str]) -> None:
        """`peer`, registered here, left (the registry has removed it, delisting `delisted`)."""

    def published(self, peer: Address, record: FileRecord) -> None:
        """`peer` published `record` (as a new file, or as a new complete holder of it)."""

    def chunks(self, peer: Address, name: str, chunks: list[int]) -> None:
        """`peer` registered `chunks` of `name` that it did not hold before."""

    def unpublished(self, peer: Address, name: str, delisted: bool) -> None:
        """`peer` stopped holding `name` (`delisted`: the file is no longer listed)."""


MemoryStore = Store


def check_store(spec: str) -> None:
    """ValueError (one line) unless `spec` names a store: `memory`, or a redis://, rediss:// or unix:// URL."""
    if spec == "memory":
        return
    try:
        parts = urllib.parse.urlsplit(spec)
        parts.port  # noqa: B018 (parsed for its ValueError)
    except ValueError as exc:
        raise ValueError(f"bad store {redacted_text(spec)!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"bad store {redacted_text(spec)!r}: write memory, or redis://HOST:PORT/DB (also rediss://, unix://)"
        )


def open_store(spec: str, lease: float = DEFAULT_LEASE) -> Store:
    """The store `--store` names (see check_store)."""
    check_store(spec)
    return MemoryStore() if spec == "memory" else RedisStore(spec, lease)


def redacted_text(url: str) -> str:
    try:
        return redacted(url)
    except ValueError:
        return url.split("@")[-1]


def redacted(url: str) -> str:
    """`url` without its password (which goes into no log line)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# -- what goes into Redis ----------------------------------------------------------------------------------
class FileMeta(msgspec.Struct, array_like=True):
    """A listed file's fixed fields, the value of `p2pfs:file:NAME` (MessagePack)."""

    filesize: int
    chunks: int
    chunksize: int | None
    chunkhashes: bytes | None
    collection: m.Collection | None


def _meta_of(record: FileRecord) -> FileMeta:
    return FileMeta(record.filesize, record.chunk_count, record.chunk_size, record.chunk_hashes, record.collection)


class Joined(msgspec.Struct, tag="joined", array_like=True):
    peer: str
    tracker: str


class Gone(msgspec.Struct, tag="gone", array_like=True):
    """The peer left, or its lease expired: every replica removes it (delisting as the registry says)."""

    peer: str


class Published(msgspec.Struct, tag="published", array_like=True):
    """The peer holds the whole file; a replica that does not list it reads its record from Redis."""

    peer: str
    name: str
    contentid: str | None
    filesize: int
    chunks: int


class Chunks(msgspec.Struct, tag="chunks", array_like=True):
    peer: str
    name: str
    runs: list[tuple[int, int]]


class Unpublished(msgspec.Struct, tag="unpublished", array_like=True):
    peer: str
    name: str


class Resynced(msgspec.Struct, tag="resynced", array_like=True):
    """A tracker wrote its peers' state again (Redis came back, or lost them): the others reload."""

    tracker: str


Event = Joined | Gone | Published | Chunks | Unpublished | Resynced


class Batch(msgspec.Struct, array_like=True):
    """One message on the swarm's channel: the changes one flush of one tracker wrote, in order."""

    origin: str
    events: list[Event]


_encode = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(Batch).decode
_decode_meta = msgspec.msgpack.Decoder(FileMeta).decode
_RUN = re.compile(b"1+")


def bitmap(chunks: ChunkSet) -> bytes:
    """`chunks` as a Redis bitmap: chunk N is bit N of the string as SETBIT and BITCOUNT number them
    (the most significant bit of each byte first)."""
    size = (chunks.size + 7) // 8
    if not size:
        return b""
    digits = bytearray(b"0" * (size * 8))
    for first, end in chunks.runs():
        digits[first:end] = b"1" * (end - first)
    return int(digits, 2).to_bytes(size, "big")


def from_bitmap(chunk_count: int, value: bytes) -> ChunkSet:
    """The chunks of a Redis bitmap (shorter or longer than the file's chunks: SETBIT grows it)."""
    value = value[: (chunk_count + 7) // 8]
    if not value:
        return ChunkSet(chunk_count)
    digits = format(int.from_bytes(value, "big"), f"0{len(value) * 8}b").encode("ascii")
    return ChunkSet.from_runs(chunk_count, (match.span() for match in _RUN.finditer(digits)))


# Scripts take Redis's clock (TIME), so the trackers' clocks need not agree. They name keys built from
# ARGV rather than declared in KEYS: one Redis (or a primary with replicas), not a Redis Cluster.
_RENEW = """
local t = redis.call('TIME')
local until_ = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], until_, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[2])
end
"""
_SWEEP = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, peer in ipairs(gone) do
  redis.call('ZREM', KEYS[1], peer)
  redis.call('HDEL', KEYS[2], peer)
end
return gone
"""
_FORGET_PEER = """
local prefix, peer = ARGV[1], ARGV[2]
for _, name in ipairs(redis.call('SMEMBERS', prefix .. ':files_of:' .. peer)) do
  redis.call('DEL', prefix .. ':have:' .. peer .. ':' .. name)
  redis.call('SREM', prefix .. ':holders:' .. name, peer)
  redis.call('SREM', prefix .. ':publishers:' .. name, peer)
end
redis.call('DEL', prefix .. ':files_of:' .. peer)
redis.call('ZREM', prefix .. ':leases', peer)
redis.call('HDEL', prefix .. ':owners', peer)
"""
_REGISTER = """
local prefix = ARGV[1]
local i = 2
while i <= #ARGV do
  local name, peer, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local have = prefix .. ':have:' .. peer .. ':' .. name
  for j = i + 3, i + 2 + count do
    redis.call('SETBIT', have, ARGV[j], 1)
  end
  redis.call('SADD', prefix .. ':holders:' .. name, peer)
  redis.call('SADD', prefix .. ':files_of:' .. peer, name)
  i = i + 3 + count
end
"""
_DELIST = """
local prefix, name = ARGV[1], ARGV[2]
for _, holder in ipairs(redis.call('SMEMBERS', prefix .. ':holders:' .. name)) do
  redis.call('DEL', prefix .. ':have:' .. holder .. ':' .. name)
  redis.call('SREM', prefix .. ':files_of:' .. holder, name)
end
redis.call('DEL', prefix .. ':holders:' .. name, prefix .. ':publishers:' .. name, prefix .. ':file:' .. name)
redis.call('SREM', prefix .. ':files', name)
"""

Op = Callable[["Pipeline"], object]


class RedisStore(Store):
    """The tracker's state shared in Redis with the other trackers of the swarm (module docstring)."""

    def __init__(self, url: str, lease: float = DEFAULT_LEASE, prefix: str = "p2pfs") -> None:
        from redis.asyncio import Redis  # (loaded only when a Redis store is asked for)
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.lease = lease
        self.prefix = prefix
        #: this tracker's name in Redis (owner of its peers' leases) and on the channel
        self.id = secrets.token_hex(6)
        # (no retries inside redis-py: a failure is noticed at once and handled here, by a resync)
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        # (pub/sub channels are not per database: the channel names the database)
        self.channel = f"{prefix}:events:{db}"
        self._server: TrackerServer | None = None
        #: peers registered through this tracker (whose leases it renews)
        self._own: set[Address] = set()
        #: the tracker each known peer is registered through
        self._owner: dict[Address, str] = {}
        #: what the next flush writes, in order; chunk registrations gathered per (file, holder) until then
        self._ops: list[Op] = []
        self._events: list[Event] = []
        self._chunks: dict[tuple[str, Address], list[int]] = {}
        self._wake = asyncio.Event()
        self._healthy = False
        self._ready = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Redis failed and has not come back yet (reported once, on stderr)
        self._failing = False
        self._retry_delay = RETRY_FIRST_DELAY
        #: a rewrite of this tracker's peers is queued (not queued twice)
        self._rewrite_queued = False
        #: how many times the state was loaded from Redis, and the last failure (for tests and logs)
        self.loads = 0

    def describe(self) -> str:
        return redacted(self.url)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _renew(self, pipe: Pipeline, peers: list[str]) -> None:
        """Lease `peers` (registered here) for another LEASE_GRANTED × `lease` seconds, by Redis's clock
        (renewed twice before it ends: one late renewal does not drop a live peer)."""
        granted = int(self.lease * LEASE_GRANTED * 1000)
        pipe.eval(_RENEW, 2, self._key("leases"), self._key("owners"), granted, self.id, *peers)

    def _key(self, *parts: str | Address) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self, server: TrackerServer) -> None:
        if self._task is not None:
            return
        self._server = server
        self._task = asyncio.create_task(self._supervise())
        await self._ready.wait()  # (loaded, or Redis failed and was reported: the tracker serves anyway)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._healthy:  # what is gathered still goes out (briefly: Redis may be what is failing)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._flush_once()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def _supervise(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (any failure of Redis or its connection: resync when back)
                self._failed()
                if not self._failing:
                    log.warning(
                        "store %s unavailable (%s): serving from memory; resyncing when it is back",
                        self.describe(),
                        _describe(exc),
                    )
                    self._failing = True
                    self._retry_delay = RETRY_FIRST_DELAY
                else:
                    log.debug("store %s still unavailable: %s", self.describe(), _describe(exc))
                self._ready.set()
                await asyncio.sleep(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_DELAY)

    def _failed(self) -> None:
        self._healthy = False
        self._ops.clear()
        self._events.clear()
        self._chunks.clear()
        self._rewrite_queued = False
        if self._server is not None:
            self._server.stats.store_errors += 1

    async def _session(self) -> None:
        """Subscribe, load (or resync), then write, listen and renew until Redis fails."""
        pubsub = self._redis.pubsub()
        try:
            # Subscribed before loading: what changes meanwhile waits on the socket and is applied after.
            await pubsub.subscribe(self.channel)
            recovering = bool(self.loads)
            if not recovering:  # (the first time: nothing of ours to write yet)
                await self._load()
                self._healthy = True
            else:
                pipe = self._redis.pipeline(transaction=False)
                self._write_own(pipe)  # (built from the replica at once: later changes queue behind it)
                self._healthy = True
                pipe.publish(self.channel, _encode(Batch(self.id, [Resynced(self.id)])))
                await pipe.execute()
                # Peers Redis lacks are kept for now: the other trackers may not have written theirs yet.
                await self._load(prune=False)
            if self._failing:
                self._failing = False
                log.warning("store %s is back: state written again and reloaded", self.describe())
            self._ready.set()
            tasks = [self._flusher(), self._listen(pubsub), self._leases(), self._reloader()]
            if recovering:
                tasks.append(self._prune_later())
            await _first_failure(*tasks)
        finally:
            self._healthy = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8

    # -- the hooks: queue writes and events -----------------------------------------------------------------
    def _queue(self, op: Op | None, event: Event | None) -> None:
        if not self._healthy:
            return  # (dropped: the resync after Redis comes back writes the replica's state again)
        self._take_chunks()
        if op is not None:
            self._ops.append(op)
        if event is not None:
            self._events.append(event)
        self._wake.set()

    def registered(self, peer: Address) -> None:
        self._own.add(peer)
        self._owner[peer] = self.id
        text = str(peer)
        self._queue(
            lambda pipe: self._renew(pipe, [text]),
            Joined(text, self.id),
        )

    def moved_away(self, peer: Address) -> bool:
        owner = self._owner.get(peer)
        return owner is not None and owner != self.id

    def left(self, peer: Address, delisted: list[str]) -> None:
        self._own.discard(peer)
        self._owner.pop(peer, None)
        self._queue(self._forget_op(peer, delisted), Gone(str(peer)))

    def _forget_op(self, peer: Address, delisted: list[str]) -> Op:
        def op(pipe: Pipeline) -> None:
            pipe.eval(_FORGET_PEER, 0, self.prefix, str(peer))
            for name in delisted:
                pipe.eval(_DELIST, 0, self.prefix, name)

        return op

    def published(self, peer: Address, record: FileRecord) -> None:
        event = Published(str(peer), record.name, record.content_id, record.filesize, record.chunk_count)
        self._queue(lambda pipe: self._write_holding(pipe, peer, record, whole=True), event)

    def chunks(self, peer: Address, name: str, chunks: list[int]) -> None:
        if not self._healthy or not chunks:
            return
        pending = self._chunks.get((name, peer))
        if pending is None:
            self._chunks[(name, peer)] = list(chunks)
        else:
            pending.extend(chunks)
        self._wake.set()

    def unpublished(self, peer: Address, name: str, delisted: bool) -> None:
        def op(pipe: Pipeline) -> None:
            if delisted:
                pipe.eval(_DELIST, 0, self.prefix, name)
                return
            pipe.delete(self._key("have", peer, name))
            pipe.srem(self._key("holders", name), str(peer))
            pipe.srem(self._key("publishers", name), str(peer))
            pipe.srem(self._key("files_of", peer), name)

        self._queue(op, Unpublished(str(peer), name))

    def _take_chunks(self) -> None:
        """Turn the gathered chunk registrations into writes and events, in their place in the order."""
        if not self._chunks:
            return
        gathered, self._chunks = self._chunks, {}
        assert self._server is not None
        files = self._server.registry.files
        small: list[str | int] = []  # (name, peer, count, chunks...) of every small registration
        for (name, peer), chunks in gathered.items():
            record = files.get(name)
            if record is None:
                continue
            if len(chunks) > SETBIT_LIMIT:
                self._ops.append(functools.partial(self._write_holding, peer=peer, record=record, whole=False))
            else:
                small += (name, str(peer), len(chunks), *chunks)
            self._events.append(Chunks(str(peer), name, m.runs_of(chunks)))  # (O(chunks), not O(file))
        if small:
            self._ops.append(functools.partial(self._write_chunks, groups=small))

    def _write_chunks(self, pipe: Pipeline, groups: list[str | int]) -> None:
        """Small registrations, as one script run per REGISTER_ARGS arguments: a command per chunk would
        cost the tracker more in redis-py (packing and parsing each reply) than the rest of the flush."""
        start = 0
        while start < len(groups):
            end = start
            while end < len(groups) and end - start < REGISTER_ARGS:
                end += 3 + cast(int, groups[end + 2])
            pipe.eval(_REGISTER, 0, self.prefix, *groups[start:end])
            start = end

    def _write_holding(self, pipe: Pipeline, peer: Address, record: FileRecord, whole: bool) -> None:
        """The file's record (unless Redis has one) and `peer`'s whole bitmap of it, from the replica."""
        name = record.name
        meta = _meta_of(record)
        pipe.set(self._key("file", name), _encode(meta), nx=True)
        pipe.sadd(self._key("files"), name)
        held = ChunkSet(record.chunk_count, full=True) if whole else record.holders.get(peer)
        if held is None:
            return
        pipe.set(self._key("have", peer, name), bitmap(held))
        pipe.sadd(self._key("holders", name), str(peer))
        pipe.sadd(self._key("files_of", peer), name)
        if peer in record.publishers:
            pipe.sadd(self._key("publishers", name), str(peer))

    def _write_own(self, pipe: Pipeline) -> None:
        """Everything the peers registered here hold, written again (after Redis lost or missed it)."""
        assert self._server is not None
        own = sorted(self._own)
        for peer in own:
            pipe.eval(_FORGET_PEER, 0, self.prefix, str(peer))
        if own:
            self._renew(pipe, [str(p) for p in own])
        mine = set(own)
        for record in self._server.registry.files.values():
            for peer in mine.intersection(record.holders):
                self._write_holding(pipe, peer, record, whole=False)

    # -- the tasks of a session -----------------------------------------------------------------------------
    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            await self._flush_once()

    async def _flush_once(self) -> None:
        self._wake.clear()
        self._take_chunks()
        ops, self._ops = self._ops, []
        events, self._events = self._events, []
        if not ops and not events:
            return
        pipe = self._redis.pipeline(transaction=False)
        for op in ops:
            op(pipe)
        if events:  # (after the writes, on the same connection: a reader of the event finds them written)
            pipe.publish(self.channel, _encode(Batch(self.id, events)))
        await pipe.execute()

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message.get("type") != "message":
                continue
            try:
                batch = _decode_batch(message["data"])
            except (msgspec.DecodeError, TypeError) as exc:
                log.warning("store: ignored an unreadable message on %s: %s", self.channel, exc)
                continue
            if batch.origin == self.id:
                continue
            for event in batch.events:
                try:
                    await self._apply(event)
                except ValueError as exc:  # (a malformed address from another tracker)
                    log.warning("store: ignored a change from tracker %s: %s", batch.origin, exc)

    async def _apply(self, event: Event) -> None:
        """Another tracker's change, applied to this replica (and pushed to this tracker's watchers)."""
        assert self._server is not None
        server, registry = self._server, self._server.registry
        if isinstance(event, Resynced):
            self._reload_wanted.set()
            return
        peer = Address.parse(event.peer)
        if isinstance(event, Joined):
            self._owner[peer] = event.tracker
            self._own.discard(peer)  # (it moved: its old connection here, if still open, no longer counts)
            registry.add_peer(peer)
        elif isinstance(event, Gone):
            if peer in self._own:  # still connected here: another tracker saw its lease lapse
                self._rewrite_soon()
                return
            self._owner.pop(peer, None)
            registry.remove_peer(peer)
        elif isinstance(event, Published):
            record = registry.files.get(event.name)
            if record is None or record.content_id != event.contentid:
                meta = await self._read_meta(event.name)  # (a file new here: its record is in Redis)
                if meta is None:
                    return
            else:
                meta = _meta_of(record)
            registry.add_peer(peer)
            with contextlib.suppress(PublishRefused):
                registry.publish(
                    peer, event.name, meta.filesize, meta.chunks, meta.chunksize, meta.chunkhashes, meta.collection
                )
            if event.name in registry.files:
                server.push_news(event.name, peer, range(event.chunks))
        elif isinstance(event, Chunks):
            record = registry.files.get(event.name)
            if record is None:
                return
            registry.add_peer(peer)
            count = record.chunk_count  # (runs clipped to the file: O(chunks registered), not O(file))
            numbers = itertools.chain.from_iterable(range(max(a, 0), min(b, count)) for a, b in event.runs)
            gained = registry.register_chunks(peer, event.name, numbers)
            if gained:
                server.push_news(event.name, peer, gained)
        elif isinstance(event, Unpublished):
            with contextlib.suppress(UnpublishRefused):
                registry.unpublish(peer, event.name)

    async def _read_meta(self, name: str) -> FileMeta | None:
        value = cast(bytes | None, await self._redis.get(self._key("file", name)))
        if value is None:
            return None
        try:
            return _decode_meta(value)
        except msgspec.DecodeError as exc:
            log.warning("store: the record of %r in Redis is unreadable: %s", name, exc)
            return None

    def _rewrite_soon(self) -> None:
        """Write this tracker's peers again (another tracker expired one that is still connected here)."""

        if self._rewrite_queued:  # (one rewrite covers every peer: a thousand expiries ask for one)
            return

        def op(pipe: Pipeline) -> None:
            self._rewrite_queued = False
            self._write_own(pipe)

        self._rewrite_queued = self._healthy
        self._queue(op, Resynced(self.id))

    async def _leases(self) -> None:
        """Renew the leases of the peers registered here; expire those nobody renews."""
        interval = self.lease * LEASE_TURN
        while True:
            await asyncio.sleep(interval)
            pipe = self._redis.pipeline(transaction=False)
            own = sorted(map(str, self._own))
            if own:
                self._renew(pipe, own)
            pipe.eval(_SWEEP, 2, self._key("leases"), self._key("owners"), SWEEP_BATCH)
            expired = (await pipe.execute())[-1]
            for text in expired:
                peer = _address(text)
                if peer is not None:
                    self._expired(peer)

    def _expired(self, peer: Address) -> None:
        assert self._server is not None
        if peer in self._own:
            self.registered(peer)  # (its renewal did not land in time, but it is here: lease it again)
            self._rewrite_soon()
            return
        self._owner.pop(peer, None)
        delisted = self._server.registry.remove_peer(peer)
        log.info("peer %s's lease expired%s", peer, f"; delisted {', '.join(delisted)}" if delisted else "")
        self._queue(self._forget_op(peer, delisted), Gone(str(peer)))

    async def _prune_later(self) -> None:
        """A lease after Redis came back, every live tracker has written its peers again (they retry every
        RETRY_MAX_DELAY at most): peers still missing from Redis then are gone, and removed here."""
        await asyncio.sleep(max(self.lease, 2 * RETRY_MAX_DELAY))
        await self._load()
        await asyncio.Event().wait()  # (done; the session's other tasks go on)

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            await asyncio.sleep(0.05)  # (several trackers resyncing at once: one reload for them all)
            self._reload_wanted.clear()
            await self._load(prune=False)

    # -- loading ----------------------------------------------------------------------------------------------
    async def _load(self, prune: bool = True) -> None:
        """Take in the swarm's state from Redis: every leased peer and every listed file with its holders'
        chunks, merged into the replica; with `prune`, peers of the replica that Redis no longer leases
        (and not registered here) are removed."""
        assert self._server is not None
        registry = self._server.registry
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key("owners"))
        pipe.zrange(self._key("leases"), 0, -1)
        pipe.smembers(self._key("files"))
        owners, leased, names = await pipe.execute()
        live = {a for a in map(_address, leased) if a is not None}
        for peer_text, tracker in owners.items():
            peer = _address(peer_text)
            if peer in live and peer not in self._own:
                self._owner[peer] = tracker.decode()
        for peer in live:
            registry.add_peer(peer)
        for peer in list(registry.peers) if prune else ():
            if peer not in live and peer not in self._own:
                self._owner.pop(peer, None)
                registry.remove_peer(peer)
        names = sorted(n.decode(errors="replace") for n in names)  # (a name not UTF-8 finds no record: skipped)
        for start in range(0, len(names), LOAD_BATCH):
            await self._load_files(names[start : start + LOAD_BATCH], live)
        self.loads += 1
        log.info("store %s: loaded %d files, %d peers", self.describe(), len(registry.files), len(live))

    async def _load_files(self, names: list[str], live: set[Address]) -> None:
        assert self._server is not None
        registry = self._server.registry
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.get(self._key("file", name))
            pipe.smembers(self._key("holders", name))
            pipe.smembers(self._key("publishers", name))
        replies = await pipe.execute()
        wanted: list[tuple[str, FileMeta, list[Address], set[Address]]] = []
        pipe = self._redis.pipeline(transaction=False)
        for index, name in enumerate(names):
            value, holder_texts, publisher_texts = replies[3 * index : 3 * index + 3]
            if value is None:
                continue
            try:
                meta = _decode_meta(value)
            except msgspec.DecodeError:
                continue
            holders = [h for h in map(_address, holder_texts) if h in live]
            for holder in holders:
                pipe.get(self._key("have", holder, name))
            wanted.append((name, meta, holders, {a for a in map(_address, publisher_texts) if a is not None}))
        bitmaps = iter(await pipe.execute())
        for name, meta, holders, publishers in wanted:
            held = {holder: from_bitmap(meta.chunks, next(bitmaps) or b"") for holder in holders}
            gained: dict[Address, list[int]] = {}
            record = registry.restore(
                name,
                meta.filesize,
                meta.chunks,
                meta.chunksize,
                meta.chunkhashes,
                meta.collection,
                {holder: chunks for holder, chunks in held.items() if chunks},
                publishers,
                gained,
            )
            if record is not None:  # (only what is new here: a reload of known state pushes nothing)
                for holder, chunks in gained.items():
                    self._server.push_news(name, holder, chunks)


async def _first_failure(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines together until one fails; cancel the others and raise its exception."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _address(text: bytes) -> Address | None:
    """A peer address read from Redis; None (logged) for one that is not `host:port`: a damaged or
    foreign key makes a tracker skip that entry, never fail its session over and over."""
    try:
        return Address.parse(text.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("store: ignored a malformed peer address in Redis %r: %s", text[:100], exc)
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

