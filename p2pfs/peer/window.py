"""How many chunk requests to keep outstanding at each holder. Pure: times are passed in, not read.

Before the first chunk arrives only the ping RTT is known: a holder gets INITIAL_WINDOW requests scaled
down by how much slower its RTT is than the fastest holder's. Afterwards the window covers WINDOW_SECONDS
of the holder's measured throughput: a fast holder keeps many chunks in flight, a slow one one or two,
so slow holders still contribute but cannot hoard chunks that fast holders would deliver sooner.
"""

from __future__ import annotations

import math

#: Requests per holder before any throughput is known (4 x 1 MiB keeps a loopback or LAN link busy).
INITIAL_WINDOW = 4
#: Bounds of the window; 16 x 1 MiB covers 100 ms at ~1.3 Gbit/s.
MIN_WINDOW = 1
MAX_WINDOW = 16
#: The window holds this much time's worth of the holder's throughput.
WINDOW_SECONDS = 0.25
#: RTTs below this are noise (loopback): do not let 0.05 ms vs 0.2 ms decide anything.
RTT_FLOOR = 0.002
#: Weight of the newest sample in the throughput average.
EWMA_ALPHA = 0.3


def initial_window(rtt: float, fastest_rtt: float) -> int:
    """Window for a holder whose ping took `rtt` when the fastest holder's took `fastest_rtt` (seconds)."""
    ratio = max(fastest_rtt, RTT_FLOOR) / max(rtt, RTT_FLOOR)
    return max(MIN_WINDOW, min(INITIAL_WINDOW, round(INITIAL_WINDOW * ratio)))


def request_window(throughput: float, chunk_size: int) -> int:
    """Window for a holder delivering `throughput` bytes/s in chunks of `chunk_size` bytes."""
    return max(MIN_WINDOW, min(MAX_WINDOW, math.ceil(throughput * WINDOW_SECONDS / max(chunk_size, 1))))


class ThroughputMeter:
    """Bytes/s delivered by one holder: an EWMA over the gaps between replies while requests are queued."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._last: float | None = None

    def start(self, now: float) -> None:
        """A request was sent while none was outstanding: the next gap starts here."""
        self._last = now

    def delivered(self, nbytes: int, now: float) -> None:
        if self._last is not None:
            gap = max(now - self._last, 1e-6)
            sample = nbytes / gap
            self.rate = sample if self.rate is None else (1 - EWMA_ALPHA) * self.rate + EWMA_ALPHA * sample
        self._last = now

    def idle(self) -> None:
        """Nothing outstanding: the gap until the next request is not the holder's fault."""
        self._last = None
