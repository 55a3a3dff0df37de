"""Timer decisions (triggers/timer_policy.py): missed runs and overlaps, as tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import cron
from triggers.timer_policy import catch_up, first_due, overlap_verdict

T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC).timestamp()
EVERY_10S = cron.parse("@every 10s")
HOURLY = cron.parse("0 0 * * * *")


@pytest.mark.parametrize(
    ("schedule", "policy", "baseline", "now", "window", "limit", "expected"),
    [
        # Down from T0 to T0+35: due at +10, +20, +30.
        (EVERY_10S, "skip", T0, T0 + 35, 3600, 100, []),
        (EVERY_10S, "once", T0, T0 + 35, 3600, 100, [30]),
        (EVERY_10S, "all", T0, T0 + 35, 3600, 100, [10, 20, 30]),
        # A time due exactly at the load counts as missed (the regular schedule starts after).
        (EVERY_10S, "all", T0, T0 + 30, 3600, 100, [10, 20, 30]),
        # Bounded: by the window, then by the limit (the latest are kept).
        (EVERY_10S, "all", T0, T0 + 35, 16, 100, [20, 30]),
        (EVERY_10S, "all", T0, T0 + 35, 3600, 2, [20, 30]),
        (EVERY_10S, "once", T0, T0 + 35, 3, 100, []),
        # Nothing due since the baseline.
        (EVERY_10S, "all", T0 + 31, T0 + 35, 3600, 100, []),
        (HOURLY, "once", T0 - 1, T0 + 7300, 86400, 100, [7200]),
        (HOURLY, "all", T0 - 1, T0 + 7300, 86400, 100, [0, 3600, 7200]),
    ],
)
def test_catch_up(
    schedule: cron.Schedule,
    policy: str,
    baseline: float,
    now: float,
    window: float,
    limit: int,
    expected: list[int],
) -> None:
    got = catch_up(schedule, policy, baseline, now, window, limit)  # type: ignore[arg-type]
    assert [round(t - T0) for t in got] == expected


@pytest.mark.parametrize(
    ("baseline", "now", "expected"),
    [(T0, T0 + 35, 40), (T0 + 41, T0 + 35, 50), (T0, T0 + 40, 50), (T0, T0 + 39.9, 40)],
)
def test_first_due_is_after_the_baseline_and_now(
    baseline: float, now: float, expected: int
) -> None:
    assert round(first_due(EVERY_10S, baseline, now) - T0) == expected


@pytest.mark.parametrize(
    ("policy", "previous", "verdict"),
    [
        ("allow", "Enqueued", "fire"),
        ("skip", None, "fire"),
        ("skip", "Succeeded", "fire"),
        ("skip", "Failed", "fire"),
        ("skip", "Enqueued", "skip"),
        ("skip", "Running", "skip"),
        ("queue", "Enqueued", "wait"),
        ("queue", "Succeeded", "fire"),
        ("queue", None, "fire"),
    ],
)
def test_overlap_verdict(policy: str, previous: str | None, verdict: str) -> None:
    assert overlap_verdict(policy, previous) == verdict  # type: ignore[arg-type]
