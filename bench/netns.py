"""The network testbed of `make swarm` (and of tests/netns): hosts in Linux network namespaces, joined by
one bridge, each host's upload shaped with `tc qdisc ... tbf`.

    with Testbed({"tracker": None, "seeder": 100, "d1": 100}) as bed:   # uplink Mbit/s, None: unshaped
        proc = bed.spawn(bed.host("seeder"), [sys.executable, "-m", "p2pfs", "share", ...])
        before = bed.tx()                                                 # bytes sent, per host

Layout: a switch namespace `PREFIX-sw` holds the bridge `br0` and one end of every veth pair; each host
namespace `PREFIX-NAME` holds the other end as `eth0` (10.77.0.X/24), where its upload is shaped (egress
of `eth0`, so a host's uplink limits what it sends; downloads are limited only by the senders). The root
namespace gets no interface at all, and every testbed of every run is a separate network, so two runs
cannot collide; PREFIX is FAMILY + our pid (e.g. `p2s4242`).

Cleanup: leaving the `with` block, however it is left (an exception, KeyboardInterrupt — see
`bench.common.interrupt_on_termination` for SIGINT/SIGTERM), stops every process started in the
testbed, kills whatever else still runs in its namespaces and deletes them (the bridge and the veths go
with them). Processes are started with `setpriv --pdeathsig SIGKILL`, so even a SIGKILLed runner leaves
no process behind; and a new testbed first deletes namespaces of its family whose owner pid is dead
(a previous crashed run), and any with its own prefix.

Upload counters: a `sleep infinity` started in each namespace anchors it; its /proc/PID/net/dev shows that
namespace's interfaces and is cheap to read from the root namespace (`Testbed.tx`, `TxSampler`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from bench.common import BenchError, Proc, child_env
from p2pfs.peer.control import pid_alive

SUBNET = "10.77.0"
#: tbf parameters besides the rate. A raw TCP transfer through one shaped veth measured 95.6 Mbit/s of
#: payload at rate 100mbit with this (the wire rate less Ethernet+IP+TCP headers: 1448/1514 of 100); the
#: 50 ms queue keeps RTTs sane under load, unlike the 400 ms example, which gave the same rate.
TBF_OPTIONS = ("burst", "64kb", "latency", "50ms")
DEV = "eth0"
#: Longest host name: "v-" + name must fit in an interface name (15 characters).
MAX_NAME = 12
IP_TIMEOUT = 20.0


class TestbedError(BenchError):
    """The testbed could not be built or used; the message is one line."""

    __test__ = False  # not a pytest test class


def _ip_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cmd(["ip", *args], check=check)


def run_cmd(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command (ip, tc); TestbedError with its stderr if it fails and `check`."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"`{' '.join(argv)}` failed: {exc}") from None
    if check and done.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def unavailable_reason(family: str = "p2s") -> str | None:
    """Why network namespaces with tbf cannot be used here (None: they can). Creates and deletes one
    probe namespace."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"{family}{os.getpid()}-probe"
    try:
        _ip_cmd("netns", "add", probe)
    except TestbedError as exc:
        return str(exc)
    try:
        _ip_cmd("-n", probe, "link", "set", "lo", "up")
        run_cmd(
            [
                "ip",
                "netns",
                "exec",
                probe,
                "tc",
                "qdisc",
                "add",
                "dev",
                "lo",
                "root",
                "tbf",
                "rate",
                "100mbit",
                *TBF_OPTIONS,
            ]
        )
    except TestbedError as exc:
        return str(exc)
    finally:
        _ip_cmd("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    """Names of every named network namespace (`ip netns list`)."""
    out = _ip_cmd("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_in_namespace(ns: str) -> None:
    """SIGKILL every process still running in namespace `ns` (all of them were started by a testbed)."""
    out = _ip_cmd("netns", "pids", ns, check=False).stdout
    for word in out.split():
        if word.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(word), signal.SIGKILL)


def delete_namespace(ns: str) -> None:
    _kill_in_namespace(ns)
    _ip_cmd("netns", "del", ns, check=False)


def remove_stale(family: str, own_prefix: str | None = None) -> list[str]:
    """Delete the namespaces of `family` left by runs that are gone (their pid is dead), and any with
    `own_prefix`; the names deleted."""
    rx = re.compile(rf"^{re.escape(family)}(\d+)-")
    gone = []
    for ns in namespaces():
        match = rx.match(ns)
        if match is None:
            continue
        if (own_prefix is not None and ns.startswith(own_prefix + "-")) or not pid_alive(
            int(match.group(1))
        ):
            delete_namespace(ns)
            gone.append(ns)
    return gone


def _pdeathsig() -> list[str]:
    """`setpriv --pdeathsig SIGKILL` (when util-linux has it): the child dies with the runner."""
    return ["setpriv", "--pdeathsig", "SIGKILL"] if shutil.which("setpriv") else []


@dataclass
class Host:
    """One machine of the testbed: its namespace, address and uplink rate (Mbit/s; None: unshaped)."""

    name: str
    ns: str
    ip: str
    rate_mbit: float | None = None
    anchor: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *_pdeathsig(), *argv]

    def tx_bytes(self) -> int:
        """Bytes sent by this host's eth0 so far (its namespace's /proc/net/dev, through the anchor)."""
        if self.anchor is None:
            raise TestbedError(f"host {self.name} has no anchor process")
        return read_tx_bytes(self.anchor.pid, DEV)


def _net_namespace_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def read_tx_bytes(pid: int, dev: str) -> int:
    """tx_bytes of interface `dev` in the network namespace of process `pid`."""
    try:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError as exc:
        raise TestbedError(f"cannot read the counters of {dev} (pid {pid}): {exc}") from None
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == dev:
            return int(rest.split()[8])  # rx: bytes packets errs drop fifo frame compressed multicast; tx
    raise TestbedError(f"no interface {dev} in the namespace of pid {pid}")


class Testbed:
    """Hosts (name -> uplink Mbit/s, None: unshaped) in namespaces on one bridge; a context manager that
    builds them on entry and removes everything on exit."""

    __test__ = False  # not a pytest test class

    def __init__(self, uplinks: Mapping[str, float | None], family: str = "p2s") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", family):
            raise ValueError(f"bad namespace family {family!r}")
        self.family = family
        self.prefix = f"{family}{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        for i, (name, rate) in enumerate(uplinks.items()):
            if not re.fullmatch(rf"[a-z][a-z0-9]{{0,{MAX_NAME - 1}}}", name) or name == "sw":
                raise ValueError(f"bad host name {name!r}")
            if i + 1 > 250:
                raise ValueError("at most 250 hosts")
            self.hosts[name] = Host(name, f"{self.prefix}-{name}", f"{SUBNET}.{i + 1}", rate)
        #: namespaces this testbed created (for the caller to check they are gone after exit)
        self.created: list[str] = []
        self.procs: list[Proc] = []
        self.stale_removed: list[str] = []

    # -- building ---------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        self.stale_removed = remove_stale(self.family, self.prefix)
        sw = self.switch
        self._add_namespace(sw)
        _ip_cmd("-n", sw, "link", "set", "lo", "up")
        _ip_cmd("-n", sw, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
        _ip_cmd("-n", sw, "link", "set", "br0", "up")
        for host in self.hosts.values():
            self._add_namespace(host.ns)
            port = f"v-{host.name}"
            _ip_cmd("-n", sw, "link", "add", port, "type", "veth", "peer", "name", DEV, "netns", host.ns)
            _ip_cmd("-n", sw, "link", "set", port, "master", "br0")
            _ip_cmd("-n", sw, "link", "set", port, "up")
            _ip_cmd("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", DEV)
            _ip_cmd("-n", host.ns, "link", "set", "lo", "up")
            _ip_cmd("-n", host.ns, "link", "set", DEV, "up")
            self.shape(host, host.rate_mbit)
            host.anchor = subprocess.Popen(
                host.argv(["sleep", "infinity"]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for host in self.hosts.values():  # wait until each anchor has entered its namespace
            assert host.anchor is not None
            want = f"net:[{os.stat(f'/run/netns/{host.ns}').st_ino}]"
            deadline = time.monotonic() + IP_TIMEOUT
            while _net_namespace_of(host.anchor.pid) != want:
                if host.anchor.poll() is not None or time.monotonic() > deadline:
                    raise TestbedError(f"cannot start a process in namespace {host.ns}")
                time.sleep(0.002)

    def _add_namespace(self, ns: str) -> None:
        _ip_cmd("netns", "add", ns)
        self.created.append(ns)

    def shape(self, host: Host, rate_mbit: float | None) -> None:
        """Set (or, with None, remove) the tbf on the host's uplink."""
        exec_tc = ["ip", "netns", "exec", host.ns, "tc", "qdisc"]
        if rate_mbit is None:
            run_cmd([*exec_tc, "del", "dev", DEV, "root"], check=False)
        else:
            run_cmd(
                [*exec_tc, "replace", "dev", DEV, "root", "tbf", "rate", f"{rate_mbit:g}mbit", *TBF_OPTIONS]
            )
        host.rate_mbit = rate_mbit

    def host(self, name: str) -> Host:
        return self.hosts[name]

    # -- using ------------------------------------------------------------------------------------
    def spawn(
        self,
        host: Host,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        label: str = "",
        cwd: Path | None = None,
    ) -> Proc:
        """Start `argv` in `host`'s namespace (a bench.common.Proc: its lines are read and timestamped);
        stopped at the latest when the testbed closes."""
        proc = Proc(
            host.argv(argv), env=env if env is not None else child_env(), cwd=cwd, label=label or host.name
        )
        self.procs.append(proc)
        return proc

    def tx(self) -> dict[str, int]:
        """Bytes sent so far by every host's eth0."""
        return {name: host.tx_bytes() for name, host in self.hosts.items()}

    def sampler(self, interval: float = 0.1) -> TxSampler:
        return TxSampler(self, interval)

    # -- cleanup ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop our processes, kill anything left in our namespaces and delete them. Idempotent; signals
        are held off meanwhile (a second Ctrl-C must not leave half a testbed)."""
        with _signals_held():
            for proc in reversed(self.procs):
                with contextlib.suppress(Exception):
                    proc.stop(timeout=5.0)
            self.procs.clear()
            for host in self.hosts.values():
                if host.anchor is not None and host.anchor.poll() is None:
                    host.anchor.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        host.anchor.wait(5)
                host.anchor = None
            for ns in reversed(self.created):
                delete_namespace(ns)

    def leftovers(self) -> list[str]:
        """Namespaces this testbed created that still exist (empty after close, if cleanup worked)."""
        existing = set(namespaces())
        return [ns for ns in self.created if ns in existing]


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class TxSampler:
    """Every host's tx_bytes every `interval` seconds, in a thread, while the `with` block runs:
    `samples` is [(monotonic time, {host: tx_bytes})]."""

    def __init__(self, bed: Testbed, interval: float) -> None:
        self.bed = bed
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._anchors = [(name, host.anchor.pid) for name, host in bed.hosts.items() if host.anchor]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._take()

    def _take(self) -> None:
        with contextlib.suppress(TestbedError):
            now = time.monotonic()
            self.samples.append((now, {name: read_tx_bytes(pid, DEV) for name, pid in self._anchors}))

    def _run(self) -> None:
        tick = time.monotonic()
        while not self._stop.is_set():
            self._take()
            tick += self.interval
            self._stop.wait(max(0.0, tick - time.monotonic()))
