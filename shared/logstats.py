"""Stats of invocations, read off the platform lines of the log stores (pure).

Every invocation a worker ran has a report line (duration, `Init Duration` when it
cold-started, its attempt), a failed one an error line naming how it failed, and a sync
call the dispatcher throttled a throttle line (written by the gateway). Counting those
lines is the one counting path: the numbers are the lines a tenant can read, and platform
lines are never dropped by a full buffer (worker/logship.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.logstore import LogRecord, parse_error, parse_report


@dataclass
class Tally:
    """What happened in one window (or one step of it)."""

    invocations: int = 0
    throttles: int = 0
    cold_starts: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)

    def add(self, record: LogRecord) -> None:
        if record.kind != "platform":
            return
        message = record.message
        if message.startswith("RequestId: "):
            report = parse_report(message)
            if report is None:
                return
            self.invocations += 1
            self.durations.append(report[0])
            self.cold_starts += 1 if report[1] else 0
            self.retries += 1 if record.attempt > 1 else 0
        elif message.startswith("FC Invoke Error "):
            error = parse_error(message)
            if error is not None:
                self.errors[error] += 1
        elif message.startswith("FC Invoke Throttled "):
            self.throttles += 1

    def json(self) -> dict[str, Any]:
        ordered = sorted(self.durations)
        return {
            "invocations": self.invocations,
            "errors": sum(self.errors.values()),
            "errorsByType": dict(sorted(self.errors.items())),
            "throttles": self.throttles,
            "durationP50Ms": _quantile(ordered, 0.5),
            "durationP99Ms": _quantile(ordered, 0.99),
            "coldStarts": self.cold_starts,
            "coldStartShare": (
                round(self.cold_starts / self.invocations, 4) if self.invocations else 0.0
            ),
            "retries": self.retries,
        }


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values; None for none."""
    if not ordered:
        return None
    return round(ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))], 3)


def series_steps(since: float, until: float, step: float) -> list[float]:
    """The start of each step of a window."""
    count = max(1, math.ceil((until - since) / step))
    return [since + i * step for i in range(count)]


def summarize(records: list[LogRecord], since: float, until: float, step: float) -> Tally:
    """The window's tally (records outside it are ignored)."""
    total = Tally()
    for record in records:
        if since <= record.time <= until:
            total.add(record)
    return total


def series(
    records: list[LogRecord], since: float, until: float, step: float
) -> list[tuple[float, Tally]]:
    """A tally per step of the window, oldest first."""
    starts = series_steps(since, until, step)
    tallies = [Tally() for _ in starts]
    for record in records:
        if since <= record.time <= until:
            index = min(len(starts) - 1, int((record.time - since) // step))
            tallies[index].add(record)
    return list(zip(starts, tallies, strict=True))
