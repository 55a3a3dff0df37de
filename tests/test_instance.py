"""Function instances as real child processes: the FC function contract, end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from shared.protocol import FunctionSpec
from tests.instances import (
    START_SLACK,
    TIMEOUT_SLACK,
    bootstrap_children,
    eventually,
    make_inv,
    make_spec,
    process_gone,
    write_code,
)
from worker.instance import Instance, InstanceStartError, invocation_budget
from worker.limits import release_worker_group
from worker.spawn import build_environment

Start = Callable[..., Awaitable[Instance]]
ROOT = Path(__file__).resolve().parent.parent

ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start instances; every one is stopped (and checked gone) after the test."""
    started: list[Instance] = []

    async def _start(spec: FunctionSpec, code_dir: Path) -> Instance:
        instance = await Instance.start(spec, code_dir)
        started.append(instance)
        return instance

    yield _start
    await asyncio.gather(*(i.stop(grace=1.0) for i in started))
    release_worker_group()
    assert all(process_gone(i.pid) for i in started)


def body_json(body: bytes) -> dict[str, object]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


async def test_echo_fills_the_outcome(tmp_path: Path, start: Start) -> None:
    instance = await start(make_spec(), write_code(tmp_path, ECHO))
    inv = make_inv(b"hello", attempt=2)
    first = await instance.invoke(inv)
    second = await instance.invoke(make_inv(b"again"))
    assert (first.status, first.body, first.http_status) == ("succeeded", b"hello", 200)
    assert (first.request_id, first.tenant, first.attempt) == (inv.id, "t1", 2)
    assert first.instance_id == instance.instance_id
    assert re.fullmatch(r"i-[0-9a-f]{16}", instance.instance_id)
    assert first.cold_start and not second.cold_start
    assert second.body == b"again" and 0 < first.duration_ms < 1000
    assert instance.alive and not instance.busy


async def test_module_state_survives_between_calls(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        import os
        calls = 0
        def handler(event, context):
            global calls
            calls += 1
            return {"calls": calls, "pid": os.getpid()}
        """,
    )
    instance = await start(make_spec(), code)
    results = [body_json((await instance.invoke(make_inv())).body) for _ in range(3)]
    assert [r["calls"] for r in results] == [1, 2, 3]
    assert {r["pid"] for r in results} == {instance.pid}


async def test_raising_handler_gives_fc_error_body(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        def handler(event, context):
            if event == b"fail":
                raise ValueError("bad input")
            return "fine"
        """,
    )
    instance = await start(make_spec(), code)
    outcome = await instance.invoke(make_inv(b"fail"))
    assert outcome.status == "function_error"
    assert outcome.error_type == "UnhandledInvocationError"
    assert outcome.http_status == 200
    body = body_json(outcome.body)
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "bad input"
    trace = body["stackTrace"]
    assert isinstance(trace, list) and any("index.py" in line for line in trace)
    assert not any("bootstrap" in line for line in trace)
    # The instance survives its function's exceptions.
    assert (await instance.invoke(make_inv())).body == b"fine"


SLEEPY = """
import time
def handler(event, context):
    if event == b"sleep":
        time.sleep(60)
    return "awake"
"""


async def test_timeout_kills_the_instance(tmp_path: Path, start: Start) -> None:
    code = write_code(tmp_path, SLEEPY)
    spec = make_spec(timeout=0.5)
    instance = await start(spec, code)
    began = time.monotonic()
    outcome = await instance.invoke(make_inv(b"sleep"))
    took = time.monotonic() - began
    assert 0.5 <= took < 0.5 + TIMEOUT_SLACK, took
    assert (outcome.status, outcome.http_status) == ("function_error", 504)
    assert outcome.error_type == "UnhandledInvocationError"
    assert body_json(outcome.body) == {
        "errorMessage": "Function timed out after 0.5s",
        "errorType": "FunctionTimeout",
    }
    assert not instance.alive and process_gone(instance.pid)
    fresh = await start(spec, code)
    assert (await fresh.invoke(make_inv())).body == b"awake"


async def test_caller_deadline_cuts_the_timeout(tmp_path: Path, start: Start) -> None:
    instance = await start(make_spec(timeout=30), write_code(tmp_path, SLEEPY))
    outcome = await instance.invoke(make_inv(b"sleep", deadline=time.time() + 0.3))
    assert outcome.http_status == 504
    assert str(body_json(outcome.body)["errorMessage"]).startswith("Function timed out after 0.")
    late = await (await start(make_spec(), write_code(tmp_path, ECHO))).invoke(
        make_inv(deadline=time.time() - 1)
    )
    assert (late.status, late.error_type, late.http_status) == (
        "system_error",
        "DeadlineExceeded",
        504,
    )


@pytest.mark.parametrize(
    ("timeout", "deadline", "now", "budget"),
    [
        (3.0, 0.0, 100.0, 3.0),  # no caller deadline
        (3.0, 110.0, 100.0, 3.0),  # deadline further than the timeout
        (3.0, 101.5, 100.0, 1.5),  # deadline first
        (3.0, 99.0, 100.0, -1.0),  # already late
    ],
)
def test_invocation_budget(timeout: float, deadline: float, now: float, budget: float) -> None:
    assert invocation_budget(timeout, deadline, now) == budget


async def test_crash_mid_request(tmp_path: Path, start: Start) -> None:
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
    assert (outcome.status, outcome.http_status) == ("function_error", 502)
    body = body_json(outcome.body)
    assert body["errorType"] == "InstanceCrashed"
    assert "exited with code 3" in str(body["errorMessage"])
    assert b"going down" in outcome.log_tail
    assert not instance.alive and process_gone(instance.pid)


INIT_COUNTER = """
import os
inits = 0
def init(context):
    global inits
    inits += 1
    assert context.function.name == "fn"
    print("initializing")
def handler(event, context):
    return {"inits": inits, "pid": os.getpid()}
"""


async def test_initializer_runs_once_per_instance(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyfc.function")
    code = write_code(tmp_path, INIT_COUNTER)
    spec = make_spec(initializer="index.init")
    first, second = await start(spec, code), await start(spec, code)
    for instance in (first, second, first, second):
        assert body_json((await instance.invoke(make_inv())).body)["inits"] == 1
    assert first.init_duration_ms > 0
    # Output of the initializer reaches the worker log, tagged with the instance.
    assert any(
        "initializing" in r.getMessage() and first.instance_id in r.getMessage()
        for r in caplog.records
    )


async def test_failing_initializer(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        def init(context):
            print("about to fail")
            raise RuntimeError("no database")
        def handler(event, context):
            return "unreachable"
        """,
    )
    with pytest.raises(InstanceStartError) as info:
        await start(make_spec(initializer="index.init"), code)
    err = info.value
    assert (err.error_type, err.error_message) == ("RuntimeError", "no database")
    assert any("index.py" in line for line in err.stack_trace)
    assert b"about to fail" in err.log
    await eventually(lambda: not bootstrap_children())


async def test_slow_initializer_is_killed(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        import time
        def init(context):
            time.sleep(60)
        def handler(event, context):
            return "unreachable"
        """,
    )
    began = time.monotonic()
    with pytest.raises(InstanceStartError) as info:
        await start(make_spec(initializer="index.init", initialization_timeout=0.5), code)
    assert info.value.error_type == "InitializationTimeout"
    took = time.monotonic() - began
    assert 0.5 <= took < 0.5 + START_SLACK, took
    await eventually(lambda: not bootstrap_children())


@pytest.mark.parametrize(
    ("handler", "error_type", "fragment"),
    [
        ("index.missing", "FunctionNotFound", "'missing'"),
        ("nomodule.handler", "ModuleNotFoundError", "nomodule"),
        ("handler", "FunctionNotFound", "module.function"),
        ("index.NOT_CALLABLE", "FunctionNotFound", "NOT_CALLABLE"),
    ],
)
async def test_handler_not_found(
    tmp_path: Path, start: Start, handler: str, error_type: str, fragment: str
) -> None:
    code = write_code(tmp_path, ECHO + "NOT_CALLABLE = 1\n")
    with pytest.raises(InstanceStartError) as info:
        await start(make_spec(handler=handler), code)
    assert info.value.error_type == error_type
    assert fragment in info.value.error_message


async def test_syntax_error_in_module(tmp_path: Path, start: Start) -> None:
    with pytest.raises(InstanceStartError) as info:
        await start(make_spec(), write_code(tmp_path, "def handler(:\n"))
    assert info.value.error_type == "SyntaxError"


async def test_async_handler_and_initializer(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        import asyncio
        ready = False
        async def init(context):
            global ready
            await asyncio.sleep(0)
            ready = True
        async def handler(event, context):
            await asyncio.sleep(0)
            return {"ready": ready, "event": event.decode()}
        """,
    )
    instance = await start(make_spec(initializer="index.init"), code)
    for _ in range(2):  # the second call reuses the instance's event loop
        outcome = await instance.invoke(make_inv(b"x"))
        assert body_json(outcome.body) == {"ready": True, "event": "x"}


async def test_return_value_conversion(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        VALUES = {
            "dict": {"a": [1, 2]}, "list": [1, "x"], "str": "héllo", "bytes": b"\\x00\\xff",
            "none": None, "int": 7, "float": 1.5, "bool": True, "bytearray": bytearray(b"ba"),
            "object": object(), "set": {1},
        }
        def handler(event, context):
            return VALUES[event.decode()]
        """,
    )
    instance = await start(make_spec(), code)
    expected = {
        "dict": b'{"a":[1,2]}',
        "list": b'[1,"x"]',
        "str": "héllo".encode(),
        "bytes": b"\x00\xff",
        "none": b"",
        "int": b"7",
        "float": b"1.5",
        "bool": b"true",
        "bytearray": b"ba",
    }
    for name, body in expected.items():
        outcome = await instance.invoke(make_inv(name.encode()))
        assert (name, outcome.status, outcome.body) == (name, "succeeded", body)
    for name in ("object", "set"):
        outcome = await instance.invoke(make_inv(name.encode()))
        error = body_json(outcome.body)
        assert outcome.status == "function_error" and error["errorType"] == "TypeError"
        assert "return bytes, str, dict" in str(error["errorMessage"])


async def test_output_and_logging_are_captured(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        import logging, sys
        def handler(event, context):
            print("printed line")
            sys.stderr.write("stderr line\\n")
            sys.stdout.buffer.write(b"raw bytes\\n")
            logging.getLogger("app").info("info from %s", "handler")
            logging.debug("debug is below the default level")
            if event:
                for i in range(int(event)):
                    print(f"line {i:05d}")
            return ""
        """,
    )
    instance = await start(make_spec(), code)
    inv = make_inv()
    outcome = await instance.invoke(inv)
    log = outcome.log_tail.decode()
    assert "printed line\n" in log and "stderr line\n" in log and "raw bytes\n" in log
    assert re.search(
        rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z {inv.id} \[INFO\] info from handler$",
        log,
        re.MULTILINE,
    )
    assert "debug is below" not in log
    big = await instance.invoke(make_inv(b"5000"))
    assert len(big.log_tail) == 4096
    assert big.log_tail.endswith(b"line 04999\n") and b"printed line" not in big.log_tail
    # Each request sees only its own output.
    assert b"line 0" not in (await instance.invoke(make_inv())).log_tail


ENV_DUMP = """
import json, os
def handler(event, context):
    return {"env": dict(os.environ), "cwd": os.getcwd()}
"""


async def test_environment_is_clean(
    tmp_path: Path, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYFC_AMQP_URL", "amqp://secret@broker/")
    monkeypatch.setenv("WORKER_ONLY", "x")
    code = write_code(tmp_path, ENV_DUMP)
    spec = make_spec(environment={"DB_HOST": "db", "PYFC_SNEAKY": "1"}, memory_size=256)
    instance = await start(spec, code)
    result = body_json((await instance.invoke(make_inv())).body)
    env = result["env"]
    assert isinstance(env, dict)
    assert not [k for k in env if k.startswith("PYFC_")]
    assert "WORKER_ONLY" not in env
    assert env["DB_HOST"] == "db"
    assert env["FC_FUNCTION_NAME"] == "fn" and env["FC_SERVICE_NAME"] == "svc"
    assert env["FC_QUALIFIER"] == "LATEST" and env["FC_INSTANCE_ID"] == instance.instance_id
    assert env["FC_FUNCTION_HANDLER"] == "index.handler"
    assert env["FC_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["HOME"] != os.environ.get("HOME") and env["TMPDIR"].startswith(env["HOME"][:-5])
    assert result["cwd"] == str(code)


def test_build_environment_lets_platform_names_win(tmp_path: Path) -> None:
    spec = make_spec(environment={"FC_FUNCTION_NAME": "spoof", "PYTHONPATH": "/opt/lib"})
    env = build_environment(
        spec,
        code_dir=tmp_path,
        instance_id="i-1",
        home=tmp_path / "h",
        tmp=tmp_path / "t",
        inherited={"PATH": "/bin", "PYFC_DATA_DIR": "/x", "SECRET": "s"},
    )
    assert env["FC_FUNCTION_NAME"] == "fn"
    assert env["PYTHONPATH"].endswith(os.pathsep + "/opt/lib")
    assert env["PATH"] == "/bin" and "SECRET" not in env and "PYFC_DATA_DIR" not in env


async def test_context_object(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        def handler(event, context):
            c = context
            return {
                "request_id": c.request_id, "region": c.region, "account_id": c.account_id,
                "tenant": c.tenant, "function": [c.function.name, c.function.handler,
                c.function.memory, c.function.timeout, c.function.initializer],
                "service": [c.service.name, c.service.log_project, c.service.log_store,
                c.service.qualifier, c.service.version_id],
                "credentials": [c.credentials.access_key_id, c.credentials.access_key_secret,
                c.credentials.security_token],
                "remaining": c.get_remaining_time_in_millis(), "retry": c.retry_count,
                "tracing": c.tracing.span_context,
            }
        """,
    )
    spec = make_spec(timeout=5, version="3", qualifier="prod", log_store="ls")
    instance = await start(spec, code)
    inv = make_inv(attempt=2)
    ctx = body_json((await instance.invoke(inv)).body)
    assert ctx["request_id"] == inv.id and ctx["region"] == "local"
    assert ctx["account_id"] == ctx["tenant"] == "t1"
    assert ctx["function"] == ["fn", "index.handler", 128, 5.0, None]
    assert ctx["service"] == ["svc", "", "ls", "prod", "3"]
    assert ctx["credentials"] == ["", "", ""]
    assert 4000 < int(str(ctx["remaining"])) <= 5000
    assert ctx["retry"] == 1 and ctx["tracing"] is None


async def test_pre_stop_runs_on_stop(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    code = write_code(
        tmp_path,
        f"""
        def handler(event, context):
            return "ok"
        def pre_stop(context):
            open({str(marker)!r}, "w").write(context.function.name)
        """,
    )
    instance = await Instance.start(make_spec(), code)
    await instance.invoke(make_inv())
    await instance.stop()
    assert marker.read_text() == "fn"
    assert instance.returncode == 0 and process_gone(instance.pid)


async def test_kill_takes_spawned_processes_along(tmp_path: Path, start: Start) -> None:
    code = write_code(
        tmp_path,
        """
        import subprocess, sys
        def handler(event, context):
            return str(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid)
        """,
    )
    instance = await start(make_spec(), code)
    grandchild = int((await instance.invoke(make_inv())).body)
    instance.kill()
    assert await instance.wait_closed()
    await eventually(lambda: process_gone(grandchild))


HOST = """
import asyncio, sys
from pathlib import Path
from worker.instance import Instance
from tests.instances import make_spec

async def main() -> None:
    instance = await Instance.start(make_spec(), Path(sys.argv[1]))
    print(instance.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_instance_dies_with_its_worker(tmp_path: Path) -> None:
    host = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOST,
        str(write_code(tmp_path, ECHO)),
        stdout=asyncio.subprocess.PIPE,
        # A SIGKILLed worker cannot remove the instance dirs: keep them in tmp_path.
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
    )
    try:
        assert host.stdout is not None
        line = await asyncio.wait_for(host.stdout.readline(), 30)
        pid = int(line)
        assert not process_gone(pid)
        host.send_signal(signal.SIGKILL)
        await host.wait()
        await eventually(lambda: process_gone(pid))
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()
