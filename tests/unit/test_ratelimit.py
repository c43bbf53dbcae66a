"""The token bucket behind --max-upload-rate/--max-download-rate (p2pfs.ratelimit), on a hand-driven clock."""

from __future__ import annotations

import asyncio

import pytest

from p2pfs.ratelimit import RateLimit, limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_its_burst_through_at_once_then_charges_the_rate() -> None:
    clock = Clock()
    bucket = RateLimit(1000, burst=100, clock=clock)
    assert bucket.delay(100) == 0.0
    # a chunk larger than the burst is allowed, as debt paid at the rate
    assert bucket.delay(500) == pytest.approx(0.5)
    assert bucket.delay(500) == pytest.approx(1.0)  # queued behind the first: first come, first served


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    bucket = RateLimit(1000, burst=100, clock=clock)
    bucket.delay(600)  # 500 in debt
    clock.now += 0.5
    assert bucket.delay(0) == 0.0  # paid off exactly
    clock.now += 60.0  # a long idle spell refills only the burst
    assert bucket.delay(100) == 0.0
    assert bucket.delay(100) == pytest.approx(0.1)


def test_over_any_interval_at_most_rate_times_t_plus_burst_pass() -> None:
    clock = Clock()
    bucket = RateLimit(10_000, burst=1000, clock=clock)
    sent = 0
    start = clock.now
    for _ in range(200):  # a sender that sends as soon as it is allowed, in 3 KiB pieces
        wait = bucket.delay(3072)
        clock.now += wait
        sent += 3072
    elapsed = clock.now - start
    assert sent <= 10_000 * elapsed + 1000 + 1e-6
    assert sent >= 10_000 * elapsed  # and it is not slower than the cap either


def test_refund_gives_back_what_was_not_sent() -> None:
    clock = Clock()
    bucket = RateLimit(1000, burst=0, clock=clock)
    assert bucket.delay(1000) == pytest.approx(1.0)
    bucket.refund(1000)
    assert bucket.total == 0
    assert bucket.delay(500) == pytest.approx(0.5)


async def test_a_waiter_cancelled_while_waiting_gives_its_tokens_back() -> None:
    bucket = RateLimit(1000, burst=0)
    waiter = asyncio.ensure_future(bucket.take(10_000))  # 10 s of debt
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.total == 0
    assert bucket.delay(0) < 0.1  # the next sender does not pay for the cancelled one


def test_zero_or_none_means_no_limit_and_a_negative_rate_is_refused() -> None:
    assert limit(None) is None
    assert limit(0) is None
    assert isinstance(limit(1024), RateLimit)
    with pytest.raises(ValueError):
        RateLimit(0)
