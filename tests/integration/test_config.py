"""Where the tracker (and the other settings) come from (issue 10): `--tracker` > P2PFS_TRACKER > the
config file ($XDG_CONFIG_HOME/p2pfs/config.toml or $P2PFS_CONFIG) > default; `p2pfs config` shows each
value and its source; a bad file is one line naming it; `--tracker H:P,H:P` falls over to the next; a
tracker that accepts and never answers; addresses written as URLs or without a port. Real processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_env import isolated_env, one_error_line  # noqa: F401 (isolated_env: an autouse fixture)
from tests.procs import Proc, make_file, run

REFUSED = "127.0.0.1:1"  # nothing listens on port 1: connecting is refused
SIZE = 300_000
KEYS = (
    "tracker",
    "secret_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "chunk_size",
    "max_upload_rate",
    "max_download_rate",
)

def one_usage_line(got: subprocess.CompletedProcess[str]) -> str:
    """One line for a bad argument: as one_error_line, but argparse's form is accepted too
    (`p2pfs ls: error: ... (see p2pfs ls --help)`, exit 2), which the existing CLI tests require for a
    bad --tracker."""
    err = got.stderr
    assert "Traceback" not in err and "Future exception was never retrieved" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines!r}"
    assert re.match(r"^p2pfs(?: \w+)?: error: ", lines[0]), lines[0]
    assert got.returncode in (1, 2), (got.returncode, err)
    return lines[0]


def share(procs: Callable[..., Proc], taddr: str | None, *files: Path, chunk: str | None = "64K") -> Proc:
    args = [*map(str, files), "--host", "127.0.0.1"]
    if taddr is not None:
        args += ["--tracker", taddr]
    if chunk is not None:
        args += ["--chunk-size", chunk]
    proc = procs("share", *args)
    proc.listening()
    for f in files:
        proc.expect(rf"^published {re.escape(f.name)} ")
    proc.expect(r"^serving")
    return proc


def ls_json(*args: str, env: dict[str, str] | None = None) -> dict[str, list[int]]:
    got = run("ls", *args, "--json", env=env)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def config_file(tmp_path: Path, text: str) -> Path:
    """$XDG_CONFIG_HOME/p2pfs/config.toml with `text`."""
    path = tmp_path / "xdg-config" / "p2pfs" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_json(*args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    got = run("config", *args, "--json", env=env)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def trackers_value(value: Any) -> list[str]:
    """A tracker setting as shown by `config --json`: "H:P[,H:P]" or ["H:P", ...]."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",")]
    assert isinstance(value, list), value
    return [str(v) for v in value]


@pytest.fixture
def published(tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str]) -> tuple[str, Path]:
    """f.bin shared on a running tracker: (tracker address, the file)."""
    _, taddr = tracker
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "f.bin", SIZE, seed=11)
    share(procs, taddr, src)
    return taddr, src


# -- 7. a tracker that accepts and never answers ------------------------------------------------------------
@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP listener that accepts connections and never reads or writes: "127.0.0.1:PORT"."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def stopped_tracker(procs: Callable[..., Proc]) -> Iterator[str]:
    """A real tracker, stopped with SIGSTOP once it listens (the kernel still accepts for it)."""
    proc = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell")
    address = proc.listening()
    os.kill(proc.pid, signal.SIGSTOP)
    yield address
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("kind", ["socket", "sigstop"])
@pytest.mark.parametrize("argv", [("ls",), ("get", "f.bin")], ids=["ls", "get"])
def test_silent_tracker_is_one_line(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, argv: tuple[str, ...]
) -> None:
    taddr = request.getfixturevalue("silent_listener" if kind == "socket" else "stopped_tracker")
    work = tmp_path / "work"
    work.mkdir()
    got = run(*argv, "--tracker", taddr, cwd=work, env={"P2PFS_REQUEST_TIMEOUT": "1"}, timeout=60)
    line = one_error_line(got)
    assert "did not answer" in line, line
    assert list(work.iterdir()) == []


# -- 8. addresses that are not HOST:PORT ------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["http://127.0.0.1:6969", "127.0.0.1"], ids=["url", "no-port"])
def test_tracker_that_is_not_host_port_says_how_to_write_it(bad: str) -> None:
    line = one_usage_line(run("ls", "--tracker", bad))
    assert "HOST:PORT" in line, line
    assert "ipv6" not in line.lower() and "[HOST]" not in line, line


# -- 11. P2PFS_TRACKER ----------------------------------------------------------------------------------
def test_env_tracker_is_used_and_flag_overrides_it(
    procs: Callable[..., Proc], published: tuple[str, Path]
) -> None:
    taddr, _ = published
    other = procs("tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell").listening()  # empty
    assert ls_json(env={"P2PFS_TRACKER": taddr}) == {"f.bin": [SIZE, 5]}
    assert ls_json("--tracker", other, env={"P2PFS_TRACKER": taddr}) == {}
    assert ls_json("--tracker", taddr, env={"P2PFS_TRACKER": other}) == {"f.bin": [SIZE, 5]}
    assert ls_json("--tracker", taddr, env={"P2PFS_TRACKER": REFUSED}) == {"f.bin": [SIZE, 5]}


def test_no_tracker_anywhere_says_where_to_give_one(tmp_path: Path) -> None:
    line = one_error_line(run("ls"))
    assert "--tracker" in line and "P2PFS_TRACKER" in line, line


# -- 12. the config file ----------------------------------------------------------------------------------
def test_config_file_tracker_is_used_by_ls_get_and_share(
    tmp_path: Path, procs: Callable[..., Proc], published: tuple[str, Path]
) -> None:
    taddr, src = published
    config_file(tmp_path, f'tracker = "{taddr}"\n')
    assert ls_json() == {"f.bin": [SIZE, 5]}

    dest = tmp_path / "got.bin"
    got = run("get", "f.bin", str(dest), "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()

    (tmp_path / "more").mkdir()
    second = make_file(tmp_path / "more" / "g.bin", 100_000, seed=12)
    share(procs, None, second)
    assert ls_json("--tracker", taddr) == {"f.bin": [SIZE, 5], "g.bin": [100_000, 2]}


def test_config_file_tracker_list_falls_over(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, _ = published
    config_file(tmp_path, f'tracker = ["{REFUSED}", "{taddr}"]\n')
    assert ls_json() == {"f.bin": [SIZE, 5]}


def test_p2pfs_config_names_the_file(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, _ = published
    config_file(tmp_path, f'tracker = "{REFUSED}"\n')  # the default file: not read when one is named
    named = tmp_path / "elsewhere.toml"
    named.write_text(f'tracker = "{taddr}"\n')
    assert ls_json(env={"P2PFS_CONFIG": str(named)}) == {"f.bin": [SIZE, 5]}
    shown = config_json(env={"P2PFS_CONFIG": str(named)})
    assert trackers_value(shown["tracker"]["value"]) == [taddr]
    assert shown["tracker"]["source"] == f"file {named}"


def test_env_beats_file_and_flag_beats_env(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, _ = published
    config_file(tmp_path, f'tracker = "{REFUSED}"\n')
    assert ls_json(env={"P2PFS_TRACKER": taddr}) == {"f.bin": [SIZE, 5]}
    assert ls_json("--tracker", taddr, env={"P2PFS_TRACKER": REFUSED}) == {"f.bin": [SIZE, 5]}
    assert run("ls").returncode == 1  # the file's (refused) tracker when nothing else is given


@pytest.mark.parametrize("value", ['"128K"', "131072"], ids=["string", "int"])
def test_config_file_chunk_size_is_used_by_share(
    tmp_path: Path, procs: Callable[..., Proc], tracker: tuple[Proc, str], value: str
) -> None:
    _, taddr = tracker
    config_file(tmp_path, f"chunk_size = {value}\n")
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "c.bin", 1_000_000, seed=13)
    share(procs, taddr, src, chunk=None)
    # ceil(1e6 / 128 KiB) chunks; the 1M default would give 1
    assert ls_json("--tracker", taddr) == {"c.bin": [1_000_000, 8]}


def test_config_file_secret_file_is_used(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    secret = tmp_path / "swarm.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    taddr = procs(
        "tracker", "--host", "127.0.0.1", "--port", "0", "--no-shell", "--secret-file", str(secret)
    ).listening()
    config_file(tmp_path, f'secret_file = "{secret}"\n')
    assert ls_json("--tracker", taddr) == {}


def test_config_shows_every_setting_and_its_source(tmp_path: Path) -> None:
    secret = tmp_path / "swarm.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    path = config_file(
        tmp_path,
        "\n".join(
            [
                'tracker = "127.0.0.1:7001"',
                f'secret_file = "{secret}"',
                'chunk_size = "256K"',
                'max_upload_rate = "10M"',
                "max_download_rate = 5000000",
                "",
            ]
        ),
    )
    shown = config_json()
    assert set(KEYS) <= set(shown), shown
    for key in KEYS:
        assert set(shown[key]) >= {"value", "source"}, shown[key]
    in_file = f"file {path}"
    assert trackers_value(shown["tracker"]["value"]) == ["127.0.0.1:7001"]
    assert shown["tracker"]["source"] == in_file
    assert shown["secret_file"] == {"value": str(secret), "source": in_file}
    assert shown["chunk_size"] == {"value": 256 * 1024, "source": in_file}
    assert shown["max_upload_rate"] == {"value": 10 * 1024 * 1024, "source": in_file}
    assert shown["max_download_rate"] == {"value": 5_000_000, "source": in_file}
    for key in ("tls_cert", "tls_key", "tls_ca"):
        assert shown[key]["source"] == "default", shown[key]

    shown = config_json(env={"P2PFS_TRACKER": "127.0.0.1:7002"})
    assert trackers_value(shown["tracker"]["value"]) == ["127.0.0.1:7002"]
    assert shown["tracker"]["source"] == "env P2PFS_TRACKER"

    shown = config_json("--tracker", "127.0.0.1:7003,127.0.0.1:7004", env={"P2PFS_TRACKER": "127.0.0.1:7002"})
    assert trackers_value(shown["tracker"]["value"]) == ["127.0.0.1:7003", "127.0.0.1:7004"]
    assert shown["tracker"]["source"] == "flag"

    # the text form: one `KEY = VALUE  (SOURCE)` line per setting
    got = run("config")
    assert got.returncode == 0, got.stderr
    for key in KEYS:
        rows = [ln for ln in got.stdout.splitlines() if re.match(rf"^{key}\s*= ", ln)]
        assert len(rows) == 1, (key, got.stdout)
        assert re.fullmatch(rf"{key}\s*= .*\S  \((flag|env \w+|file .+|default)\)", rows[0]), rows[0]
    row = next(ln for ln in got.stdout.splitlines() if re.match(r"^tracker\s*= ", ln))
    assert "127.0.0.1:7001" in row and row.endswith(f"({in_file})"), row
    row = next(ln for ln in got.stdout.splitlines() if re.match(r"^tls_ca\s*= ", ln))
    assert row.endswith("(default)"), row

    path.unlink()
    shown = config_json()
    assert shown["tracker"]["source"] == "default" and shown["chunk_size"]["source"] == "default"


def test_config_file_tls_paths_are_shown_from_the_file(tmp_path: Path) -> None:
    paths = {key: tmp_path / f"{key}.pem" for key in ("tls_cert", "tls_key", "tls_ca")}
    for p in paths.values():
        p.touch()
    path = config_file(tmp_path, "".join(f'{key} = "{p}"\n' for key, p in paths.items()))
    shown = config_json()
    for key, p in paths.items():
        assert shown[key] == {"value": str(p), "source": f"file {path}"}, shown[key]


@pytest.mark.parametrize(
    "text, named",
    [("tracker = [unclosed\n", None), ('trackr = "127.0.0.1:6969"\n', "trackr")],
    ids=["not-toml", "unknown-key"],
)
@pytest.mark.parametrize("where", ["xdg", "P2PFS_CONFIG"])
def test_bad_config_file_is_one_line_naming_it(
    tmp_path: Path, tracker: tuple[Proc, str], text: str, named: str | None, where: str
) -> None:
    _, taddr = tracker
    if where == "xdg":
        path, env = config_file(tmp_path, text), None
    else:
        path = tmp_path / "named.toml"
        path.write_text(text)
        env = {"P2PFS_CONFIG": str(path)}
    for argv in (("ls",), ("ls", "--tracker", taddr)):  # read even when the flag gives the tracker
        line = one_error_line(run(*argv, env=env))
        assert str(path) in line, line
        if named:
            assert named in line, line


# -- 13. --tracker H1:P1,H2:P2 ---------------------------------------------------------------------------
def test_comma_separated_trackers_fall_over_to_the_next(tmp_path: Path, published: tuple[str, Path]) -> None:
    taddr, src = published
    assert ls_json("--tracker", f"{REFUSED},{taddr}") == {"f.bin": [SIZE, 5]}
    dest = tmp_path / "via-second.bin"
    got = run("get", "f.bin", str(dest), "--tracker", f"{REFUSED},{taddr}", "--host", "127.0.0.1")
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
