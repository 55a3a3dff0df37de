"""Tenant instances cannot reach the platform's network (worker/netpolicy.py): the broker,
PostgreSQL, Redis and any other service of this host refuse a function, on loopback and on
the host's own addresses, while the platform's processes reach them; the function still
reaches the gateway and a listener outside the host (in a network namespace this test
makes: traffic goes only to loopback and into it).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Client
from tests.helpers import deploy, invoke
from tests.stack import Stack, wait_until

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the policy needs a root worker"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]

# Connects to each target; HTTP targets get a GET and report the status.
PROBE = r"""
import json
import socket
import urllib.request


def _connect(host, port):
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        return {"ok": False, "errno": e.errno, "error": str(e)}
    with s:
        s.settimeout(1)  # the broker, say, waits for the client to speak first
        try:
            return {"ok": True, "data": s.recv(64).decode("utf-8", "replace")}
        except OSError:
            return {"ok": True, "data": ""}


def _get(url):
    handler = urllib.request.ProxyHandler({})
    try:
        with urllib.request.build_opener(handler).open(url, timeout=5) as r:
            return {"ok": True, "status": r.status}
    except OSError as e:
        return {"ok": False, "error": str(e)}


def _connect_unix(path):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return {"ok": True}
    except OSError as e:
        return {"ok": False, "errno": e.errno, "error": str(e)}


def handler(event, context):
    req = json.loads(event)
    out = {name: _connect(host, port) for name, (host, port) in req["connect"].items()}
    out.update({name: _connect_unix(path) for name, path in req.get("unix", {}).items()})
    out.update({name: _get(url) for name, url in req.get("get", {}).items()})
    return out
"""


PG_SOCKET = "/var/run/postgresql/.s.PGSQL.5432"


class Listener:
    """A TCP server answering b"hello" to each connection, until closed."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    def close(self) -> None:
        self.sock.close()


class Namespace:
    """A network namespace of the test's own, joined to this host by a veth pair on a
    198.18.0.0/15 (benchmarking) /30, with a listener on its side that answers b"outside"
    for a bounded time."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name, host_if, ns_if = f"pyfct{tag}", f"pv{tag}", f"pn{tag}"
        net = secrets.randbelow(2**14) * 4  # a /30 of 198.18.0.0/16
        self.host_ip = f"198.18.{net // 256}.{net % 256 + 1}"
        self.ip = f"198.18.{net // 256}.{net % 256 + 2}"
        self.port = 8080
        run = ["ip", "netns", "exec", self.name]
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            ["ip", "link", "set", ns_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            [*run, "ip", "addr", "add", f"{self.ip}/30", "dev", ns_if],
            [*run, "ip", "link", "set", ns_if, "up"],
            [*run, "ip", "link", "set", "lo", "up"],
        ]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, timeout=30)
        except BaseException:
            self.close()
            raise
        server = (
            "import socket, time\n"
            f"s = socket.create_server(({self.ip!r}, {self.port}))\n"
            "s.settimeout(1)\n"
            "end = time.monotonic() + 300\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            "        c, _ = s.accept()\n"
            "    except socket.timeout:\n"
            "        continue\n"
            "    c.sendall(b'outside'); c.close()\n"
        )
        self.server = subprocess.Popen([*run, sys.executable, "-c", server])
        wait_until(self._listening, 30, "the namespace's listener")

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.ip, self.port), timeout=1):
                return True
        except OSError:
            return False

    def close(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.kill()
            self.server.wait()
        # Deleting the namespace deletes the veth pair too.
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def net_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("network"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def outside() -> Iterator[Namespace]:
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
async def client(net_stack: Stack) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tenant, key = net_stack.create_tenant()
        yield Client(session, net_stack.url, key, tenant)


def host_address() -> str:
    """This host's own non-loopback IPv4 address (services bound to 0.0.0.0 answer there)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines()]
    addresses = [a for a in addresses if not a.startswith("198.18.")]
    if not addresses:
        pytest.skip("this host has no global IPv4 address")
    return addresses[0]


def reachable_by_us(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


async def probe(client: Client, function: tuple[str, str], **event: Any) -> dict[str, Any]:
    status, headers, body = await invoke(client, *function, json.dumps(event).encode())
    assert status == 200 and "X-Fc-Error-Type" not in headers, body
    result: dict[str, Any] = json.loads(body)
    return result


def table(stack: Stack) -> str:
    name = f"pyfc_{stack.env['PYFC_INSTANCE_UID_BASE']}"
    return subprocess.run(
        ["nft", "list", "table", "inet", name], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("spawned", [False, True], ids=["forked", "spawned"])
async def test_a_function_cannot_reach_the_platform_but_reaches_the_gateway_and_outside(
    net_stack: Stack, outside: Namespace, client: Client, spawned: bool
) -> None:
    env = {"PYTHONHASHSEED": "0"} if spawned else {}
    function = await deploy(client, {"index.py": PROBE}, environmentVariables=env, timeout=60)
    local = Listener("127.0.0.1")  # "any other service on loopback"
    wildcard = Listener("0.0.0.0")  # reached through the host's own address
    try:
        platform = {
            "broker": ["127.0.0.1", 5672],
            "postgres": ["127.0.0.1", 5432],
            "redis": ["127.0.0.1", 6379],
            "loopback_service": ["127.0.0.1", local.port],
            "other_loopback_address": ["127.0.0.2", local.port],
            "host_address": [host_address(), wildcard.port],
        }
        # The platform's own processes (this test, as root) reach every one of them.
        for name, (host, port) in platform.items():
            if name == "other_loopback_address":
                continue
            if name == "redis" and not reachable_by_us(host, port):
                continue  # no Redis on this machine
            assert reachable_by_us(host, port), f"{name} is down: the check would be vacuous"
        unix = {"postgres_socket": PG_SOCKET} if os.path.exists(PG_SOCKET) else {}
        for path in unix.values():
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)  # we reach it
        seen = await probe(
            client,
            function,
            connect={**platform, "outside": [outside.ip, outside.port]},
            get={"gateway": f"{net_stack.url}/healthz"},
            unix=unix,
        )
    finally:
        local.close()
        wildcard.close()
    for name in platform:
        # The policy's refusal, not a closed port's ECONNREFUSED.
        assert seen[name]["ok"] is False and seen[name]["errno"] == errno.EHOSTUNREACH, (
            name,
            seen[name],
        )
    for name in unix:
        # Its directory is an empty tmpfs in the instance's own mount namespace.
        assert seen[name]["ok"] is False and seen[name]["errno"] == errno.ENOENT, seen[name]
    assert seen["outside"] == {"ok": True, "data": "outside"}
    assert seen["gateway"] == {"ok": True, "status": 200}


def test_the_installed_policy_holds_the_stacks_uids_and_link_local(net_stack: Stack) -> None:
    text = table(net_stack)
    base = int(net_stack.env["PYFC_INSTANCE_UID_BASE"])
    count = int(net_stack.env["PYFC_INSTANCE_UID_COUNT"])
    assert f"meta skuid != {base}-{base + count - 1} accept" in text
    for rule in (
        "fib daddr type local",
        "ip daddr 169.254.0.0/16",
        "ip6 daddr fe80::/10",
        "ip daddr 127.0.0.0/8",
    ):
        assert any(rule in line and "reject" in line for line in text.splitlines()), rule
    # The gateway (allowed) comes before the refusals.
    gateway = f"ip daddr 127.0.0.1 meta l4proto {{ tcp, udp }} th dport {net_stack.port} accept"
    assert gateway in text and text.index(gateway) < text.index("fib daddr type local")


def test_a_worker_that_cannot_install_the_policy_refuses_to_run(net_stack: Stack) -> None:
    # No nft on its PATH: it exits with the reason and the setting that would let it run.
    name = net_stack.spawn("worker", extra_env={"PATH": "/nonexistent"})
    proc = net_stack.procs[name]
    proc.wait(timeout=60)
    assert proc.returncode != 0
    said = net_stack.logs(name)
    assert "cannot install the instance network policy" in said, said
    assert "PYFC_INSTANCE_NETWORK=open" in said, said


def test_open_runs_without_the_policy_and_says_so(net_stack: Stack) -> None:
    name = net_stack.start_worker(
        extra_env={"PATH": "/nonexistent", "PYFC_INSTANCE_NETWORK": "open"}
    )
    assert "PYFC_INSTANCE_NETWORK=open" in net_stack.logs(name)
    net_stack.kill(name, 15)


# Another tenant's custom runtime: an HTTP server on loopback that says where it listens.
CUSTOM_SERVER = b"""
import http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        data = json.dumps({"port": int(os.environ["FC_SERVER_PORT"])}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

address = (os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"]))
http.server.ThreadingHTTPServer(address, Handler).serve_forever()
"""


async def test_a_function_cannot_reach_another_tenants_instance(
    net_stack: Stack, client: Client
) -> None:
    from tests.test_custom_runtime import zip_code

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tenant, key = net_stack.create_tenant()
        other = Client(session, net_stack.url, key, tenant)
        members = [
            ("bootstrap", b"#!/bin/sh\nexec python3 server.py\n", 0o755),
            ("server.py", CUSTOM_SERVER, 0o644),
        ]
        custom = await deploy(other, runtime="custom", code=zip_code(members))
        status, _, body = await invoke(other, *custom)
        assert status == 200, body
        port = json.loads(body)["port"]  # its instance stays warm, listening
    assert reachable_by_us("127.0.0.1", port)  # the worker's side reaches it
    function = await deploy(client, {"index.py": PROBE})
    seen = await probe(client, function, connect={"other_tenant": ["127.0.0.1", port]})
    assert seen["other_tenant"]["errno"] == errno.EHOSTUNREACH, seen


async def test_a_fresh_worker_installs_the_policy_before_its_first_instance(
    net_stack: Stack, client: Client
) -> None:
    base = net_stack.env["PYFC_INSTANCE_UID_BASE"]
    delete = ["nft", "delete", "table", "inet", f"pyfc_{base}"]
    await asyncio.to_thread(subprocess.run, delete, check=True)
    old = [
        n for n in net_stack.procs if n.startswith("worker") and net_stack.procs[n].poll() is None
    ]
    fresh = net_stack.start_worker()
    for name in old:
        net_stack.kill(name, 15)
    function = await deploy(client, {"index.py": PROBE})
    seen = await probe(client, function, connect={"broker": ["127.0.0.1", 5672]})
    assert seen["broker"]["errno"] == errno.EHOSTUNREACH, seen
    assert f"table inet pyfc_{base}" in net_stack.logs(fresh)
