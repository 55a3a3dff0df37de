"""Versions and aliases in the metadata store (real SQLite files and a real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import (
    AliasNotFound,
    AlreadyExists,
    BadRequest,
    FunctionNotFound,
    NoChanges,
    NotEmpty,
    ServiceNotFound,
    VersionInUse,
    VersionNotFound,
)
from shared.models import Function, InvocationRecord, Service
from shared.release import Alias, AutoRollback, RollbackRecord
from shared.store import Store
from tests.test_store import db_url, new_tenant, pg_url, store

__all__ = ["db_url", "pg_url", "store"]  # fixtures shared with test_store


async def _service(store: Store, tenant: str, functions: int = 1) -> str:
    await store.create_service(tenant, Service(service_name="svc"))
    for i in range(functions):
        await store.create_function(
            tenant, "svc", Function(function_name=f"f{i}", service_name="", code_checksum="a" * 64)
        )
    return "svc"


async def test_publish_snapshots_and_never_reuses_ids(store: Store) -> None:
    t = await new_tenant(store)
    with pytest.raises(ServiceNotFound):
        await store.publish_version(t, "svc", "")
    await store.create_service(t, Service(service_name="svc"))
    with pytest.raises(BadRequest, match="no functions"):
        await store.publish_version(t, "svc", "")
    await store.create_function(
        t, "svc", Function(function_name="f0", service_name="", code_checksum="a" * 64)
    )
    v1 = await store.publish_version(t, "svc", "first")
    assert (v1.version_id, v1.description) == ("1", "first")
    with pytest.raises(NoChanges, match="no changes since version 1"):
        await store.publish_version(t, "svc", "again")
    # Bookkeeping-only changes (the reservation) make no version either.
    await store.update_function(t, "svc", "f0", {"reserved_concurrency": 2})
    with pytest.raises(NoChanges):
        await store.publish_version(t, "svc", "")
    await store.update_function(t, "svc", "f0", {"timeout": 9.0})
    assert (await store.publish_version(t, "svc", "")).version_id == "2"
    await store.update_function(t, "svc", "f0", {"timeout": 10.0})
    assert (await store.publish_version(t, "svc", "")).version_id == "3"
    await store.delete_version(t, "svc", 3)
    await store.update_function(t, "svc", "f0", {"timeout": 11.0})
    assert (await store.publish_version(t, "svc", "")).version_id == "4"  # 3 is not reused
    # The version keeps what LATEST was when published.
    _, fn = await store.version_function(t, "svc", 2, "f0")
    assert fn.timeout == 9.0 and fn.code_checksum == "a" * 64
    assert (await store.get_function(t, "svc", "f0")).timeout == 11.0
    with pytest.raises(FunctionNotFound, match="version 2"):
        await store.version_function(t, "svc", 2, "nope")
    with pytest.raises(VersionNotFound, match="version 3"):
        await store.get_version(t, "svc", 3)
    with pytest.raises(VersionNotFound):
        await store.delete_version(t, "svc", 3)
    assert [v.version_id for v in await store.list_versions(t, "svc")] == ["4", "2", "1"]
    assert [v.version_id for v in await store.list_versions(t, "svc", 1, 2)] == ["2"]


async def test_concurrent_publishes_get_distinct_ids(store: Store) -> None:
    t = await new_tenant(store)
    await _service(store, t)
    first = await store.publish_version(t, "svc", "")

    async def publish(i: int) -> str:
        await store.update_function(t, "svc", "f0", {"description": f"change {i}"})
        try:
            return (await store.publish_version(t, "svc", "")).version_id
        except NoChanges:
            return ""

    ids = [i for i in await asyncio.gather(*(publish(i) for i in range(6))) if i]
    assert ids and len(ids) == len(set(ids)) and first.version_id not in ids


async def test_alias_lifecycle_and_bad_input(store: Store) -> None:
    t = await new_tenant(store)
    await _service(store, t)
    await store.publish_version(t, "svc", "")
    await store.update_function(t, "svc", "f0", {"timeout": 5.0})
    await store.publish_version(t, "svc", "")
    cfg = AutoRollback(max_error_rate=0.2, window_seconds=30, min_invocations=5)
    prod = await store.create_alias(
        t,
        "svc",
        Alias(
            alias_name="prod",
            version_id="1",
            additional_version_weight={"2": 0.1},
            auto_rollback=cfg,
        ),
    )
    assert prod.route.extra == "2" and prod.route.weight == 0.1 and prod.route.canary == "2"
    assert await store.get_alias(t, "svc", "prod") == prod
    with pytest.raises(AlreadyExists):
        await store.create_alias(t, "svc", Alias(alias_name="prod", version_id="1"))
    with pytest.raises(BadRequest, match="version 9"):
        await store.create_alias(t, "svc", Alias(alias_name="beta", version_id="9"))
    with pytest.raises(BadRequest, match="version 7"):
        await store.create_alias(
            t, "svc", Alias(alias_name="beta", version_id="1", additional_version_weight={"7": 0.5})
        )
    with pytest.raises(BadRequest, match="own versionId"):
        await store.create_alias(
            t, "svc", Alias(alias_name="beta", version_id="1", additional_version_weight={"1": 0.5})
        )
    with pytest.raises(BadRequest, match=r"0\.\.1"):
        await store.create_alias(
            t, "svc", Alias(alias_name="beta", version_id="1", additional_version_weight={"2": 2.0})
        )
    with pytest.raises(ServiceNotFound):
        await store.create_alias(t, "nosvc", Alias(alias_name="beta", version_id="1"))
    assert [a.alias_name for a in await store.list_aliases(t, "svc")] == ["prod"]  # none half-made
    # Partial update: only the fields given change; the merged alias is checked whole.
    moved = await store.update_alias(t, "svc", "prod", {"description": "d"})
    assert moved.route == prod.route and moved.description == "d"
    with pytest.raises(BadRequest, match="own versionId"):
        await store.update_alias(t, "svc", "prod", {"version_id": "2"})
    with pytest.raises(BadRequest, match="version 8"):
        await store.update_alias(t, "svc", "prod", {"version_id": "8"})
    moved = await store.update_alias(
        t, "svc", "prod", {"version_id": "2", "additional_version_weight": {}}
    )
    assert (moved.version_id, moved.additional_version_weight) == ("2", {})
    with pytest.raises(AliasNotFound, match="'nope'"):
        await store.update_alias(t, "svc", "nope", {"description": "x"})
    # A version in use is not deleted; nor a service with versions or aliases.
    with pytest.raises(VersionInUse, match="prod"):
        await store.delete_version(t, "svc", 2)
    await store.delete_version(t, "svc", 1)  # no alias uses it any more
    await store.delete_function(t, "svc", "f0")
    with pytest.raises(NotEmpty):
        await store.delete_service(t, "svc")
    await store.delete_alias(t, "svc", "prod")
    with pytest.raises(AliasNotFound):
        await store.get_alias(t, "svc", "prod")
    with pytest.raises(AliasNotFound):
        await store.delete_alias(t, "svc", "prod")
    await store.delete_version(t, "svc", 2)
    await store.delete_service(t, "svc")


async def test_roll_back_only_a_live_share(store: Store) -> None:
    t = await new_tenant(store)
    await _service(store, t)
    await store.publish_version(t, "svc", "")
    await store.update_function(t, "svc", "f0", {"timeout": 5.0})
    await store.publish_version(t, "svc", "")
    await store.create_alias(
        t, "svc", Alias(alias_name="prod", version_id="1", additional_version_weight={"2": 0.3})
    )
    record = RollbackRecord(
        version_id="2",
        rolled_back_time="2026-01-01T00:00:00.000Z",
        reason="r",
        error_rate=0.5,
        errors=10,
        invocations=20,
    )
    rolled = await store.roll_back_alias(t, "svc", "prod", record)
    assert rolled is not None
    assert rolled.additional_version_weight == {"2": 0.0} and rolled.last_rollback == record
    assert (await store.get_alias(t, "svc", "prod")).last_rollback == record
    assert await store.roll_back_alias(t, "svc", "prod", record) is None  # already at 0


async def test_invocation_records_keep_the_resolved_version(store: Store) -> None:
    t = await new_tenant(store)
    await store.record_accepted(
        InvocationRecord(
            request_id="r1",
            tenant=t,
            service_name="svc",
            qualifier="prod",
            function_name="f",
            version="2",
        )
    )
    await store.record_outcome(
        t, "r1", status="Succeeded", attempt=1, result=b"", error_type="", error_message=""
    )
    assert (await store.get_invocation(t, "r1")).version == "2"  # kept when not given
    await store.record_accepted(
        InvocationRecord(
            request_id="r2", tenant=t, service_name="svc", qualifier="prod", function_name="f"
        )
    )
    await store.record_outcome(
        t,
        "r2",
        status="Failed",
        attempt=1,
        result=b"",
        error_type="",
        error_message="",
        version="3",
    )
    assert (await store.get_invocation(t, "r2")).version == "3"
