"""A simulated swarm: one publisher, N downloaders and a tracker, on the links of bench.sim.engine.

The downloaders make the decisions p2pfs.peer.transfer.Download makes, with the same classes: the real
Picker (rarest first, end game), choose_holders (MAX_HOLDERS connections, the best candidates first),
ThroughputMeter, initial_window and request_window (per-holder pipelined windows), and the publisher
answers with the real SuperSeeder. What differs from the real engine is said where it differs.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bench.sim.engine import Event, Link, Simulator, chunked_floor, kumar_ross
from p2pfs.chunkset import ChunkSet
from p2pfs.peer import transfer
from p2pfs.peer.picker import Candidate, Picker, choose_holders
from p2pfs.peer.slots import Busy, Send, UploadSlots
from p2pfs.peer.superseed import HOLD_OFF_RETRY, SuperSeeder
from p2pfs.peer.window import ThroughputMeter, initial_window, request_window
from p2pfs.protocol import framing
from p2pfs.protocol import messages as m
from p2pfs.tracker import server as tracker_server

NAME = "file.bin"
_ADDRESS = "10.77.0.3:40000"  # (every simulated address is this long: it only sizes the messages)
_DIGEST = "a" * 64


def _frame(message: m.Message) -> int:
    return len(framing.encode(message))


#: Bytes on the wire of the messages p2pfs sends, measured by encoding real ones.
REGISTER_BYTES = _frame(m.RequestChunkRegister(filename=NAME, chunknum=1234))
REQUEST_BYTES = _frame(m.PeerRequestChunk(filename=NAME, chunknum=1234, raw=True, substitute=True))
REPLY_HEADER_BYTES = _frame(m.PeerReplyChunk(filename=NAME, chunknum=1234, digest=_DIGEST, rawlength=1 << 20))
LOCATE_BYTES = _frame(m.RequestFileLocation(filename=NAME, ranges=True, watch=True, contentid=_DIGEST))
#: A REPLY_FILE_LOCATION / a pushed update without any holder's runs (each adds `"ADDRESS":RUNS,`).
LOCATION_BYTES = _frame(
    m.ReplyFileLocation(
        filename=NAME,
        chunkinfo={},
        fileinfo=(1 << 30, 256),
        chunksize=1 << 22,
        contentid=_DIGEST,
        chunkranges={},
        publishers=[_ADDRESS],
    )
)
UPDATE_BYTES = _frame(m.ReplyFileLocation(filename=NAME, chunkinfo={}, chunkranges={}, contentid=_DIGEST, update=True))
_ENTRY_BYTES = len(_ADDRESS) + 4  # quotes, colon, comma

#: The tracker's work per message: bench 6 measured 58,394 echoes/s on one core (RESULTS.md), so ~17 µs.
TRACKER_MESSAGE_SECONDS = 1 / 58_394
#: Per holder listed in a REPLY_FILE_LOCATION (a dict entry and a memoized Raw; an assumption), and per
#: byte of a reply or update written (an assumption: msgspec copies memoized parts at ~1 GB/s).
TRACKER_HOLDER_SECONDS = 1e-6
TRACKER_BYTE_SECONDS = 1e-9
#: Sending one encoded update to one more watcher (a transport write; an assumption).
TRACKER_SEND_SECONDS = 2e-6

_encode = msgspec.json.Encoder().encode


def _entry_bytes(chunks: ChunkSet) -> int:
    return _ENTRY_BYTES + len(_encode(chunks.runs()))


class SimError(Exception):
    """The simulated swarm did something the real one must never do (or never finished)."""


@dataclass
class Policy:
    """Which of the real policies run; a variant switches one off to see what it costs."""

    #: the publisher answers substitute requests with the SuperSeeder (False: as asked)
    super_seed: bool = True
    #: the tracker costs nothing: no work, no bytes on its uplink, no latency, updates every PUSH_DELAY
    free_tracker: bool = False
    #: every holder's window is this (None: window.initial_window, then window.request_window)
    fixed_window: int | None = None
    #: the picker ranks chunks by the swarm's true availability (the tracker's registry, counted live)
    #: instead of the availability the downloader knows of its connected holders
    global_rarest: bool = False
    #: a holder sends to at most this many connections at once, the others wait their turn (None: to
    #: all at once, as chunk_server does; BitTorrent unchokes ~4)
    upload_slots: int | None = None
    #: the chunk server's upload slots (p2pfs.peer.slots.UploadSlots, sized from the uplink and the chunk
    #: size): a request beyond the slots and their short line gets a busy reply, and its downloader
    #: cancels it at the picker, asks its other holders meanwhile, and asks this one again after
    #: `retry_after` (False: every requester is sent to at once, as before issue 12)
    slots: bool = True
    #: the publisher watches its file and holds off a requester whose new chunks are at no other holder
    #: yet (SuperSeeder.watch/seen, BEP 16's rule); False: it hands out new chunks to whoever asks
    bep16: bool = True
    #: a holder's uplink sends one reply at a time at its full rate, the admitted others in line behind
    #: it ("fifo", or "rarest": the reply whose chunk the fewest hold goes first); None: all at once
    serial_uplink: str | None = None

    def describe(self) -> str:
        changes = []
        if not self.bep16 and self.super_seed:
            changes.append("no BEP 16 hold-off")
        if not self.super_seed:
            changes.append("no super-seeding")
        if self.free_tracker:
            changes.append("free tracker")
        if self.fixed_window is not None:
            changes.append(f"window {self.fixed_window}")
        if self.global_rarest:
            changes.append("globally rarest")
        if self.upload_slots is not None:
            changes.append(f"{self.upload_slots} upload slots")
        if self.serial_uplink is not None:
            changes.append(f"one reply at a time ({self.serial_uplink})")
        if not self.slots and self.upload_slots is None:
            changes.append("no upload slots")
        return ", ".join(changes) or "as built"


@dataclass
class SwarmConfig:
    size: int
    chunk_size: int
    #: nominal uplinks, bytes/s (the bound is computed from these)
    seeder_uplink: float
    uplinks: Sequence[float]
    #: the tracker's own uplink (math.inf: unshaped), unless it runs on the seeder's host
    tracker_uplink: float = math.inf
    tracker_on_seeder: bool = False
    #: one-way delay of every message, seconds
    latency: float = 0.0002
    #: extra delay of a message sent while its host's uplink is busy: the shaper's queue (tbf `latency`)
    queue_delay: float = 0.05
    #: payload share of a link's nominal rate (TCP/IP/Ethernet headers: 1448 of 1514 bytes)
    efficiency: float = 1448 / 1514
    #: bytes/s one chunk is hashed at before it is held (math.inf: at once)
    verify_rate: float = math.inf
    seed: int = 1
    policy: Policy = field(default_factory=Policy)

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    @property
    def bound(self) -> float:
        return kumar_ross(self.size, self.seeder_uplink, self.uplinks)

    @property
    def floor(self) -> float:
        """The least makespan with whole chunks forwarded and headers paid (engine.chunked_floor)."""
        return chunked_floor(self.size, self.chunk_size, self.seeder_uplink, self.uplinks, self.efficiency)


@dataclass
class SwarmResult:
    config: SwarmConfig
    #: seconds from the common start to each downloader's last verified chunk
    completions: list[float]
    #: chunk bytes the publisher sent, and all hosts together
    seeder_sent: float
    all_sent: float
    #: chunk bytes received again (end-game duplicates and super-seeding repeats)
    duplicate_bytes: float
    tracker_messages_in: int
    tracker_messages_out: int
    tracker_bytes_in: float
    tracker_bytes_out: float
    #: seconds the tracker was busy working, of the makespan
    tracker_busy: float
    substituted: int
    #: when the first chunk was held by any downloader (the seeder's first copy takes that long)
    first_chunk: float
    events: int
    wall: float
    #: busy replies sent by all holders (Policy.slots)
    busy_replies: int = 0

    @property
    def makespan(self) -> float:
        return max(self.completions)

    @property
    def mean(self) -> float:
        return sum(self.completions) / len(self.completions)

    @property
    def bound(self) -> float:
        return self.config.bound

    @property
    def ratio(self) -> float:
        return self.makespan / self.bound

    @property
    def floor_ratio(self) -> float:
        """The chunked floor over the Kumar-Ross bound: the least ratio any scheme could reach."""
        return self.config.floor / self.bound

    @property
    def tracker_rate(self) -> float:
        """Messages/s the tracker received and sent (an update to W watchers counts W)."""
        return (self.tracker_messages_in + self.tracker_messages_out) / self.makespan

    @property
    def tracker_bytes_rate(self) -> float:
        return (self.tracker_bytes_in + self.tracker_bytes_out) / self.makespan


# -- peers ------------------------------------------------------------------------------------------
#: ServeConn.flow of a reply waiting for the uplink (Policy.serial_uplink)
_IN_LINE = object()


class Peer:
    """A host's chunk server: the chunks it holds, and one ServeConn per downloader connected to it."""

    def __init__(self, swarm: Swarm, number: int, link: Link, full: bool) -> None:
        self.swarm = swarm
        self.number = number
        self.link = link
        self.have = ChunkSet(swarm.chunk_count, full)
        #: the publisher's SuperSeeder (None: not a publisher, or super-seeding off)
        self.super_seeder: SuperSeeder | None = None
        self.sent_bytes = 0.0
        #: connections sending now, and those waiting for a slot (Policy.upload_slots)
        self.sending = 0
        self.waiting: deque[ServeConn] = deque()
        #: Policy.slots: the real slot bookkeeping, sized from the uplink's payload rate (what
        #: slots.UplinkMeter converges to when the holder is busy)
        self.slots: UploadSlots[ServeConn] | None = None
        if swarm.policy.slots:
            self.slots = UploadSlots(chunk_size=swarm.chunk_size)
            self.slots.measured(link.capacity)
        self._expiry: Event | None = None
        self.busy_replies = 0
        #: Policy.serial_uplink: the reply on the uplink now, and those admitted behind it
        self.on_uplink: ServeConn | None = None
        self.uplink_line: list[tuple[ServeConn, int]] = []

    def transmit(self, conn: ServeConn, nbytes: int) -> Any:
        """Start `conn`'s reply of `nbytes` on the uplink (Policy.serial_uplink: or put it in line)."""
        if self.swarm.policy.serial_uplink is None:
            return self.link.send(nbytes, conn._sent)
        if self.on_uplink is None:
            self.on_uplink = conn
            return self.link.send(nbytes, conn._sent)
        self.uplink_line.append((conn, nbytes))
        return _IN_LINE

    def transmitted(self, conn: ServeConn) -> None:
        """`conn`'s reply left (or was dropped): the next in line goes on the uplink."""
        if self.swarm.policy.serial_uplink is None:
            return
        if self.on_uplink is conn:
            self.on_uplink = None
        else:
            self.uplink_line = [(c, n) for c, n in self.uplink_line if c is not conn]
        if self.on_uplink is not None or not self.uplink_line:
            return
        line = self.uplink_line
        if self.swarm.policy.serial_uplink == "rarest":
            holders = self.swarm.tracker.holders
            def copies(item: tuple[ServeConn, int]) -> int:
                chunk = item[0].current[1]
                return sum(1 for chunks in holders.values() if chunk in chunks)
            best = min(range(len(line)), key=lambda i: copies(line[i]))
        else:
            best = 0
        nxt, nbytes = line.pop(best)
        self.on_uplink = nxt
        nxt.flow = self.link.send(nbytes, nxt._sent)

    def started(self, promoted: list[ServeConn]) -> None:
        """Connections given a slot by UploadSlots.sent/close/expire: their parked request starts."""
        for conn in promoted:
            if conn.live and conn.queue and conn.flow is None:
                assert self.slots is not None
                self.slots.start(conn)
                conn.send_next()
            elif self.slots is not None:
                self.started(self.slots.close(conn))  # (nothing left to send it: pass the slot on)
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        slots = self.slots
        if slots is None:
            return
        due = slots.next_expiry()
        if due is None or (self._expiry is not None and self._expiry.fn is not None and self._expiry.time <= due):
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self.swarm.sim.at(due, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        assert self.slots is not None
        self.started(self.slots.expire(self.swarm.sim.now))

    def start_sending(self, conn: ServeConn) -> bool:
        slots = self.swarm.policy.upload_slots
        if slots is None:
            return True
        if self.sending < slots:
            self.sending += 1
            return True
        self.waiting.append(conn)
        return False

    def stop_sending(self) -> None:
        if self.swarm.policy.upload_slots is None:
            return
        self.sending -= 1
        while self.waiting:
            conn = self.waiting.popleft()
            if conn.live and conn.queue and conn.flow is None:
                self.sending += 1
                conn.send_next()
                return


class ServeConn:
    """The holder's end of one downloader's connection: requests answered in order, one chunk at a time
    on the holder's uplink (chunk_server drains each reply before it reads the next request, so the
    super-seeder decides when a reply starts, not when its request arrived)."""

    __slots__ = (
        "current", "downloader", "flow", "holder", "ident", "last_arrival", "last_request", "live", "parked", "queue",
    )

    def __init__(self, holder: Peer, downloader: Downloader, ident: int) -> None:
        self.holder = holder
        self.downloader = downloader
        self.ident = ident
        self.queue: deque[tuple[int, bool]] = deque()
        self.flow: Any = None
        self.current = (0, 0)
        self.live = True
        #: waiting for one of the holder's upload slots
        self.parked = False
        #: when this connection's latest message reaches the downloader (TCP keeps them in order)
        self.last_arrival = 0.0
        #: ... and when the downloader's latest request reaches the holder
        self.last_request = 0.0

    def ask(self, chunk: int, substitute: bool) -> None:
        """The downloader sends a request: it arrives after the one before it (a request sent while the
        downloader's uplink is busy waits in the shaper's queue, and one sent after it waits too)."""
        swarm = self.holder.swarm
        arrival = max(swarm.sim.now + swarm.delay(self.downloader.link), self.last_request)
        self.last_request = arrival
        swarm.sim.at(arrival, self.request, chunk, substitute)

    def request(self, chunk: int, substitute: bool) -> None:
        if not self.live:
            return
        self.queue.append((chunk, substitute))
        if self.holder.slots is not None:
            if self.flow is None and not self.parked:
                self._admit()
            return
        if self.flow is None and not self.parked and self.holder.start_sending(self):
            self.send_next()
        elif self.flow is None:
            self.parked = True

    def send_next(self) -> None:
        self.parked = False
        asked, substitute = self.queue.popleft()
        holder = self.holder
        swarm = holder.swarm
        send = asked
        seeder = holder.super_seeder
        if seeder is not None:
            if substitute:
                chosen = seeder.choose(NAME, swarm.chunk_count, asked, self.ident, swarm.sim.now)
                if chosen is None:
                    self._hold_off(asked)
                    return
                send = chosen
            else:
                seeder.sent(NAME, swarm.chunk_count, asked, self.ident, swarm.sim.now)
        if send not in holder.have:
            raise SimError(f"peer {holder.number} was asked for chunk {send}, which it does not hold")
        self.current = (asked, send)
        self.flow = holder.transmit(self, swarm.chunk_length(send) + REPLY_HEADER_BYTES)

    def _hold_off(self, asked: int) -> None:
        """The super-seeder said hold off (BEP 16): a busy reply, as chunk_server sends from inside the
        slot, which goes on to the next request or connection."""
        holder = self.holder
        holder.busy_replies += 1
        self._deliver(self.downloader.on_busy, self, asked, HOLD_OFF_RETRY)
        now = holder.swarm.sim.now
        if holder.slots is not None:
            holder.started(holder.slots.sent(self, now, more=bool(self.queue)))
            if self.queue and self.flow is None and not self.parked:
                self._admit()
            return
        if holder.swarm.policy.upload_slots is not None:
            holder.stop_sending()
            if self.queue and self.flow is None:
                self.parked = True
                holder.waiting.append(self)
            return
        if self.queue:
            self.send_next()

    def _admit(self) -> None:
        """Policy.slots: answer the requests at the front as UploadSlots.admit says (a busy reply each
        for those refused) until one is sent or parked in line."""
        holder = self.holder
        slots = holder.slots
        assert slots is not None
        now = holder.swarm.sim.now
        while self.queue and self.live:
            admission = slots.admit(self, now)
            if isinstance(admission, Send):
                self.send_next()
                return
            if not isinstance(admission, Busy):
                self.parked = True
                holder._schedule_expiry()  # (a slot idle for IDLE_GRACE is then this one's)
                return
            asked, _substitute = self.queue.popleft()
            holder.busy_replies += 1
            self._deliver(self.downloader.on_busy, self, asked, admission.retry_after)

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        holder = self.holder
        arrival = max(holder.swarm.sim.now + holder.swarm.delay(holder.link), self.last_arrival)
        self.last_arrival = arrival
        holder.swarm.sim.at(arrival, fn, *args)

    def _sent(self) -> None:
        self.flow = None
        asked, send = self.current
        holder = self.holder
        holder.transmitted(self)
        holder.sent_bytes += holder.swarm.chunk_length(send)
        if holder.slots is not None:
            self._deliver(self.downloader.on_reply, self, asked, send)
            holder.started(holder.slots.sent(self, holder.swarm.sim.now, more=bool(self.queue)))
            if self.queue and self.flow is None and not self.parked:
                self._admit()
            return
        holder.swarm.deliver(holder.link, self.downloader.on_reply, self, asked, send)
        if holder.swarm.policy.upload_slots is None:
            if self.queue:
                self.send_next()
            return
        # (a slot goes round: this connection queues behind the others that wait)
        if self.queue:
            self.parked = True
            holder.waiting.append(self)
        holder.stop_sending()

    def close(self) -> None:
        self.live = False
        self.queue.clear()
        if self.holder.super_seeder is not None:
            self.holder.super_seeder.closed(self.ident)
        if self.holder.slots is not None:
            if self.flow is _IN_LINE:
                self.flow = None
                self.holder.transmitted(self)
            elif self.flow is not None:
                self.flow.link.cancel(self.flow)
                self.flow = None
                self.holder.transmitted(self)
            self.holder.started(self.holder.slots.close(self))
            return
        if self.flow is not None:
            self.flow.link.cancel(self.flow)
            self.flow = None
            self.holder.stop_sending()


class _Holder:
    """A downloader's view of one connected holder (transfer._Holder)."""

    __slots__ = ("busy_until", "conn", "meter", "number", "outstanding", "rtt", "useless", "waiting", "window")

    def __init__(self, number: int, conn: ServeConn, rtt: float) -> None:
        self.number = number
        self.conn = conn
        self.rtt = rtt
        self.meter = ThroughputMeter()
        self.window = 1
        self.outstanding: deque[tuple[int, bool]] = deque()
        self.useless = 0
        self.waiting = False
        #: Policy.slots: it said busy; nothing is asked of it before this time
        self.busy_until = 0.0


class Downloader(Peer):
    """One `p2pfs get --seed`: transfer.Download's decisions, driven by simulated events."""

    def __init__(self, swarm: Swarm, number: int, link: Link, rng: random.Random) -> None:
        super().__init__(swarm, number, link, full=False)
        self.rng = rng
        self.picker: Picker[int] = Picker(swarm.chunk_count, rng=rng)
        self.holders: dict[int, _Holder] = {}
        self.connecting: set[int] = set()
        #: candidates' chunks: the tracker's registry entry itself (see _absorb), and how many we saw
        self.known: dict[int, ChunkSet] = {}
        self.known_len: dict[int, int] = {}
        self.hopeful: set[int] = set()
        self.measured: dict[int, tuple[float | None, float]] = {}
        self.publishers: set[int] = set()
        self.claimed: set[int] = set()
        self.incoming: set[int] = set()
        self.sources: Counter[int] = Counter()
        self.interval = min(transfer.REFRESH_INTERVAL_MIN, transfer.REFRESH_INTERVAL)
        self.refresh: Event | None = None
        self.located = False
        self.done: float | None = None
        self.rebalance_due: Event | None = None

    # -- the download's life ---------------------------------------------------------------------
    def start(self) -> None:
        self.swarm.tracker.locate(self, self._located)

    def _located(self) -> None:
        self.located = True
        self.publishers = set(self.swarm.tracker.publishers)
        self._absorb()
        self.refresh = self.swarm.sim.after(self.interval, self._refresh_due)

    def _refresh_due(self) -> None:
        self.refresh = None
        if self.done is None:
            self.swarm.tracker.locate(self, self._refreshed)

    def _refreshed(self) -> None:
        if self.done is not None:
            return
        news = self._absorb()
        self.interval = transfer.REFRESH_INTERVAL_MIN if news else min(self.interval * 2, transfer.REFRESH_INTERVAL)
        self.refresh = self.swarm.sim.after(self.interval, self._refresh_due)

    def _finish(self) -> None:
        self.done = self.swarm.sim.now
        for holder in self.holders.values():
            holder.conn.close()
        self.holders.clear()
        if self.refresh is not None:
            self.refresh.cancel()
        self.swarm.finished(self)

    # -- what the tracker says -------------------------------------------------------------------
    def _absorb(self) -> bool:
        """A REPLY_FILE_LOCATION (Download._add_holders with complete=True). The real downloader copies a
        candidate's runs; here a candidate's chunks are the registry's own set, read when it is ranked,
        which is fresher by at most one refresh (and saves N copies of every registration)."""
        registry = self.swarm.tracker.holders
        picker = self.picker
        news = False
        for number in registry.keys() & self.holders.keys():
            if picker.add_holder_set(number, registry[number]):
                news = True
        known, known_len = self.known, self.known_len
        for number in registry.keys() & known.keys():
            count = len(registry[number])
            if count > known_len[number]:
                known_len[number] = count
                news = True
                if number not in self.connecting:
                    self.hopeful.add(number)
        if self._room():
            for number in registry.keys() - self.holders.keys() - known.keys():
                if number == self.number or number in self.connecting:
                    continue
                chunks = registry[number]
                if not chunks or not self._room():
                    continue
                known[number] = chunks
                known_len[number] = len(chunks)
                self.hopeful.add(number)
                news = True
        if news:
            self._rebalance()
            self._notify()
        return news

    def on_update(self, update: dict[int, ChunkSet]) -> None:
        """A pushed update (Download._on_update): the chunks registered since the last one."""
        if self.done is not None or not self.located:
            return
        registry = self.swarm.tracker.holders
        picker = self.picker
        news = False
        for number in update.keys() & self.holders.keys():
            if picker.add_holder_set(number, update[number]):
                news = True
        for number in update.keys() & self.known.keys():
            self.known_len[number] = len(registry[number])
            news = True
            if number not in self.connecting:
                self.hopeful.add(number)
        if self._room():
            for number in update.keys() - self.holders.keys() - self.known.keys():
                if number == self.number or number in self.connecting or not self._room():
                    continue
                self.known[number] = registry[number]
                self.known_len[number] = len(registry[number])
                self.hopeful.add(number)
                news = True
        if news:
            self._rebalance()
            self._notify()

    def _room(self) -> bool:
        """Download._room_for_candidate: room for one more candidate, forgetting one with nothing for us."""
        if len(self.known) < transfer.MAX_CANDIDATES:
            return True
        for number in self.known:
            if number not in self.hopeful and number not in self.connecting:
                del self.known[number]
                del self.known_len[number]
                return True
        return False

    # -- which holders we are connected to ---------------------------------------------------------
    def _rebalance(self) -> None:
        if self.done is not None or not self.hopeful:
            return
        picker = self.picker
        free = transfer.MAX_HOLDERS - len(self.holders) - len(self.connecting)
        idle = [number for number in self.holders if picker.needed(number) == 0]
        if self.swarm.policy.slots:
            # a holder that said busy may give its connection to a candidate that might not be
            now = self.swarm.sim.now
            idle += [
                n
                for n, h in self.holders.items()
                if h.busy_until > now and not h.outstanding and n not in idle and n not in self.publishers
            ]
        if free <= 0 and not idle:
            return
        coverage = picker.coverage().union_of(self.known[a] for a in self.connecting if a in self.known)
        candidates: list[Candidate[int]] = []
        for number in list(self.hopeful):
            chunks = self.known[number]
            needed = picker.wanted(chunks)
            if not needed:
                self.hopeful.discard(number)
                continue
            rate, rtt = self.measured.get(number, (None, None))
            candidates.append(Candidate(number, needed, chunks.count_not_in(coverage), rate, rtt))
        close, connect = choose_holders(free, idle, candidates, picker.rng)
        for number in close:
            self._retire(number)
        swarm = self.swarm
        for number in connect:
            self.hopeful.discard(number)
            self.connecting.add(number)
            holder = swarm.peers[number]
            rtt = swarm.delay(self.link) + swarm.delay(holder.link)
            # a TCP connect and a PEER_PING_PONG: two round trips; the ping's is the RTT measured
            swarm.sim.after(2 * rtt, self._connected, number, rtt)

    def _retire(self, number: int) -> None:
        holder = self.holders.pop(number)
        self.measured[number] = (holder.meter.rate, holder.rtt)
        holder.conn.close()
        self.picker.remove_holder(number)
        chunks = self.swarm.tracker.holders[number]
        self.known[number] = chunks
        self.known_len[number] = len(chunks)
        self._notify()

    def _connected(self, number: int, rtt: float) -> None:
        self.connecting.discard(number)
        chunks = self.known.pop(number, None)
        self.known_len.pop(number, None)
        if chunks is None or self.done is not None:
            self._rebalance()
            self._notify()
            return
        swarm = self.swarm
        conn = ServeConn(swarm.peers[number], self, next(swarm.connection_ids))
        holder = _Holder(number, conn, rtt)
        self.holders[number] = holder
        self.picker.add_holder_set(number, chunks)
        fixed = swarm.policy.fixed_window
        fastest = min(h.rtt for h in self.holders.values())
        for h in self.holders.values():
            if h.meter.rate is None:
                h.window = fixed if fixed is not None else initial_window(h.rtt, fastest)
        self._pump(holder)
        self._notify()

    # -- one holder ------------------------------------------------------------------------------
    def _pump(self, holder: _Holder) -> None:
        """Download._fetch_from between two replies: fill the holder's window with picked chunks."""
        picker = self.picker
        swarm = self.swarm
        outstanding = holder.outstanding
        if holder.busy_until > swarm.sim.now:
            holder.waiting = False  # (woken by _retry, not by _notify)
            if not outstanding:
                holder.meter.idle()
            return
        window = 1 if holder.useless else holder.window
        substitute = holder.number in self.publishers
        while len(outstanding) < window:
            chunk = swarm.pick(self, holder.number)
            if chunk is None:
                break
            if not outstanding:
                holder.meter.start(swarm.sim.now)
            holder.conn.ask(chunk, substitute)
            outstanding.append((chunk, substitute))
        holder.waiting = not outstanding and not picker.complete
        if holder.waiting:
            holder.meter.idle()

    def on_reply(self, conn: ServeConn, asked: int, chunk: int) -> None:
        """Download._receive: a chunk arrived (the one asked for, or a publisher's substitute)."""
        holder = self.holders.get(conn.holder.number)
        if holder is None or holder.conn is not conn or self.done is not None:
            return  # (closed meanwhile: the real connection would have been closed too)
        expected, _substitute = holder.outstanding.popleft()
        if expected != asked:
            raise SimError(f"reply for chunk {asked} where chunk {expected} was asked first")
        swarm = self.swarm
        picker = self.picker
        if chunk != asked:
            picker.cancelled(asked, holder.number)
        new = chunk not in self.claimed and chunk not in self.incoming
        useless = not new and chunk != asked
        length = swarm.chunk_length(chunk)
        if not new:
            swarm.duplicate_bytes += length
        if new:
            holder.useless = 0
        elif useless:
            holder.useless += 1
            if holder.useless >= transfer.USELESS_REPLY_LIMIT:
                raise SimError(f"peer {holder.number} sent {holder.useless} useless substitutes in a row")
        if not useless:
            now = swarm.sim.now
            holder.meter.delivered(length, now)
            if holder.meter.rate is not None:
                fixed = swarm.policy.fixed_window
                holder.window = fixed if fixed is not None else request_window(holder.meter.rate, swarm.chunk_size)
            self.incoming.add(chunk)
            verify = length / swarm.config.verify_rate
            swarm.sim.after(verify, self._settle, holder.number, chunk)
        self._pump(holder)

    def on_busy(self, conn: ServeConn, asked: int, retry_after: float) -> None:
        """Policy.slots: the holder refused a request (no slot): the chunk goes back to the picker for the
        other holders, and this holder is asked again after `retry_after` (what Download would do)."""
        holder = self.holders.get(conn.holder.number)
        if holder is None or holder.conn is not conn or self.done is not None:
            return
        expected, _substitute = holder.outstanding.popleft()
        if expected != asked:
            raise SimError(f"busy reply for chunk {asked} where chunk {expected} was asked first")
        self.picker.cancelled(asked, holder.number)
        swarm = self.swarm
        now = swarm.sim.now
        if holder.busy_until <= now:
            holder.busy_until = now + retry_after * (1 + (transfer.RETRY_JITTER - 1) * self.rng.random())
            swarm.sim.at(holder.busy_until, self._retry, holder)
        if not holder.outstanding:
            holder.meter.idle()
        if self.rebalance_due is None:
            # (coalesced: one look at the candidates per REFRESH_INTERVAL_MIN, not one per busy reply)
            self.rebalance_due = swarm.sim.after(transfer.REFRESH_INTERVAL_MIN, self._rebalance_after_busy)
        # only the chunk given back is newly pickable: wake the waiting holders that have it
        for other in list(self.holders.values()):
            chunks = self.picker.chunks_of(other.number)
            if other.waiting and chunks is not None and asked in chunks and other.number in self.holders:
                self._pump(other)

    def _rebalance_after_busy(self) -> None:
        self.rebalance_due = None
        self._rebalance()
        self._notify()

    def _retry(self, holder: _Holder) -> None:
        if self.holders.get(holder.number) is holder and self.done is None and not holder.outstanding:
            self._pump(holder)

    def _settle(self, number: int, chunk: int) -> None:
        """Download._settle_verified: the first verified copy is held, registered, announced."""
        self.incoming.discard(chunk)
        if self.done is not None or chunk in self.claimed:
            return  # (an end-game duplicate: the first copy won)
        self.claimed.add(chunk)
        if not self.picker.completed(chunk):
            return
        self.have.add(chunk)
        self.sources[number] += 1
        self.swarm.registered(self, chunk)
        if self.picker.complete:
            self._finish()
            return
        self._notify()

    def _notify(self) -> None:
        """Wake the holder workers that wait with nothing outstanding (Download._notify)."""
        needed = self.picker.needed
        for holder in list(self.holders.values()):
            # (a holder with nothing we lack gets None from pick, end game or not: no need to ask)
            if holder.waiting and needed(holder.number) and holder.number in self.holders:
                self._pump(holder)


# -- the tracker -------------------------------------------------------------------------------------
class Tracker:
    """The tracker: a registry of who holds what, REPLY_FILE_LOCATION, and pushed updates gathered for
    PUSH_DELAY (+ PUSH_DELAY_PER_WATCHER per watcher), as tracker/server.py does. Its work is one queue
    (one event loop) costing TRACKER_*_SECONDS; its replies and updates go out on its host's uplink."""

    def __init__(self, swarm: Swarm, link: Link, free: bool) -> None:
        self.swarm = swarm
        self.link = link
        self.free = free
        self.holders: dict[int, ChunkSet] = {}
        self.publishers: set[int] = set()
        self.watchers: set[Downloader] = set()
        #: the publisher, watching its own file (Policy.bep16): it hears every update, and is never
        #: dropped as complete
        self.publisher_watching: Peer | None = None
        self._news: dict[int, ChunkSet] = {}
        self._push: Event | None = None
        self._busy_until = 0.0
        self.busy = 0.0
        #: bytes of each holder's entry in a REPLY_FILE_LOCATION, kept up to date lazily
        self._entry: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._entries_total = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0.0
        self.bytes_out = 0.0

    def publish(self, peer: Peer) -> None:
        self.holders[peer.number] = peer.have.copy()
        self.publishers.add(peer.number)
        self._dirty.add(peer.number)

    # -- in ----------------------------------------------------------------------------------------
    def _arrive(self, sender: Link, nbytes: int, fn: Callable[..., None], *args: Any) -> None:
        self.messages_in += 1
        self.bytes_in += nbytes
        delay = 0.0 if self.free else self.swarm.delay(sender)
        self.swarm.sim.after(delay, self._work, TRACKER_MESSAGE_SECONDS, fn, *args)

    def _work(self, seconds: float, fn: Callable[..., None], *args: Any) -> None:
        """Work done in turn on the tracker's one event loop; `fn` runs when it is done."""
        if self.free:
            fn(*args)
            return
        sim = self.swarm.sim
        start = max(sim.now, self._busy_until)
        self._busy_until = start + seconds
        self.busy += seconds
        sim.at(self._busy_until, fn, *args)

    def locate(self, downloader: Downloader, reply: Callable[[], None]) -> None:
        self._arrive(downloader.link, LOCATE_BYTES, self._locate, downloader, reply)

    def register(self, downloader: Downloader, chunk: int) -> None:
        self._arrive(downloader.link, REGISTER_BYTES, self._register, downloader.number, chunk)

    # -- the work ---------------------------------------------------------------------------------
    def _locate(self, downloader: Downloader, reply: Callable[[], None]) -> None:
        if downloader.done is None:
            self.watchers.add(downloader)
        size = LOCATION_BYTES + self._entries()
        cost = TRACKER_HOLDER_SECONDS * len(self.holders) + TRACKER_BYTE_SECONDS * size
        self._work(cost, self._send, size, 1, reply)

    def _register(self, number: int, chunk: int) -> None:
        chunks = self.holders.get(number)
        if chunks is None:
            chunks = self.holders[number] = ChunkSet(self.swarm.chunk_count)
        if not chunks.add(chunk):
            return
        self._dirty.add(number)
        if not self.watchers and self.publisher_watching is None:
            return
        news = self._news.get(number)
        if news is None:
            news = self._news[number] = ChunkSet(self.swarm.chunk_count)
        news.add(chunk)
        if self._push is None:
            per_watcher = 0.0 if self.free else tracker_server.PUSH_DELAY_PER_WATCHER * len(self.watchers)
            self._push = self.swarm.sim.after(tracker_server.PUSH_DELAY + per_watcher, self._push_news)

    def _push_news(self) -> None:
        self._push = None
        news, self._news = self._news, {}
        complete = self.swarm.chunk_count
        for watcher in list(self.watchers):
            if len(self.holders.get(watcher.number, ())) == complete:
                self.watchers.discard(watcher)  # a seeder now: nothing left to hear
        recipients = list(self.watchers)
        publisher = self.publisher_watching
        count = len(recipients) + (publisher is not None)
        if not news or not count:
            return
        size = UPDATE_BYTES + sum(_entry_bytes(chunks) for chunks in news.values())
        cost = TRACKER_BYTE_SECONDS * size + TRACKER_SEND_SECONDS * count
        self._work(cost, self._send, size, count, self._deliver, recipients, publisher, news)

    def _deliver(self, recipients: list[Downloader], publisher: Peer | None, news: dict[int, ChunkSet]) -> None:
        for watcher in recipients:
            watcher.on_update(news)
        seeder = publisher.super_seeder if publisher is not None else None
        if seeder is not None:
            for number, chunks in news.items():
                if number not in self.publishers:
                    seeder.seen(NAME, self.swarm.chunk_count, number, chunks.numbers())

    def _send(self, size: int, count: int, fn: Callable[..., None], *args: Any) -> None:
        """`count` copies of a `size`-byte frame leave on the tracker's uplink; `fn(*args)` when they arrive."""
        self.messages_out += count
        self.bytes_out += size * count
        swarm = self.swarm
        if self.free:
            fn(*args)
            return
        link = self.link
        swarm_deliver = swarm.deliver

        def sent() -> None:
            swarm_deliver(link, fn, *args)

        link.send(size, sent, weight=count)

    def _entries(self) -> int:
        for number in self._dirty:
            size = _entry_bytes(self.holders[number])
            self._entries_total += size - self._entry.get(number, 0)
            self._entry[number] = size
        self._dirty.clear()
        return self._entries_total


# -- the swarm ---------------------------------------------------------------------------------------
class Swarm:
    """One publisher (peer 0), config.uplinks downloaders (peers 1..N), one tracker, all starting at 0."""

    def __init__(self, config: SwarmConfig) -> None:
        self.config = config
        self.policy = config.policy
        self.sim = Simulator()
        self.chunk_count = config.chunk_count
        self.chunk_size = config.chunk_size
        self._last_length = config.size - (self.chunk_count - 1) * config.chunk_size
        rng = random.Random(config.seed)
        eff = config.efficiency
        seeder_link = Link(self.sim, config.seeder_uplink * eff, "seeder")
        self.seeder = Peer(self, 0, seeder_link, full=True)
        if self.policy.super_seed:
            self.seeder.super_seeder = SuperSeeder(random.Random(rng.random()))
            if self.policy.bep16:
                self.seeder.super_seeder.watch(NAME)
        tracker_link = seeder_link if config.tracker_on_seeder else Link(self.sim, config.tracker_uplink * eff, "tracker")
        self.tracker = Tracker(self, tracker_link, self.policy.free_tracker)
        self.tracker.publish(self.seeder)
        if self.policy.super_seed and self.policy.bep16:
            self.tracker.publisher_watching = self.seeder
        self.downloaders = [
            Downloader(self, i + 1, Link(self.sim, rate * eff, f"d{i + 1}"), random.Random(rng.random()))
            for i, rate in enumerate(config.uplinks)
        ]
        self.peers: list[Peer] = [self.seeder, *self.downloaders]
        self.connection_ids = iter(range(1, 1 << 62))
        self.remaining = len(self.downloaders)
        self.duplicate_bytes = 0.0
        self.first_chunk: float | None = None
        #: the registry's availability of every chunk plus requests in flight (global_rarest only)
        self._global: list[int] = [1] * self.chunk_count

    def chunk_length(self, chunk: int) -> int:
        return self._last_length if chunk == self.chunk_count - 1 else self.chunk_size

    def delay(self, sender: Link) -> float:
        """One-way delay of a message sent now from the host of `sender`."""
        return self.config.latency + (self.config.queue_delay if sender.busy else 0.0)

    def deliver(self, sender: Link, fn: Callable[..., None], *args: Any) -> None:
        self.sim.after(self.delay(sender), fn, *args)

    def pick(self, downloader: Downloader, holder: int) -> int | None:
        if not self.policy.global_rarest:
            return downloader.picker.pick(holder)
        return self._pick_globally(downloader, holder)

    def _pick_globally(self, downloader: Downloader, holder: int) -> int | None:
        """The picker's choice, but rarest by the whole swarm's availability (registry + in flight)."""
        picker = downloader.picker
        chunks = picker.chunks_of(holder)
        if chunks is None:
            return None
        flying = picker.in_flight()
        counts = self._global
        best: int | None = None
        best_count = 0
        for chunk in chunks.difference(picker.have).numbers():
            if chunk in flying:
                continue
            count = counts[chunk]
            if best is None or count < best_count or (count == best_count and picker.rng.random() < 0.5):
                best, best_count = chunk, count
        if best is None:
            return picker.pick(holder)  # (the end game, as the real picker plays it)
        # mark it in flight through the real picker: take it out of its bucket the way pick() would
        requested = picker._requested
        bucket = picker._bucket(picker.availability(best))
        bucket.discard(best)
        requested[best] = {holder}
        counts[best] += 1
        return best

    def registered(self, downloader: Downloader, chunk: int) -> None:
        if self.first_chunk is None:
            self.first_chunk = self.sim.now
        self.tracker.register(downloader, chunk)

    def finished(self, downloader: Downloader) -> None:
        self.remaining -= 1

    def run(self, limit: float | None = None) -> SwarmResult:
        started = time.perf_counter()
        for downloader in self.downloaders:
            self.sim.at(0.0, downloader.start)
        until = limit if limit is not None else 50 * self.config.bound + 60
        self.sim.run(until, stop=lambda: self.remaining == 0)
        if self.remaining:
            raise SimError(f"{self.remaining} of {len(self.downloaders)} downloaders not done after {until:.0f} simulated s")
        completions = [d.done for d in self.downloaders if d.done is not None]
        return SwarmResult(
            config=self.config,
            completions=completions,
            seeder_sent=self.seeder.sent_bytes,
            all_sent=sum(p.sent_bytes for p in self.peers),
            duplicate_bytes=self.duplicate_bytes,
            tracker_messages_in=self.tracker.messages_in,
            tracker_messages_out=self.tracker.messages_out,
            tracker_bytes_in=self.tracker.bytes_in,
            tracker_bytes_out=self.tracker.bytes_out,
            tracker_busy=self.tracker.busy,
            substituted=self.seeder.super_seeder.substituted if self.seeder.super_seeder else 0,
            first_chunk=self.first_chunk if self.first_chunk is not None else math.nan,
            events=self.sim.events,
            wall=time.perf_counter() - started,
            busy_replies=sum(p.busy_replies for p in self.peers),
        )


def simulate(config: SwarmConfig) -> SwarmResult:
    return Swarm(config).run()
