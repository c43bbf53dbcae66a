"""Benchmark: rate limits (`--max-upload-rate`, `--max-download-rate`), side by side with their caps.

1. A sharer capped at CAP: one `get` of a file sized for ten seconds at the cap. The figure is the
   transfer's own rate (the `done` event's `seconds`: from the location reply to the last chunk
   verified), and its ratio to the cap (target: within 5 %).
2. The same with the downloader capped instead.
3. Scheduling around a capped holder: two sharers of the same file, one capped at SLOW and one at FAST,
   one downloader. A downloader that measures its holders by what they deliver takes about
   SLOW / (SLOW + FAST) of the chunks from the slow one, and finishes in about size / (SLOW + FAST). The
   figures are the slow holder's share of the chunks beside that ideal, and the makespan beside the ideal.
"""

from __future__ import annotations

from bench.common import (
    LISTENING,
    TRANSFER_TIMEOUT,
    BenchError,
    Context,
    Figure,
    MiB,
    check_file,
    child_env,
    children,
    median,
    p2pfs_get,
    remove,
    repeat,
    size_label,
    start_share,
    start_tracker,
)

BENCH = "7 rate limits"
CAP = 20 * MiB
QUICK_CAP = 8 * MiB
#: Seconds a capped transfer lasts (the issue's accuracy is over 10 s).
SECONDS = 10
SLOW, FAST = 4 * MiB, 16 * MiB
QUICK_SLOW, QUICK_FAST = 2 * MiB, 8 * MiB
CHUNK = "256K"


def _rate_flag(rate: int) -> str:
    return f"{rate // 1024}K"


def _get_once(ctx: Context, tracker: str, name: str, size: int, work_name: str, flags: tuple[str, ...]) -> dict:  # type: ignore[type-arg]
    work = ctx.dir(work_name)
    dest = work / name
    get = p2pfs_get(name, dest, tracker, "--json", *flags, env=child_env())
    _, done = get.expect_event("done", TRANSFER_TIMEOUT)
    if get.wait(TRANSFER_TIMEOUT) != 0:
        raise BenchError(f"get failed: {get.describe()}")
    check_file(dest, size)
    remove(work)
    return done


def capped(ctx: Context, side: str) -> list[float]:
    """Transfer rates (B/s) of `get`s with the sharer (`side` "upload") or the getter ("download") capped."""
    cap = QUICK_CAP if ctx.quick else CAP
    size = cap * SECONDS
    src = ctx.source(size)
    print(f"  rate limit: {side} capped at {size_label(cap)}/s, {size_label(size)}", flush=True)
    share_flags = ("--chunk-size", CHUNK) + (("--max-upload-rate", _rate_flag(cap)) if side == "upload" else ())
    get_flags = ("--max-download-rate", _rate_flag(cap)) if side == "download" else ()
    with children() as procs:
        tracker = start_tracker(procs)
        start_share(procs, src, tracker, child_env(), flags=share_flags)
        return repeat(
            ctx.runs,
            lambda i: size / _get_once(ctx, tracker, src.name, size, f"rate-{side}-{i}", get_flags)["seconds"],
            f"{side}-capped B/s",
        )


def around_slow_holder(ctx: Context) -> tuple[list[float], list[float]]:
    """(shares of the chunks from the slow holder, makespans in s) of one get from a slow and a fast holder."""
    slow, fast = (QUICK_SLOW, QUICK_FAST) if ctx.quick else (SLOW, FAST)
    size = (slow + fast) * SECONDS
    src = ctx.source(size)
    print(f"  rate limit: holders capped at {size_label(slow)}/s and {size_label(fast)}/s", flush=True)
    shares: list[float] = []
    spans: list[float] = []
    with children() as procs:
        tracker = start_tracker(procs)
        slow_share = start_share(
            procs, src, tracker, child_env(), flags=("--chunk-size", CHUNK, "--max-upload-rate", _rate_flag(slow))
        )
        start_share(procs, src, tracker, child_env(), flags=("--chunk-size", CHUNK, "--max-upload-rate", _rate_flag(fast)))
        slow_port = next(m.group(2) for line in slow_share.stdout for m in [LISTENING.search(line)] if m)

        def once(i: int) -> float:
            done = _get_once(ctx, tracker, src.name, size, f"rate-two-{i}", ())
            total = sum(done["sources"].values())
            from_slow = sum(n for addr, n in done["sources"].items() if addr.endswith(f":{slow_port}"))
            shares.append(from_slow / total)
            spans.append(done["seconds"])
            return float(done["seconds"])

        repeat(ctx.runs, once, "two capped holders, seconds")
    return shares, spans


def run(ctx: Context) -> None:
    cap = QUICK_CAP if ctx.quick else CAP
    for side in ("upload", "download"):
        samples = capped(ctx, side)
        value = median(samples)
        ctx.add(
            Figure(
                BENCH,
                f"{side} capped at {size_label(cap)}/s, {SECONDS} s transfer",
                value / MiB,
                "MiB/s",
                [s / MiB for s in samples],
                ratio=value / cap,
                ratio_of="of the cap",
                target="within 5 % of the cap",
                met=abs(value / cap - 1) <= 0.05,
            )
        )
    slow, fast = (QUICK_SLOW, QUICK_FAST) if ctx.quick else (SLOW, FAST)
    shares, spans = around_slow_holder(ctx)
    ideal_share = slow / (slow + fast)
    ideal_span = (slow + fast) * SECONDS / (slow + fast)
    ctx.add(
        Figure(
            BENCH,
            f"chunks from the holder capped at {size_label(slow)}/s (other {size_label(fast)}/s)",
            median(shares) * 100,
            "%",
            [s * 100 for s in shares],
            ratio=median(shares) / ideal_share,
            ratio_of=f"of its share of the capacity, {ideal_share:.0%}",
        )
    )
    ctx.add(
        Figure(
            BENCH,
            "makespan from the two capped holders",
            median(spans),
            "s",
            spans,
            ratio=median(spans) / ideal_span,
            ratio_of=f"× size / (sum of caps) = {ideal_span:.1f} s",
        )
    )
