"""Admission accounting and the async retry rules, without a broker."""

from __future__ import annotations

import json

from dispatcher.admission import Admission
from dispatcher.verdict import (
    EVENT_AGE_EXCEEDED,
    NOT_RETRYABLE,
    RETRIES_EXHAUSTED,
    backoff_ms,
    destination_record,
    judge,
)
from shared.protocol import Invocation, Lineage, Outcome
from shared.topology import backoff_steps


def _pool(adm: Admission[str], tenant: str = "t", reserved: int | None = None, fn: str = "f"):  # type: ignore[no-untyped-def]
    return adm.pool(tenant, "s", fn, tenant_cap=3, reserved_total=1, reserved=reserved)


def test_tenant_pool_is_the_cap_minus_reservations() -> None:
    adm: Admission[str] = Admission()
    shared = _pool(adm)
    assert shared.limit == 2
    assert adm.try_acquire(shared, "a", 60) and adm.try_acquire(shared, "b", 60)
    assert not adm.try_acquire(shared, "c", 60)
    own = _pool(adm, reserved=1, fn="g")
    assert own is not shared and own.limit == 1
    assert adm.try_acquire(own, "c", 60)
    assert not adm.try_acquire(own, "d", 60)


def test_release_frees_only_a_held_slot_once() -> None:
    adm: Admission[str] = Admission()
    pool = _pool(adm)
    assert adm.try_acquire(pool, "a", 60)
    assert adm.release("unknown") is None
    assert adm.release("a") is pool and pool.free == 2
    assert adm.release("a") is None  # a duplicate completion frees nothing
    assert not adm.holds("a")


def test_other_tenants_have_their_own_pools() -> None:
    adm: Admission[str] = Admission()
    full = _pool(adm, tenant="busy")
    assert adm.try_acquire(full, "1", 60) and adm.try_acquire(full, "2", 60)
    other = _pool(adm, tenant="quiet")
    assert adm.try_acquire(other, "3", 60)


def test_lapsed_leases_are_reclaimed() -> None:
    adm: Admission[str] = Admission()
    pool = _pool(adm)
    assert adm.try_acquire(pool, "a", 1) and adm.try_acquire(pool, "b", 100)
    assert adm.expire(now=0) == []
    import time

    assert adm.expire(now=time.monotonic() + 2) == [pool]
    assert not adm.holds("a") and adm.holds("b")


def test_lowering_the_cap_admits_nothing_until_below_it() -> None:
    adm: Admission[str] = Admission()
    pool = _pool(adm)
    assert adm.try_acquire(pool, "a", 60) and adm.try_acquire(pool, "b", 60)
    pool = adm.pool("t", "s", "f", tenant_cap=1, reserved_total=0, reserved=None)
    assert pool.free == -1
    assert not adm.try_acquire(pool, "c", 60)


def _inv(attempt: int = 1, created_at: float = 1000.0) -> Invocation:
    return Invocation(
        id="r1",
        tenant="t",
        service="s",
        function="f",
        kind="async",
        payload=b'{"x": 1}',
        created_at=created_at,
        attempt=attempt,
        lineage=Lineage(trace_id="r1"),
    )


def _outcome(status: str, http_status: int = 200) -> Outcome:
    return Outcome(
        request_id="r1",
        tenant="t",
        status=status,  # type: ignore[arg-type]
        http_status=http_status,
        error_type="" if status == "succeeded" else "X",
    )


STEPS = backoff_steps(1.0, 8.0)


def test_backoff_doubles_then_stays() -> None:
    assert STEPS == [1000, 2000, 4000, 8000]
    assert [backoff_ms(STEPS, a) for a in (1, 2, 3, 4, 5, 9)] == [
        1000, 2000, 4000, 8000, 8000, 8000,
    ]  # fmt: skip


def test_function_errors_retry_up_to_the_limit() -> None:
    rules = {"max_retry_attempts": 2, "max_event_age": 3600.0, "steps_ms": STEPS, "now": 1001.0}
    first = judge(_inv(1), _outcome("function_error"), **rules)  # type: ignore[arg-type]
    assert first.action == "retry" and first.delay_ms == 1000
    assert judge(_inv(2), _outcome("function_error"), **rules).action == "retry"  # type: ignore[arg-type]
    last = judge(_inv(3), _outcome("function_error"), **rules)  # type: ignore[arg-type]
    assert (last.action, last.reason) == ("failed", RETRIES_EXHAUSTED)
    none = judge(_inv(1), _outcome("function_error"), **{**rules, "max_retry_attempts": 0})  # type: ignore[arg-type]
    assert (none.action, none.reason) == ("failed", RETRIES_EXHAUSTED)


def test_system_errors_retry_until_max_age_and_4xx_never() -> None:
    rules = {"max_retry_attempts": 0, "max_event_age": 10.0, "steps_ms": STEPS}
    assert judge(_inv(7), _outcome("system_error", 503), now=1001.0, **rules).action == "retry"  # type: ignore[arg-type]
    old = judge(_inv(7), _outcome("system_error", 503), now=1009.5, **rules)  # type: ignore[arg-type]
    assert (old.action, old.reason) == ("failed", EVENT_AGE_EXCEEDED)
    gone = judge(_inv(1), _outcome("system_error", 404), now=1001.0, **rules)  # type: ignore[arg-type]
    assert (gone.action, gone.reason) == ("failed", NOT_RETRYABLE)
    ok = judge(_inv(1), _outcome("succeeded"), now=5000.0, **rules)  # type: ignore[arg-type]
    assert ok.action == "succeeded"


def test_destination_record_has_the_documented_fields() -> None:
    outcome = _outcome("function_error")
    outcome.body = b"\xff\xfe"
    record = json.loads(destination_record(_inv(4), outcome, RETRIES_EXHAUSTED))
    assert record["requestContext"] == {
        "requestId": "r1",
        "functionArn": "acs:fc:local:t:services/s.LATEST/functions/f",
        "condition": RETRIES_EXHAUSTED,
        "approximateInvokeCount": 4,
    }
    assert record["requestPayload"] == '{"x": 1}'
    assert record["responseContext"] == {"statusCode": 200, "functionError": "X"}
    assert record["responsePayloadEncoding"] == "base64"
    assert set(record) >= {"timestamp", "requestPayload", "responsePayload"}


def test_async_work_is_kept_within_the_fleet_and_tenants_take_turns() -> None:
    adm: Admission[str] = Admission()
    adm.async_limit = 2
    busy = adm.pool("busy", "s", "f", tenant_cap=100, reserved_total=0, reserved=None)
    quiet = adm.pool("quiet", "s", "f", tenant_cap=100, reserved_total=0, reserved=None)
    assert adm.try_acquire(busy, "b1", 60, is_async=True)
    assert adm.try_acquire(busy, "b2", 60, is_async=True)
    assert not adm.try_acquire(busy, "b3", 60, is_async=True)  # the fleet is full
    assert adm.try_acquire(busy, "sync", 60)  # sync is not held back by async work
    for i in range(3, 7):
        adm.wait(busy, f"b{i}")
    adm.wait(quiet, "q1")
    adm.wait(quiet, "q2")
    order = []
    for done in ("b1", "b2", "b3", "q1", "b4", "q2"):
        adm.release(done)
        turn = adm.next_waiting()
        assert turn is not None
        pool, item = turn
        assert adm.try_acquire(pool, item, 60, is_async=True)
        order.append(item)
    assert order == ["b3", "q1", "b4", "q2", "b5", "b6"]  # in turn, each in its order
    assert adm.async_running == 2


def test_the_fleet_share_leaves_room_for_sync_calls() -> None:
    from dispatcher.admission import FleetSlots, async_share

    assert async_share(0) == 0  # unknown fleet: no limit
    assert [async_share(n) for n in (1, 2, 4, 8, 16)] == [1, 1, 3, 6, 12]
    fleet = FleetSlots(expire_after=5)
    fleet.heard("w1", 8, False, now=0)
    fleet.heard("w2", 4, False, now=3)
    assert fleet.total(now=4) == 12
    assert fleet.total(now=6) == 4  # w1 unheard for too long
    fleet.heard("w2", 4, True, now=7)
    assert fleet.total(now=7) == 0
