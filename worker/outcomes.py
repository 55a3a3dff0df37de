"""How each way an invocation can end on an instance becomes an `Outcome` (pure builders).

Function failures use FC's unhandled-error body `{"errorMessage", "errorType",
"stackTrace"}` with `error_type="UnhandledInvocationError"`, so callers see the same shape
whether the handler raised, timed out, crashed its process or never started.
"""

from __future__ import annotations

import msgspec

from shared.protocol import Invocation, Outcome, system_outcome
from worker.child.frames import Result

UNHANDLED = "UnhandledInvocationError"


def error_body(error_type: str, message: str, stack_trace: list[str] | None = None) -> bytes:
    """FC's unhandled-error body; `stackTrace` only when there is one to show."""
    body: dict[str, object] = {"errorMessage": message, "errorType": error_type}
    if stack_trace is not None:
        body["stackTrace"] = stack_trace
    return msgspec.json.encode(body)


def from_result(inv: Invocation, instance_id: str, result: Result, *, cold: bool) -> Outcome:
    """The handler returned (`ok`) or raised: status 200 either way, as FC does."""
    outcome = Outcome(
        request_id=inv.id,
        tenant=inv.tenant,
        status="succeeded",
        body=result.body,
        log_tail=result.log,
        duration_ms=result.duration_ms,
        instance_id=instance_id,
        cold_start=cold,
        attempt=inv.attempt,
        max_memory_kb=result.max_rss_kb,
        log_lines=result.lines,
    )
    if not result.ok:
        outcome.status = "function_error"
        outcome.error_type = UNHANDLED
        outcome.error_message = f"{result.error_type}: {result.error_message}"
        outcome.body = error_body(result.error_type, result.error_message, result.stack_trace)
    return outcome


def _failure(
    inv: Invocation,
    instance_id: str,
    error_type: str,
    message: str,
    *,
    http_status: int,
    cold: bool,
    duration_ms: float = 0.0,
    stack_trace: list[str] | None = None,
    log: bytes = b"",
) -> Outcome:
    return Outcome(
        request_id=inv.id,
        tenant=inv.tenant,
        status="function_error",
        body=error_body(error_type, message, stack_trace),
        error_type=UNHANDLED,
        error_message=f"{error_type}: {message}",
        http_status=http_status,
        log_tail=log,
        duration_ms=duration_ms,
        instance_id=instance_id,
        cold_start=cold,
        attempt=inv.attempt,
    )


def timed_out(
    inv: Invocation, instance_id: str, budget: float, elapsed_ms: float, *, cold: bool
) -> Outcome:
    """The function ran past its timeout (or the caller's deadline) and was killed."""
    message = f"Function timed out after {round(budget, 3):g}s"
    return _failure(
        inv,
        instance_id,
        "FunctionTimeout",
        message,
        http_status=504,
        cold=cold,
        duration_ms=elapsed_ms,
    )


def crashed(
    inv: Invocation, instance_id: str, reason: str, *, cold: bool, log: bytes = b""
) -> Outcome:
    """The instance process died mid-request (segfault, os._exit, OOM kill, ...)."""
    return _failure(
        inv, instance_id, "InstanceCrashed", reason, http_status=502, cold=cold, log=log
    )


def out_of_memory(
    inv: Invocation, instance_id: str, memory_size: int, *, cold: bool, log: bytes = b""
) -> Outcome:
    """The instance went over its memorySize: OOM-killed by its cgroup, or MemoryError."""
    message = f"instance exceeded memorySize {memory_size} MB"
    return _failure(inv, instance_id, "OutOfMemory", message, http_status=502, cold=cold, log=log)


def start_failed(
    inv: Invocation, error_type: str, message: str, stack_trace: list[str], log: bytes
) -> Outcome:
    """No instance could be started: import error, initializer failure or timeout."""
    return _failure(
        inv, "", error_type, message, http_status=200, cold=True, stack_trace=stack_trace, log=log
    )


def late(inv: Invocation, instance_id: str) -> Outcome:
    """The caller's deadline passed before the function could start; nothing ran."""
    outcome = system_outcome(
        inv, "DeadlineExceeded", "the invocation deadline passed before the function started", 504
    )
    outcome.instance_id = instance_id
    return outcome


def unavailable(inv: Invocation) -> Outcome:
    """The worker is shutting down; the dispatcher retries system errors elsewhere."""
    return system_outcome(inv, "ServiceUnavailable", "the worker is shutting down", 503)
