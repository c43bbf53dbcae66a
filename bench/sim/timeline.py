"""Where a simulated swarm loses time (`python -m bench.sim.run --n N --timeline`): the swarm's delivered
chunk bytes per second against the capacity of every uplink, and for the chunks that left the publisher
last (and the first two: the ramp), how long each took to double its copies. A wide homogeneous swarm
is bound both by the publisher's F/u and by all uplinks together (N F / (u + N u)), so every second
the uplinks are not all busy, during the ramp after the start or the tail in which the last chunks
spread, adds to the makespan.
"""

from __future__ import annotations

from collections import defaultdict

from bench.sim.swarm import Swarm, SwarmConfig, SwarmResult

#: Copies of a chunk at which its spread is reported.
MARKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Chunks reported, of those that left the publisher last (the first two are reported too).
LAST = 4


def run(config: SwarmConfig) -> tuple[SwarmResult, list[str]]:
    """Simulate `config` with every registration timed; the result and the report's lines."""
    swarm = Swarm(config)
    times: dict[int, list[float]] = defaultdict(list)
    registered = swarm.registered

    def timed(downloader, chunk):  # type: ignore[no-untyped-def]
        times[chunk].append(swarm.sim.now)
        registered(downloader, chunk)

    swarm.registered = timed  # type: ignore[method-assign]
    result = swarm.run()
    n = len(config.uplinks)
    capacity = (config.seeder_uplink + sum(config.uplinks)) * config.efficiency
    per_second: dict[int, float] = defaultdict(float)
    for chunk, stamps in times.items():
        length = swarm.chunk_length(chunk)
        for stamp in stamps:
            per_second[int(stamp)] += length
    seconds = int(result.makespan) + 1
    lines = [
        "delivered / all uplinks' capacity, per second: "
        + " ".join(f"{per_second[s] / capacity:.2f}" for s in range(seconds)),
    ]
    last_out = max(stamps[0] for stamps in times.values())
    lines.append(f"every chunk at a downloader by {last_out:.2f} s (the publisher's F/u alone: "
                 f"{config.size / (config.seeder_uplink * config.efficiency):.2f} s); makespan {result.makespan:.2f} s")
    order = sorted(times, key=lambda c: times[c][0])
    for chunk in order[:2] + order[-LAST:]:
        stamps = times[chunk]
        marks = [f"{k}: {stamps[k - 1]:.2f}" for k in MARKS if k <= len(stamps)]
        if len(stamps) == n and n not in MARKS:
            marks.append(f"{n}: {stamps[-1]:.2f}")
        lines.append(f"chunk {chunk}, s at which it had k copies: " + ", ".join(marks))
    return result, lines
