"""Next-fire tables for timer schedules (shared/cron.py): pure, no clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import cron
from shared.errors import BadRequest


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expression: str, after: str, n: int, timezone: str = "") -> list[str]:
    schedule = cron.parse(expression, timezone)
    out, t = [], utc(after)
    for _ in range(n):
        t = cron.next_fire(schedule, t)
        out.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


@pytest.mark.parametrize(
    ("expression", "timezone", "after", "expected"),
    [
        # 6 fields, seconds first (FC's form).
        (
            "0 */5 * * * *",
            "",
            "2024-05-01T10:02:13",
            ["2024-05-01T10:05:00Z", "2024-05-01T10:10:00Z"],
        ),
        (
            "*/20 * * * * *",
            "",
            "2024-05-01T10:00:00",
            ["2024-05-01T10:00:20Z", "2024-05-01T10:00:40Z"],
        ),
        (
            "30 0 4 * * *",
            "",
            "2024-05-01T04:00:30",
            ["2024-05-02T04:00:30Z", "2024-05-03T04:00:30Z"],
        ),
        (
            "0 0 9 * * MON-FRI",
            "",
            "2024-05-03T09:00:00",
            ["2024-05-06T09:00:00Z", "2024-05-07T09:00:00Z"],
        ),
        # 5 fields: seconds are 0.
        (
            "*/5 * * * *",
            "",
            "2024-05-01T10:02:13",
            ["2024-05-01T10:05:00Z", "2024-05-01T10:10:00Z"],
        ),
        (
            "0 12 1 JAN,JUL *",
            "",
            "2024-02-01T00:00:00",
            ["2024-07-01T12:00:00Z", "2025-01-01T12:00:00Z"],
        ),
        # Strictly after: a time equal to `after` is not returned again.
        (
            "0 * * * * *",
            "",
            "2024-05-01T10:00:00",
            ["2024-05-01T10:01:00Z", "2024-05-01T10:02:00Z"],
        ),
        # Feb 29: only leap years.
        (
            "0 0 0 29 2 *",
            "",
            "2024-03-01T00:00:00",
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"],
        ),
        ("0 0 29 2 *", "", "2023-01-01T00:00:00", ["2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z"]),
        # Time zones: the field and the CRON_TZ= prefix.
        (
            "0 0 8 * * *",
            "Asia/Shanghai",
            "2024-05-01T00:00:00",
            ["2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"],
        ),
        (
            "CRON_TZ=Asia/Shanghai 0 0 8 * * *",
            "",
            "2024-05-01T00:00:00",
            ["2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"],
        ),
        (
            "CRON_TZ=Asia/Kolkata 30 9 * * *",
            "",
            "2024-05-01T00:00:00",
            ["2024-05-01T04:00:00Z", "2024-05-02T04:00:00Z"],
        ),
        # @every: multiples of the duration since the epoch.
        (
            "@every 1s",
            "",
            "2024-05-01T10:00:00.4",
            ["2024-05-01T10:00:01Z", "2024-05-01T10:00:02Z"],
        ),
        ("@every 90s", "", "2024-05-01T10:00:00", ["2024-05-01T10:01:30Z", "2024-05-01T10:03:00Z"]),
        (
            "@every 1h30m",
            "",
            "2024-05-01T10:00:00",
            ["2024-05-01T10:30:00Z", "2024-05-01T12:00:00Z"],
        ),
        ("@every 2d", "", "2024-05-01T10:00:00", ["2024-05-03T00:00:00Z", "2024-05-05T00:00:00Z"]),
        (
            "CRON_TZ=Asia/Shanghai @every 5m",
            "",
            "2024-05-01T10:01:00",
            ["2024-05-01T10:05:00Z", "2024-05-01T10:10:00Z"],
        ),
    ],
)
def test_next_fire(expression: str, timezone: str, after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected), timezone) == expected


# America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z); 2024-11-03 02:00 EDT ->
# 01:00 EST (06:00Z), so 01:00-01:59 local happens twice (05:00-05:59Z and 06:00-06:59Z).
NY = "America/New_York"


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # Wall-clock job in the spring gap: fires once, at the gap's end (03:00 EDT).
        ("0 30 2 * * *", "2024-03-09T08:00:00", ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"]),
        ("30 2 * * *", "2024-03-09T08:00:00", ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"]),
        # Every second of 02:30 local: still one fire on the gap day.
        ("* 30 2 * * *", "2024-03-10T06:59:59", ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"]),
        # Just outside the gap: normal.
        ("0 30 1 * * *", "2024-03-09T08:00:00", ["2024-03-10T06:30:00Z", "2024-03-11T05:30:00Z"]),
        ("0 30 3 * * *", "2024-03-09T08:00:00", ["2024-03-09T08:30:00Z", "2024-03-10T07:30:00Z"]),
        # Wall-clock job in the repeated hour: once, at the first pass (EDT).
        ("0 30 1 * * *", "2024-11-02T06:00:00", ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]),
        # ...also when asked from inside the repeated hour's first pass.
        ("0 30 1 * * *", "2024-11-03T05:31:00", ["2024-11-04T06:30:00Z"]),
        # Real-time jobs: nothing in the gap, both passes of the repeated hour.
        ("0 */20 * * * *", "2024-03-10T06:30:00", ["2024-03-10T06:40:00Z", "2024-03-10T07:00:00Z"]),
        (
            "0 */30 * * * *",
            "2024-11-03T04:45:00",
            [
                "2024-11-03T05:00:00Z",
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-03T07:00:00Z",
            ],
        ),
        # Hourly at :15 (hour is a wildcard): real time, both 01:15s.
        ("0 15 * * * *", "2024-11-03T05:00:00", ["2024-11-03T05:15:00Z", "2024-11-03T06:15:00Z"]),
        # @every ignores the zone's DST: a fixed period.
        ("@every 1h", "2024-11-03T05:00:00", ["2024-11-03T06:00:00Z", "2024-11-03T07:00:00Z"]),
    ],
)
def test_dst(expression: str, after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected), NY) == expected


def test_dst_europe_wall_clock_gap_and_overlap() -> None:
    # Europe/Berlin: 2024-03-31 02:00 -> 03:00 (01:00Z); 2024-10-27 03:00 -> 02:00 (01:00Z).
    assert fires("0 30 2 * * *", "2024-03-30T12:00:00", 2, "Europe/Berlin") == [
        "2024-03-31T01:00:00Z",
        "2024-04-01T00:30:00Z",
    ]
    assert fires("0 30 2 * * *", "2024-10-26T12:00:00", 2, "Europe/Berlin") == [
        "2024-10-27T00:30:00Z",
        "2024-10-28T01:30:00Z",
    ]


def test_fires_between_keeps_the_last_ones() -> None:
    schedule = cron.parse("@every 10s")
    start, end = utc("2024-05-01T10:00:00"), utc("2024-05-01T10:01:00")
    assert [t.second for t in cron.fires_between(schedule, start, end, 100)] == [
        10,
        20,
        30,
        40,
        50,
        0,
    ]
    assert [t.second for t in cron.fires_between(schedule, start, end, 2)] == [50, 0]


@pytest.mark.parametrize(
    ("expression", "timezone", "names"),
    [
        ("", "", "fields"),
        ("* * * *", "", "fields"),
        ("* * * * * * *", "", "fields"),
        ("61 * * * * *", "", "cronExpression"),
        ("0 0 25 * * *", "", "cronExpression"),
        ("0 0 0 31 2 *", "", "day-of-month"),
        ("@daily", "", "unknown shortcut"),
        ("@every", "", "bad duration"),
        ("@every 10x", "", "bad duration"),
        ("@every 0s", "", "out of range"),
        ("@every 400d", "", "out of range"),
        ("0 * * * * *", "Mars/Olympus", "timezone: unknown time zone"),
        ("CRON_TZ=Nowhere/City 0 * * * * *", "", "cronExpression: unknown time zone"),
        ("CRON_TZ=Asia/Tokyo 0 * * * * *", "Europe/Paris", "disagrees"),
    ],
)
def test_bad_schedules_name_the_field(expression: str, timezone: str, names: str) -> None:
    with pytest.raises(BadRequest) as e:
        cron.parse(expression, timezone)
    assert names in e.value.message
    assert e.value.status == 400
