"""Rate limits: a token bucket that paces bytes to at most `rate` per second, shared by every transfer
of one process that it limits (`--max-upload-rate`, `--max-download-rate`).

A sender takes the tokens for a whole chunk before it sends (or asks for) it and, when the bucket runs
dry, waits until the debt is paid at `rate`. Taking on debt rather than waiting for a full bucket is
what lets one chunk be larger than the burst: aiolimiter and the like refuse an amount above their
capacity, and a 4 MiB chunk under a 1 MiB/s cap is an ordinary case here. Waiters are served in the
order they asked, since each one's wait includes the debt of those before it. Over any interval T the
bytes let through are at most `rate * T + burst`, so a capped peer's rate measured over 10 s is within
`burst / (10 s * rate)` (1 %) of its cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Seconds of traffic the bucket holds when full: what a limited process may send at once after an
#: idle spell. A tenth of a second keeps a capped uplink's 10-second average within 1 % of its cap,
#: and is a few chunks at any rate worth capping.
BURST_SECONDS = 0.1


class RateLimit:
    """At most `rate` bytes per second, on average, through `take()`; `rate` > 0."""

    def __init__(
        self, rate: int, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate * BURST_SECONDS
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        #: bytes let through since the limit was made (for rates reported by the process)
        self.total = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self, amount: int) -> float:
        """Take `amount` bytes' worth of tokens now; the seconds to wait before sending them."""
        self._refill()
        self._tokens -= amount
        self.total += amount
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def refund(self, amount: int) -> None:
        """Give back tokens taken for bytes that were not sent after all."""
        self._tokens = min(self.burst, self._tokens + amount)
        self.total -= amount

    async def take(self, amount: int) -> None:
        """Wait until `amount` bytes may go. Cancelled while waiting, the tokens are given back."""
        wait = self.delay(amount)
        if wait <= 0:
            return
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            self.refund(amount)
            raise


def limit(rate: int | None) -> RateLimit | None:
    """A RateLimit for `rate` bytes per second; None (no limit) for None or 0, as aria2c's 0."""
    return RateLimit(rate) if rate else None
