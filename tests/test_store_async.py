"""Store: async and provision configs, dead letters, tenant caps, reserved concurrency.

Against real SQLite files and a real PostgreSQL, like tests/test_store.py (whose fixtures
this module reuses).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.errors import (
    AsyncConfigNotFound,
    BadRequest,
    DeadLetterNotFound,
    FunctionNotFound,
    InvocationNotFound,
    NotFound,
    ProvisionConfigNotFound,
    ReservationExceeded,
    ServiceNotFound,
)
from shared.models import (
    AsyncConfig,
    DeadLetter,
    DestinationConfig,
    DestinationTarget,
    Function,
    InvocationRecord,
    InvocationStatus,
    ProvisionConfig,
    Service,
)
from shared.store import Store
from tests import test_store as base
from tests.test_store import new_tenant

# The same backends and databases as tests/test_store.py.
pg_url, db_url, store = base.pg_url, base.db_url, base.store


async def with_function(store: Store, reserved: int | None = None) -> str:
    t = await new_tenant(store)  # concurrency 10
    await store.create_service(t, Service(service_name="svc"))
    await store.create_function(
        t, "svc", Function(function_name="f", service_name="svc", reserved_concurrency=reserved)
    )
    return t


def letter(rid: str, service: str = "svc", function: str = "f", **over: object) -> DeadLetter:
    fields: dict[str, object] = {
        "request_id": rid,
        "service_name": service,
        "qualifier": "LATEST",
        "function_name": function,
        "reason": "RetriesExhausted",
        **over,
    }
    return DeadLetter(**fields)  # type: ignore[arg-type]


# -- tenants ---------------------------------------------------------------------------


async def test_update_tenant(store: Store) -> None:
    t = await new_tenant(store)
    assert (await store.get_tenant(t)).max_chain_depth == 16
    changed = await store.update_tenant(t, concurrency=20, max_chain_depth=5)
    assert (changed.concurrency, changed.max_chain_depth) == (20, 5)
    assert await store.get_tenant(t) == changed
    assert (await store.update_tenant(t, max_chain_depth=7)).concurrency == 20
    for bad in ({"concurrency": 0}, {"max_chain_depth": 0}, {}):
        with pytest.raises(BadRequest):
            await store.update_tenant(t, **bad)
    with pytest.raises(NotFound):
        await store.update_tenant(f"t-{uuid.uuid4().hex[:12]}", concurrency=3)


async def test_lowering_concurrency_below_reservations_is_refused(store: Store) -> None:
    t = await with_function(store, reserved=6)
    assert await store.reserved_total(t) == 6
    with pytest.raises(ReservationExceeded):
        await store.update_tenant(t, concurrency=5)
    assert (await store.get_tenant(t)).concurrency == 10
    assert (await store.update_tenant(t, concurrency=6)).concurrency == 6


# -- reserved concurrency --------------------------------------------------------------


async def test_reservations_add_up_to_at_most_the_cap(store: Store) -> None:
    t = await with_function(store, reserved=4)
    f = await store.get_function(t, "svc", "f")
    assert f.reserved_concurrency == 4
    await store.create_function(
        t, "svc", Function(function_name="g", service_name="svc", reserved_concurrency=6)
    )
    assert await store.reserved_total(t) == 10
    with pytest.raises(ReservationExceeded):
        await store.create_function(
            t, "svc", Function(function_name="h", service_name="svc", reserved_concurrency=1)
        )
    with pytest.raises(FunctionNotFound):
        await store.get_function(t, "svc", "h")
    with pytest.raises(ReservationExceeded):
        await store.update_function(t, "svc", "f", {"reserved_concurrency": 5})
    with pytest.raises(BadRequest):  # can never fit, whatever the others hold
        await store.update_function(t, "svc", "f", {"reserved_concurrency": 11})
    with pytest.raises(BadRequest):
        await store.update_function(t, "svc", "f", {"reserved_concurrency": -1})
    # Its own old reservation does not count against the new one; no revision bump.
    same = await store.update_function(t, "svc", "f", {"reserved_concurrency": 3})
    assert (same.reserved_concurrency, same.revision) == (3, f.revision)
    cleared = await store.update_function(t, "svc", "g", {"reserved_concurrency": None})
    assert cleared.reserved_concurrency is None
    assert await store.reserved_total(t) == 3
    # Zero is a reservation too (the function is switched off), not "none".
    zero = await store.update_function(t, "svc", "g", {"reserved_concurrency": 0})
    assert zero.reserved_concurrency == 0
    bumped = await store.update_function(t, "svc", "f", {"timeout": 9})
    assert bumped.revision == f.revision + 1 and bumped.reserved_concurrency == 3


async def test_concurrent_reservations_cannot_both_take_the_last_slots(store: Store) -> None:
    t = await with_function(store)
    for name in "abcdeg":
        await store.create_function(t, "svc", Function(function_name=name, service_name="svc"))
    # Six functions ask for 4 of the 10 slots at once: only two can have them.
    results = await asyncio.gather(
        *(store.update_function(t, "svc", n, {"reserved_concurrency": 4}) for n in "abcdeg"),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Function)]
    lost = [r for r in results if isinstance(r, ReservationExceeded)]
    assert (len(won), len(lost)) == (2, 4), results
    assert await store.reserved_total(t) == 8


# -- async and provision configs -------------------------------------------------------


async def test_async_config_lifecycle(store: Store) -> None:
    t = await with_function(store)
    with pytest.raises(AsyncConfigNotFound):
        await store.get_async_config(t, "svc", "LATEST", "f")
    dest = DestinationConfig(on_failure=DestinationTarget(destination="mq:events/failed"))
    cfg = AsyncConfig(
        service_name="svc",
        function_name="f",
        max_async_retry_attempts=1,
        max_async_event_age_in_seconds=60,
        destination_config=dest,
    )
    put = await store.put_async_config(t, cfg)
    assert (put.max_async_retry_attempts, put.destination_config) == (1, dest)
    assert put.created_time == put.last_modified_time != ""
    assert await store.get_async_config(t, "svc", "LATEST", "f") == put
    again = await store.put_async_config(
        t, AsyncConfig(service_name="svc", function_name="f", max_async_retry_attempts=0)
    )
    assert again.created_time == put.created_time
    assert again.max_async_retry_attempts == 0
    assert again.destination_config == DestinationConfig()
    await store.delete_async_config(t, "svc", "LATEST", "f")
    with pytest.raises(AsyncConfigNotFound):
        await store.get_async_config(t, "svc", "LATEST", "f")
    with pytest.raises(AsyncConfigNotFound):
        await store.delete_async_config(t, "svc", "LATEST", "f")


@pytest.mark.parametrize(
    "over",
    [
        {"max_async_retry_attempts": 9},
        {"max_async_retry_attempts": -1},
        {"max_async_event_age_in_seconds": 0},
        {"max_async_event_age_in_seconds": 86401},
    ],
)
async def test_async_config_bounds(store: Store, over: dict[str, int]) -> None:
    t = await with_function(store)
    with pytest.raises(BadRequest):
        await store.put_async_config(t, AsyncConfig(service_name="svc", function_name="f", **over))


async def test_configs_need_their_function_and_go_with_it(store: Store) -> None:
    t = await with_function(store)
    with pytest.raises(FunctionNotFound):
        await store.put_async_config(t, AsyncConfig(service_name="svc", function_name="nope"))
    with pytest.raises(ServiceNotFound):
        await store.put_provision_config(
            t, ProvisionConfig(service_name="nosvc", function_name="f", target=1)
        )
    with pytest.raises(FunctionNotFound):
        await store.get_async_config(t, "svc", "LATEST", "nope")
    await store.put_async_config(t, AsyncConfig(service_name="svc", function_name="f"))
    await store.put_provision_config(
        t, ProvisionConfig(service_name="svc", function_name="f", target=2)
    )
    await store.add_dead_letter(t, letter("r1"))
    await store.delete_function(t, "svc", "f")
    await store.create_function(t, "svc", Function(function_name="f", service_name="svc"))
    with pytest.raises(AsyncConfigNotFound):
        await store.get_async_config(t, "svc", "LATEST", "f")
    with pytest.raises(ProvisionConfigNotFound):
        await store.get_provision_config(t, "svc", "LATEST", "f")
    assert (await store.get_dead_letter(t, "r1")).function_name == "f"


async def test_provision_configs_and_the_all_tenant_list(store: Store) -> None:
    t, u = await with_function(store), await with_function(store)
    with pytest.raises(ProvisionConfigNotFound):
        await store.get_provision_config(t, "svc", "LATEST", "f")
    put = await store.put_provision_config(
        t, ProvisionConfig(service_name="svc", function_name="f", target=3)
    )
    assert put.target == 3 and await store.get_provision_config(t, "svc", "LATEST", "f") == put
    await store.put_provision_config(
        u, ProvisionConfig(service_name="svc", function_name="f", target=0)
    )
    listed = [(tenant, c.target) for tenant, c in await store.list_provision_configs()]
    assert (t, 3) in listed and all(tenant != u for tenant, _ in listed)
    with pytest.raises(BadRequest):
        await store.put_provision_config(
            t, ProvisionConfig(service_name="svc", function_name="f", target=101)
        )
    await store.delete_provision_config(t, "svc", "LATEST", "f")
    assert all(tenant != t for tenant, _ in await store.list_provision_configs())
    with pytest.raises(ProvisionConfigNotFound):
        await store.delete_provision_config(t, "svc", "LATEST", "f")


# -- dead letters ----------------------------------------------------------------------


async def test_dead_letters(store: Store) -> None:
    t, other = await new_tenant(store), await new_tenant(store)
    full = letter(
        "r-a",
        error_type="UnhandledInvocationError",
        error_message="boom",
        attempts=4,
        hops=2,
        trace_id="trace",
        payload=b"\x00in\xff",
        response=b'{"errorMessage": "boom"}',
        envelope=b"\x81\xa2id\xa3r-a",
    )
    await store.add_dead_letter(t, full)
    await store.add_dead_letter(t, letter("r-a", reason="NotRetryable"))  # duplicate: kept once
    got = await store.get_dead_letter(t, "r-a")
    assert got.reason == "RetriesExhausted" and got.payload == b"\x00in\xff"
    assert got.envelope == full.envelope and got.created_time.endswith("Z")
    await asyncio.gather(*(store.add_dead_letter(t, letter("r-b")) for _ in range(3)))
    await store.add_dead_letter(t, letter("r-c", service="svc2"))
    await store.add_dead_letter(t, letter("r-d", function="g"))
    with pytest.raises(BadRequest):
        await store.add_dead_letter(t, letter("r-e", reason="Bored"))

    ids = [d.request_id for d in await store.list_dead_letters(t, limit=100)]
    assert ids == ["r-a", "r-b", "r-c", "r-d"]
    page = await store.list_dead_letters(t, limit=2, start_key="r-b")
    assert [d.request_id for d in page] == ["r-b", "r-c"]
    svc = await store.list_dead_letters(t, service="svc", limit=100)
    assert [d.request_id for d in svc] == ["r-a", "r-b", "r-d"]
    fn = await store.list_dead_letters(t, service="svc", function="f", limit=100)
    assert [d.request_id for d in fn] == ["r-a", "r-b"]

    # Tenants never see each other's.
    assert await store.list_dead_letters(other, limit=100) == []
    with pytest.raises(DeadLetterNotFound):
        await store.get_dead_letter(other, "r-a")
    with pytest.raises(DeadLetterNotFound):
        await store.delete_dead_letter(other, "r-a")
    assert await store.purge_dead_letters(other) == 0

    await store.delete_dead_letter(t, "r-a")
    with pytest.raises(DeadLetterNotFound):
        await store.get_dead_letter(t, "r-a")
    assert await store.purge_dead_letters(t, service="svc", function="g") == 1
    assert await store.purge_dead_letters(t) == 2
    assert await store.list_dead_letters(t, limit=100) == []


async def test_reenqueue_resets_or_creates_the_invocation(store: Store) -> None:
    t = await new_tenant(store)
    rid = uuid.uuid4().hex
    await store.record_accepted(
        InvocationRecord(
            request_id=rid, tenant=t, service_name="svc", qualifier="LATEST", function_name="f"
        )
    )
    await store.record_outcome(
        t, rid, status="Failed", attempt=4, result=b"x", error_type="E", error_message="m"
    )
    await store.reenqueue(t, rid, "svc", "LATEST", "f")
    rec = await store.get_invocation(t, rid)
    assert (rec.status, rec.attempt, rec.result, rec.error_type, rec.finished_time) == (
        "Enqueued",
        0,
        b"",
        "",
        "",
    )
    # The new run's first attempt now applies.
    await store.record_outcome(
        t, rid, status="Succeeded", attempt=1, result=b"ok", error_type="", error_message=""
    )
    assert (await store.get_invocation(t, rid)).status == "Succeeded"

    fresh = uuid.uuid4().hex
    with pytest.raises(InvocationNotFound):
        await store.get_invocation(t, fresh)
    await store.reenqueue(t, fresh, "svc", "LATEST", "f")
    assert (await store.get_invocation(t, fresh)).function_name == "f"


async def test_concluded_names_the_attempts_already_concluded(store: Store) -> None:
    t, other = await new_tenant(store), await new_tenant(store)
    ids = {name: uuid.uuid4().hex for name in ("ok", "failed", "retrying", "queued")}
    for rid in ids.values():
        await store.record_accepted(
            InvocationRecord(
                request_id=rid, tenant=t, service_name="svc", qualifier="LATEST", function_name="f"
            )
        )
    outcomes: list[tuple[str, InvocationStatus]] = [
        ("ok", "Succeeded"), ("failed", "Failed"), ("retrying", "Enqueued")
    ]  # fmt: skip
    for name, status in outcomes:
        await store.record_outcome(
            t, ids[name], status=status, attempt=1, result=b"", error_type="", error_message=""
        )
    unknown = uuid.uuid4().hex
    first = {**{rid: 1 for rid in ids.values()}, unknown: 1}
    # Attempt 1 of "retrying" was concluded (attempt 2 is scheduled); "queued" never ran.
    assert await store.concluded(t, first) == {ids["ok"], ids["failed"], ids["retrying"]}
    # Its attempt 2 is still to run; the finished ones stay finished at any attempt.
    second = {rid: 2 for rid in ids.values()}
    assert await store.concluded(t, second) == {ids["ok"], ids["failed"]}
    assert await store.concluded(other, first) == set()
    assert await store.concluded(t, {}) == set()
    # A redriven invocation is running again from attempt 1: not concluded.
    await store.reenqueue(t, ids["failed"], "svc", "LATEST", "f")
    assert await store.concluded(t, {ids["failed"]: 1}) == set()
