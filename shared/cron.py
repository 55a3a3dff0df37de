"""Timer schedules: parsing and the next fire time (pure; no clock, no I/O).

Three forms, as Function Compute writes them (`triggerConfig.cronExpression`):

* 6 fields, seconds first: `0 */5 * * * *` (FC's own form);
* 5 fields, classic cron: `*/5 * * * *` (seconds = 0);
* `@every <duration>`: `@every 90s`, `@every 1h30m` (whole seconds, 1 s .. 366 days),
  firing at the multiples of the duration since the Unix epoch, so every replica computes
  the same times without sharing a start time.

A timezone comes from the `timezone` field or a `CRON_TZ=Zone` prefix (both given: they
must agree); default UTC. Field matching is cronsim's (Debian cron's syntax: names,
ranges, steps, lists, `L`, `W`, `#`). Daylight saving time follows Vixie cron / cronie:

* a job whose minute and hour fields are both fixed (neither starts with `*`) is a
  wall-clock job: a time skipped by the spring-forward gap fires once, right after the
  gap (the first instant of the new offset); a time repeated by the fall-back overlap fires
  once, at its first occurrence;
* any other job runs in real time: during the gap there is no local time to match, so
  nothing fires; during the repeated hour it fires in both passes (every 15 minutes stays
  every 15 minutes).

`next_fire(schedule, after)` is the first fire time strictly after `after` (UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from shared.errors import BadRequest

EVERY_MIN_SECONDS = 1
EVERY_MAX_SECONDS = 366 * 86400
_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
_CRON_TZ = re.compile(r"^CRON_TZ=(?P<zone>\S+)\s+(?P<rest>.+)$")
# cronsim looks up to 50 years ahead; a schedule that fires never is refused at parse.
_PROBE = datetime(2000, 1, 1)


class ScheduleError(BadRequest):
    """A cron expression, timezone or duration that cannot be a schedule."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed timer schedule; `every` > 0 for `@every`, else `expression` is 6-field cron."""

    expression: str
    zone: str
    every: int = 0
    # Vixie's wall-clock jobs (fixed minute and hour): DST-adjusted, see the module doc.
    wall_clock: bool = False

    @property
    def tz(self) -> tzinfo:
        return UTC if self.zone == "UTC" else ZoneInfo(self.zone)


def parse_duration(text: str) -> int:
    """`90s`, `5m`, `1h30m`, `2d` -> seconds; ScheduleError naming the problem."""
    m = _DURATION.fullmatch(text.strip())
    if not text.strip() or m is None:
        raise ScheduleError(
            f"cronExpression: bad duration {text!r} in @every: want e.g. 30s, 5m, 1h30m, 2d"
        )
    seconds = (
        int(m["d"] or 0) * 86400
        + int(m["h"] or 0) * 3600
        + int(m["m"] or 0) * 60
        + int(m["s"] or 0)
    )
    if not EVERY_MIN_SECONDS <= seconds <= EVERY_MAX_SECONDS:
        raise ScheduleError(
            f"cronExpression: @every {text} is out of range "
            f"({EVERY_MIN_SECONDS} s to {EVERY_MAX_SECONDS // 86400} days)"
        )
    return seconds


def check_zone(zone: str, field: str = "timezone") -> str:
    """The zone name if the tz database knows it; ScheduleError naming `field` otherwise."""
    if zone.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"{field}: unknown time zone {zone!r}") from e
    return zone


def parse(expression: str, timezone: str = "") -> Schedule:
    """Parse a `cronExpression` (+ optional `timezone`); ScheduleError names the field."""
    text = " ".join(expression.split())
    zone = check_zone(timezone) if timezone else ""
    if m := _CRON_TZ.fullmatch(text):
        prefixed = check_zone(m["zone"], "cronExpression")
        if zone and zone != prefixed:
            raise ScheduleError(
                f"cronExpression: CRON_TZ={prefixed} disagrees with timezone {zone!r}"
            )
        zone, text = prefixed, m["rest"]
    zone = zone or "UTC"
    if text.startswith("@every"):
        return Schedule(expression=text, zone=zone, every=parse_duration(text[len("@every") :]))
    if text.startswith("@"):
        raise ScheduleError(f"cronExpression: unknown shortcut {text.split()[0]!r} (want @every)")
    fields = text.split(" ")
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise ScheduleError(
            f"cronExpression: {expression!r} has {len(fields)} fields; want 6 (seconds first), "
            "5, or @every <duration>"
        )
    six = " ".join(fields)
    try:
        next(CronSim(six, _PROBE))
    except CronSimError as e:
        raise ScheduleError(f"cronExpression: {expression!r}: {e}") from e
    except StopIteration:
        raise ScheduleError(f"cronExpression: {expression!r} never fires") from None
    wall = not fields[1].startswith("*") and not fields[2].startswith("*")
    return Schedule(expression=six, zone=zone, wall_clock=wall)


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first fire time strictly after `after` (aware), as an aware UTC datetime."""
    after = after.astimezone(UTC)
    if schedule.every:
        step = schedule.every
        ts = after.timestamp()
        return datetime.fromtimestamp((int(ts // step) + 1) * step, UTC)
    tz = schedule.tz
    if tz is UTC or not schedule.wall_clock:
        # Real time: cronsim ticks in UTC and matches the local fields of each instant.
        local = after.astimezone(tz).replace(microsecond=0)
        return next(CronSim(schedule.expression, local)).astimezone(UTC)
    return _next_wall_clock(schedule.expression, tz, after)


def _next_wall_clock(expression: str, tz: tzinfo, after: datetime) -> datetime:
    """Vixie's wall-clock rule: iterate local wall times (naive), map each to one instant.

    A wall time in the gap maps to the end of the gap; a repeated one to its first
    occurrence. Both maps keep the order of wall times, so the first candidate that lands
    after `after` is the answer. Start an hour early: `after` may sit in the second pass of
    a repeated hour, whose wall times are behind the first pass's.
    """
    start = after.astimezone(tz).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    for wall in CronSim(expression, start):
        instant = _resolve(wall, tz)
        if instant > after:
            return instant
    raise StopIteration  # pragma: no cover - cronsim stops after 50 years itself


def _resolve(wall: datetime, tz: tzinfo) -> datetime:
    """The instant a local wall time fires at: the first pass if repeated, the gap's end if
    skipped."""
    first = wall.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) == wall:
        return utc
    # In the gap: the first real local minute after it is the instant the clocks jumped.
    probe = wall.replace(second=0)
    while True:
        probe += timedelta(minutes=1)
        candidate = probe.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if candidate.astimezone(tz).replace(tzinfo=None) == probe:
            return candidate


def fires_between(schedule: Schedule, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """Fire times in (start, end], at most the last `limit` of them (catch-up runs)."""
    out: list[datetime] = []
    t = start
    while True:
        t = next_fire(schedule, t)
        if t > end:
            return out
        out.append(t)
        if len(out) > limit:
            del out[0]
