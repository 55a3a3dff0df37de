"""The release model's pure decisions: checks, snapshots, weighted pick, rollback window."""

from __future__ import annotations

import math
import uuid

import pytest

from shared.errors import BadRequest
from shared.models import Function, LogConfig, Service
from shared.release import (
    AliasRoute,
    AutoRollback,
    ErrorWindow,
    check_alias_name,
    check_weights,
    counts_as_error,
    fingerprint,
    is_version_id,
    pick_version,
    share_of,
    should_roll_back,
)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("1", True), ("42", True), ("0", False), ("01", False), ("-1", False), ("LATEST", False),
     ("prod", False), ("1.5", False), ("", False), ("12345678901", False)],
)  # fmt: skip
def test_version_ids(text: str, ok: bool) -> None:
    assert is_version_id(text) is ok


@pytest.mark.parametrize("name", ["prod", "_x", "Blue-1", "a" * 128])
def test_alias_names_accepted(name: str) -> None:
    check_alias_name(name)


@pytest.mark.parametrize("name", ["", "1prod", "LATEST", "a.b", "-x", "a" * 129, "a/b"])
def test_alias_names_refused(name: str) -> None:
    with pytest.raises(BadRequest, match="alias name"):
        check_alias_name(name)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [({}, None), ({"2": 0.1}, (2, 0.1)), ({"3": 0.0}, (3, 0.0)), ({"2": 1}, (2, 1.0))],
)
def test_weights_accepted(weights: dict[str, float], expected: object) -> None:
    assert check_weights("1", weights) == expected


@pytest.mark.parametrize(
    ("weights", "reason"),
    [
        ({"2": 1.5}, "within 0..1"),
        ({"2": -0.1}, "within 0..1"),
        ({"2": math.nan}, "within 0..1"),
        ({"1": 0.5}, "own versionId"),
        ({"2": 0.1, "3": 0.1}, "one version"),
        ({"x": 0.1}, "invalid version id"),
    ],
)
def test_weights_refused(weights: dict[str, float], reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        check_weights("1", weights)


def _fn(**kw: object) -> Function:
    fields: dict[str, object] = {"function_name": "f", "code_checksum": "a" * 64, **kw}
    return Function(service_name="s", **fields)  # type: ignore[arg-type]


def test_fingerprint_sees_config_and_code_not_bookkeeping() -> None:
    svc = Service(service_name="s")
    base = fingerprint(svc, [_fn()])
    assert fingerprint(svc, [_fn(revision=7, last_modified_time="x", function_id="y")]) == base
    assert fingerprint(svc, [_fn(reserved_concurrency=3)]) == base
    assert fingerprint(svc, [_fn(timeout=9.0)]) != base
    assert fingerprint(svc, [_fn(code_checksum="b" * 64)]) != base
    assert fingerprint(svc, [_fn(), _fn(function_name="g")]) != base
    assert fingerprint(Service(service_name="s", environment_variables={"A": "1"}), [_fn()]) != base
    assert fingerprint(Service(service_name="s", log_config=LogConfig(logstore="l")), [_fn()]) != (
        base
    )


def test_pick_is_deterministic_per_request_id() -> None:
    route = AliasRoute(version="1", extra="2", weight=0.5)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    first = [pick_version(route, i) for i in ids]
    assert first == [pick_version(route, i) for i in ids]
    assert {"1", "2"} == set(first)
    assert all(pick_version(AliasRoute(version="1"), i) == "1" for i in ids)
    assert all(pick_version(AliasRoute(version="1", extra="2", weight=0.0), i) == "1" for i in ids)
    assert all(pick_version(AliasRoute(version="1", extra="2", weight=1.0), i) == "2" for i in ids)


def test_pick_shares_follow_the_weight() -> None:
    """20,000 random ids at 10%: the count stays within 6 sigma of the binomial mean (a
    false failure has probability ~2e-9)."""
    n, p = 20_000, 0.1
    route = AliasRoute(version="1", extra="2", weight=p)
    extra = sum(pick_version(route, str(uuid.uuid4())) == "2" for _ in range(n))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(extra - n * p) < 6 * sigma, extra
    assert all(0.0 <= share_of(str(uuid.uuid4())) < 1.0 for _ in range(1000))


def test_canary_is_watched_only_with_a_share_and_a_config() -> None:
    cfg = AutoRollback(max_error_rate=0.2)
    assert AliasRoute(version="1", extra="2", weight=0.1, auto_rollback=cfg).canary == "2"
    assert AliasRoute(version="1", extra="2", weight=0.0, auto_rollback=cfg).canary == ""
    assert AliasRoute(version="1", extra="2", weight=0.1).canary == ""
    assert AliasRoute(version="1", auto_rollback=cfg).canary == ""


def test_error_window_slides() -> None:
    window = ErrorWindow(10)
    for t in range(10):
        window.add(1000.0 + t, error=t % 2 == 0)
    assert (window.total, window.errors) == (10, 5)
    window.add(1010.5, error=False)  # 1000's bucket left the window
    assert (window.total, window.errors) == (10, 4)
    window.expire(1100.0)
    assert (window.total, window.errors) == (0, 0)


@pytest.mark.parametrize(
    ("errors", "total", "trips"),
    [(0, 100, False), (20, 100, False), (21, 100, True), (10, 19, False), (5, 20, True),
     (4, 20, False), (20, 20, True)],
)  # fmt: skip
def test_should_roll_back(errors: int, total: int, trips: bool) -> None:
    cfg = AutoRollback(max_error_rate=0.2, window_seconds=60, min_invocations=20)
    assert should_roll_back(errors, total, cfg) is trips


def test_only_function_failures_count() -> None:
    assert counts_as_error("function_error")
    assert not counts_as_error("succeeded")
    assert not counts_as_error("system_error")
