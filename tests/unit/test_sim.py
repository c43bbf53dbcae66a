"""The swarm simulator (bench/sim): link sharing on hand-computed cases, the bound, and a tiny swarm."""

from __future__ import annotations

import math

import pytest

from bench.sim.engine import Link, Simulator, kumar_ross
from bench.sim.swarm import Policy, Swarm, SwarmConfig

MiB = 1 << 20


def _finish_times(sim: Simulator, link: Link, starts: list[tuple[float, float]]) -> list[float]:
    done: list[float] = [math.nan] * len(starts)
    for i, (at, size) in enumerate(starts):
        sim.at(at, lambda i=i, size=size: link.send(size, lambda: done.__setitem__(i, sim.now)))
    sim.run()
    return done


def test_one_flow_runs_at_capacity() -> None:
    sim = Simulator()
    link = Link(sim, 1000.0)
    assert _finish_times(sim, link, [(0.0, 500.0)]) == [pytest.approx(0.5)]
    assert link.sent == pytest.approx(500.0)


def test_two_flows_share_an_uplink_and_finish_at_twice_the_time() -> None:
    sim = Simulator()
    assert _finish_times(sim, Link(sim, 1000.0), [(0.0, 500.0), (0.0, 500.0)]) == [
        pytest.approx(1.0),
        pytest.approx(1.0),
    ]


def test_a_late_flow_takes_its_share_from_then_on() -> None:
    # 0..0.2 s: A alone sends 200 B; then A and B at 500 B/s each: B (300 B) is done at 0.8 s, having
    # let A send 300 B more (500 of 1000); A sends its last 500 B alone: done at 1.3 s.
    sim = Simulator()
    assert _finish_times(sim, Link(sim, 1000.0), [(0.0, 1000.0), (0.2, 300.0)]) == [
        pytest.approx(1.3),
        pytest.approx(0.8),
    ]


def test_a_weighted_flow_counts_as_that_many_flows() -> None:
    sim = Simulator()
    link = Link(sim, 1000.0)
    done: list[float] = []
    link.send(100.0, lambda: done.append(sim.now), weight=4)  # (an update to 4 watchers)
    link.send(100.0, lambda: done.append(sim.now))
    sim.run()
    assert done == [pytest.approx(0.5), pytest.approx(0.5)]


def test_a_cancelled_flow_gives_its_share_back() -> None:
    sim = Simulator()
    link = Link(sim, 1000.0)
    done: list[float] = []
    link.send(1000.0, lambda: done.append(sim.now))
    doomed = link.send(1000.0, lambda: done.append(-1.0))
    sim.at(0.5, link.cancel, doomed)  # A got 250 B in 0.5 s; its other 750 B alone take 0.75 s
    sim.run()
    assert done == [pytest.approx(1.25)]


def test_kumar_ross_bound() -> None:
    # the seeder's term: F/u_s = 10 s > N*F/(u_s + sum) = 8*100/(10 + 80) = 8.9 s
    assert kumar_ross(100.0, 10.0, [10.0] * 8) == pytest.approx(10.0)
    # the swarm's term: slow downloaders make N*F/(u_s + sum) = 4*100/(10 + 4) = 28.6 s the larger
    assert kumar_ross(100.0, 10.0, [1.0] * 4) == pytest.approx(400 / 14)
    # and the slowest download: F/d_min
    assert kumar_ross(100.0, 10.0, [10.0] * 8, min_downlink=2.0) == pytest.approx(50.0)


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy(super_seed=False),
        Policy(free_tracker=True),
        Policy(serial_uplink="fifo"),
        Policy(serial_uplink="rarest"),
    ],
)
def test_a_tiny_swarm_completes_above_the_bound(policy: Policy) -> None:
    config = SwarmConfig(
        size=6 * MiB + 123,  # (a short last chunk)
        chunk_size=MiB,
        seeder_uplink=10 * MiB,
        uplinks=[10 * MiB, 5 * MiB, 1 * MiB],
        policy=policy,
    )
    swarm = Swarm(config)
    result = swarm.run()
    assert len(result.completions) == 3
    for downloader in swarm.downloaders:
        assert len(downloader.have) == config.chunk_count == 7
        assert downloader.picker.complete
    assert result.makespan >= config.bound
    # every chunk left the seeder at least once; once the registrations in flight have arrived (and no
    # timer is left running), the registry lists every downloader as a seeder
    assert result.seeder_sent >= config.size
    swarm.sim.run()
    assert all(len(swarm.tracker.holders[d.number]) == 7 for d in swarm.downloaders)


@pytest.mark.parametrize("serial", [None, "fifo", "rarest"])
def test_a_serial_uplink_sends_one_reply_at_a_time(serial: str | None) -> None:
    config = SwarmConfig(
        size=12 * MiB, chunk_size=MiB, seeder_uplink=10 * MiB, uplinks=[10 * MiB] * 4,
        policy=Policy(serial_uplink=serial),
    )
    swarm = Swarm(config)
    most = {}
    for peer in swarm.peers:
        link, active = peer.link, {"now": 0}
        send, cancel = link.send, link.cancel

        def counted_send(nbytes, done, *, _send=send, _active=active, _number=peer.number):  # type: ignore[no-untyped-def]
            _active["now"] += 1
            most[_number] = max(most.get(_number, 0), _active["now"])

            def finished(*args, _done=done):  # type: ignore[no-untyped-def]
                _active["now"] -= 1
                return _done(*args)

            return _send(nbytes, finished)

        def counted_cancel(flow, *, _cancel=cancel, _active=active):  # type: ignore[no-untyped-def]
            _active["now"] -= 1
            return _cancel(flow)

        link.send, link.cancel = counted_send, counted_cancel
    result = swarm.run()
    assert len(result.completions) == 4
    if serial is None:
        assert max(most.values()) > 1  # (the seeder sends to several downloaders at once)
    else:
        assert max(most.values()) == 1
