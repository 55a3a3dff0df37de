"""One OpenTelemetry trace per invocation: gateway -> dispatcher -> worker, parented."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.telemetry import current_traceparent, setup
from tests.conftest import Client, StartStack
from tests.helpers import deploy, invoke
from tests.stack import Stack, wait_until


@pytest.fixture
def traced_stack(fresh_stack: StartStack, tmp_path: Path) -> tuple[Stack, Path]:
    spans = tmp_path / "spans"
    return fresh_stack(env={"PYFC_OTEL_EXPORTER": f"jsonl:{spans}"}), spans


def read_spans(folder: Path) -> list[dict[str, Any]]:
    if not folder.exists():
        return []
    return [json.loads(line) for f in folder.glob("*.jsonl") for line in f.read_text().splitlines()]


def trace_spans(folder: Path, trace_id: str) -> list[dict[str, Any]]:
    return [s for s in read_spans(folder) if s["context"]["trace_id"] == "0x" + trace_id]


async def test_client_trace_continues_through_every_role(traced_stack: tuple[Stack, Path]) -> None:
    stack, folder = traced_stack
    _, key = stack.create_tenant()
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client)
        status, _, _ = await invoke(
            client, service, function, b"t", traceparent=f"00-{trace_id}-{parent}-01"
        )
        assert status == 200
    spans = await asyncio.to_thread(
        wait_until,
        lambda: len(trace_spans(folder, trace_id)) >= 3 and trace_spans(folder, trace_id),
        15,
        "three spans of the trace",
    )
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"pyfc.invoke", "pyfc.dispatch", "pyfc.run"}
    assert by_name["pyfc.invoke"]["parent_id"] == "0x" + parent
    assert by_name["pyfc.dispatch"]["parent_id"] == by_name["pyfc.invoke"]["context"]["span_id"]
    assert by_name["pyfc.run"]["parent_id"] == by_name["pyfc.dispatch"]["context"]["span_id"]
    assert by_name["pyfc.run"]["attributes"]["pyfc.outcome"] == "succeeded"
    assert by_name["pyfc.invoke"]["resource"]["attributes"]["service.name"] == "pyfc-gateway"


async def test_malformed_traceparent_is_ignored_not_rejected(
    traced_stack: tuple[Stack, Path],
) -> None:
    stack, _ = traced_stack
    _, key = stack.create_tenant()
    async with aiohttp.ClientSession() as session:
        client = Client(session, stack.url, key)
        service, function = await deploy(client)
        for bad in ("garbage", "00-" + "0" * 32 + "-zz-01", "x" * 300):
            status, _, body = await invoke(client, service, function, b"t", traceparent=bad)
            assert (status, body) == (200, b"t")


def test_tracing_is_off_without_an_exporter_and_bad_exporter_is_refused() -> None:
    assert setup("test", "") is None
    assert current_traceparent("fallback") == "fallback"
    from shared.errors import BadRequest

    with pytest.raises(BadRequest):
        setup("test", "zipkin://nowhere")
