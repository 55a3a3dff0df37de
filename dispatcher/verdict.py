"""What happens after an async attempt: done, retried (after how long) or given up (why).

Pure functions of the outcome, the envelope and the function's async config, so the
rules are tested without a broker:

- success: recorded, then the onSuccess destination;
- a function error (the handler raised, timed out, crashed or ran out of memory, or its
  initializer failed): retried up to `maxAsyncRetryAttempts` times with backoff;
- a system error of ours (5xx: worker shutting down, code store unreachable): retried
  with exponential backoff for as long as the event is younger than its max age;
- a client-class system error (4xx: the function was deleted, say): not retried;
- whichever retry would land after the event's max age is not made (EventAgeExceeded).
Given up: recorded Failed, the onFailure destination, and a dead letter.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Literal

import msgspec

from shared.protocol import Invocation, Outcome

# Dead-letter reasons (and onFailure conditions).
RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"
NOT_RETRYABLE = "NotRetryable"
LOOP_DETECTED = "RecursiveLoopDetected"
DESTINATION_FAILED = "DestinationFailed"
SUCCESS = "Success"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["succeeded", "retry", "failed"]
    reason: str = ""
    delay_ms: int = 0


def backoff_ms(steps_ms: list[int], attempt: int) -> int:
    """Delay before attempt `attempt + 1`: the steps double, then stay at the longest."""
    return steps_ms[min(max(attempt, 1) - 1, len(steps_ms) - 1)]


def expired(inv: Invocation, max_age: float, now: float, delay_s: float = 0.0) -> bool:
    """Whether the event would be older than its max age `delay_s` from now."""
    return bool(inv.created_at) and now + delay_s > inv.created_at + max_age


def judge(
    inv: Invocation,
    outcome: Outcome,
    *,
    max_retry_attempts: int,
    max_event_age: float,
    steps_ms: list[int],
    now: float | None = None,
) -> Verdict:
    now = time.time() if now is None else now
    if outcome.status == "succeeded":
        return Verdict("succeeded", SUCCESS)
    if outcome.status == "system_error" and outcome.http_status < 500:
        return Verdict("failed", NOT_RETRYABLE)
    if outcome.status == "function_error" and inv.attempt > max_retry_attempts:
        return Verdict("failed", RETRIES_EXHAUSTED)
    delay = backoff_ms(steps_ms, inv.attempt)
    if expired(inv, max_event_age, now, delay / 1000):
        return Verdict("failed", EVENT_AGE_EXCEEDED)
    return Verdict("retry", delay_ms=delay)


# Each payload in a destination record is cut to this size: records of records (a function
# destination chain) would otherwise grow geometrically with every hop's JSON escaping.
MAX_RECORD_PAYLOAD = 256 * 1024


def _text(data: bytes) -> tuple[str, str]:
    """Payload as text (UTF-8, else base64) and its encoding, cut to the record limit."""
    truncated = len(data) > MAX_RECORD_PAYLOAD
    data = data[:MAX_RECORD_PAYLOAD]
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        if truncated:  # the cut may split a character: drop the partial tail
            text, encoding = data.decode("utf-8", errors="ignore"), "utf-8"
        else:
            text, encoding = base64.b64encode(data).decode(), "base64"
    return text, encoding + ("+truncated" if truncated else "")


def function_arn(inv: Invocation) -> str:
    return (
        f"acs:fc:local:{inv.tenant}:services/{inv.service}.{inv.qualifier}/functions/{inv.function}"
    )


def destination_record(inv: Invocation, outcome: Outcome | None, condition: str) -> bytes:
    """The record a destination receives (DESIGN's format, FC/Lambda field names).

    Payloads are text when they are UTF-8, else base64 (`requestPayloadEncoding` /
    `responsePayloadEncoding` say which).
    """
    request, request_encoding = _text(inv.payload)
    record: dict[str, object] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requestContext": {
            "requestId": inv.id,
            "functionArn": function_arn(inv),
            "condition": condition,
            "approximateInvokeCount": inv.attempt,
        },
        "requestPayload": request,
        "requestPayloadEncoding": request_encoding,
        "responseContext": {
            "statusCode": outcome.http_status if outcome is not None else 0,
            "functionError": (
                outcome.error_type if outcome is not None and outcome.status != "succeeded" else ""
            ),
        },
    }
    if outcome is not None:
        response, response_encoding = _text(outcome.body)
        record["responsePayload"] = response
        record["responsePayloadEncoding"] = response_encoding
        if outcome.status == "system_error":
            record["responsePayload"] = msgspec.json.encode(
                {"errorCode": outcome.error_type, "errorMessage": outcome.error_message}
            ).decode()
            record["responsePayloadEncoding"] = "utf-8"
    return msgspec.json.encode(record)
