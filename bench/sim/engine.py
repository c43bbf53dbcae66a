"""The simulator's clock and links: a heap of timed callbacks, and uplinks shared fairly (processor
sharing) among the flows on them, with the Kumar–Ross bound the results are measured against.

A `Link` gives each of its active flows an equal share of its capacity (weighted: a flow of weight w
stands for w equal flows, such as one pushed update sent to w watchers). It keeps a virtual clock V: the
bytes each unit of weight has received so far; a flow of `size` bytes started at V0 is done when V
reaches V0 + size, whoever else comes and goes meanwhile. So a link costs one heap entry per flow and one
pending event, and a change on one link never touches another (downlinks are not constrained).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

#: Bytes a flow may be short of its size and still count as done (float rounding over many shares).
_SLACK = 1e-6


class Event:
    """A scheduled callback; `cancel()` makes it a no-op (it stays in the heap until its time)."""

    __slots__ = ("args", "fn", "time")

    def __init__(self, time: float, fn: Callable[..., None] | None, args: tuple[Any, ...]) -> None:
        self.time = time
        self.fn = fn
        self.args = args

    def cancel(self) -> None:
        self.fn = None
        self.args = ()


class Simulator:
    """The clock and its events, run in time order (ties in the order they were scheduled)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        #: events run so far (a measure of the simulation's own cost)
        self.events = 0

    def at(self, time: float, fn: Callable[..., None], *args: Any) -> Event:
        event = Event(max(time, self.now), fn, args)
        heapq.heappush(self._heap, (event.time, next(self._seq), event))
        return event

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> Event:
        return self.at(self.now + delay, fn, *args)

    def run(self, until: float = math.inf, stop: Callable[[], bool] | None = None) -> None:
        """Run events up to time `until`, or until `stop()` is true after an event."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            time, _, event = heapq.heappop(heap)
            fn = event.fn
            if fn is None:
                continue
            self.now = time
            self.events += 1
            fn(*event.args)
            if stop is not None and stop():
                return


class Flow:
    """Bytes crossing a link; `on_done()` runs when the last byte has left."""

    __slots__ = ("finish", "link", "live", "on_done", "size", "weight")

    def __init__(self, link: Link, size: float, weight: int, on_done: Callable[[], None]) -> None:
        self.link = link
        self.size = size
        self.weight = weight
        self.on_done = on_done
        self.finish = 0.0
        self.live = True

    def __lt__(self, other: Flow) -> bool:
        return self.finish < other.finish


class Link:
    """One host's uplink: `capacity` bytes/s shared equally among its flows (math.inf: no limit)."""

    def __init__(self, sim: Simulator, capacity: float, name: str = "") -> None:
        self.sim = sim
        self.capacity = capacity
        self.name = name
        #: bytes every unit of weight has received since the link was made
        self._virtual = 0.0
        self._updated = 0.0
        self._weight = 0
        self._flows: list[Flow] = []
        self._next: Event | None = None
        #: bytes sent in all (flows that finished)
        self.sent = 0.0

    @property
    def busy(self) -> bool:
        return self._weight > 0

    @property
    def flows(self) -> int:
        """Active flows, counted by weight."""
        return self._weight

    def send(self, size: float, on_done: Callable[[], None], weight: int = 1) -> Flow:
        """Start a flow of `size` bytes (per unit of weight) now."""
        self._advance()
        flow = Flow(self, size, weight, on_done)
        flow.finish = self._virtual + size
        heapq.heappush(self._flows, flow)
        self._weight += weight
        self._reschedule()
        return flow

    def cancel(self, flow: Flow) -> None:
        """Stop a flow that has not finished (its callback never runs)."""
        if not flow.live:
            return
        self._advance()
        flow.live = False
        self._weight -= flow.weight
        self._reschedule()

    def _advance(self) -> None:
        now = self.sim.now
        if self._weight and now > self._updated:
            self._virtual += (now - self._updated) * self.capacity / self._weight
        self._updated = now

    def _reschedule(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
        flows = self._flows
        while flows and not flows[0].live:
            heapq.heappop(flows)
        if not flows:
            return
        if math.isinf(self.capacity):
            delay = 0.0
        else:
            delay = max(0.0, (flows[0].finish - self._virtual) * self._weight / self.capacity)
        self._next = self.sim.after(delay, self._complete)

    def _complete(self) -> None:
        self._next = None
        self._advance()
        flows = self._flows
        done: list[Flow] = []
        limit = self._virtual + _SLACK + 1e-12 * abs(self._virtual)
        while flows and (not flows[0].live or flows[0].finish <= limit or math.isinf(self.capacity)):
            flow = heapq.heappop(flows)
            if flow.live:
                flow.live = False
                self._weight -= flow.weight
                self.sent += flow.size * flow.weight
                done.append(flow)
        self._reschedule()
        for flow in done:
            flow.on_done()


def kumar_ross(size: float, seeder_uplink: float, uplinks: Sequence[float], min_downlink: float | None = None) -> float:
    """The least time any scheme needs to give `size` bytes to every downloader (Kumar & Ross, 2006):
    max(F/u_s, N·F/(u_s + Σu_i), F/d_min), rates in bytes/s, in seconds."""
    bound = max(size / seeder_uplink, len(uplinks) * size / (seeder_uplink + sum(uplinks)))
    if min_downlink is not None:
        bound = max(bound, size / min_downlink)
    return bound


def chunked_floor(
    size: float, chunk_size: float, seeder_uplink: float, uplinks: Sequence[float], efficiency: float = 1.0
) -> float:
    """The least time when a chunk is forwarded only once whole, and only `efficiency` of a link's rate is
    payload. With every uplink equal to the seeder's (u), Mundinger, Weber & Weiss (2008) give the optimal
    makespan: (C + floor(log2 N)) chunk times for C chunks and N downloaders, one chunk time c/u (the
    log term: the last chunk to leave the seeder still has to double to N holders). For uneven uplinks,
    the fluid bound over `efficiency` (a lower bound, not the optimum)."""
    n = len(uplinks)
    fluid = kumar_ross(size, seeder_uplink, uplinks) / efficiency
    if n == 0 or any(u != seeder_uplink for u in uplinks):
        return fluid
    tail = math.floor(math.log2(n)) if n > 1 else 0
    return max(fluid, (size + tail * chunk_size) / (seeder_uplink * efficiency))
