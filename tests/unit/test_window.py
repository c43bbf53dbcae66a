"""Request windows and the throughput meter, with explicit times (no clock is read)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfs.peer.window import (
    EWMA_ALPHA,
    INITIAL_WINDOW,
    MAX_WINDOW,
    MIN_WINDOW,
    RTT_FLOOR,
    WINDOW_SECONDS,
    ThroughputMeter,
    initial_window,
    request_window,
)

MiB = 1024 * 1024


# -- initial_window ---------------------------------------------------------------------------------------
def test_fastest_holder_gets_the_full_initial_window() -> None:
    assert initial_window(0.020, 0.020) == INITIAL_WINDOW


def test_low_rtt_gets_a_bigger_window_than_high_rtt() -> None:
    fastest = 0.010
    assert initial_window(0.010, fastest) > initial_window(0.100, fastest)
    assert initial_window(0.020, fastest) > initial_window(0.100, fastest)


def test_initial_window_never_grows_with_rtt() -> None:
    rtts = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 10.0]
    windows = [initial_window(rtt, 0.001) for rtt in rtts]
    assert windows == sorted(windows, reverse=True)
    assert windows[0] == INITIAL_WINDOW
    assert windows[-1] == MIN_WINDOW


def test_rtts_below_the_floor_are_noise() -> None:
    # 0.05 ms vs 0.2 ms on loopback: four times slower, but it must not matter
    assert initial_window(0.00005, 0.00005) == initial_window(0.0002, 0.00005) == INITIAL_WINDOW
    assert initial_window(RTT_FLOOR * 0.99, 0.0) == INITIAL_WINDOW
    assert initial_window(0.0, 0.0) == INITIAL_WINDOW  # no division by zero


def test_rtt_above_the_floor_still_counts_against_a_sub_floor_fastest() -> None:
    assert initial_window(RTT_FLOOR * 10, 0.00001) < INITIAL_WINDOW


@given(st.floats(0, 60), st.floats(0, 60))
def test_initial_window_is_within_bounds(rtt: float, fastest: float) -> None:
    fastest = min(rtt, fastest)
    assert MIN_WINDOW <= initial_window(rtt, fastest) <= min(INITIAL_WINDOW, MAX_WINDOW)


# -- request_window ---------------------------------------------------------------------------------------
def test_request_window_covers_window_seconds_of_throughput() -> None:
    # 40 MiB/s over 0.25 s is 10 chunks of 1 MiB
    assert WINDOW_SECONDS == 0.25
    assert request_window(40 * MiB, MiB) == 10


def test_request_window_grows_with_throughput() -> None:
    rates = [0, 1 * MiB, 10 * MiB, 20 * MiB, 40 * MiB, 100 * MiB, 10_000 * MiB]
    windows = [request_window(rate, MiB) for rate in rates]
    assert windows == sorted(windows)
    assert windows[0] < windows[3] < windows[-1]


def test_request_window_bounds() -> None:
    assert request_window(0.0, MiB) == MIN_WINDOW
    assert request_window(1.0, MiB) == MIN_WINDOW
    assert request_window(1e15, MiB) == MAX_WINDOW
    assert request_window(1e15, 0) == MAX_WINDOW  # a zero chunk size does not divide by zero


def test_smaller_chunks_mean_more_requests_for_the_same_throughput() -> None:
    assert request_window(8 * MiB, 64 * 1024) > request_window(8 * MiB, MiB)


@given(st.floats(0, 1e12), st.floats(0, 1e12), st.integers(1, 16 * MiB))
def test_request_window_is_monotonic_and_bounded(a: float, b: float, chunk_size: int) -> None:
    low, high = sorted((a, b))
    assert MIN_WINDOW <= request_window(low, chunk_size) <= request_window(high, chunk_size) <= MAX_WINDOW


# -- ThroughputMeter --------------------------------------------------------------------------------------
def test_meter_has_no_rate_before_a_delivery() -> None:
    meter = ThroughputMeter()
    assert meter.rate is None
    meter.start(1.0)
    assert meter.rate is None


def test_first_delivery_measures_from_start() -> None:
    meter = ThroughputMeter()
    meter.start(10.0)
    meter.delivered(1000, 10.5)
    assert meter.rate == pytest.approx(2000.0)


def test_later_deliveries_measure_from_the_previous_one_with_an_ewma() -> None:
    meter = ThroughputMeter()
    meter.start(0.0)
    meter.delivered(1000, 0.5)  # 2000 B/s
    meter.delivered(1000, 1.0)  # 2000 B/s again
    assert meter.rate == pytest.approx(2000.0)
    meter.delivered(4000, 1.5)  # an 8000 B/s sample moves the average by EWMA_ALPHA of the difference
    assert meter.rate == pytest.approx((1 - EWMA_ALPHA) * 2000 + EWMA_ALPHA * 8000)


def test_rate_converges_to_a_steady_throughput() -> None:
    meter = ThroughputMeter()
    meter.start(0.0)
    meter.delivered(MiB, 1.0)  # 1 MiB/s at first
    for step in range(1, 40):  # then 10 MiB/s
        meter.delivered(MiB, 1.0 + step * 0.1)
    assert meter.rate == pytest.approx(10 * MiB, rel=1e-3)


def test_delivery_without_start_sets_no_rate() -> None:
    meter = ThroughputMeter()
    meter.delivered(1000, 5.0)
    assert meter.rate is None
    meter.delivered(1000, 6.0)  # but the next gap is measured from it
    assert meter.rate == pytest.approx(1000.0)


def test_idle_time_is_not_held_against_the_holder() -> None:
    meter = ThroughputMeter()
    meter.start(0.0)
    meter.delivered(1000, 1.0)
    meter.idle()
    meter.delivered(1000, 100.0)  # nothing was outstanding: no sample
    assert meter.rate == pytest.approx(1000.0)
    meter.idle()
    meter.start(200.0)
    meter.delivered(1000, 201.0)  # measured from the new start, not from t=100
    assert meter.rate == pytest.approx(1000.0)


def test_simultaneous_delivery_gives_a_finite_rate() -> None:
    meter = ThroughputMeter()
    meter.start(3.0)
    meter.delivered(1000, 3.0)
    assert meter.rate is not None and 0 < meter.rate < float("inf")
    assert request_window(meter.rate, MiB) == MAX_WINDOW


def test_meter_feeds_the_window() -> None:
    fast, slow = ThroughputMeter(), ThroughputMeter()
    fast.start(0.0)
    slow.start(0.0)
    for i in range(1, 11):
        fast.delivered(MiB, i * 0.01)  # 100 MiB/s
        slow.delivered(MiB, i * 1.0)  # 1 MiB/s
    assert fast.rate is not None and slow.rate is not None
    assert request_window(fast.rate, MiB) == MAX_WINDOW
    assert request_window(slow.rate, MiB) == MIN_WINDOW
