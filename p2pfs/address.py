"""Address: the (host, port) value type, and its one text form `host:port` (`[v6]:port` for IPv6)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

#: Hosts that mean "every interface"; a peer registering one is recorded by the host it connects from.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in WILDCARD_HOSTS

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse `host:port`, `[v6]:port`; raise ValueError with a readable reason otherwise."""
        text = text.strip()
        if "://" in text:
            raise ValueError(f"bad address {text!r}: write HOST:PORT, without a scheme such as http://")
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}: expected [IPv6]:PORT")
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if ":" in host:
                raise ValueError(f"bad address {text!r}: write IPv6 hosts as [HOST]:PORT")
            if not sep:
                raise ValueError(f"bad address {text!r}: expected HOST:PORT (the port is missing)")
            if not host:
                raise ValueError(f"bad address {text!r}: expected HOST:PORT (the host is missing)")
        return cls(host, parse_port(port_text))

    @classmethod
    def of(cls, host: str, port: int | str) -> Address:
        """Build from separate host and port (as the shells' `connect <ip> <port>` gives them)."""
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ValueError("empty host")
        return cls(host, parse_port(port))


def parse_port(value: int | str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"bad port {value!r}: expected a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port}: expected a number from 0 to 65535")
    return port


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
