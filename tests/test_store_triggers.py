"""Trigger persistence on both backends: claims, takeover, finishing, first admission."""

from __future__ import annotations

import time
import uuid

from shared.models import Function, InvocationRecord, Service, Trigger
from shared.store import Store
from shared.store_triggers import Fire
from tests import test_store
from tests.test_store import new_tenant

# The store fixtures of tests/test_store.py (SQLite and PostgreSQL).
pg_url, db_url, store = test_store.pg_url, test_store.db_url, test_store.store


async def _trigger(store: Store) -> tuple[str, str]:
    tenant = await new_tenant(store)
    await store.create_service(tenant, Service(service_name="s"))
    await store.create_function(
        tenant, "s", Function(function_name="f", service_name="s", code_checksum="0" * 64)
    )
    created = await store.create_trigger(
        tenant,
        "s",
        "f",
        Trigger(
            trigger_name="t", trigger_type="timer", trigger_config={"cronExpression": "@every 1s"}
        ),
    )
    return tenant, created.trigger_id


def _fires(tenant: str, trigger_id: str, *seconds: int) -> list[Fire]:
    return [Fire(trigger_id, s * 1000, tenant, str(uuid.uuid4())) for s in seconds]


async def test_one_claim_per_time_and_takeover_after_the_lease(store: Store) -> None:
    tenant, tid = await _trigger(store)
    now = time.time()
    fires = _fires(tenant, tid, 100, 101, 102)
    assert await store.claim_fires(fires, "a", now + 5) == fires
    # Another replica claims the same times (and one new one): only the new one is its.
    again = _fires(tenant, tid, 101, 103)
    assert [f.scheduled_ms for f in await store.claim_fires(again, "b", now + 5)] == [103_000]
    assert await store.finish_fires(fires[:1], "a", "published") == 1
    assert await store.finish_fires(fires[1:2], "b", "published") == 0  # not b's claim
    # Nothing lapsed yet; once lapsed, b takes a's open claims over (each once).
    assert await store.take_over_lapsed("b", now, now + 5) == []
    taken = await store.take_over_lapsed("b", now + 10, now + 15)
    assert sorted(f.scheduled_ms for f in taken) == [101_000, 102_000, 103_000]
    assert await store.take_over_lapsed("c", now + 10, now + 15) == []
    assert await store.finish_fires(fires[1:], "a", "published") == 0  # a lost them
    assert await store.finish_fires(fires[1:], "b", "skipped") == 2
    assert await store.extend_fire(again[1], "b", now + 30)
    assert await store.last_fires([tid]) == {tid: 103_000}
    # The previous run of 103: 100 published, 101-102 skipped, nothing earlier pending.
    previous = await store.previous_run(tid, 103_000)
    assert previous is not None and previous.request_id == fires[0].request_id
    assert previous.status is None and not previous.earlier_pending
    assert (await store.previous_run(tid, 104_000)).earlier_pending  # type: ignore[union-attr]
    assert await store.prune_fires(102_500) == 3  # finished ones only
    assert await store.last_fires([tid]) == {tid: 103_000}


async def test_a_clean_stop_hands_back_its_open_claims_at_once(store: Store) -> None:
    tenant, tid = await _trigger(store)
    now = time.time()
    fires = _fires(tenant, tid, 200, 201, 202)
    assert await store.claim_fires(fires, "a", now + 60) == fires
    assert await store.claim_fires(_fires(tenant, tid, 203), "b", now + 60)
    assert await store.finish_fires(fires[:1], "a", "published") == 1
    # Before: nothing to take over for another minute.
    assert await store.take_over_lapsed("c", now, now + 5) == []
    # a stops cleanly: its two open claims (not the published one, not b's) are free now.
    assert await store.release_fires("a") == 2
    taken = await store.take_over_lapsed("c", now, now + 5)
    assert sorted(f.scheduled_ms for f in taken) == [201_000, 202_000]
    assert await store.release_fires("a") == 0


async def test_first_admission_once_per_id_and_again_after_a_redrive(store: Store) -> None:
    tenant, _ = await _trigger(store)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for request_id in ids:
        await store.record_accepted(
            InvocationRecord(
                request_id=request_id,
                tenant=tenant,
                service_name="s",
                qualifier="LATEST",
                function_name="f",
                origin="timer:t",
            )
        )
    assert await store.admit_first(tenant, ids[:2]) == set(ids[:2])
    assert await store.admit_first(tenant, ids) == {ids[2]}
    assert await store.admit_first(tenant, ids) == set()
    assert (await store.get_invocation(tenant, ids[0])).origin == "timer:t"
    await store.reenqueue(tenant, ids[0], "s", "LATEST", "f")
    assert await store.admit_first(tenant, ids) == {ids[0]}
