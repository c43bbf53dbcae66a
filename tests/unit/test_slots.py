"""Upload slots without sockets or a clock (hand-passed times), and a tiny simulated swarm using them."""

from __future__ import annotations

from bench.sim.swarm import Policy, Swarm, SwarmConfig
from p2pfs.peer.slots import (
    IDLE_GRACE,
    INITIAL_SLOTS,
    MAX_SLOTS,
    MIN_SLOTS,
    QUEUED,
    RETRY_MAX,
    RETRY_MIN,
    SEND,
    Busy,
    UplinkMeter,
    UploadSlots,
    slot_count,
)

MiB = 1 << 20


def test_slot_count_gives_each_slot_a_chunk_per_half_second() -> None:
    assert slot_count(None, MiB) == INITIAL_SLOTS
    assert slot_count(12e6, MiB) == 5  # 100 Mbit/s of payload, 1 MiB chunks: 5.7 chunks per 0.5 s
    assert slot_count(12e6, 4 * MiB) == MIN_SLOTS  # 1.4 chunks per 0.5 s: never fewer than two
    assert slot_count(1.2e9, MiB) == MAX_SLOTS  # 10 Gbit/s: capped


def test_requests_beyond_the_slots_wait_in_a_short_line_then_are_refused() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=2, queue_limit=1)
    assert slots.admit("a", 0.0) == SEND
    assert slots.admit("b", 0.0) == SEND
    assert slots.admit("c", 0.0) == QUEUED
    assert slots.admit("c", 0.0) == QUEUED  # (its next request waits behind the first)
    refused = slots.admit("d", 0.0)
    assert isinstance(refused, Busy)
    assert RETRY_MIN <= refused.retry_after <= RETRY_MAX
    assert slots.refused == 1
    assert slots.admit("a", 0.1) == SEND  # a connection with a slot is always answered


def test_a_slot_passes_to_the_first_in_line_when_its_grant_is_used() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=1, grant_chunks=2)
    assert slots.admit("a", 0.0) == SEND
    assert slots.admit("b", 0.0) == QUEUED
    assert slots.sent("a", 0.5, more=True) == []  # one chunk of its grant of two: "a" keeps the slot
    assert slots.admit("a", 0.5) == SEND
    assert slots.sent("a", 1.0, more=True) == ["b"]  # grant used and "b" waits: the slot is b's
    assert slots.holds_slot("b") and not slots.holds_slot("a")
    slots.start("b")
    assert slots.admit("a", 1.0) == QUEUED  # "a" now waits its turn like anyone


def test_with_nobody_in_line_a_connection_keeps_its_slot_past_its_grant() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=1, grant_chunks=1)
    for t in range(5):
        assert slots.admit("a", float(t)) == SEND
        assert slots.sent("a", t + 0.5, more=True) == []
    assert slots.holds_slot("a")


def test_an_idle_slot_goes_to_a_waiting_connection_after_the_grace() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=1, grant_chunks=10)
    assert slots.admit("a", 0.0) == SEND
    assert slots.sent("a", 1.0, more=False) == []  # nothing more asked of it: idle from 1.0
    assert slots.admit("b", 1.0) == QUEUED
    assert slots.next_expiry() == 1.0 + IDLE_GRACE
    assert slots.expire(1.0 + IDLE_GRACE / 2) == []
    assert slots.expire(1.0 + IDLE_GRACE) == ["b"]
    assert not slots.holds_slot("a")


def test_an_idle_slot_is_not_taken_while_nobody_waits() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=1)
    assert slots.admit("a", 0.0) == SEND
    slots.sent("a", 1.0, more=False)
    assert slots.next_expiry() is None
    assert slots.expire(100.0) == []
    assert slots.holds_slot("a")


def test_a_closed_connection_frees_its_slot_and_its_place_in_line() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=1, queue_limit=2)
    assert slots.admit("a", 0.0) == SEND
    assert slots.admit("b", 0.0) == QUEUED
    assert slots.admit("c", 0.0) == QUEUED
    assert slots.close("b") == []  # leaves the line: nothing freed
    assert slots.waiting() == 1
    assert slots.close("a") == ["c"]


def test_the_retry_delay_grows_with_the_line_and_follows_the_measured_rate() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=2, chunk_size=MiB, grant_chunks=1, queue_limit=8)
    slots.measured(4 * MiB)  # 4 MiB/s, 1 MiB chunks: 2 slots, a chunk per slot every 0.5 s
    assert slots.slots == MIN_SLOTS
    short = slots.retry_after()
    for name in "abcdef":
        slots.admit(name, 0.0)
    assert slots.waiting() == 4
    assert slots.retry_after() > short
    assert short == 0.25  # 0.5 s a chunk per slot, one turn in two slots


def test_the_uplink_meter_measures_spans_when_the_uplink_always_had_something_to_send() -> None:
    meter = UplinkMeter()
    meter.busy(0.0)
    assert meter.sent(2 * MiB, 0.5) is None  # (a span shorter than INTERVAL gives no figure)
    assert meter.sent(2 * MiB, 1.0) == 4 * MiB  # 4 MiB in the 1 s span
    meter.busy(1.2)  # (a span is running: a new reply does not restart it)
    assert meter.sent(8 * MiB, 2.0) == (1 - UplinkMeter.ALPHA) * 4 * MiB + UplinkMeter.ALPHA * 8 * MiB
    meter.idle()  # nothing to send for a while: the uplink was not the limit, that time is not counted
    assert meter.sent(MiB, 9.0) is None
    meter.busy(10.0)
    assert meter.sent(MiB, 10.5) is None
    assert meter.rate == (1 - UplinkMeter.ALPHA) * 4 * MiB + UplinkMeter.ALPHA * 8 * MiB


def test_a_request_that_cannot_be_refused_waits_in_line_however_long_it_is() -> None:
    slots: UploadSlots[str] = UploadSlots(slots=1, queue_limit=1)
    assert slots.admit("a", 0.0) == SEND
    assert slots.admit("b", 0.0) == QUEUED
    assert isinstance(slots.admit("c", 0.0), Busy)
    assert slots.admit("d", 0.0, refuse=False) == QUEUED  # (a seed downloader knows no busy reply)
    assert slots.waiting() == 2
    assert slots.sent("a", 0.1, more=False) == []  # (a's grant of 2 is not used up)
    assert slots.sent("a", 0.2, more=False) == ["b"]
    slots.start("b")
    assert slots.close("b") == ["d"]


def test_a_tiny_simulated_swarm_with_upload_slots_completes() -> None:
    config = SwarmConfig(
        size=12 * MiB + 5,
        chunk_size=MiB,
        seeder_uplink=4 * MiB,  # 2 slots at 1 MiB chunks: requests are refused and retried elsewhere
        uplinks=[4 * MiB] * 6,
        policy=Policy(slots=True),
    )
    swarm = Swarm(config)
    result = swarm.run()
    assert len(result.completions) == 6
    assert all(d.picker.complete and len(d.have) == config.chunk_count for d in swarm.downloaders)
    assert sum(p.busy_replies for p in swarm.peers) > 0  # the slots were in play
    assert result.makespan >= config.bound


def test_a_slot_freed_for_a_waiting_connection_is_handed_over_by_expire_not_lost_in_admit() -> None:
    # (a request admitted while a slot had expired once promoted the waiting connection silently: it held
    # a slot nobody told it about, and its parked request never started)
    slots: UploadSlots[str] = UploadSlots(slots=1, queue_limit=2, idle_grace=0.25)
    assert slots.admit("a", 0.0) == SEND
    assert slots.sent("a", 0.1, more=False) == []  # a holds its slot, idle from 0.1
    assert slots.admit("b", 0.2) == QUEUED
    assert slots.admit("c", 1.0) == QUEUED  # a's slot expired at 0.35: it goes to b, first in line
    assert slots.expire(1.0) == ["b"]
    slots.start("b")
    assert slots.holds_slot("b") and not slots.holds_slot("a")
