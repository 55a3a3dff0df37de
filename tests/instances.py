"""Helpers for tests that run real function instances (child processes)."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.protocol import FunctionSpec, Invocation, Lineage

# How late past its 0.5 s timeout a function's answer may come (the kill and its report):
# measured 6-44 ms over 16 runs on 2 cores shared with other tests; a timeout taking twice
# as long fails. For an initializer's 0.5 s timeout, the instance's start too: 50-153 ms.
TIMEOUT_SLACK = 0.45
START_SLACK = 0.45


def write_code(root: Path, source: str, module: str = "index") -> Path:
    """A code directory holding `<module>.py` with `source` (dedented)."""
    code = root / f"code-{uuid.uuid4().hex[:8]}"
    code.mkdir()
    (code / f"{module}.py").write_text(textwrap.dedent(source))
    return code


def make_spec(**fields: Any) -> FunctionSpec:
    base: dict[str, Any] = {
        "tenant": "t1",
        "service": "svc",
        "function": "fn",
        "timeout": 10.0,
        "initialization_timeout": 10.0,
        "code_digest": uuid.uuid4().hex,
    }
    return FunctionSpec(**(base | fields))


def make_inv(payload: bytes = b"", *, deadline: float = 0.0, attempt: int = 1) -> Invocation:
    return Invocation(
        id=f"r-{uuid.uuid4().hex[:12]}",
        tenant="t1",
        service="svc",
        function="fn",
        payload=payload,
        deadline=deadline,
        attempt=attempt,
        lineage=Lineage(trace_id="trace-1"),
    )


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def bootstrap_children() -> list[int]:
    """Live `worker.child.bootstrap` processes whose parent is this test process."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if (
            int(fields[1]) == me
            and fields[0] not in ("Z", "X")
            and b"worker.child.bootstrap" in cmdline
        ):
            found.append(int(entry))
    return found


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)
