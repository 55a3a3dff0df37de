"""memorySize enforcement: cgroup/mountinfo parsing (tables) and real instances over it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from shared.protocol import FunctionSpec
from tests.instances import bootstrap_children, eventually, make_inv, make_spec, write_code
from worker.instance import Instance
from worker.limits import (
    ADDRESS_SPACE_ALLOWANCE_MB,
    MB,
    address_space_bytes,
    detect_worker_group,
    instance_group_dir,
    memory_cgroup_path,
    memory_mount,
    oom_kills,
    own_group_dir,
    release_worker_group,
    stale_worker_pid,
)
from worker.pool import InstancePool

V1 = "9:name=systemd:/\n5:devices:/\n4:memory:/process_api/df13\n0::/\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (V1, "/process_api/df13"),
        ("4:memory:/\n", "/"),
        ("7:cpuacct,memory:/docker/abc\n", "/docker/abc"),  # co-mounted controllers
        ("0::/user.slice\n", None),  # cgroup v2 only
        ("", None),
        ("3:memory:\n", "/"),
    ],
)
def test_memory_cgroup_path(text: str, expected: str | None) -> None:
    assert memory_cgroup_path(text) == expected


RW = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
RO = "35 31 0:32 / /sys/fs/cgroup/memory ro,relatime - cgroup cgroup ro,memory"
NESTED = "35 31 0:32 /docker/x /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory"
CPU = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu"
V2 = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"
SPACE = r"35 31 0:32 / /mnt/my\040cg rw - cgroup cgroup rw,memory"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{CPU}\n{RW}\n{V2}\n", ("/sys/fs/cgroup/memory", "/")),
        (NESTED, ("/sys/fs/cgroup/memory", "/docker/x")),  # optional fields before " - "
        (RO, None),  # read-only: we could not create groups
        (f"{CPU}\n{V2}\n", None),
        (SPACE, ("/mnt/my cg", "/")),
    ],
)
def test_memory_mount(text: str, expected: tuple[str, str] | None) -> None:
    assert memory_mount(text) == expected


@pytest.mark.parametrize(
    ("mount_point", "mount_root", "group", "expected"),
    [
        (
            "/sys/fs/cgroup/memory",
            "/",
            "/process_api/df13",
            "/sys/fs/cgroup/memory/process_api/df13",
        ),
        ("/sys/fs/cgroup/memory", "/", "/", "/sys/fs/cgroup/memory"),
        ("/sys/fs/cgroup/memory", "/docker/x", "/docker/x/sub", "/sys/fs/cgroup/memory/sub"),
        ("/sys/fs/cgroup/memory", "/docker/x", "/docker/x", "/sys/fs/cgroup/memory"),
        ("/sys/fs/cgroup/memory", "/docker/x", "/other", None),  # not visible in this mount
        ("/sys/fs/cgroup/memory", "/docker/x", "/docker/xy", None),
    ],
)
def test_own_group_dir(mount_point: str, mount_root: str, group: str, expected: str | None) -> None:
    found = own_group_dir(mount_point, mount_root, group)
    assert (str(found) if found is not None else None) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pyfc-10", 10),  # dead worker: its group goes
        ("pyfc-20", None),  # live worker
        ("pyfc-x", None),
        ("other-10", None),
        ("memory.limit_in_bytes", None),
    ],
)
def test_stale_worker_pid(name: str, expected: int | None) -> None:
    assert stale_worker_pid(name, lambda pid: pid == 20) == expected


def test_instance_group_dir() -> None:
    own = Path("/sys/fs/cgroup/memory/a")
    assert instance_group_dir(own, 42, "i-1") == own / "pyfc-42" / "i-1"


@pytest.mark.parametrize(
    ("text", "kills"),
    [
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", 0),
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", 2),
        ("oom_kill_disable 0\nunder_oom 1\n", 1),  # old kernels: no oom_kill counter
        ("", 0),
    ],
)
def test_oom_kills(text: str, kills: int) -> None:
    assert oom_kills(text) == kills


def test_address_space_has_headroom() -> None:
    assert address_space_bytes(128, 5) == (128 + ADDRESS_SPACE_ALLOWANCE_MB + 10) * MB


HOG = """
def handler(event, context):
    mb = int(event)
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    return {"mb": mb}
"""

Start = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Instance] = []

    async def _start(
        spec: FunctionSpec, code_dir: Path, *, memory_cgroups: bool = True
    ) -> Instance:
        instance = await Instance.start(spec, code_dir, memory_cgroups=memory_cgroups)
        started.append(instance)
        return instance

    yield _start
    await asyncio.gather(*(i.stop(grace=1.0) for i in started))
    release_worker_group()
    await eventually(lambda: not bootstrap_children())


def body_json(body: bytes) -> dict[str, object]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("memory_cgroups", [True, False], ids=["cgroup", "rlimit"])
async def test_over_memory_size_is_out_of_memory(tmp_path: Path, memory_cgroups: bool) -> None:
    if memory_cgroups and detect_worker_group() is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    pool = InstancePool(max_instances=2, stop_grace=1.0, memory_cgroups=memory_cgroups)
    try:
        spec, code = make_spec(memory_size=128), write_code(tmp_path, HOG)
        outcome = await pool.invoke(spec, code, make_inv(b"400"))
        assert (outcome.status, outcome.error_type, outcome.http_status) == (
            "function_error",
            "UnhandledInvocationError",
            502,
        )
        body = body_json(outcome.body)
        assert body["errorType"] == "OutOfMemory"
        assert body["errorMessage"] == "instance exceeded memorySize 128 MB"
        # Only that instance died: the next call gets a fresh one and succeeds.
        after = await pool.invoke(spec, code, make_inv(b"10"))
        assert (after.status, after.cold_start, body_json(after.body)) == (
            "succeeded",
            True,
            {"mb": 10},
        )
        assert after.instance_id != outcome.instance_id
        assert pool.instances_alive == 1
    finally:
        await pool.close()
    await eventually(lambda: not bootstrap_children())


@pytest.mark.parametrize("memory_cgroups", [True, False], ids=["cgroup", "rlimit"])
async def test_within_memory_size_is_fine(
    tmp_path: Path, start: Start, memory_cgroups: bool
) -> None:
    instance = await start(
        make_spec(memory_size=256), write_code(tmp_path, HOG), memory_cgroups=memory_cgroups
    )
    for _ in range(2):
        outcome = await instance.invoke(make_inv(b"50"))
        assert (outcome.status, body_json(outcome.body)) == ("succeeded", {"mb": 50})
    assert instance.alive


async def test_cgroup_is_created_and_removed(tmp_path: Path, start: Start) -> None:
    parent = detect_worker_group()
    if parent is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    code = write_code(
        tmp_path,
        """
        def handler(event, context):
            return open("/proc/self/cgroup").read()
        """,
    )
    instance = await start(make_spec(memory_size=192), code)
    group = parent / instance.instance_id
    assert (group / "memory.limit_in_bytes").read_text().strip() == str(192 * MB)
    outcome = await instance.invoke(make_inv())
    assert f"/{instance.instance_id}\n" in outcome.body.decode()
    await instance.stop(grace=1.0)
    assert not group.exists()
