"""Metadata store against real SQLite files and a real PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from shared.dbengine import MIGRATIONS_DIR
from shared.errors import (
    AlreadyExists,
    BadRequest,
    FunctionNotFound,
    InvocationNotFound,
    NotEmpty,
    NotFound,
    ServiceNotFound,
    Unavailable,
)
from shared.models import Function, InvocationRecord, LogConfig, Service
from shared.schema import metadata
from shared.store import Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgres"]


async def _create_db() -> str:
    name = f"pyfc_t_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One PostgreSQL database per module; tests stay apart through unique tenants."""
    name = asyncio.run(_create_db())
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_drop_db(name))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'meta.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    st = await Store.open(db_url)
    await st.migrate()
    yield st
    await st.close()


async def new_tenant(store: Store) -> str:
    tenant, _key = await store.create_tenant(f"t-{uuid.uuid4().hex[:12]}", 10)
    return tenant.name


def _head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _schema_diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


# -- opening and migrating -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_migrate_from_many_engines(backend: str, tmp_path: Path) -> None:
    # A fresh database each, so the race is over the very first migration.
    fresh_db = await _create_db() if backend == "postgres" else ""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'race.db'}"
    else:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{fresh_db}"
    stores = [await Store.open(url) for _ in range(4)]
    try:
        # Several engines (as several processes would) plus several tasks on one engine.
        await asyncio.gather(*(s.migrate() for s in stores), stores[0].migrate())
        async with stores[0]._engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            diff = await conn.run_sync(_schema_diff)
        assert [v[0] for v in versions] == [_head_revision()]
        assert diff == [], "shared/schema.py and the migrations disagree"
        await stores[1].migrate()  # again, once at head: a no-op
    finally:
        for s in stores:
            await s.close()
        if fresh_db:
            await _drop_db(fresh_db)


@contextlib.asynccontextmanager
async def _scratch_store(backend: str, path: Path) -> AsyncIterator[Store]:
    """A store on a database of its own (a file, or a fresh PostgreSQL database), unmigrated."""
    fresh_db = await _create_db() if backend == "postgres" else ""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{fresh_db}"
    store = await Store.open(url)
    try:
        yield store
    finally:
        await store.close()
        if fresh_db:
            await _drop_db(fresh_db)


def _upgrade_to(conn: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_migration_numbers_existing_tenants_by_age(backend: str, tmp_path: Path) -> None:
    """0003 numbers a database's tenants 1..n, oldest first, keeping their services; new
    tenants continue after them."""
    async with _scratch_store(backend, tmp_path / "old.db") as store:
        async with store._engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0002")
            for name, created in [("young", "2024-02-01T00:00:00Z"), ("old", "2024-01-01Z")]:
                await conn.execute(
                    text(
                        "INSERT INTO tenants (name, concurrency, created_time) VALUES (:n, 5, :c)"
                    ),
                    {"n": name, "c": created},
                )
            await conn.execute(
                text(
                    "INSERT INTO services (tenant, service_name, service_id, description, role,"
                    " log_config, environment_variables, created_time, last_modified_time)"
                    " VALUES ('old', 'svc', 'id', '', '', '{}', '{}', 'c', 'm')"
                )
            )
        await store.migrate()
        assert (await store.get_tenant("old")).number == 1
        assert (await store.get_tenant("young")).number == 2
        assert (await store.get_service("old", "svc")).service_id == "id"
        tenant, _ = await store.create_tenant("newcomer", 1)
        assert tenant.number == 3 and (await store.get_tenant("newcomer")) == tenant


@pytest.mark.parametrize("backend", BACKENDS)
async def test_upgrade_from_the_first_schema_keeps_every_row(backend: str, tmp_path: Path) -> None:
    """A database made by 0001 keeps its tenants, keys, services and functions through
    every later migration (0002's SQLite table copy once cascaded them all away)."""
    async with _scratch_store(backend, tmp_path / "first.db") as store:
        async with store._engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0001")
            await conn.execute(
                text("INSERT INTO tenants (name, concurrency, created_time) VALUES ('a', 5, 'c')")
            )
            await conn.execute(
                text(
                    "INSERT INTO services (tenant, service_name, service_id, description, role,"
                    " log_config, environment_variables, created_time, last_modified_time)"
                    " VALUES ('a', 'svc', 'id', '', '', '{}', '{}', 'c', 'm')"
                )
            )
            columns = (await conn.execute(text("SELECT * FROM functions"))).keys()
            key_columns = (await conn.execute(text("SELECT * FROM api_keys"))).keys()
        counts_before = await _row_counts(store)
        assert counts_before["services"] == 1 and "function_name" in columns and key_columns
        await store.migrate()
        assert await _row_counts(store) == counts_before
        assert (await store.get_service("a", "svc")).service_id == "id"
        assert (await store.get_tenant("a")).max_chain_depth == 16


async def _row_counts(store: Store) -> dict[str, int]:
    async with store._engine.connect() as conn:
        return {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in ("tenants", "services", "functions", "api_keys")
        }


async def test_tenant_numbers_are_unique_and_survive_failed_creates(store: Store) -> None:
    names = [f"t-{uuid.uuid4().hex[:12]}" for _ in range(6)]
    made = await asyncio.gather(*(store.create_tenant(name, 1) for name in names))
    numbers = [tenant.number for tenant, _ in made]
    assert len(set(numbers)) == len(numbers) and min(numbers) >= 1
    with pytest.raises(AlreadyExists):
        await store.create_tenant(names[0], 1)
    later, _ = await store.create_tenant(f"t-{uuid.uuid4().hex[:12]}", 1)
    assert later.number == max(numbers) + 1  # the failed create gave its number back


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/db",
        "sqlite+aiosqlite:///:memory:",
        "not a url",
        "sqlite+aiosqlite://",
    ],
)
async def test_open_rejects_bad_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        await Store.open(url)


async def test_unreachable_postgres_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = await Store.open(f"postgres://postgres@127.0.0.1:{port}/nothing")
    try:
        with pytest.raises(Unavailable, match="unavailable"):
            await store.migrate()
        with pytest.raises(Unavailable):
            await store.get_tenant("anyone")
    finally:
        await store.close()


# -- tenants ---------------------------------------------------------------------------


async def test_tenant_create_get_and_api_key(store: Store) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}"
    tenant, key = await store.create_tenant(name, 7)
    assert (tenant.name, tenant.concurrency) == (name, 7)
    assert re.fullmatch(r"pyfc_[A-Za-z0-9_-]{40}", key)
    assert tenant.created_time.endswith("Z")
    assert await store.get_tenant(name) == tenant
    assert await store.tenant_by_api_key(key) == tenant
    assert await store.tenant_by_api_key(key + "x") is None
    assert await store.tenant_by_api_key("pyfc_" + "A" * 40) is None
    with pytest.raises(AlreadyExists):
        await store.create_tenant(name, 1)
    with pytest.raises(NotFound):
        await store.get_tenant(f"t-{uuid.uuid4().hex[:12]}")


@pytest.mark.parametrize("name", ["", "a", "Upper", "9lives", "has_underscore", "x" * 64, "-a"])
async def test_tenant_name_rules(store: Store, name: str) -> None:
    with pytest.raises(BadRequest):
        await store.create_tenant(name, 1)


# -- services --------------------------------------------------------------------------


async def test_service_lifecycle(store: Store) -> None:
    t = await new_tenant(store)
    svc = await store.create_service(
        t, Service(service_name="svc", description="d", environment_variables={"A": "1"})
    )
    assert svc.service_id and svc.created_time == svc.last_modified_time
    assert await store.get_service(t, "svc") == svc
    with pytest.raises(AlreadyExists):
        await store.create_service(t, Service(service_name="svc"))

    changed = await store.update_service(t, "svc", {"log_config": {"logstore": "ls"}})
    assert changed.log_config == LogConfig(logstore="ls")
    assert changed.description == "d" and changed.environment_variables == {"A": "1"}
    assert changed.created_time == svc.created_time
    assert changed.last_modified_time >= svc.last_modified_time
    assert await store.get_service(t, "svc") == changed

    await store.delete_service(t, "svc")
    with pytest.raises(ServiceNotFound):
        await store.get_service(t, "svc")
    with pytest.raises(ServiceNotFound):
        await store.delete_service(t, "svc")


@pytest.mark.parametrize(
    "changes",
    [{"service_name": "other"}, {"service_id": "x"}, {"nope": 1}, {"environment_variables": 3}],
)
async def test_service_update_rejects_bad_changes(store: Store, changes: dict[str, object]) -> None:
    t = await new_tenant(store)
    await store.create_service(t, Service(service_name="svc"))
    with pytest.raises(BadRequest):
        await store.update_service(t, "svc", changes)


async def test_list_services_pages_by_name(store: Store) -> None:
    t = await new_tenant(store)
    for name in ["b-2", "a-1", "b-1", "c_1", "b_x"]:
        await store.create_service(t, Service(service_name=name))
    names = [s.service_name for s in await store.list_services(t)]
    assert names == sorted(names) and len(names) == 5
    assert [s.service_name for s in await store.list_services(t, prefix="b-")] == ["b-1", "b-2"]
    # "_" in a prefix is a literal, not a LIKE wildcard.
    assert [s.service_name for s in await store.list_services(t, prefix="b_")] == ["b_x"]
    page = await store.list_services(t, limit=2, start_key="b-2")
    assert [s.service_name for s in page] == ["b-2", "b_x"]
    with pytest.raises(BadRequest):
        await store.list_services(t, limit=0)


async def test_delete_service_with_functions_is_not_empty(store: Store) -> None:
    t = await new_tenant(store)
    await store.create_service(t, Service(service_name="svc"))
    await store.create_function(t, "svc", Function(function_name="f", service_name="svc"))
    with pytest.raises(NotEmpty):
        await store.delete_service(t, "svc")
    await store.delete_function(t, "svc", "f")
    await store.delete_service(t, "svc")


# -- functions -------------------------------------------------------------------------


async def test_function_lifecycle(store: Store) -> None:
    t = await new_tenant(store)
    with pytest.raises(ServiceNotFound):
        await store.create_function(t, "svc", Function(function_name="f", service_name="svc"))
    await store.create_service(t, Service(service_name="svc"))
    fn = await store.create_function(
        t,
        "svc",
        Function(function_name="f", service_name="", handler="main.run", revision=9),
    )
    assert (fn.service_name, fn.revision, fn.handler) == ("svc", 1, "main.run")
    assert fn.function_id and fn.created_time.endswith("Z")
    assert await store.get_function(t, "svc", "f") == fn
    with pytest.raises(AlreadyExists):
        await store.create_function(t, "svc", Function(function_name="f", service_name="svc"))
    with pytest.raises(FunctionNotFound):
        await store.get_function(t, "svc", "g")
    with pytest.raises(ServiceNotFound):
        await store.get_function(t, "nosvc", "f")

    await store.create_function(t, "svc", Function(function_name="e", service_name="svc"))
    assert [f.function_name for f in await store.list_functions(t, "svc")] == ["e", "f"]
    assert [f.function_name for f in await store.list_functions(t, "svc", prefix="f")] == ["f"]

    await store.delete_function(t, "svc", "f")
    with pytest.raises(FunctionNotFound):
        await store.delete_function(t, "svc", "f")
    with pytest.raises(ServiceNotFound):
        await store.list_functions(t, "nosvc")


async def test_function_partial_update_bumps_revision(store: Store) -> None:
    t = await new_tenant(store)
    await store.create_service(t, Service(service_name="svc"))
    fn = await store.create_function(
        t,
        "svc",
        Function(function_name="f", service_name="svc", environment_variables={"K": "v"}),
    )
    updated = await store.update_function(
        t, "svc", "f", {"timeout": 30, "code_checksum": "ab" * 32, "initializer": "index.init"}
    )
    assert updated.revision == 2
    assert (updated.timeout, updated.code_checksum, updated.initializer) == (
        30.0,
        "ab" * 32,
        "index.init",
    )
    assert isinstance(updated.timeout, float)
    assert updated.environment_variables == {"K": "v"} and updated.handler == fn.handler
    assert updated.function_id == fn.function_id and updated.created_time == fn.created_time
    assert await store.get_function(t, "svc", "f") == updated

    with pytest.raises(BadRequest):
        await store.update_function(t, "svc", "f", {"revision": 7})
    with pytest.raises(BadRequest):
        await store.update_function(t, "svc", "f", {"memory_size": "big"})
    with pytest.raises(FunctionNotFound):
        await store.update_function(t, "svc", "g", {"timeout": 1})


async def test_concurrent_updates_each_bump_revision_once(store: Store) -> None:
    t = await new_tenant(store)
    await store.create_service(t, Service(service_name="svc"))
    await store.create_function(t, "svc", Function(function_name="f", service_name="svc"))
    await asyncio.gather(
        *(store.update_function(t, "svc", "f", {"description": str(i)}) for i in range(8))
    )
    assert (await store.get_function(t, "svc", "f")).revision == 9


@pytest.mark.parametrize("name", ["", "1abc", "-x", "has space", "a" * 129, "dot.ted"])
async def test_resource_name_rules(store: Store, name: str) -> None:
    t = await new_tenant(store)
    with pytest.raises(BadRequest):
        await store.create_service(t, Service(service_name=name))


# -- isolation -------------------------------------------------------------------------


async def test_tenants_never_see_each_other(store: Store) -> None:
    a, b = await new_tenant(store), await new_tenant(store)
    await store.create_service(a, Service(service_name="svc"))
    await store.create_function(a, "svc", Function(function_name="f", service_name="svc"))
    rid = uuid.uuid4().hex
    await store.record_accepted(
        InvocationRecord(
            request_id=rid, tenant=a, service_name="svc", qualifier="LATEST", function_name="f"
        )
    )
    assert await store.list_services(b) == []
    with pytest.raises(ServiceNotFound):
        await store.get_service(b, "svc")
    with pytest.raises(ServiceNotFound):
        await store.get_function(b, "svc", "f")
    with pytest.raises(ServiceNotFound):
        await store.update_service(b, "svc", {"description": "mine now"})
    with pytest.raises(ServiceNotFound):
        await store.update_function(b, "svc", "f", {"timeout": 1})
    with pytest.raises(ServiceNotFound):
        await store.delete_service(b, "svc")
    with pytest.raises(InvocationNotFound):
        await store.get_invocation(b, rid)
    # The same names are free for b, and stay separate.
    await store.create_service(b, Service(service_name="svc", description="b's"))
    assert (await store.get_service(a, "svc")).description == ""


# -- async invocations -----------------------------------------------------------------


async def test_invocation_outcomes(store: Store) -> None:
    t = await new_tenant(store)
    rid = uuid.uuid4().hex
    rec = InvocationRecord(
        request_id=rid, tenant=t, service_name="svc", qualifier="LATEST", function_name="f"
    )
    await store.record_accepted(rec)
    got = await store.get_invocation(t, rid)
    assert (got.status, got.attempt, got.finished_time) == ("Enqueued", 0, "")
    assert got.created_time.endswith("Z")
    with pytest.raises(AlreadyExists):
        await store.record_accepted(rec)

    async def outcome(status: str, attempt: int, result: bytes = b"") -> None:
        await store.record_outcome(
            t,
            rid,
            status=status,  # type: ignore[arg-type]
            attempt=attempt,
            result=result,
            error_type="UnhandledInvocationError" if status == "Failed" else "",
            error_message="boom" if status == "Failed" else "",
        )

    await outcome("Running", 1)
    assert (await store.get_invocation(t, rid)).status == "Running"
    await outcome("Failed", 1)
    failed = await store.get_invocation(t, rid)
    assert (failed.status, failed.error_message) == ("Failed", "boom")
    assert failed.finished_time.endswith("Z")
    await outcome("Succeeded", 2, b"\x00result\xff")
    await outcome("Succeeded", 2, b"\x00result\xff")  # duplicate delivery: fine
    await outcome("Running", 2)  # late non-terminal for the same attempt: ignored
    await outcome("Failed", 1)  # late older attempt: ignored
    final = await store.get_invocation(t, rid)
    assert (final.status, final.attempt, final.result) == ("Succeeded", 2, b"\x00result\xff")
    assert final.error_type == "" and final.service_name == "svc"
    with pytest.raises(BadRequest):
        await outcome("Exploded", 3)


async def test_outcome_without_accepted_record_is_kept(store: Store) -> None:
    t = await new_tenant(store)
    rid = uuid.uuid4().hex
    await asyncio.gather(
        *(
            store.record_outcome(
                t, rid, status="Succeeded", attempt=1, result=b"ok", error_type="", error_message=""
            )
            for _ in range(3)
        )
    )
    got = await store.get_invocation(t, rid)
    assert (got.status, got.result) == ("Succeeded", b"ok")
    with pytest.raises(InvocationNotFound):
        await store.get_invocation(t, uuid.uuid4().hex)
