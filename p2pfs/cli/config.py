"""Settings that need not be typed every time: flags, then environment variables, then the config file,
then defaults (the first that gives a value wins), and where each value in effect came from.

The file is `$P2PFS_CONFIG` if set, else `$XDG_CONFIG_HOME/p2pfs/config.toml` (`~/.config/...`), read
with `tomllib`; flat keys, e.g.

    tracker = ["10.0.0.1:6969", "10.0.0.2:6969"]
    secret_file = "~/.config/p2pfs/secret"
    chunk_size = "4M"

A key unknown, a value of the wrong type or a file that is not TOML is one error line naming the file.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfs.address import Address
from p2pfs.errors import P2PFSError


class ConfigError(P2PFSError):
    """The config file cannot be used (not TOML, an unknown key, a bad value)."""


def parse_size(text: str | int) -> int:
    """`1048576`, `256K`, `4M`, `1G` (also `4MiB`, `4MB`: 1024-based, as aria2c) -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"bad size {text}: must not be negative")
        return text
    if not isinstance(text, str):
        raise ValueError(f"bad size {text!r}: use bytes or a suffix K, M, G (e.g. 256K, 1M)")  # noqa: TRY004
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except (ValueError, KeyError):
        raise ValueError(f"bad size {text!r}: use bytes or a suffix K, M, G (e.g. 256K, 1M)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad size {text!r}: must be a non-negative number")
    return int(value)


def parse_trackers(text: str | list[str]) -> list[Address]:
    """`H:P` or `H:P,H:P,...` (or a TOML list of `H:P`) -> the trackers, in the order to try them."""
    items = text if isinstance(text, list) else text.split(",")
    trackers: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"bad tracker {item!r}: expected a string HOST:PORT")  # noqa: TRY004
        if item.strip():
            trackers.append(Address.parse(item))
    if not trackers:
        raise ValueError("no tracker address given: expected HOST:PORT")
    return trackers


def _path(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"bad path {value!r}: expected a string")
    return os.path.expanduser(value)


@dataclass(frozen=True)
class Setting:
    key: str
    #: the argparse destination and flag that set it
    dest: str
    flag: str
    env: str
    parse: Callable[[Any], Any]
    show: Callable[[Any], str] = str


SETTINGS = (
    Setting("tracker", "tracker", "--tracker", "P2PFS_TRACKER", parse_trackers, lambda v: ",".join(map(str, v))),
    Setting("secret_file", "secret_file", "--secret-file", "P2PFS_SECRET_FILE", _path),
    Setting("tls_cert", "tls_cert", "--tls-cert", "P2PFS_TLS_CERT", _path),
    Setting("tls_key", "tls_key", "--tls-key", "P2PFS_TLS_KEY", _path),
    Setting("tls_ca", "tls_ca", "--tls-ca", "P2PFS_TLS_CA", _path),
    Setting("chunk_size", "chunk_size", "--chunk-size", "P2PFS_CHUNK_SIZE", parse_size),
    Setting("max_upload_rate", "max_upload_rate", "--max-upload-rate", "P2PFS_MAX_UPLOAD_RATE", parse_size),
    Setting("max_download_rate", "max_download_rate", "--max-download-rate", "P2PFS_MAX_DOWNLOAD_RATE", parse_size),
)
BY_KEY = {s.key: s for s in SETTINGS}


def config_path(environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[Path, bool]:
    """The config file to read, and whether it was named explicitly ($P2PFS_CONFIG: it must exist)."""
    named = environ.get("P2PFS_CONFIG")
    if named:
        return Path(os.path.expanduser(named)), True
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "p2pfs" / "config.toml", False


def read_file(path: Path, required: bool) -> dict[str, Any]:
    """The settings in the config file, parsed and checked (empty if there is none)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} (P2PFS_CONFIG) not found") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        setting = BY_KEY.get(key)
        if setting is None:
            known = ", ".join(BY_KEY)
            raise ConfigError(f"config file {path}: unknown key {key!r} (known keys: {known})")
        try:
            values[key] = setting.parse(value)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: {key}: {exc}") from None
    return values


@dataclass
class Resolved:
    value: Any
    #: "flag", "env NAME", "file PATH" or "default"
    source: str


def resolve(
    args: argparse.Namespace,
    defaults: dict[str, Any] | None = None,
    environ: dict[str, str] | os._Environ[str] = os.environ,
) -> dict[str, Resolved]:
    """Fill in every setting `args` has (a flag left at None) from the environment, the file, then
    `defaults`; return what is in effect and where each value came from. ConfigError for a bad file or
    a bad environment value."""
    path, required = config_path(environ)
    from_file = read_file(path, required)
    found: dict[str, Resolved] = {}
    for setting in SETTINGS:
        flag_value = getattr(args, setting.dest, None)
        if flag_value is not None:
            found[setting.key] = Resolved(flag_value, "flag")
        elif environ.get(setting.env):
            try:
                found[setting.key] = Resolved(setting.parse(environ[setting.env]), f"env {setting.env}")
            except ValueError as exc:
                raise ConfigError(f"{setting.env}: {exc}") from None
        elif setting.key in from_file:
            found[setting.key] = Resolved(from_file[setting.key], f"file {path}")
        else:
            found[setting.key] = Resolved((defaults or {}).get(setting.key), "default")
        if hasattr(args, setting.dest):
            setattr(args, setting.dest, found[setting.key].value)
    return found


def describe(value: Any, key: str) -> str:
    return "(none)" if value is None else BY_KEY[key].show(value)
