"""Where function instances may connect: the kernel keeps them off the platform's network.

A root worker runs each tenant's instances as a uid of its own (`worker.child.isolation`);
this module installs an nftables table that matches those uids on every packet they send
(`meta skuid`, the owner of the sending socket) and refuses new connections to

* this host itself (`fib daddr type local`: loopback and every address of the host, so
  the broker, database, Redis, every role's ports and any other local service),
* link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata endpoints),
* the platform's endpoints from the settings (broker, database, blob store: their hosts
  resolved at start), and the operator's `PYFC_INSTANCE_NETWORK_DENY`,

except the gateway (for `context.invoke`), DNS servers on loopback named in
/etc/resolv.conf, and the operator's `PYFC_INSTANCE_NETWORK_ALLOW`, which come first.
Replies on connections others opened to an instance (a custom runtime's HTTP server) pass.
Everything else (the outside world) is open.

The table is named after the uid range (`pyfc_<first uid>`), so workers of one host with
the same settings share one (each start replaces it whole, atomically), and it stays when
a worker stops: whatever a function left running keeps the policy.

The decisions (parsing destinations, the ruleset text) are pure; `install` runs `nft`.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from shared.cluster import node_urls
from shared.errors import BadRequest
from shared.settings import Settings
from worker.child.isolation import TenantUsers

log = logging.getLogger(f"pyfc.{__name__}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# How a refused connect() fails inside the function: EHOSTUNREACH ("No route to host"),
# unlike a closed port's ECONNREFUSED.
REJECT = "reject with icmpx type admin-prohibited"
NFT_TIMEOUT = 10.0


class Destination(NamedTuple):
    """An address range, and one port of it (TCP and UDP) or all of them (None)."""

    network: Network
    port: int | None = None

    def __str__(self) -> str:
        net = str(self.network)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


def parse_destination(text: str) -> Destination:
    """`10.0.0.0/8`, `192.0.2.7:443`, `::1`, `[2001:db8::/32]:443` -> a Destination."""
    text = text.strip()
    port: int | None = None
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise BadRequest(f"bad destination {text!r}: expected [address]:port")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, raw_port = text.partition(":")
        port = _port(text, raw_port)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError as e:
        raise BadRequest(
            f"bad destination {text!r}: an IP address or network (CIDR), optionally with "
            "a :port ([...]:port for IPv6)"
        ) from e
    return Destination(network, port)


def _port(text: str, raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise BadRequest(f"bad destination {text!r}: the port must be 1..65535")
    return int(raw)


def parse_destinations(text: str, setting: str) -> list[Destination]:
    """A comma-separated setting's destinations; a bad one names the setting."""
    try:
        return [parse_destination(part) for part in text.split(",") if part.strip()]
    except BadRequest as e:
        raise BadRequest(f"{setting}: {e.message}") from None


def url_endpoints(url: str, default_port: int, resolve: bool = True) -> list[Destination]:
    """The addresses and port an endpoint URL (broker, database, blob store) reaches;
    [] for a URL without a network host (SQLite, a local directory)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if "endpoint_url" in query:  # s3://bucket?endpoint_url=http://minio:9000
        return url_endpoints(query["endpoint_url"][0], 443, resolve)
    host = parts.hostname
    if not host or parts.scheme in ("file", "sqlite", "sqlite+aiosqlite"):
        return []
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, default_port)
    return [Destination(network, port) for network in _addresses(host, resolve)]


def _addresses(host: str, resolve: bool) -> list[Network]:
    try:
        return [ipaddress.ip_network(host)]
    except ValueError:
        pass
    if not resolve:
        return []
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise BadRequest(f"cannot resolve {host!r} for the instance network policy: {e}") from e
    return list(dict.fromkeys(ipaddress.ip_network(info[4][0]) for info in infos))


def loopback_nameservers(resolv_conf: str) -> list[Destination]:
    """DNS servers on loopback (systemd-resolved's 127.0.0.53, a local dnsmasq) from
    /etc/resolv.conf text: functions resolve names through them, so port 53 stays open."""
    found = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if address.is_loopback:
                found.append(Destination(ipaddress.ip_network(address), 53))
    return found


class Policy(NamedTuple):
    """Who the policy holds (uids `first_uid`..`last_uid`) and where they may not go."""

    first_uid: int
    last_uid: int
    allow: Sequence[Destination]
    deny: Sequence[Destination]

    @property
    def table(self) -> str:
        return f"pyfc_{self.first_uid}"


def _match(destination: Destination) -> str:
    family = "ip" if destination.network.version == 4 else "ip6"
    match = f"{family} daddr {destination.network}"
    if destination.port is not None:
        match += f" meta l4proto {{ tcp, udp }} th dport {destination.port}"
    return match


def ruleset(policy: Policy) -> str:
    """The nft script that replaces the policy's table whole, in one transaction."""
    rules = [
        f"meta skuid != {policy.first_uid}-{policy.last_uid} accept",
        # Replies on connections made to an instance (the worker to a custom runtime).
        "ct state established,related accept",
        *(f"{_match(d)} accept" for d in policy.allow),
        f"fib daddr type local counter {REJECT}",
        *(f"{_match(Destination(n))} counter {REJECT}" for n in (*LOOPBACK, *LINK_LOCAL)),
        *(f"{_match(d)} counter {REJECT}" for d in policy.deny),
    ]
    body = "\n".join(f"    {rule}" for rule in rules)
    table = f"inet {policy.table}"
    return (
        f"table {table} {{}}\n"
        f"delete table {table}\n"
        f"table {table} {{\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        f"{body}\n"
        "  }\n"
        "}\n"
    )


def build(
    first_uid: int,
    last_uid: int,
    *,
    gateway_url: str,
    platform_urls: Iterable[tuple[str, int]],
    allow: str = "",
    deny: str = "",
    resolv_conf: str = "",
) -> Policy:
    """The policy for instance uids `first_uid`..`last_uid` from the settings' values."""
    allowed = [*url_endpoints(gateway_url, 80), *loopback_nameservers(resolv_conf)]
    allowed += parse_destinations(allow, "PYFC_INSTANCE_NETWORK_ALLOW")
    denied = [d for url, port in platform_urls for d in url_endpoints(url, port)]
    denied += parse_destinations(deny, "PYFC_INSTANCE_NETWORK_DENY")
    # A platform endpoint is never opened by being on the gateway's host: deny wins there.
    allowed = [d for d in allowed if d not in denied]
    return Policy(first_uid, last_uid, allowed, denied)


def install(policy: Policy, nft: str | None = None) -> None:
    """Replace the policy's table; BadRequest saying why if it cannot be done."""
    nft = nft or shutil.which("nft")
    if nft is None:
        raise BadRequest("the nft command is not installed (Debian: apt-get install nftables)")
    try:
        done = subprocess.run(
            [nft, "-f", "-"],
            input=ruleset(policy),
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BadRequest(f"nft failed: {e}") from e
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[:1] or [f"exit {done.returncode}"]
        raise BadRequest(f"nft refused the policy: {why[0]} (the worker needs CAP_NET_ADMIN)")
    log.info(
        "instance network policy: table inet %s holds uids %d..%d (allowed: %s; denied: "
        "this host, link-local, %s)",
        policy.table,
        policy.first_uid,
        policy.last_uid,
        ", ".join(map(str, policy.allow)) or "-",
        ", ".join(map(str, policy.deny)) or "-",
    )


def for_this_worker(settings: Settings, users: TenantUsers) -> Policy | None:
    """Install the policy for the worker's instance uids, once at start, before any
    instance exists; BadRequest (the worker exits) if it cannot hold them, unless
    `PYFC_INSTANCE_NETWORK=open` says to run trusted code only (one loud warning)."""
    if settings.instance_network == "open":
        log.warning(
            "PYFC_INSTANCE_NETWORK=open: function instances may connect to the broker, the "
            "database and every service of this host; run trusted code only"
        )
        return None
    unless = (
        "; functions could reach the broker, the database and every service of this host. "
        "Set PYFC_INSTANCE_NETWORK=open to run trusted code only"
    )
    if not users.enabled:
        raise BadRequest(
            "the instance network policy needs a root worker with PYFC_INSTANCE_UID_BASE > 0 "
            f"(it holds function instances by their tenant uids){unless}"
        )
    try:
        with open("/etc/resolv.conf") as f:
            resolv_conf = f.read()
    except OSError:
        resolv_conf = ""
    try:
        policy = build(
            users.uid_base,
            users.last_uid,
            gateway_url=settings.effective_gateway_url,
            platform_urls=[
                *((url, 5672) for url in node_urls(settings.amqp_url)),
                (settings.effective_database_url, 5432),
                (settings.effective_blob_url, 443),
            ],
            allow=settings.instance_network_allow,
            deny=settings.instance_network_deny,
            resolv_conf=resolv_conf,
        )
        install(policy)
    except BadRequest as e:
        raise BadRequest(f"cannot install the instance network policy: {e.message}{unless}") from e
    return policy
