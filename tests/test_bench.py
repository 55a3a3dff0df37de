"""`python -m bench --smoke`: every benchmark (the peers included) runs end to end in a few
iterations, so the bench command cannot rot. Nothing here looks at how fast anything was:
figures come from full runs of the command, never from tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

from bench.peers import PEERS
from bench.suite import BENCHES
from tests.stack import AMQP_URL

ROOT = Path(__file__).resolve().parent.parent
# The issue 18 targets: one row each, whatever the figures.
TARGET_ROWS = {
    "warm sync invoke over HTTP p50",
    "warm sync invoke over HTTP p99",
    "async no-op e2e, trigger path",
    "async no-op e2e, HTTP path",
    "cold start p50",
    "cold start p50, x faster than python -c",
}


async def queue_exists(name: str) -> bool:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True


@pytest.mark.timeout(400)
def test_the_bench_command_runs_every_benchmark_and_reports_them(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    header = [cell.strip() for cell in done.stdout.splitlines()[0].split("|")]
    assert header == ["metric", "pyfc / peer", "baseline (same run)", "ratio", "target", "met?"]

    [written] = tmp_path.glob("*.json")
    report = json.loads(written.read_text())
    assert report["mode"] == "smoke" and report["failed"] == []
    rows = report["rows"]
    assert {row["bench"] for row in rows} == set(BENCHES)
    assert all(row["value"] is not None for row in rows), [r for r in rows if r["value"] is None]

    targets = {row["metric"]: row for row in rows if (row["target"] or {}).get("source") == "18"}
    assert TARGET_ROWS <= set(targets)
    assert any(metric.startswith("control msgs/s per worker") for metric in targets)
    for metric in TARGET_ROWS:  # each measured against a baseline of the same run
        assert targets[metric]["baseline"] or metric == "cold start p50", metric
        assert targets[metric]["met"] in (True, False), metric

    # The peers ran as workers: each one's tasks were run (a rate above 0), and Celery's
    # round trips came back; their queues are gone again.
    async_rows = {row["subject"]: row for row in rows if row["metric"] == "async no-op end to end"}
    assert set(async_rows) == {peer.name for peer in PEERS}
    assert all(row["value"] > 0 and row["baseline"] > 0 for row in async_rows.values())
    trips = {row["subject"] for row in rows if row["metric"] == "sync round trip p50"}
    assert trips == {peer.name for peer in PEERS if peer.kind == "celery"}
    for queue in report["extra"]["peers"]["queues"]:
        assert not asyncio.run(queue_exists(queue)), queue

    latency = report["latency_ms"]
    assert "round trip: pyfc warm sync invoke over HTTP" in latency
    assert "cold start: forked from the zygote" in latency
    assert written.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
