"""p2pfs.cli.config: flags > environment > config file > defaults, and clear errors for a bad file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from p2pfs.address import Address
from p2pfs.cli import config


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path), **extra}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p2pfs" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_sizes() -> None:
    assert config.parse_size("256K") == 256 << 10
    assert config.parse_size("4M") == 4 << 20
    assert config.parse_size("1GiB") == 1 << 30
    assert config.parse_size("1.5k") == 1536
    assert config.parse_size(123) == 123
    for bad in ("", "x", "-1", "nanM", "infK", True, 1.5):
        with pytest.raises(ValueError):
            config.parse_size(bad)  # type: ignore[arg-type]


def test_tracker_lists() -> None:
    assert config.parse_trackers("a:1,b:2") == [Address("a", 1), Address("b", 2)]
    assert config.parse_trackers(["[::1]:5"]) == [Address("::1", 5)]
    with pytest.raises(ValueError):
        config.parse_trackers(",")
    with pytest.raises(ValueError):
        config.parse_trackers([5])  # type: ignore[list-item]


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'tracker = "file:1"\nchunk_size = "64K"\nsecret_file = "~/s"\n')
    args = argparse.Namespace(tracker=None, chunk_size=None, secret_file=None)
    found = config.resolve(args, {"chunk_size": 1 << 20}, env_for(tmp_path))
    assert args.tracker == [Address("file", 1)] and found["tracker"].source == f"file {path}"
    assert args.chunk_size == 64 << 10
    assert found["max_upload_rate"].source == "default" and found["max_upload_rate"].value is None

    args = argparse.Namespace(tracker=None, chunk_size=None)
    found = config.resolve(args, {}, env_for(tmp_path, P2PFS_TRACKER="env:2"))
    assert args.tracker == [Address("env", 2)] and found["tracker"].source == "env P2PFS_TRACKER"

    args = argparse.Namespace(tracker=[Address("flag", 3)], chunk_size=None)
    found = config.resolve(args, {}, env_for(tmp_path, P2PFS_TRACKER="env:2"))
    assert args.tracker == [Address("flag", 3)] and found["tracker"].source == "flag"


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    args = argparse.Namespace(chunk_size=None)
    found = config.resolve(args, {"chunk_size": 1 << 20}, env_for(tmp_path))
    assert args.chunk_size == 1 << 20 and found["chunk_size"].source == "default"


def test_p2pfs_config_names_the_file(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text('tracker = ["h:1", "h:2"]\n')
    args = argparse.Namespace(tracker=None)
    found = config.resolve(args, {}, env_for(tmp_path, P2PFS_CONFIG=str(other)))
    assert args.tracker == [Address("h", 1), Address("h", 2)] and found["tracker"].source == f"file {other}"
    with pytest.raises(config.ConfigError, match="not found"):
        config.resolve(argparse.Namespace(), {}, env_for(tmp_path, P2PFS_CONFIG=str(tmp_path / "missing.toml")))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tracker = ", "not valid TOML"),
        ('trackr = "a:1"', "unknown key 'trackr'"),
        ('tracker = "nonsense"', "tracker: bad address"),
        ("chunk_size = [1]", "chunk_size: bad size"),
        ("secret_file = 5", "secret_file: bad path"),
    ],
)
def test_a_bad_file_is_one_error_naming_it(tmp_path: Path, text: str, match: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(config.ConfigError, match=match) as err:
        config.resolve(argparse.Namespace(), {}, env_for(tmp_path))
    assert str(path) in str(err.value)


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="P2PFS_CHUNK_SIZE"):
        config.resolve(argparse.Namespace(chunk_size=None), {}, env_for(tmp_path, P2PFS_CHUNK_SIZE="lots"))
