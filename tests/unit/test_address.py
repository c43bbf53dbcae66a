"""Address: parsing `host:port` and `[v6]:port`, the text form, and wildcard hosts."""

from __future__ import annotations

import pytest

from p2pfs.address import Address, is_ip_literal, parse_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8888", Address("127.0.0.1", 8888)),
        ("localhost:1", Address("localhost", 1)),
        ("tracker.example.org:65535", Address("tracker.example.org", 65535)),
        ("0.0.0.0:0", Address("0.0.0.0", 0)),
        ("[::1]:9000", Address("::1", 9000)),
        ("[fe80::1%eth0]:80", Address("fe80::1%eth0", 80)),
        ("  10.0.0.1:80 \n", Address("10.0.0.1", 80)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    address = Address.parse(text)
    assert address == expected
    assert isinstance(address.port, int)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "HOST:PORT"),  # missing port
        ("127.0.0.1:", "bad port"),  # empty port
        (":8000", "HOST:PORT"),  # missing host
        ("", "HOST:PORT"),
        ("host:http", "bad port"),
        ("host:65536", "bad port"),
        ("host:-1", "bad port"),
        ("host:80.5", "bad port"),
        ("::1:8000", "[HOST]:PORT"),  # IPv6 without brackets
        ("fe80::1", "[HOST]:PORT"),
        ("[::1]", "[IPv6]:PORT"),  # missing port
        ("[::1]8000", "[IPv6]:PORT"),
        ("[::1:8000", "[IPv6]:PORT"),
        ("[::1]:port", "bad port"),
    ],
)
def test_parse_errors_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        Address.parse(text)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("127.0.0.1", 8888), "127.0.0.1:8888"),
        (Address("example.org", 80), "example.org:80"),
        (Address("::1", 9000), "[::1]:9000"),
        (Address("2001:db8::7", 1), "[2001:db8::7]:1"),
    ],
)
def test_str_round_trip(address: Address, text: str) -> None:
    assert str(address) == text
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize(
    ("host", "wildcard"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("example.org", False),
    ],
)
def test_is_wildcard(host: str, wildcard: bool) -> None:
    assert Address(host, 80).is_wildcard is wildcard


def test_parsed_wildcards_are_wildcards() -> None:
    assert Address.parse("0.0.0.0:80").is_wildcard
    assert Address.parse("[::]:80").is_wildcard
    assert not Address.parse("[::1]:80").is_wildcard


def test_of_builds_from_separate_host_and_port() -> None:
    assert Address.of("127.0.0.1", "8000") == Address("127.0.0.1", 8000)
    assert Address.of(" [::1] ", 8000) == Address("::1", 8000)
    with pytest.raises(ValueError):
        Address.of("", 80)
    with pytest.raises(ValueError):
        Address.of("h", "eighty")


def test_address_is_a_hashable_value() -> None:
    assert Address.parse("127.0.0.1:80") == Address("127.0.0.1", 80)
    assert len({Address("h", 1), Address.parse("h:1"), Address("h", 2)}) == 2


def test_parse_port() -> None:
    assert parse_port("0") == 0
    assert parse_port(65535) == 65535
    for bad in ("", "x", "65536", -1, None):
        with pytest.raises(ValueError):
            parse_port(bad)  # type: ignore[arg-type]


def test_is_ip_literal() -> None:
    assert is_ip_literal("127.0.0.1")
    assert is_ip_literal("::1")
    assert not is_ip_literal("localhost")
    assert not is_ip_literal("[::1]")
