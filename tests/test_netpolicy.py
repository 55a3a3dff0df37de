"""The instance network policy's pure parts: destinations, endpoints, the ruleset text."""

from __future__ import annotations

import ipaddress

import pytest

from shared.errors import BadRequest
from shared.settings import Settings
from worker.child.isolation import MAX_ID, InstanceUser, TenantUsers
from worker.netpolicy import (
    Destination,
    Policy,
    build,
    loopback_nameservers,
    parse_destination,
    parse_destinations,
    ruleset,
    url_endpoints,
)


def d(network: str, port: int | None = None) -> Destination:
    return Destination(ipaddress.ip_network(network), port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", d("10.0.0.0/8")),
        ("192.0.2.7:443", d("192.0.2.7/32", 443)),
        (" 192.0.2.7 ", d("192.0.2.7/32")),
        ("::1", d("::1/128")),
        ("[2001:db8::/32]:53", d("2001:db8::/32", 53)),
        ("[fd00:ec2::254]", d("fd00:ec2::254/128")),
        ("10.1.2.3/16", d("10.1.0.0/16")),  # host bits dropped
    ],
)
def test_destinations(text: str, expected: Destination) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text", ["example.com", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:http", "[::1]x", ""]
)
def test_bad_destinations_say_what_is_expected(text: str) -> None:
    with pytest.raises(BadRequest, match="bad destination"):
        parse_destination(text)


def test_a_bad_setting_is_named() -> None:
    assert parse_destinations("10.0.0.0/8, ,192.0.2.1:80", "X") == [
        d("10.0.0.0/8"),
        d("192.0.2.1/32", 80),
    ]
    with pytest.raises(BadRequest, match="PYFC_INSTANCE_NETWORK_DENY: bad destination"):
        parse_destinations("10.0.0.0/8,nope", "PYFC_INSTANCE_NETWORK_DENY")


@pytest.mark.parametrize(
    ("url", "default", "expected"),
    [
        ("amqp://u:p@127.0.0.1:5672/", 5672, [d("127.0.0.1/32", 5672)]),
        ("amqp://u:p@127.0.0.1/", 5672, [d("127.0.0.1/32", 5672)]),
        ("postgresql+asyncpg://u@[::1]/db", 5432, [d("::1/128", 5432)]),
        ("http://127.0.0.1:9000", 80, [d("127.0.0.1/32", 9000)]),
        ("https://192.0.2.9", 80, [d("192.0.2.9/32", 443)]),
        ("s3://code?endpoint_url=http://192.0.2.5:9000", 443, [d("192.0.2.5/32", 9000)]),
        ("sqlite+aiosqlite:////data/pyfc.db", 5432, []),
        ("file:///data/blobs", 443, []),
    ],
)
def test_endpoints_of_urls(url: str, default: int, expected: list[Destination]) -> None:
    assert url_endpoints(url, default, resolve=False) == expected


def test_localhost_is_resolved() -> None:
    assert d("127.0.0.1/32", 5672) in url_endpoints("amqp://localhost/", 5672)


def test_dns_on_loopback_stays_open() -> None:
    conf = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch lan\n"
    assert loopback_nameservers(conf) == [d("127.0.0.53/32", 53), d("::1/128", 53)]


def test_build_allows_the_gateway_and_denies_the_platform() -> None:
    policy = build(
        100000,
        199999,
        gateway_url="http://127.0.0.1:9000",
        platform_urls=[("amqp://g:g@127.0.0.1:5672/", 5672), ("sqlite+aiosqlite:///x", 5432)],
        allow="192.0.2.10:8080",
        deny="10.0.0.0/8,127.0.0.1:9000",
        resolv_conf="nameserver 127.0.0.53\n",
    )
    # An operator's denial of the gateway itself wins over the default allowance.
    assert policy.allow == [d("127.0.0.53/32", 53), d("192.0.2.10/32", 8080)]
    assert policy.deny == [d("127.0.0.1/32", 5672), d("10.0.0.0/8"), d("127.0.0.1/32", 9000)]
    assert policy.table == "pyfc_100000"


def test_the_ruleset_replaces_its_table_and_orders_its_rules() -> None:
    policy = Policy(100000, 199999, [d("127.0.0.1/32", 9000)], [d("10.0.0.0/8")])
    text = ruleset(policy)
    lines = [line.strip() for line in text.splitlines()]
    # Replaced whole in one transaction: created if missing, deleted, made again.
    assert lines[:3] == [
        "table inet pyfc_100000 {}",
        "delete table inet pyfc_100000",
        "table inet pyfc_100000 {",
    ]
    order = [
        "meta skuid != 100000-199999 accept",
        "ct state established,related accept",
        "ip daddr 127.0.0.1/32 meta l4proto { tcp, udp } th dport 9000 accept",
        "fib daddr type local counter reject with icmpx type admin-prohibited",
        "ip daddr 127.0.0.0/8 counter reject with icmpx type admin-prohibited",
        "ip6 daddr ::1/128 counter reject with icmpx type admin-prohibited",
        "ip daddr 169.254.0.0/16 counter reject with icmpx type admin-prohibited",
        "ip6 daddr fe80::/10 counter reject with icmpx type admin-prohibited",
        "ip daddr 10.0.0.0/8 counter reject with icmpx type admin-prohibited",
    ]
    assert [line for line in lines if line in order] == order


def test_the_uid_range_is_what_the_policy_holds() -> None:
    users = TenantUsers(100000, privileged=True, count=10)
    assert users.last_uid == 100009
    assert users.user(9) == InstanceUser(100009, 100009)
    with pytest.raises(ValueError, match="outside the instance uid range"):
        users.user(10)
    assert TenantUsers(MAX_ID - 5, privileged=True, count=10).last_uid == MAX_ID
    with pytest.raises(ValueError, match="PYFC_INSTANCE_UID_COUNT"):
        TenantUsers(100000, privileged=True, count=0)


def test_the_network_setting_is_checked() -> None:
    with pytest.raises(BadRequest, match="PYFC_INSTANCE_NETWORK must be restricted or open"):
        Settings.from_env({"PYFC_INSTANCE_NETWORK": "off", "PYFC_DATA_DIR": "/tmp/x"})
