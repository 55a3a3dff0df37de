"""Runtime custom: a `bootstrap` serving FC's HTTP invoke protocol (a shell script starting a
Python server: tests/bootstraps.py), run by the pool and through the whole stack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.protocol import Outcome
from tests.bootstraps import BOOTSTRAP, ECHO, Member, members, unpacked, zip_code
from tests.conftest import Client
from tests.helpers import deploy, invoke
from tests.instances import make_inv, make_spec, process_gone
from tests.stack import Stack
from worker.custom_protocol import error_from_response
from worker.limits import detect_worker_group
from worker.pool import InstancePool

FILES = members(ECHO)


def body(outcome: Outcome) -> Any:
    return json.loads(outcome.body)


@pytest.fixture
async def pool() -> AsyncIterator[InstancePool]:
    p = InstancePool(max_instances=2, stop_grace=1.0)
    yield p
    await p.close()


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (500, b'{"errorType": "E", "errorMessage": "m", "stackTrace": ["a"]}', ("E", "m", ["a"])),
        (500, b'{"errorType": "E"}', ("E", '{"errorType": "E"}', [])),
        (502, b'{"error": "x"}', ("HTTP 502", '{"error": "x"}', [])),
        (404, b"not here", ("HTTP 404", "not here", [])),
        (500, b"\xff", ("HTTP 500", "\ufffd", [])),
        (503, b"", ("HTTP 503", "", [])),
    ],
)
def test_error_from_response(status: int, raw: bytes, expected: tuple[str, str, list[str]]) -> None:
    assert error_from_response(status, raw) == expected


async def test_echo_is_warm_and_logs_tail(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(runtime="custom"), unpacked(tmp_path)
    event = b"\x00\xffhello custom\n"
    first, second = make_inv(event), make_inv(b"state")
    echoed = await pool.invoke(spec, code, first)
    assert (echoed.status, echoed.body, echoed.cold_start) == ("succeeded", event, True)
    assert f"invoke {first.id}".encode() in echoed.log_tail
    state = await pool.invoke(spec, code, second)
    assert not state.cold_start and body(state)["calls"] == 2
    assert f"invoke {second.id}".encode() in state.log_tail
    assert first.id.encode() not in state.log_tail  # only what it wrote during this request
    assert pool.stats.cold_starts == 1 and pool.stats.last_init_ms > 0
    pid = body(state)["pid"]
    await pool.close()
    assert process_gone(pid)


async def test_error_status_is_an_unhandled_error(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(runtime="custom"), unpacked(tmp_path)
    failed = await pool.invoke(spec, code, make_inv(b"fail"))
    assert (failed.status, failed.error_type) == ("function_error", "UnhandledInvocationError")
    assert body(failed) == {
        "errorType": "TypeError",
        "errorMessage": "bad input",
        "stackTrace": ["at handler (server.py:1)"],
    }
    assert b"about to fail" in failed.log_tail
    teapot = await pool.invoke(spec, code, make_inv(b"teapot"))
    assert body(teapot)["errorType"] == "HTTP 418"
    assert body(teapot)["errorMessage"] == "short and stout"
    after = await pool.invoke(spec, code, make_inv(b"state"))  # the instance lives on
    assert not after.cold_start and body(after)["calls"] == 3


async def test_oversized_answer_is_refused(
    tmp_path: Path, pool: InstancePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, code = make_spec(runtime="custom"), unpacked(tmp_path)
    monkeypatch.setattr("worker.custom_protocol.MAX_FRAME_BYTES", 10)
    big = await pool.invoke(spec, code, make_inv(b"x" * 100))
    assert (big.status, body(big)["errorType"]) == ("function_error", "ResponseTooLarge")
    monkeypatch.undo()
    after = await pool.invoke(spec, code, make_inv(b"state"))  # same process, still serving
    assert not after.cold_start and body(after)["calls"] == 2


async def test_timeout_kills_it_and_the_next_call_works(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(runtime="custom", timeout=0.5), unpacked(tmp_path)
    pid = body(await pool.invoke(spec, code, make_inv(b"state")))["pid"]
    slow = await pool.invoke(spec, code, make_inv(b"sleep 30"))
    assert (slow.status, slow.http_status) == ("function_error", 504)
    assert body(slow)["errorType"] == "FunctionTimeout"
    assert process_gone(pid) and pool.instances_alive == 0
    after = await pool.invoke(spec, code, make_inv(b"state"))
    assert after.cold_start and body(after)["pid"] != pid


async def test_process_death_mid_request_is_a_crash(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(runtime="custom"), unpacked(tmp_path)
    died = await pool.invoke(spec, code, make_inv(b"exit"))
    assert (died.status, died.http_status) == ("function_error", 502)
    assert body(died) == {
        "errorType": "InstanceCrashed",
        "errorMessage": "instance exited with code 3",
    }
    assert b"bye" in died.log_tail
    assert (await pool.invoke(spec, code, make_inv(b"x"))).body == b"x"


async def test_memory_size_is_enforced(tmp_path: Path, pool: InstancePool) -> None:
    if detect_worker_group() is None:
        pytest.skip("no writable cgroup v1 memory controller: memorySize is not enforced")
    spec, code = make_spec(runtime="custom", memory_size=128), unpacked(tmp_path)
    hog = await pool.invoke(spec, code, make_inv(b"hog 400"))
    assert (hog.status, hog.http_status) == ("function_error", 502)
    assert body(hog)["errorType"] == "OutOfMemory"
    small = await pool.invoke(spec, code, make_inv(b"hog 16"))
    assert small.body == str(16 * 1024 * 1024).encode()


async def test_environment_is_clean_and_fc_shaped(
    tmp_path: Path, pool: InstancePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYFC_TEST_SECRET", "worker-only")
    spec = make_spec(
        runtime="custom",
        environment={"GREETING": "hi", "PYFC_SNEAKY": "no"},
        memory_size=256,
        timeout=7,
    )
    code = unpacked(tmp_path)
    inv = make_inv(b"env")
    seen = body(await pool.invoke(spec, code, inv))
    env, headers = seen["env"], seen["headers"]
    assert env["GREETING"] == "hi"
    assert not [k for k in env if k.startswith("PYFC_")]
    assert "PYTHONPATH" not in env
    assert env["FC_SERVER_HOST"] == "127.0.0.1" and int(env["FC_SERVER_PORT"]) > 0
    assert (env["FC_FUNCTION_NAME"], env["FC_SERVICE_NAME"]) == ("fn", "svc")
    assert env["HOME"] != str(Path.home()) and Path(seen["cwd"]) == code
    assert headers["x-fc-request-id"] == inv.id
    assert headers["x-fc-function-name"] == "fn"
    assert headers["x-fc-function-handler"] == "index.handler"
    assert headers["x-fc-function-memory"] == "256"
    assert headers["x-fc-function-timeout"] == "7"
    assert (headers["x-fc-service-name"], headers["x-fc-qualifier"]) == ("svc", "LATEST")


async def test_initializer_runs_once_per_instance(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(runtime="custom", initializer="index.init"), unpacked(tmp_path)
    first = await pool.invoke(spec, code, make_inv(b"state"))
    assert first.cold_start and body(first) == {
        "initialized": 1,
        "calls": 1,
        "pid": body(first)["pid"],
    }
    await pool.invoke(spec, code, make_inv(b"x"))
    state = body(await pool.invoke(spec, code, make_inv(b"state")))
    assert (state["initialized"], state["calls"]) == (1, 3)
    failing = make_spec(runtime="custom", initializer="index.init", environment={"FAIL_INIT": "1"})
    refused = await pool.invoke(failing, code, make_inv(b"state"))
    assert (refused.status, refused.error_type) == ("function_error", "UnhandledInvocationError")
    assert body(refused)["errorType"] == "ConfigError"
    assert b"initialize" in refused.log_tail
    assert pool.stats.start_failures == 1 and pool.instances_alive == 1


async def test_instance_concurrency_shares_one_process(tmp_path: Path, pool: InstancePool) -> None:
    spec, code = make_spec(runtime="custom", instance_concurrency=3), unpacked(tmp_path)
    await pool.invoke(spec, code, make_inv(b"x"))  # warm one, so the three pack onto it
    results = await asyncio.gather(
        *(pool.invoke(spec, code, make_inv(b"sleep 0.5")) for _ in "abc")
    )
    assert [o.status for o in results] == ["succeeded"] * 3
    assert max(int(o.body) for o in results) == 3
    assert pool.instances_alive == 1


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("bootstrap", BOOTSTRAP, 0o644), FILES[1]], "not executable"),
        ([FILES[1]], "not executable"),
        ([("bootstrap", b"no shebang, no ELF\n", 0o755)], "cannot run bootstrap"),
    ],
)
async def test_bootstrap_that_cannot_run_fails_the_start(
    tmp_path: Path, pool: InstancePool, members: list[Member], message: str
) -> None:
    outcome = await pool.invoke(
        make_spec(runtime="custom"), unpacked(tmp_path, members), make_inv()
    )
    assert body(outcome)["errorType"] == "InstanceStartFailed"
    assert message in body(outcome)["errorMessage"]


async def test_not_listening_in_time_is_an_initialization_timeout(
    tmp_path: Path, pool: InstancePool
) -> None:
    members: list[Member] = [("bootstrap", b"#!/bin/sh\necho starting\nexec sleep 30\n", 0o755)]
    spec = make_spec(runtime="custom", initialization_timeout=0.5)
    outcome = await pool.invoke(spec, unpacked(tmp_path, members), make_inv())
    assert body(outcome)["errorType"] == "InitializationTimeout"
    assert b"starting" in outcome.log_tail
    exits: list[Member] = [("bootstrap", b"#!/bin/sh\necho oops >&2\nexit 7\n", 0o755)]
    outcome = await pool.invoke(make_spec(runtime="custom"), unpacked(tmp_path, exits), make_inv())
    assert body(outcome)["errorType"] == "InstanceCrashed"
    assert "exited with code 7" in body(outcome)["errorMessage"]
    assert outcome.log_tail == b"oops\n"


# --- through the whole stack ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One sqlite stack: the runtime does not depend on the metadata store."""
    s = Stack(tmp_path_factory.mktemp("stack-custom"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


async def test_custom_function_answers_http_invoke(client: Client) -> None:
    service, function = await deploy(
        client, runtime="custom", code=zip_code(FILES), initializer="index.init"
    )
    status, headers, answer = await invoke(client, service, function, b"hello custom")
    assert (status, answer) == (200, b"hello custom"), answer
    status, headers, answer = await invoke(client, service, function, b"state")
    assert status == 200 and json.loads(answer)["initialized"] == 1
    status, headers, answer = await invoke(client, service, function, b"fail")
    assert (status, headers["X-Fc-Error-Type"]) == (200, "UnhandledInvocationError")
    assert json.loads(answer)["errorType"] == "TypeError"


async def test_deploy_without_bootstrap_is_refused(client: Client) -> None:
    status, _, answer = await client.call("POST", "/v1/services", json={"serviceName": "nobs"})
    assert status in (201, 409), answer
    payload = {
        "functionName": "nobs",
        "runtime": "custom",
        "code": zip_code([FILES[1]]),
    }
    status, _, answer = await client.call("POST", "/v1/services/nobs/functions", json=payload)
    assert status == 400, answer
    assert "expected bootstrap at the zip root" in json.loads(answer)["errorMessage"]
