"""Tenant isolation through the whole stack: what a function can see of the worker, the
platform's data and the other tenants (a root worker runs each tenant's instances under a
uid of its own; docs/architecture.md "Isolation")."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import bootstraps
from tests.conftest import Client
from tests.helpers import deploy, invoke
from tests.stack import Stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="instance uids need a root worker")

UID_BASE = 100000

# Reports what the function could reach; paths and pids to try come in the event.
PROBE = r"""
import json
import os
import resource
import signal


def _try(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as e:
        return {"ok": False, "error": type(e).__name__}


def _read(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def _parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def _write_and_read(directory):
    path = os.path.join(directory, "probe.txt")
    with open(path, "w") as f:
        f.write("mine")
    return _read(path)


def handler(event, context):
    req = json.loads(event or b"{}")
    parent = os.getppid()
    home = os.environ["HOME"]
    out = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "groups": os.getgroups(),
        "nproc": list(resource.getrlimit(resource.RLIMIT_NPROC)),
        "pid": os.getpid(),
        "home": home,
        "parent_environ": _try(lambda: _read(f"/proc/{parent}/environ")),
        # Forked: the parent is the zygote and the worker its parent; spawned: the worker.
        "grandparent_environ": _try(lambda: _read(f"/proc/{_parent_of(parent)}/environ")),
        "home_write": _try(lambda: _write_and_read(home)),
        "tmp_write": _try(lambda: _write_and_read(os.environ["TMPDIR"])),
        "workdir_root_list": _try(lambda: os.listdir(os.path.dirname(os.path.dirname(home)))),
        "code_root_list": _try(
            lambda: os.listdir(os.path.dirname(os.environ["FC_FUNC_CODE_PATH"]))
        ),
    }
    if "worker_pid" in req:
        out["worker_environ"] = _try(lambda: _read(f"/proc/{req['worker_pid']}/environ"))
        out["worker_signal"] = _try(lambda: os.kill(req["worker_pid"], 0))
    if "data_dir" in req:
        data = req["data_dir"]
        out["data_dir_list"] = _try(lambda: os.listdir(data))
        out["db"] = _try(lambda: len(_read(os.path.join(data, "pyfc.db"))))
        out["secret"] = _try(lambda: _read(os.path.join(data, "secret")))
    if "other_home" in req:
        out["other_home_list"] = _try(lambda: os.listdir(req["other_home"]))
        out["other_workdir_list"] = _try(lambda: os.listdir(os.path.dirname(req["other_home"])))
        out["other_signal"] = _try(lambda: os.kill(req["other_pid"], signal.SIGCONT))
    return out
"""


def open_root() -> Path:
    """A stack root every uid may traverse (pytest's tmp tree is 0700, which would refuse an
    instance uid whatever mode pyfc gives the data dir): only pyfc's own mode guards it."""
    root = Path(tempfile.mkdtemp(prefix="pyfc-isolation-"))
    root.chmod(0o755)
    for parent in (root, *root.parents):
        assert parent.stat().st_mode & 0o005 == 0o005, f"{parent} is not open to others"
    return root


@pytest.fixture(scope="module")
def isolated_stack() -> Iterator[Stack]:
    root = open_root()
    s = Stack(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def clients(isolated_stack: Stack) -> AsyncIterator[tuple[Client, Client]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        made = [isolated_stack.create_tenant() for _ in range(2)]
        yield (
            Client(session, isolated_stack.url, made[0][1], made[0][0]),
            Client(session, isolated_stack.url, made[1][1], made[1][0]),
        )


def worker_pid(stack: Stack) -> int:
    (name,) = (n for n in stack.procs if n.startswith("worker"))
    return stack.procs[name].pid


async def probe(client: Client, service: str, function: str, **event: Any) -> dict[str, Any]:
    status, headers, body = await invoke(client, service, function, json.dumps(event).encode())
    assert status == 200 and "X-Fc-Error-Type" not in headers, body
    result: dict[str, Any] = json.loads(body)
    return result


def assert_sealed(seen: dict[str, Any], stack: Stack) -> None:
    """Nothing of the worker's environment, the data dir or the code cache's listing."""
    for key in ("parent_environ", "grandparent_environ", "worker_environ"):
        reached = seen.get(key, {"ok": False})
        assert not (reached["ok"] and "PYFC_" in reached["value"]), (key, reached)
    for key in ("worker_environ", "data_dir_list", "db", "secret", "code_root_list"):
        if key in seen:
            assert seen[key] == {"ok": False, "error": "PermissionError"}, (key, seen[key])
    assert seen["worker_signal"] == {"ok": False, "error": "PermissionError"}
    assert seen["workdir_root_list"] == {"ok": False, "error": "PermissionError"}
    assert seen["home_write"] == seen["tmp_write"] == {"ok": True, "value": "mine"}


@pytest.mark.parametrize("spawned", [False, True], ids=["forked", "spawned"])
async def test_a_function_sees_nothing_of_the_worker_or_the_data_dir(
    isolated_stack: Stack, clients: tuple[Client, Client], spawned: bool
) -> None:
    client, _ = clients
    # Interpreter variables make the worker spawn the instance instead of forking it.
    env = {"PYTHONHASHSEED": "0"} if spawned else {}
    service, function = await deploy(
        client, {"index.py": PROBE}, environmentVariables=env, memorySize=128
    )
    data_dir = str(isolated_stack.root / "data")
    seen = await probe(
        client, service, function, worker_pid=worker_pid(isolated_stack), data_dir=data_dir
    )
    assert_sealed(seen, isolated_stack)
    assert seen["uid"] == seen["euid"] == seen["gid"] >= UID_BASE
    assert seen["groups"] in ([], [seen["gid"]])
    # The tenant's processes and threads on the host are capped (PYFC_INSTANCE_MAX_PROCS).
    assert seen["nproc"] == [2048, 2048]


async def test_tenants_get_uids_of_their_own_and_cannot_reach_each_other(
    isolated_stack: Stack, clients: tuple[Client, Client]
) -> None:
    a, b = clients
    a1 = await deploy(a, {"index.py": PROBE})
    a2 = await deploy(a, {"index.py": PROBE + "\n# another function\n"})
    b1 = await deploy(b, {"index.py": PROBE})
    seen_a1 = await probe(a, *a1)
    seen_a2 = await probe(a, *a2)
    assert seen_a1["uid"] == seen_a2["uid"], "one tenant, one uid"
    assert seen_a1["pid"] != seen_a2["pid"]
    seen_b = await probe(b, *b1, other_home=seen_a1["home"], other_pid=seen_a1["pid"])
    assert seen_b["uid"] != seen_a1["uid"] and seen_b["uid"] >= UID_BASE
    for key in ("other_home_list", "other_workdir_list", "other_signal"):
        assert seen_b[key] == {"ok": False, "error": "PermissionError"}, (key, seen_b[key])
    # The same tenant's instance still reaches its own (another function's) home by name.
    seen_a2 = await probe(a, *a2, other_home=seen_a1["home"], other_pid=seen_a1["pid"])
    assert seen_a2["other_signal"]["ok"]


async def test_a_custom_runtime_runs_as_its_tenant(
    isolated_stack: Stack, clients: tuple[Client, Client]
) -> None:
    a, _ = clients
    python_fn = await deploy(a, {"index.py": PROBE})
    custom = bootstraps.zip_code(bootstraps.members(bootstraps.PROBE))
    service, function = await deploy(a, runtime="custom", code=custom)
    data_dir = str(isolated_stack.root / "data")
    seen = await probe(
        a, service, function, worker_pid=worker_pid(isolated_stack), data_dir=data_dir
    )
    python_seen = await probe(a, *python_fn)
    assert seen["uid"] == seen["gid"] == python_seen["uid"] >= UID_BASE
    assert seen["groups"] in ([], [seen["gid"]])
    assert seen["home_write"] == {"ok": True, "value": "mine"}
    for key in ("worker_environ", "db", "data_dir_list"):
        assert seen[key] == {"ok": False, "error": "EACCES"}, (key, seen[key])


def test_the_data_dir_is_private(isolated_stack: Stack) -> None:
    data = isolated_stack.root / "data"
    assert data.stat().st_mode & 0o777 == 0o700
    assert Path(data / "pyfc.db").exists()
