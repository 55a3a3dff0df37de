"""Metadata store (**contract**): tenants, services, functions, async invocation records.

SQLAlchemy Core over asyncio; SQLite (embedded default) or PostgreSQL. Every query is
scoped by tenant name, so one tenant never sees another's rows. Writes are single
statements where possible (UPDATE ... RETURNING, foreign keys) so that concurrent callers
in several processes cannot interleave between a check and a write.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping

import msgspec
from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import dbengine, rows
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
from shared.models import Function, InvocationRecord, InvocationStatus, Service, Tenant
from shared.schema import api_keys, functions, invocations, services, tenants

log = logging.getLogger(__name__)


class Store:
    """Async access to the metadata database; build with `await Store.open(url)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect lazily to `sqlite+aiosqlite:///path` or `postgresql://...`."""
        return cls(dbengine.create_engine(dbengine.normalize_url(url)))

    async def migrate(self) -> None:
        """Upgrade the schema to head; safe when several processes call it at once."""
        async with self._guard():
            await dbengine.migrate(self._engine)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    # -- tenants ---------------------------------------------------------------------

    async def create_tenant(self, name: str, concurrency: int) -> tuple[Tenant, str]:
        """Create a tenant; returns it and its API key, whose plaintext is never stored."""
        rows.check_tenant_name(name)
        if concurrency < 1:
            raise BadRequest(f"tenant concurrency must be at least 1, got {concurrency}")
        tenant = Tenant(name=name, concurrency=concurrency, created_time=rows.now_iso())
        key = "pyfc_" + secrets.token_urlsafe(30)  # 30 bytes -> 40 urlsafe chars
        try:
            async with self._begin() as conn:
                await conn.execute(insert(tenants).values(msgspec.structs.asdict(tenant)))
                await conn.execute(
                    insert(api_keys).values(
                        key_sha256=rows.hash_api_key(key), tenant=name, created_time=rows.now_iso()
                    )
                )
        except IntegrityError as e:
            raise AlreadyExists(f"tenant {name!r} already exists") from e
        return tenant, key

    async def tenant_by_api_key(self, key: str) -> Tenant | None:
        """The tenant owning `key`, or None for an unknown key."""
        query = (
            select(tenants)
            .join(api_keys, api_keys.c.tenant == tenants.c.name)
            .where(api_keys.c.key_sha256 == rows.hash_api_key(key))
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else Tenant(**row)

    async def get_tenant(self, name: str) -> Tenant:
        """The tenant called `name`; NotFound if there is none."""
        async with self._begin() as conn:
            row = (
                (await conn.execute(select(tenants).where(tenants.c.name == name)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"tenant {name!r} not found")
        return Tenant(**row)

    # -- services --------------------------------------------------------------------

    async def create_service(self, tenant: str, service: Service) -> Service:
        """Store a new service, assigning its id and times; AlreadyExists on a duplicate."""
        rows.check_resource_name("service", service.service_name)
        stamp = rows.now_iso()
        created = msgspec.structs.replace(
            service, service_id=str(uuid.uuid4()), created_time=stamp, last_modified_time=stamp
        )
        try:
            async with self._begin() as conn:
                await conn.execute(insert(services).values(rows.to_row(tenant, created)))
        except IntegrityError as e:
            await self.get_tenant(tenant)  # the other way to break a constraint here
            raise AlreadyExists(f"service {service.service_name!r} already exists") from e
        return created

    async def get_service(self, tenant: str, name: str) -> Service:
        """The service `name`; ServiceNotFound if the tenant has none by that name."""
        query = select(services).where(services.c.tenant == tenant, services.c.service_name == name)
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise ServiceNotFound(f"service {name!r} not found")
        return rows.from_row(Service, row)

    async def list_services(
        self, tenant: str, prefix: str = "", limit: int = 100, start_key: str = ""
    ) -> list[Service]:
        """Services ordered by name, from `start_key` (inclusive), at most `limit`."""
        query = rows.page(services, services.c.service_name, prefix, limit, start_key).where(
            services.c.tenant == tenant
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [rows.from_row(Service, row) for row in found]

    async def update_service(
        self, tenant: str, name: str, changes: Mapping[str, object]
    ) -> Service:
        """Change only the given fields (python names, e.g. `log_config`)."""
        values = rows.changes_to_values(Service, changes)
        query = (
            update(services)
            .where(services.c.tenant == tenant, services.c.service_name == name)
            .values(**values, last_modified_time=rows.now_iso())
            .returning(*services.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise ServiceNotFound(f"service {name!r} not found")
        return rows.from_row(Service, row)

    async def delete_service(self, tenant: str, name: str) -> None:
        """Delete an empty service; NotEmpty while it still has functions."""
        query = delete(services).where(services.c.tenant == tenant, services.c.service_name == name)
        try:
            async with self._begin() as conn:
                deleted = (await conn.execute(query)).rowcount
        except IntegrityError as e:  # the RESTRICT foreign key from functions
            raise NotEmpty(f"service {name!r} still has functions; delete them first") from e
        if not deleted:
            raise ServiceNotFound(f"service {name!r} not found")

    # -- functions -------------------------------------------------------------------

    async def create_function(self, tenant: str, service_name: str, fn: Function) -> Function:
        """Store a new function (revision 1) in an existing service."""
        rows.check_resource_name("function", fn.function_name)
        stamp = rows.now_iso()
        created = msgspec.structs.replace(
            fn,
            service_name=service_name,
            function_id=str(uuid.uuid4()),
            revision=1,
            created_time=stamp,
            last_modified_time=stamp,
        )
        try:
            async with self._begin() as conn:
                await conn.execute(insert(functions).values(rows.to_row(tenant, created)))
        except IntegrityError as e:
            await self.get_service(tenant, service_name)  # a missing service breaks the FK
            raise AlreadyExists(f"function {fn.function_name!r} already exists") from e
        return created

    async def get_function(self, tenant: str, service: str, name: str) -> Function:
        """The function; ServiceNotFound or FunctionNotFound when missing."""
        query = select(functions).where(*_function_key(tenant, service, name))
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            await self.get_service(tenant, service)
            raise FunctionNotFound(f"function {name!r} not found in service {service!r}")
        return rows.from_row(Function, row)

    async def list_functions(
        self, tenant: str, service: str, prefix: str = "", limit: int = 100, start_key: str = ""
    ) -> list[Function]:
        """Functions of a service ordered by name, from `start_key` (inclusive)."""
        await self.get_service(tenant, service)
        query = rows.page(functions, functions.c.function_name, prefix, limit, start_key).where(
            functions.c.tenant == tenant, functions.c.service_name == service
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [rows.from_row(Function, row) for row in found]

    async def update_function(
        self, tenant: str, service: str, name: str, changes: Mapping[str, object]
    ) -> Function:
        """Change only the given fields and bump `revision` by one, in one statement."""
        values = rows.changes_to_values(Function, changes)
        query = (
            update(functions)
            .where(*_function_key(tenant, service, name))
            .values(**values, revision=functions.c.revision + 1, last_modified_time=rows.now_iso())
            .returning(*functions.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            await self.get_service(tenant, service)
            raise FunctionNotFound(f"function {name!r} not found in service {service!r}")
        return rows.from_row(Function, row)

    async def delete_function(self, tenant: str, service: str, name: str) -> None:
        """Delete a function; ServiceNotFound or FunctionNotFound when missing."""
        query = delete(functions).where(*_function_key(tenant, service, name))
        async with self._begin() as conn:
            deleted = (await conn.execute(query)).rowcount
        if not deleted:
            await self.get_service(tenant, service)
            raise FunctionNotFound(f"function {name!r} not found in service {service!r}")

    # -- async invocations -----------------------------------------------------------

    async def record_accepted(self, rec: InvocationRecord) -> None:
        """Persist an accepted async invocation as Enqueued; AlreadyExists for a reused id."""
        row = msgspec.structs.asdict(rec)
        row.update(status="Enqueued", created_time=rec.created_time or rows.now_iso())
        try:
            async with self._begin() as conn:
                await conn.execute(insert(invocations).values(row))
        except IntegrityError as e:
            raise AlreadyExists(f"invocation {rec.request_id!r} already exists") from e

    async def record_outcome(
        self,
        tenant: str,
        request_id: str,
        *,
        status: InvocationStatus,
        attempt: int,
        result: bytes,
        error_type: str,
        error_message: str,
    ) -> None:
        """Record an attempt's outcome (finished time set for Succeeded/Failed).

        Idempotent: a duplicate or stale outcome (see `rows.outcome_applies`) is ignored,
        not an error, because completions are delivered at least once.
        """
        if status not in rows.STATUSES:
            raise BadRequest(f"unknown invocation status {status!r}")
        terminal = status in rows.TERMINAL
        values = {
            "status": status,
            "attempt": attempt,
            "result": result,
            "error_type": error_type,
            "error_message": error_message,
            "finished_time": rows.now_iso() if terminal else "",
        }
        key = (invocations.c.tenant == tenant, invocations.c.request_id == request_id)
        apply = (
            update(invocations).where(*key, rows.outcome_applies(status, attempt)).values(values)
        )
        for _ in range(2):  # the second pass only after losing an insert race
            async with self._begin() as conn:
                if (await conn.execute(apply)).rowcount:
                    return
                found = (await conn.execute(select(invocations.c.attempt).where(*key))).first()
            if found is not None:
                log.debug("ignoring stale outcome of %s attempt %d", request_id, attempt)
                return
            # No accepted record (it should exist): keep the outcome rather than lose it.
            log.warning("outcome for unknown invocation %s of tenant %s", request_id, tenant)
            orphan = InvocationRecord(
                request_id=request_id, tenant=tenant, service_name="", qualifier="",
                function_name="", created_time=rows.now_iso(),
            )  # fmt: skip
            try:
                async with self._begin() as conn:
                    await conn.execute(
                        insert(invocations).values({**msgspec.structs.asdict(orphan), **values})
                    )
                return
            except IntegrityError:
                continue

    async def get_invocation(self, tenant: str, request_id: str) -> InvocationRecord:
        """The record of an async invocation; InvocationNotFound (also for other tenants')."""
        query = select(invocations).where(
            invocations.c.tenant == tenant, invocations.c.request_id == request_id
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise InvocationNotFound(f"invocation {request_id!r} not found")
        return InvocationRecord(**row)

    # -- plumbing --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._guard(), self._engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Turn "cannot reach the database" into Unavailable; let real errors through."""
        try:
            yield
        except (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError) as e:
            where = self._engine.url.render_as_string(hide_password=True)
            raise Unavailable(f"metadata database {where} unavailable: {_reason(e)}") from e


def _function_key(tenant: str, service: str, name: str) -> tuple[ColumnElement[bool], ...]:
    """The conditions that pick one function of one tenant's service."""
    return (
        functions.c.tenant == tenant,
        functions.c.service_name == service,
        functions.c.function_name == name,
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, DBAPIError) and e.orig is not None:
        return f"{type(e.orig).__name__}: {e.orig}"
    return f"{type(e).__name__}: {e}"
