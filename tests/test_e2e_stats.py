"""Stats match a known sequence of invocations: successes, an error, a throttle, a cold
start, an async retry and its dead letter (gateway/stats_api.py, shared/logstats.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client
from tests.helpers import deploy, invoke, open_dir
from tests.stack import Stack

STATS = """
import os, time

def handler(event, context):
    if event == b"boom":
        raise ValueError("boom")
    if event == b"sleep":
        open(os.path.join(os.environ["PROBE_DIR"], "sleeping"), "w").close()
        time.sleep(1.5)
    return "ok"
"""

pytestmark = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)


def test_pyfc_stats_prints_a_table(stack: Stack, tenant: tuple[str, str]) -> None:
    base = ["--endpoint", stack.url, "--api-key", tenant[1]]
    out = stack.cli("stats", *base).stdout.decode()
    assert out.splitlines()[1].split() == [
        "calls",
        "errors",
        "throttled",
        "p50",
        "ms",
        "p99",
        "ms",
        "cold",
        "retries",
        "dead",
    ]
    assert out.splitlines()[2].split()[:4] == ["total", "0", "0", "0"]
    bad = stack.cli("stats", "nofunction", *base, check=False)
    assert bad.returncode != 0


async def stats(client: Client, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    status, _, body = await client.call("GET", path, params=params)
    return status, json.loads(body)


async def settled(client: Client, path: str, invocations: int) -> dict[str, Any]:
    """The stats once every expected report line is in the store."""
    deadline = time.monotonic() + 30
    while True:
        status, body = await stats(client, path, window="10m", step="1m")
        assert status == 200, body
        if body["invocations"] >= invocations and body.get("deadLetters", 0) >= 0:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


async def test_stats_match_a_known_sequence(client: Client) -> None:
    probe = open_dir("stats")
    service, function = await deploy(
        client,
        {"index.py": STATS},
        reservedConcurrency=1,
        environmentVariables={"PROBE_DIR": str(probe)},
        timeout=10,
    )
    base = f"/v1/services/{service}/functions"
    for event in (b"ok", b"ok", b"ok", b"boom"):
        status, _, _ = await invoke(client, service, function, event)
        assert status == 200
    sleeper = asyncio.create_task(invoke(client, service, function, b"sleep"))
    for _ in range(1500):  # the sleeper holds the function's one slot
        if Path(probe, "sleeping").exists():
            break
        await asyncio.sleep(0.02)
    status, _, body = await invoke(client, service, function, b"ok")
    assert status == 429, body
    assert (await sleeper)[0] == 200
    # A second function: async, one retry, then its dead letter.
    status, _, body = await client.call(
        "POST",
        f"{base}",
        json={"functionName": "failing", "code": (await _code())},
    )
    assert status == 201, body
    status, _, body = await client.call(
        "PUT", f"{base}/failing/async-config", json={"maxAsyncRetryAttempts": 1}
    )
    assert status == 200, body
    status, _, _ = await invoke(client, service, "failing", b"boom", X_Fc_Invocation_Type="Async")
    assert status == 202

    one = await settled(client, f"{base}/{function}/stats", 5)
    assert {k: one[k] for k in _COMPARED} == {
        "invocations": 5,
        "errors": 1,
        "errorsByType": {"ValueError": 1},
        "throttles": 1,
        "coldStarts": 1,
        "coldStartShare": 0.2,
        "retries": 0,
        "deadLetters": 0,
    }
    assert 1400 < one["durationP99Ms"] < 5000 and one["durationP50Ms"] < 1000
    assert sum(s["invocations"] for s in one["series"]) == 5 and len(one["series"]) == 10
    assert sum(s["throttles"] for s in one["series"]) == 1

    deadline = time.monotonic() + 30
    while True:
        failing = await settled(client, f"{base}/failing/stats", 2)
        if failing["deadLetters"] == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert {k: failing[k] for k in _COMPARED} == {
        "invocations": 2,
        "errors": 2,
        "errorsByType": {"ValueError": 2},
        "throttles": 0,
        "coldStarts": 1,
        "coldStartShare": 0.5,
        "retries": 1,
        "deadLetters": 1,
    }

    status, tenant = await stats(client, "/v1/stats", window="10m")
    assert status == 200, tenant
    assert (tenant["invocations"], tenant["errors"], tenant["throttles"]) == (7, 3, 1)
    assert (tenant["retries"], tenant["deadLetters"], tenant["coldStarts"]) == (1, 1, 2)
    assert [(f["functionName"], f["invocations"]) for f in tenant["functions"]] == sorted(
        [(function, 5), ("failing", 2)]
    )

    for params in ({"window": "forever"}, {"window": "30d"}, {"step": "1s"}, {"until": "x"}):
        status, body = await stats(client, f"{base}/{function}/stats", **params)
        assert status == 400, (params, body)
    status, body = await stats(client, f"{base}/nothere/stats")
    assert status == 404, body


_COMPARED = (
    "invocations",
    "errors",
    "errorsByType",
    "throttles",
    "coldStarts",
    "coldStartShare",
    "retries",
    "deadLetters",
)


async def _code() -> dict[str, str]:
    from tests.stack import code_body

    return code_body({"index.py": STATS})
