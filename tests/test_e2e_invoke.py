"""Spine acceptance: deploy and invoke through gateway, dispatcher and worker processes."""

from __future__ import annotations

import json

from tests.conftest import Client
from tests.helpers import deploy, invoke, wait_result

RAISER = "def handler(event, context):\n    raise ValueError('boom: ' + event.decode())\n"
SLEEPER = (
    "import time\n"
    "def handler(event, context):\n"
    "    if event == b'sleep':\n"
    "        time.sleep(30)\n"
    "    return b'awake'\n"
)
COUNTER = (
    "calls = 0\n"
    "def handler(event, context):\n"
    "    global calls\n"
    "    calls += 1\n"
    "    print('call', calls)\n"
    "    return {'calls': calls, 'requestId': context.request_id}\n"
)


async def test_sync_echo_returns_the_same_bytes(client: Client) -> None:
    service, function = await deploy(client)
    event = b"\x00\xffhello pyfc\n"
    status, headers, body = await invoke(client, service, function, event)
    assert status == 200, body
    assert body == event
    assert headers["X-Fc-Request-Id"]
    assert "X-Fc-Error-Type" not in headers


async def test_warm_instance_is_reused_and_logs_tail(client: Client) -> None:
    service, function = await deploy(client, {"index.py": COUNTER})
    seen = []
    for _ in range(3):
        status, headers, body = await invoke(client, service, function, X_Fc_Log_Type="Tail")
        assert status == 200, body
        result = json.loads(body)
        assert result["requestId"] == headers["X-Fc-Request-Id"]
        seen.append(result["calls"])
    assert seen == [1, 2, 3]
    import base64

    tail = base64.b64decode(headers["X-Fc-Log-Result"]).decode()
    assert "call 3" in tail


async def test_async_returns_202_and_result_is_retrievable(client: Client) -> None:
    service, function = await deploy(client)
    status, headers, body = await invoke(
        client, service, function, b"later", X_Fc_Invocation_Type="Async"
    )
    assert status == 202, body
    request_id = headers["X-Fc-Request-Id"]
    rec = await wait_result(client, service, function, request_id)
    assert rec["status"] == "Succeeded"
    assert rec["result"] == "later"
    assert rec["requestId"] == request_id


async def test_raising_handler_reports_error_type_and_traceback(client: Client) -> None:
    service, function = await deploy(client, {"index.py": RAISER})
    status, headers, body = await invoke(client, service, function, b"bad")
    assert status == 200
    assert headers["X-Fc-Error-Type"] == "UnhandledInvocationError"
    err = json.loads(body)
    assert err["errorType"] == "ValueError"
    assert err["errorMessage"] == "boom: bad"
    assert any("index.py" in line for line in err["stackTrace"])


async def test_async_function_error_is_recorded(client: Client) -> None:
    service, function = await deploy(client, {"index.py": RAISER})
    status, headers, _ = await invoke(client, service, function, b"x", X_Fc_Invocation_Type="Async")
    assert status == 202
    rec = await wait_result(client, service, function, headers["X-Fc-Request-Id"])
    assert rec["status"] == "Failed"
    assert rec["errorType"] == "UnhandledInvocationError"
    assert json.loads(rec["result"])["errorType"] == "ValueError"


async def test_timeout_kills_the_instance_and_next_call_succeeds(client: Client) -> None:
    service, function = await deploy(client, {"index.py": SLEEPER}, timeout=1)
    status, headers, body = await invoke(client, service, function, b"sleep")
    assert status == 504, body
    assert headers["X-Fc-Error-Type"] == "UnhandledInvocationError"
    assert json.loads(body)["errorType"] == "FunctionTimeout"
    status, _, body = await invoke(client, service, function, b"now")
    assert (status, body) == (200, b"awake")


async def test_update_takes_effect_on_the_next_invocation(client: Client) -> None:
    from tests.stack import code_body

    service, function = await deploy(client)
    assert (await invoke(client, service, function, b"v1"))[2] == b"v1"
    new_code = code_body({"index.py": "def handler(event, context):\n    return b'v2:' + event\n"})
    status, _, body = await client.call(
        "PUT", f"/v1/services/{service}/functions/{function}", json={"code": new_code}
    )
    assert status == 200, body
    assert json.loads(body)["revision"] == 2
    assert (await invoke(client, service, function, b"x"))[2] == b"v2:x"


HOG = (
    "def handler(event, context):\n"
    "    hog = bytearray(int(event) * 1024 * 1024)\n"
    "    return str(len(hog))\n"
)


async def test_memory_limit_kills_only_that_instance(client: Client) -> None:
    service, function = await deploy(client, {"index.py": HOG}, memorySize=128)
    status, headers, body = await invoke(client, service, function, b"400")
    assert status == 502, body
    assert headers["X-Fc-Error-Type"] == "UnhandledInvocationError"
    assert json.loads(body)["errorType"] == "OutOfMemory"
    status, _, body = await invoke(client, service, function, b"16")
    assert (status, body) == (200, str(16 * 1024 * 1024).encode())


async def test_instance_concurrency_is_deployable(client: Client) -> None:
    import asyncio

    code = (
        "import threading, time\n"
        "active = 0\n"
        "peak = 0\n"
        "lock = threading.Lock()\n"
        "def handler(event, context):\n"
        "    global active, peak\n"
        "    with lock:\n"
        "        active += 1\n"
        "        peak = max(peak, active)\n"
        "    time.sleep(0.5)\n"
        "    with lock:\n"
        "        active -= 1\n"
        "    return str(peak)\n"
    )
    service, function = await deploy(client, {"index.py": code}, instanceConcurrency=4)
    # Warm one instance first: calls racing a cold start still start their own instances
    # (known gap, issue "Worker fleet").
    assert (await invoke(client, service, function))[0] == 200
    results = await asyncio.gather(*(invoke(client, service, function) for _ in range(4)))
    assert all(status == 200 for status, _, _ in results)
    # All four overlapped on one instance (module state is per instance).
    assert max(int(body) for _, _, body in results) == 4
