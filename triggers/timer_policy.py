"""Timer decisions, pure: which missed runs to catch up, what to do about an overlap."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from shared import cron
from shared.models import InvocationStatus
from shared.trigger_types import MissedRuns, Overlap

# A running scheduler that wakes this late (a stalled loop) does not fire what it missed
# meanwhile one by one: other replicas did, and missedRuns applies at the next load.
LATE_GRACE_SECONDS = 2.0

OverlapVerdict = Literal["fire", "skip", "wait"]


def catch_up(
    schedule: cron.Schedule,
    policy: MissedRuns,
    baseline: float,
    now: float,
    window: float,
    limit: int,
) -> list[float]:
    """Scheduled times (epoch s) missed since `baseline` that the policy fires now.

    Missed = due after `baseline` (the last fire, or when the trigger was last changed or
    enabled) and up to `now` (when the schedule is loaded: at start, or after a change);
    only those within `window` seconds of `now` count. `skip`: none; `once`: the latest;
    `all`: each, oldest first, at most the latest `limit`.
    """
    if policy == "skip":
        return []
    start = max(baseline, now - window)
    end = now
    if end <= start:
        return []
    missed = cron.fires_between(
        schedule,
        datetime.fromtimestamp(start, UTC),
        datetime.fromtimestamp(end, UTC),
        1 if policy == "once" else limit,
    )
    return [t.timestamp() for t in missed]


def first_due(schedule: cron.Schedule, baseline: float, now: float) -> float:
    """The first regular fire: after the baseline and after `now` (what is due before is
    missed: `catch_up` decides)."""
    after = max(baseline, now)
    return cron.next_fire(schedule, datetime.fromtimestamp(after, UTC)).timestamp()


def overlap_verdict(policy: Overlap, previous: InvocationStatus | None) -> OverlapVerdict:
    """Whether a fire runs while its trigger's previous run is unfinished.

    `previous` is the status of the last published fire's invocation (None: there is
    none, or it left no record). `allow` fires regardless; `skip` drops this fire; `queue`
    waits for the previous run to finish, then fires.
    """
    if policy == "allow" or previous in (None, "Succeeded", "Failed"):
        return "fire"
    return "skip" if policy == "skip" else "wait"
