"""Benchmark 2b, TLS against plaintext: benchmark 2's one→one download (`p2pfs share` → `p2pfs get`, 1 GiB,
binary fast path, wall time of `get` from start to exit) through two swarms side by side on 127.0.0.1:
one plaintext, one with `--tls-cert/--tls-key/--tls-ca` on every process (mutual TLS, 1.3 where
available). Each round downloads once from each swarm, alternating which goes first, so both share the
machine's load of the moment; the ratio is the median of the rounds' TLS ÷ plaintext throughputs.
A first round, not counted, warms up both swarms and the machine: on this VM the first GiB written to
tmpfs after a while costs about a second more than the next ones, which only the first `get` would pay.

Certificates come from trustme (the test extra): one CA, a certificate for each process.
"""

from __future__ import annotations

from pathlib import Path

from bench import local_limit
from bench.common import (
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

BENCH = "2b one→one TLS"
SIZE = local_limit.SIZE
QUICK_SIZE = local_limit.QUICK_SIZE
MODES = ("plaintext", "TLS")
#: TLS throughput as a share of plaintext throughput, measured in the same rounds.
TARGET = 0.50


def size_for(ctx: Context) -> int:
    return QUICK_SIZE if ctx.quick else SIZE


def make_certificates(folder: Path) -> dict[str, list[str]]:
    """A CA and one certificate per process; the --tls-* options of each process."""
    try:
        import trustme
    except ImportError:
        raise BenchError("trustme is not installed: .venv/bin/pip install -e '.[test]'") from None
    ca = trustme.CA()
    ca_path = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    options = {}
    for node in ("tracker", "share", "get"):
        cert = ca.issue_cert("127.0.0.1", "localhost")
        key_path, cert_path = folder / f"{node}.key", folder / f"{node}.pem"
        cert.private_key_pem.write_to_path(str(key_path))
        for i, pem in enumerate(cert.cert_chain_pems):
            pem.write_to_path(str(cert_path), append=i > 0)
        options[node] = ["--tls-cert", str(cert_path), "--tls-key", str(key_path), "--tls-ca", str(ca_path)]
    return options


def measure(ctx: Context) -> list[dict[str, float]]:
    """Per round, the wall time (s) of `get` in each mode; measured once per suite run."""

    def all_runs() -> list[dict[str, float]]:
        size = size_for(ctx)
        src = ctx.source(size)
        ctx.ensure_room(size, "the downloaded copy")
        env = child_env()
        work = ctx.dir("one-to-one-tls")
        tls = make_certificates(work)
        none: dict[str, list[str]] = {"tracker": [], "share": [], "get": []}
        options = {"plaintext": none, "TLS": tls}
        print(f"  one→one, {size_label(size)}, plaintext and TLS side by side", flush=True)
        with children() as procs:
            trackers = {}
            for mode in MODES:
                trackers[mode] = start_tracker(procs, options[mode]["tracker"])
                start_share(procs, src, trackers[mode], env, flags=options[mode]["share"])

            def once(i: int) -> dict[str, float]:
                seconds = {}
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    dest = work / f"copy-{i}.bin"
                    get = p2pfs_get(src.name, dest, trackers[mode], *options[mode]["get"], env=env)
                    if get.wait(TRANSFER_TIMEOUT) != 0:
                        raise BenchError(f"get ({mode}) failed: {get.describe()}")
                    assert get.ended is not None
                    check_file(dest, size)
                    remove(dest)
                    seconds[mode] = get.ended - get.started
                return seconds

            warm = once(1)
            print(
                f"    warm-up round (not counted): plaintext {warm['plaintext']:.2f} s, TLS {warm['TLS']:.2f} s",
                flush=True,
            )
            rounds = repeat(ctx.runs, once)
            for i, r in enumerate(rounds):
                print(
                    f"    round {i + 1}/{ctx.runs}: plaintext {r['plaintext']:.2f} s, TLS {r['TLS']:.2f} s "
                    f"(TLS/plaintext {r['plaintext'] / r['TLS']:.2f})",
                    flush=True,
                )
        remove(work)
        return rounds

    return ctx.memo("tls:rounds", all_runs)


def run(ctx: Context) -> None:
    size = size_for(ctx)
    rounds = measure(ctx)
    rates = {mode: [size / MiB / r[mode] for r in rounds] for mode in MODES}
    ratios = [t / p for t, p in zip(rates["TLS"], rates["plaintext"], strict=True)]
    ratio = median(ratios)
    plain = median(rates["plaintext"])
    ctx.add(
        Figure(
            BENCH,
            f"get {size_label(size)}, plaintext (wall time {size / MiB / plain:.2f} s)",
            plain,
            "MiB/s",
            rates["plaintext"],
        )
    )
    tls = median(rates["TLS"])
    ctx.add(
        Figure(
            BENCH,
            f"get {size_label(size)}, TLS on every connection (wall time {size / MiB / tls:.2f} s)",
            tls,
            "MiB/s",
            rates["TLS"],
            ratio=ratio,
            ratio_of="TLS ÷ plaintext, median of the rounds",
            target=f"≥ {TARGET:.0%} of plaintext",
            met=ratio >= TARGET,
        )
    )
