"""Instances forked from the zygote: same contract as spawned ones, a fraction of the start."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.instances import TIMEOUT_SLACK, eventually, make_inv, make_spec, process_gone, write_code
from worker.child.zygote import instance_path
from worker.forking import Zygote, interpreter_settings, zygote_environment
from worker.instance import Instance
from worker.limits import detect_worker_group

Start = Callable[..., Awaitable[Instance]]
ROOT = Path(__file__).resolve().parent.parent

ECHO = "def handler(event, context):\n    return event\n"

SLEEPY = """
import time
def handler(event, context):
    if event == b"sleep":
        time.sleep(60)
    return "awake"
"""


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    zygote = Zygote()
    yield zygote
    await zygote.close()


@pytest.fixture
async def start(zygote: Zygote) -> AsyncIterator[Start]:
    """Start instances from `zygote`; every one is stopped (and checked gone) after the test."""
    started: list[Instance] = []

    async def start(*args: object, **kwargs: object) -> Instance:
        instance = await Instance.start(*args, zygote=zygote, **kwargs)  # type: ignore[arg-type]
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.stop(grace=0.5)
        assert process_gone(instance.pid)


@pytest.mark.parametrize(
    ("environment", "settings"),
    [
        ({}, []),
        ({"PYTHONPATH": "/opt/lib", "APP_MODE": "x"}, []),
        ({"PYTHONHASHSEED": "0", "PYTHONPATH": "/x"}, ["PYTHONHASHSEED"]),
        ({"PYTHONUTF8": "1", "PYTHONWARNINGS": "error"}, ["PYTHONUTF8", "PYTHONWARNINGS"]),
    ],
)
def test_interpreter_settings(environment: dict[str, str], settings: list[str]) -> None:
    assert interpreter_settings(environment) == settings


@pytest.mark.parametrize(
    ("cwd", "pythonpath", "base", "path"),
    [
        ("/code", "/pkg", ["/pkg", "/lib"], ["/code", "/pkg", "/lib"]),
        ("/code", "/pkg:/vendor", ["/pkg", "/lib"], ["/code", "/pkg", "/vendor", "/lib"]),
        ("/code", "", ["/lib"], ["/code", "/lib"]),
    ],
)
def test_instance_path(cwd: str, pythonpath: str, base: list[str], path: list[str]) -> None:
    assert instance_path(cwd, pythonpath, base) == path


def test_zygote_environment_is_clean() -> None:
    env = zygote_environment({"PATH": "/bin", "PYFC_AMQP_URL": "amqp://secret", "HOME": "/r"})
    assert env["PATH"] == "/bin" and not any(k.startswith("PYFC_") for k in env)
    assert "HOME" not in env


async def test_forked_instance_runs_handlers(
    tmp_path: Path, start: Start, zygote: Zygote, caplog: pytest.LogCaptureFixture
) -> None:
    code = write_code(
        tmp_path,
        """
        import os, sys
        def handler(event, context):
            os.write(1, b"raw output\\n")
            return {"cwd": os.getcwd(), "path0": sys.path[0], "pid": os.getpid(),
                    "session": os.getsid(0), "event": event.decode()}
        """,
    )
    await zygote.start()
    caplog.set_level(logging.INFO, logger="pyfc.function")
    instance = await start(make_spec(), code)
    assert parent_of(instance.pid) == zygote.pid  # forked, not spawned
    body = json.loads((await instance.invoke(make_inv(b"hi"))).body)
    assert body == {
        "cwd": str(code),
        "path0": str(code),
        "pid": instance.pid,
        "session": instance.pid,  # own session and group, as spawned instances
        "event": "hi",
    }
    await eventually(lambda: "raw output" in caplog.text)


async def test_environment_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PYFC_AMQP_URL", "amqp://user:secret@broker/")
    zygote = Zygote()  # built after the variable is set: it must not pass it on
    try:
        code = write_code(
            tmp_path, "import os\ndef handler(event, context):\n    return dict(os.environ)\n"
        )
        spec = make_spec(environment={"APP_MODE": "test", "PYFC_SNEAKY": "1"})
        instance = await Instance.start(spec, code, zygote=zygote)
        assert parent_of(instance.pid) == zygote.pid
        env = json.loads((await instance.invoke(make_inv())).body)
        await instance.stop()
        assert not [k for k in env if k.startswith("PYFC_")]
        assert env["APP_MODE"] == "test"
        assert env["FC_INSTANCE_ID"] == instance.instance_id
        assert env["HOME"].startswith(os.environ.get("TMPDIR", "/tmp"))
        zygote_pid = zygote.pid
        assert zygote_pid is not None
        assert b"PYFC_" not in Path(f"/proc/{zygote_pid}/environ").read_bytes()
    finally:
        await zygote.close()


async def test_interpreter_settings_are_spawned(
    tmp_path: Path, start: Start, zygote: Zygote
) -> None:
    code = write_code(
        tmp_path, "import sys\ndef handler(e, c):\n    return sys.flags.hash_randomization\n"
    )
    instance = await start(make_spec(environment={"PYTHONHASHSEED": "0"}), code)
    assert parent_of(instance.pid) == os.getpid()
    assert (await instance.invoke(make_inv())).body == b"0"


async def test_timeout_kills_a_forked_instance(tmp_path: Path, start: Start) -> None:
    instance = await start(make_spec(timeout=0.5), write_code(tmp_path, SLEEPY))
    began = time.monotonic()
    outcome = await instance.invoke(make_inv(b"sleep"))
    took = time.monotonic() - began
    assert 0.5 <= took < 0.5 + TIMEOUT_SLACK, took
    assert outcome.http_status == 504
    assert json.loads(outcome.body)["errorType"] == "FunctionTimeout"
    assert await instance.wait_closed()
    assert instance.returncode == -signal.SIGKILL and process_gone(instance.pid)


async def test_crash_reports_the_exit_code(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        import os
        def handler(event, context):
            os.write(2, b"going down\\n")
            os._exit(3)
        """,
    )
    instance = await start(make_spec(), code)
    outcome = await instance.invoke(make_inv())
    assert outcome.http_status == 502
    body = json.loads(outcome.body)
    assert body["errorType"] == "InstanceCrashed"
    assert "exited with code 3" in body["errorMessage"]
    assert b"going down" in outcome.log_tail
    assert instance.returncode == 3


async def test_killed_zygote_is_replaced(tmp_path: Path, start: Start, zygote: Zygote) -> None:
    code = write_code(tmp_path, ECHO)
    first = await start(make_spec(), code)
    old = zygote.pid
    assert old is not None and parent_of(first.pid) == old
    os.kill(old, signal.SIGKILL)
    # Its children die with it, and their instances notice.
    assert await first.wait_closed()
    assert not first.alive and process_gone(first.pid)
    second = await start(make_spec(), code)
    assert zygote.pid not in (None, old) and parent_of(second.pid) == zygote.pid
    assert (await second.invoke(make_inv(b"again"))).body == b"again"


async def test_broken_zygote_falls_back_to_spawn(
    tmp_path: Path, start: Start, zygote: Zygote
) -> None:
    # A zygote that dies at once: `-m worker.child.zygote` finds this one first.
    shadow = tmp_path / "shadow" / "worker" / "child"
    shadow.mkdir(parents=True)
    (shadow.parent / "__init__.py").write_text("")
    (shadow / "__init__.py").write_text("")
    (shadow / "zygote.py").write_text("raise SystemExit(1)\n")
    zygote._environment["PYTHONPATH"] = str(shadow.parent.parent)
    instance = await start(make_spec(), write_code(tmp_path, ECHO))
    assert parent_of(instance.pid) == os.getpid()
    assert (await instance.invoke(make_inv(b"x"))).body == b"x"


HOST = """
import asyncio, sys
from pathlib import Path
from worker.forking import Zygote
from worker.instance import Instance
from tests.instances import make_spec

async def main() -> None:
    zygote = Zygote()
    instance = await Instance.start(make_spec(), Path(sys.argv[1]), zygote=zygote)
    print(instance.pid, zygote.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_forked_instance_dies_with_its_worker(tmp_path: Path) -> None:
    host = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOST,
        str(write_code(tmp_path, ECHO)),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
    )
    try:
        assert host.stdout is not None
        line = await asyncio.wait_for(host.stdout.readline(), 30)
        instance_pid, zygote_pid = map(int, line.split())
        assert parent_of(instance_pid) == zygote_pid
        host.send_signal(signal.SIGKILL)
        await host.wait()
        await eventually(lambda: process_gone(zygote_pid) and process_gone(instance_pid))
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()


async def spare_ready(zygote: Zygote) -> int:
    """Have the zygote's spares make one (as after a cold start); the spare child's pid."""
    await zygote.spares.take(128, memory_cgroups=True)  # none yet: starts making one
    zygote.spares.refill_now()
    await eventually(lambda: zygote.spares._spare is not None)
    spare = zygote.spares._spare
    assert spare is not None and spare.child is not None
    return spare.child.pid


# Read when the module is imported: the instance must be in its memory group by then, and
# must see nothing the spare child did before it was handed out.
TRACES = """
import logging, os, sys
GROUP_AT_IMPORT = open("/proc/self/cgroup").read()

def handler(event, context):
    return {
        "group_at_import": GROUP_AT_IMPORT,
        "pid": os.getpid(),
        "env": sorted(os.environ),
        "warm_up_modules": [m for m in sys.modules if "warm_up" in m],
        "warm_up_paths": [p for p in [*sys.path, *sys.path_importer_cache] if "warm_up" in p],
        "handlers": len(logging.getLogger().handlers),
    }
"""


async def test_spare_child_is_handed_out_in_its_memory_group(
    tmp_path: Path, start: Start, zygote: Zygote
) -> None:
    """The cold start takes the child forked ahead: already in its memory group (resized
    to the function's memorySize) before the function's module is imported."""
    pid = await spare_ready(zygote)
    instance = await start(make_spec(memory_size=192), write_code(tmp_path, TRACES))
    body = json.loads((await instance.invoke(make_inv())).body)
    assert instance.pid == body["pid"] == pid and parent_of(pid) == zygote.pid
    assert body["warm_up_modules"] == body["warm_up_paths"] == []
    assert body["handlers"] == 1
    assert [k for k in body["env"] if not k.startswith(("FC_", "PYTHON"))] == [
        "HOME",
        "LANG",
        "LC_ALL",
        "PATH",
        "TMPDIR",
    ]
    group = detect_worker_group()
    if group is not None:
        assert f"/{instance.instance_id}\n" in body["group_at_import"]
        limit = (group / instance.instance_id / "memory.limit_in_bytes").read_text()
        assert int(limit) == 192 * 1024 * 1024


async def test_a_dead_spare_child_is_replaced_by_a_fork(
    tmp_path: Path, start: Start, zygote: Zygote
) -> None:
    pid = await spare_ready(zygote)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: process_gone(pid))
    instance = await start(make_spec(), write_code(tmp_path, TRACES))
    body = json.loads((await instance.invoke(make_inv())).body)
    assert body["pid"] != pid and parent_of(body["pid"]) == zygote.pid
    if detect_worker_group() is not None:  # joined before the import all the same
        assert f"/{instance.instance_id}\n" in body["group_at_import"]


async def test_unused_spare_child_exits(zygote: Zygote) -> None:
    spare = await zygote.prefork()
    assert parent_of(spare.pid) == zygote.pid
    spare.discard()
    assert await asyncio.wait_for(spare.process.wait(), 10) == 0
