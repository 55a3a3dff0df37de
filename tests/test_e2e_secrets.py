"""A function finds no platform credentials: not in its environment, not in any file or
`/proc` entry it can read, not behind a descriptor it inherited (docs/security.md).

The stack runs with secrets of its own (a broker user with a random password, a database
URL with a password, `PYFC_SECRET`, a metrics token), and a function of each start path
(forked, spawned, custom runtime) searches everything it can reach for them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Client
from tests.helpers import deploy, invoke, open_dir
from tests.rabbit import BrokerUser
from tests.stack import Stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="instance uids need a root worker")

# Walks what the instance can read; returns where any needle turned up. Shared by the
# Python handler and the custom runtime's server.
SCAN = r"""
import os
import socket
import stat
import time

SKIP_DIRS = {".git", ".venv", "__pycache__", "site-packages", "node_modules"}
MAX_BYTES = 1 << 20


def _regular(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BYTES)
    except OSError:
        return None


def _proc_files():
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if pid.isdigit() and pid != me:
            yield f"/proc/{pid}/environ"
            yield f"/proc/{pid}/cmdline"


def _tree(root, budget):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if budget[0] <= 0 or not _regular(path):
                continue
            budget[0] -= 1
            yield path


def _socket_peers():
    peers = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            peer = s.getpeername()
            if s.family in (socket.AF_INET, socket.AF_INET6):
                peers.append([int(fd), peer[0], peer[1]])
        except OSError:
            pass
        finally:
            s.close()
    return peers


def scan(needles, roots, deadline_seconds=30.0):
    needles = [n.encode() for n in needles]
    found, read, budget = [], 0, [40000]
    deadline = time.monotonic() + deadline_seconds
    env = "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode()
    for n in needles:
        if n in env:
            found.append(["environ", n.decode()])
    paths = [p for root in roots for p in _tree(root, budget)]
    for path in [*_proc_files(), *paths]:
        if time.monotonic() > deadline:
            break
        content = _read(path)
        if content is None:
            continue
        read += 1
        for n in needles:
            if n in content:
                found.append([path, n.decode()])
    return {
        "found": found,
        "read": read,
        "timed_out": time.monotonic() > deadline,
        "pyfc_env": sorted(k for k in os.environ if k.startswith("PYFC_")),
        "socket_peers": _socket_peers(),
    }
"""

HANDLER = """
import json
import os
from scan import scan


def handler(event, context):
    req = json.loads(event)
    roots = [os.environ["HOME"], os.environ["TMPDIR"], *req["roots"]]
    return scan(req["needles"], roots)
"""

# A custom runtime (any executable speaking FC's HTTP protocol): the system's python3.
CUSTOM_SERVER = b"""
import http.server
import json
import os
from scan import scan


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/invoke":
            req = json.loads(body)
            out = json.dumps(scan(req["needles"], [os.environ["HOME"], *req["roots"]]))
        else:
            out = "{}"
        data = out.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


port = int(os.environ["FC_SERVER_PORT"])
http.server.ThreadingHTTPServer((os.environ["FC_SERVER_HOST"], port), Handler).serve_forever()
"""


class Secrets:
    """The stack's secrets, each a needle a function must never find."""

    def __init__(self) -> None:
        self.broker = BrokerUser()
        self.db_password = f"db-{uuid.uuid4().hex}"
        self.token_secret = f"secret-{uuid.uuid4().hex}"
        self.metrics_token = f"metrics-{uuid.uuid4().hex}"

    def needles(self, stack: Stack) -> list[str]:
        return [
            self.broker.password,
            self.broker.url,
            self.db_password,
            stack.env["PYFC_DATABASE_URL"],
            self.token_secret,
            self.metrics_token,
        ]


@pytest.fixture(scope="module")
def secrets() -> Iterator[Secrets]:
    made = Secrets()
    try:
        yield made
    finally:
        made.broker.close()


@pytest.fixture(scope="module")
def secret_stack(tmp_path_factory: pytest.TempPathFactory, secrets: Secrets) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("secrets"), database="postgres", amqp_url=secrets.broker.url)
    assert s.pg is not None
    # The local PostgreSQL trusts loopback and ignores the password; the URL carries one
    # all the same, as a deployment's would.
    s.env["PYFC_DATABASE_URL"] = s.pg.url.replace(
        "//postgres@", f"//postgres:{secrets.db_password}@"
    )
    s.env["PYFC_SECRET"] = secrets.token_secret
    s.env["PYFC_METRICS_TOKEN"] = secrets.metrics_token
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
async def client(secret_stack: Stack) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        tenant, key = secret_stack.create_tenant()
        yield Client(session, secret_stack.url, key, tenant)


def roots(stack: Stack) -> list[str]:
    """Everything worth a look: the host's shared and config dirs, the services' state,
    the stack's own dir (data dir, logs), the code cache and the repository."""
    repo = str(Path(__file__).resolve().parent.parent)
    dirs = ["/tmp", "/dev/shm", "/etc", "/var/lib", "/run", str(stack.root), repo]
    return [d for d in dirs if os.path.isdir(d)]


async def scan(
    client: Client, stack: Stack, function: tuple[str, str], needles: list[str], where: Path
) -> Any:
    event = {"needles": needles, "roots": [str(where), *roots(stack)]}
    status, headers, body = await invoke(client, *function, json.dumps(event).encode())
    assert status == 200 and "X-Fc-Error-Type" not in headers, body
    return json.loads(body)


def assert_found_nothing_but_the_canary(seen: Any, canary_file: Path, canary: str) -> None:
    # The scan works: it found the file planted where any uid may read it, and read a lot.
    assert [str(canary_file), canary] in seen["found"], seen["found"]
    assert seen["read"] > 200 and not seen["timed_out"], seen
    leaks = [hit for hit in seen["found"] if hit[1] != canary]
    assert leaks == [], leaks
    assert seen["pyfc_env"] == []
    # No inherited descriptor is a connection of the worker's (broker, database).
    platform_ports = {5672, 5432}
    assert not [p for p in seen["socket_peers"] if p[2] in platform_ports], seen["socket_peers"]


@pytest.mark.parametrize("start", ["forked", "spawned", "custom"])
async def test_a_function_finds_no_platform_credentials(
    secret_stack: Stack, secrets: Secrets, client: Client, start: str
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    canary_file = open_dir("canary") / "canary.txt"
    canary_file.write_text(canary)
    canary_file.chmod(0o644)
    if start == "custom":
        from tests.test_custom_runtime import zip_code

        members = [
            ("bootstrap", b"#!/bin/sh\nexec python3 server.py\n", 0o755),
            ("server.py", CUSTOM_SERVER, 0o644),
            ("scan.py", SCAN.encode(), 0o644),
        ]
        function = await deploy(client, runtime="custom", code=zip_code(members), timeout=60)
    else:
        # Interpreter variables make the worker spawn the instance instead of forking it.
        env = {"PYTHONHASHSEED": "0"} if start == "spawned" else {}
        function = await deploy(
            client,
            {"index.py": HANDLER, "scan.py": SCAN},
            environmentVariables=env,
            timeout=60,
        )
    needles = [canary, *secrets.needles(secret_stack)]
    seen = await scan(client, secret_stack, function, needles, canary_file.parent)
    assert_found_nothing_but_the_canary(seen, canary_file, canary)
