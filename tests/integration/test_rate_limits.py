"""--max-upload-rate and --max-download-rate (issue 12): a capped transfer, measured with real processes.

The cap is an upper bound whatever the machine's speed, so it is asserted closely from above: the bucket
lets through at most `rate * T + burst` in T seconds (p2pfs.ratelimit), and the first chunk may go at
once. From below it is asserted loosely (half the cap), so a slow or busy machine does not fail the test;
`bench/` holds the tight figure.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.cli_env import isolated_env  # noqa: F401 (isolated_env: an autouse fixture)
from tests.procs import Proc, make_file, run

CAP = 1 << 20  # 1 MiB/s
SIZE = 3 << 20  # about 3 s at the cap
CHUNK = 64 << 10
BURST = CAP // 10  # p2pfs.ratelimit.BURST_SECONDS


def share(procs: Callable[..., Proc], taddr: str, path: Path, *extra: str, env: dict[str, str] | None = None) -> Proc:
    proc = procs(
        "share", str(path), "--tracker", taddr, "--host", "127.0.0.1", "--chunk-size", "64K", *extra, env=env
    )
    proc.listening()
    proc.expect(r"^serving")
    return proc


def timed_get(taddr: str, dest: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[float, dict]:  # type: ignore[type-arg]
    started = time.monotonic()
    done = run("get", "big.bin", str(dest), "--tracker", taddr, "--host", "127.0.0.1", "--json", *extra, env=env)
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return wall, next(e for e in events if e["event"] == "done")


def check_capped(seconds: float, wall: float) -> None:
    # never faster than the cap allows (the transfer's own clock, which starts after the lookup) ...
    least = (SIZE - BURST - CHUNK) / CAP
    assert seconds >= least * 0.97, f"{SIZE} bytes in {seconds:.2f} s: above the cap of {CAP} B/s"
    # ... and not far below it (loosely: a busy machine still moves 1 MiB/s over loopback)
    assert SIZE / wall >= CAP / 2, f"{SIZE} bytes in {wall:.2f} s: far below the cap of {CAP} B/s"


def test_an_upload_capped_sharer_sends_at_its_cap(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "big.bin", SIZE, seed=5)
    share(procs, taddr, src, "--max-upload-rate", "1M")
    wall, done = timed_get(taddr, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    check_capped(done["seconds"], wall)


def test_a_download_capped_get_fetches_at_its_cap_from_the_environment(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    src = make_file(tmp_path / "big.bin", SIZE, seed=6)
    share(procs, taddr, src)
    wall, done = timed_get(taddr, tmp_path / "out.bin", env={"P2PFS_MAX_DOWNLOAD_RATE": "1024K"})
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    check_capped(done["seconds"], wall)


def test_the_config_file_caps_too_and_config_shows_the_rate(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]
) -> None:
    _, taddr = tracker
    conf = tmp_path / "p2pfs.toml"
    conf.write_text('max_upload_rate = "1M"\n')
    shown = run("config", "--json", env={"P2PFS_CONFIG": str(conf)})
    assert json.loads(shown.stdout)["max_upload_rate"]["value"] == CAP
    src = make_file(tmp_path / "big.bin", SIZE, seed=7)
    share(procs, taddr, src, env={"P2PFS_CONFIG": str(conf)})
    wall, done = timed_get(taddr, tmp_path / "out.bin")
    check_capped(done["seconds"], wall)


def test_a_bad_rate_is_one_usage_line() -> None:
    for bad in ("fast", "-1M", "1Q"):
        done: subprocess.CompletedProcess[str] = run("get", "x", "--tracker", "127.0.0.1:1", "--max-download-rate", bad)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "--max-download-rate" in lines[0] and "Traceback" not in done.stderr, lines
