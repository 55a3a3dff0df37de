"""Metadata store (**contract**): tenants, services, functions, async invocation records,
async and provision configs, dead letters.

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
from typing import Any, TypeVar

import msgspec
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    func,
    insert,
    not_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import dbengine, rows
from shared.errors import (
    AlreadyExists,
    AsyncConfigNotFound,
    BadRequest,
    DeadLetterNotFound,
    FunctionNotFound,
    InvocationNotFound,
    NotEmpty,
    NotFound,
    ProvisionConfigNotFound,
    ReservationExceeded,
    ServiceNotFound,
    Unavailable,
)
from shared.groupcommit import GroupCommit
from shared.models import (
    DEAD_LETTER_REASONS,
    AsyncConfig,
    DeadLetter,
    Function,
    InvocationRecord,
    InvocationStatus,
    ProvisionConfig,
    Service,
    Tenant,
)
from shared.schema import (
    TENANT_NUMBER,
    api_keys,
    async_configs,
    counters,
    dead_letters,
    functions,
    invocations,
    provision_configs,
    services,
    tenants,
)
from shared.store_releases import ReleaseStore
from shared.store_triggers import TriggerRecords

log = logging.getLogger(f"pyfc.{__name__}")

MAX_CHAIN_DEPTH = 1000
MAX_ASYNC_RETRY_ATTEMPTS = 8
MAX_ASYNC_EVENT_AGE = 86400
MAX_PROVISION_TARGET = 100
_CONFIG_KEY = ("tenant", "service_name", "qualifier", "function_name")
_Config = TypeVar("_Config", AsyncConfig, ProvisionConfig)


class Store(ReleaseStore, TriggerRecords):
    """Async access to the metadata database; build with `await Store.open(url)`.

    Versions and aliases are in `shared.store_releases`, triggers and their fires in
    `shared.store_triggers` (mixins on the same engine)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # The async invocation path's writes (accepts, outcomes, dead letters) commit in
        # groups: see shared/groupcommit.py.
        self._writes = GroupCommit(self._begin)
        self._outcome_upserts = {t: self._outcome_upsert(t) for t in (False, True)}
        self._dead_letter_insert = self._insert(dead_letters).on_conflict_do_nothing(
            index_elements=["tenant", "request_id"]
        )

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
        key = "pyfc_" + secrets.token_urlsafe(30)  # 30 bytes -> 40 urlsafe chars
        # The next number, in the same transaction: the counter's row lock orders
        # concurrent creations, and a failed one gives its number back.
        next_number = (
            update(counters)
            .where(counters.c.name == TENANT_NUMBER)
            .values(value=counters.c.value + 1)
            .returning(counters.c.value)
        )
        try:
            async with self._begin() as conn:
                number = (await conn.execute(next_number)).scalar_one()
                tenant = Tenant(
                    name=name, concurrency=concurrency, created_time=rows.now_iso(), number=number
                )
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

    async def update_tenant(
        self, name: str, *, concurrency: int | None = None, max_chain_depth: int | None = None
    ) -> Tenant:
        """Change a tenant's caps; ReservationExceeded if its functions reserve more than
        the new concurrency (checked under the tenant's row lock, like reservations)."""
        values: dict[str, int] = {}
        if concurrency is not None:
            if concurrency < 1:
                raise BadRequest(f"tenant concurrency must be at least 1, got {concurrency}")
            values["concurrency"] = concurrency
        if max_chain_depth is not None:
            if not 1 <= max_chain_depth <= MAX_CHAIN_DEPTH:
                raise BadRequest(
                    f"maxChainDepth must be between 1 and {MAX_CHAIN_DEPTH}, got {max_chain_depth}"
                )
            values["max_chain_depth"] = max_chain_depth
        if not values:
            raise BadRequest("nothing to update: give concurrency or max chain depth")
        query = update(tenants).where(tenants.c.name == name).values(values).returning(*tenants.c)
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                raise NotFound(f"tenant {name!r} not found")
            reserved = 0 if concurrency is None else await _reserved_total(conn, name)
            if concurrency is not None and reserved > concurrency:
                raise ReservationExceeded(
                    f"tenant {name!r} has {reserved} slots reserved by its functions; "
                    f"lower their reservedConcurrency before the concurrency below that"
                )
        return Tenant(**row)

    async def reserved_total(self, tenant: str) -> int:
        """Sum of the reserved concurrency of the tenant's functions (0 when none)."""
        async with self._begin() as conn:
            return await _reserved_total(conn, tenant)

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
            raise NotEmpty(
                f"service {name!r} still has functions, versions or aliases; delete them first"
            ) from e
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
                if created.reserved_concurrency is not None:
                    await _reserve(
                        conn, tenant, service_name, fn.function_name, created.reserved_concurrency
                    )
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
        """Change only the given fields and bump `revision` by one, in one statement.

        A change of `reserved_concurrency` alone keeps the revision: it is an admission
        setting, and warm instances of the same code stay reusable.
        """
        values = rows.changes_to_values(Function, changes)
        if values.keys() - {"reserved_concurrency"}:
            values["revision"] = functions.c.revision + 1
        query = (
            update(functions)
            .where(*_function_key(tenant, service, name))
            .values(**values, last_modified_time=rows.now_iso())
            .returning(*functions.c)
        )
        reserve = values.get("reserved_concurrency")
        async with self._begin() as conn:
            if isinstance(reserve, int):
                await _reserve(conn, tenant, service, name, reserve)
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            await self.get_service(tenant, service)
            raise FunctionNotFound(f"function {name!r} not found in service {service!r}")
        return rows.from_row(Function, row)

    async def delete_function(self, tenant: str, service: str, name: str) -> None:
        """Delete a function and its async and provision configs (not its dead letters,
        which outlive it like invocation records); ServiceNotFound or FunctionNotFound;
        NotEmpty while it has triggers (as FC: delete them first)."""
        query = delete(functions).where(*_function_key(tenant, service, name))
        try:
            async with self._begin() as conn:
                # The foreign keys cascade too; explicit, so it does not hinge on the PRAGMA.
                for table in (async_configs, provision_configs):
                    await conn.execute(
                        delete(table).where(*_function_key(tenant, service, name, table))
                    )
                deleted = (await conn.execute(query)).rowcount
        except IntegrityError as e:  # the RESTRICT foreign key from triggers
            raise NotEmpty(f"function {name!r} still has triggers; delete them first") from e
        if not deleted:
            await self.get_service(tenant, service)
            raise FunctionNotFound(f"function {name!r} not found in service {service!r}")

    # -- async invocations -----------------------------------------------------------

    async def record_accepted(self, rec: InvocationRecord) -> None:
        """Persist an accepted async invocation as Enqueued; AlreadyExists for a reused id."""
        row = msgspec.structs.asdict(rec)
        row.update(status="Enqueued", created_time=rec.created_time or rows.now_iso())
        try:
            await self._writes.execute(_ACCEPT, row)
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
        version: str = "",
    ) -> None:
        """Record an attempt's outcome (finished time set for Succeeded/Failed), and the
        version it ran when given (an accepted record may not know it yet).

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
        # One statement: update where `rows.outcome_applies` allows it, or keep an outcome
        # whose accepted record is missing (it should exist) rather than lose it.
        row = {
            "tenant": tenant,
            "request_id": request_id,
            "service_name": "",
            "qualifier": "",
            "function_name": "",
            "version": version,
            "created_time": rows.now_iso(),
            **values,
        }
        await self._writes.execute(self._outcome_upserts[terminal], row)

    async def get_invocation(self, tenant: str, request_id: str) -> InvocationRecord:
        """The record of an async invocation; InvocationNotFound (also for other tenants')."""
        query = select(invocations).where(
            invocations.c.tenant == tenant, invocations.c.request_id == request_id
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise InvocationNotFound(f"invocation {request_id!r} not found")
        return InvocationRecord(**{k: v for k, v in row.items() if k != "admitted"})

    async def concluded(self, tenant: str, attempts: Mapping[str, int]) -> set[str]:
        """Those of the invocations (request id -> attempt) whose attempt was concluded: the
        invocation is Succeeded or Failed, or a later attempt is under way (a retry was
        scheduled). A redelivered copy of one has nothing left to run."""
        if not attempts:
            return set()
        query = select(invocations.c.request_id, invocations.c.status, invocations.c.attempt).where(
            invocations.c.tenant == tenant, invocations.c.request_id.in_(list(attempts))
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).all()
        return {
            request_id
            for request_id, status, attempt in found
            if status in rows.TERMINAL or attempt >= attempts[request_id]
        }

    async def reenqueue(
        self, tenant: str, request_id: str, service: str, qualifier: str, function: str
    ) -> None:
        """Mark an async invocation Enqueued again at attempt 0 (result, error and finished
        time cleared; the row is created if absent), so its status follows a redrive."""
        values = {
            "service_name": service,
            "qualifier": qualifier,
            "function_name": function,
            "status": "Enqueued",
            "attempt": 0,
            "error_type": "",
            "error_message": "",
            "result": b"",
            "created_time": rows.now_iso(),
            "finished_time": "",
            # A redriven invocation runs again: its first copy is admitted anew.
            "admitted": 0,
        }
        query = (
            self._insert(invocations)
            .values(tenant=tenant, request_id=request_id, **values)
            .on_conflict_do_update(index_elements=["tenant", "request_id"], set_=values)
        )
        async with self._begin() as conn:
            await conn.execute(query)

    # -- async and provision configs -------------------------------------------------

    async def get_async_config(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> AsyncConfig:
        """The async config of function+qualifier; AsyncConfigNotFound when none is set
        (ServiceNotFound / FunctionNotFound when the function itself is missing)."""
        row = await self._get_config(async_configs, tenant, service, qualifier, function)
        if row is None:
            await self.get_function(tenant, service, function)
            raise AsyncConfigNotFound(f"no async config for {service}.{qualifier}/{function}")
        return rows.from_row(AsyncConfig, row)

    async def put_async_config(self, tenant: str, cfg: AsyncConfig) -> AsyncConfig:
        """Create or replace the async config of an existing function (all fields given)."""
        if not 0 <= cfg.max_async_retry_attempts <= MAX_ASYNC_RETRY_ATTEMPTS:
            raise BadRequest(
                f"maxAsyncRetryAttempts must be between 0 and {MAX_ASYNC_RETRY_ATTEMPTS}"
            )
        if not 1 <= cfg.max_async_event_age_in_seconds <= MAX_ASYNC_EVENT_AGE:
            raise BadRequest(
                f"maxAsyncEventAgeInSeconds must be between 1 and {MAX_ASYNC_EVENT_AGE}"
            )
        return await self._put_config(async_configs, tenant, cfg)

    async def delete_async_config(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> None:
        """Remove the async config (defaults apply again); AsyncConfigNotFound if none."""
        if not await self._delete_config(async_configs, tenant, service, qualifier, function):
            await self.get_function(tenant, service, function)
            raise AsyncConfigNotFound(f"no async config for {service}.{qualifier}/{function}")

    async def get_provision_config(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> ProvisionConfig:
        """The provision config; ProvisionConfigNotFound when none is set."""
        row = await self._get_config(provision_configs, tenant, service, qualifier, function)
        if row is None:
            await self.get_function(tenant, service, function)
            raise ProvisionConfigNotFound(
                f"no provision config for {service}.{qualifier}/{function}"
            )
        return rows.from_row(ProvisionConfig, row)

    async def put_provision_config(self, tenant: str, cfg: ProvisionConfig) -> ProvisionConfig:
        """Create or replace the provision config (min warm instances) of a function."""
        if not 0 <= cfg.target <= MAX_PROVISION_TARGET:
            raise BadRequest(f"target must be between 0 and {MAX_PROVISION_TARGET}")
        return await self._put_config(provision_configs, tenant, cfg)

    async def delete_provision_config(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> None:
        """Remove the provision config; ProvisionConfigNotFound if none."""
        if not await self._delete_config(provision_configs, tenant, service, qualifier, function):
            await self.get_function(tenant, service, function)
            raise ProvisionConfigNotFound(
                f"no provision config for {service}.{qualifier}/{function}"
            )

    async def list_provision_configs(self) -> list[tuple[str, ProvisionConfig]]:
        """(tenant, config) of every tenant's config with target > 0, for the reconciler."""
        c = provision_configs.c
        query = (
            select(provision_configs)
            .where(c.target > 0)
            .order_by(c.tenant, c.service_name, c.qualifier, c.function_name)
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [(row["tenant"], rows.from_row(ProvisionConfig, row)) for row in found]

    # -- dead letters ----------------------------------------------------------------

    async def add_dead_letter(self, tenant: str, dl: DeadLetter) -> None:
        """Keep an async invocation given up on. Idempotent per (tenant, request id): a
        repeated add (completions arrive at least once) keeps the first record."""
        if dl.reason not in DEAD_LETTER_REASONS:
            raise BadRequest(f"unknown dead letter reason {dl.reason!r}")
        row = {"tenant": tenant, **msgspec.structs.asdict(dl)}
        row["created_time"] = dl.created_time or rows.now_iso()
        await self._writes.execute(self._dead_letter_insert, row)

    async def list_dead_letters(
        self,
        tenant: str,
        *,
        service: str = "",
        function: str = "",
        limit: int,
        start_key: str = "",
    ) -> list[DeadLetter]:
        """Dead letters ordered by request id from `start_key` (inclusive), filtered."""
        query = rows.page(dead_letters, dead_letters.c.request_id, "", limit, start_key).where(
            *_dead_letter_filter(tenant, service, function)
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [rows.from_row(DeadLetter, row) for row in found]

    async def get_dead_letter(self, tenant: str, request_id: str) -> DeadLetter:
        """One dead letter; DeadLetterNotFound (also for another tenant's)."""
        query = select(dead_letters).where(
            dead_letters.c.tenant == tenant, dead_letters.c.request_id == request_id
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise DeadLetterNotFound(f"dead letter {request_id!r} not found")
        return rows.from_row(DeadLetter, row)

    async def delete_dead_letter(self, tenant: str, request_id: str) -> None:
        """Delete one dead letter; DeadLetterNotFound if there is none."""
        query = delete(dead_letters).where(
            dead_letters.c.tenant == tenant, dead_letters.c.request_id == request_id
        )
        async with self._begin() as conn:
            deleted = (await conn.execute(query)).rowcount
        if not deleted:
            raise DeadLetterNotFound(f"dead letter {request_id!r} not found")

    async def purge_dead_letters(
        self, tenant: str, *, service: str = "", function: str = ""
    ) -> int:
        """Delete the tenant's dead letters (of one service / function if given); how many."""
        query = delete(dead_letters).where(*_dead_letter_filter(tenant, service, function))
        async with self._begin() as conn:
            return int((await conn.execute(query)).rowcount)

    # -- plumbing --------------------------------------------------------------------

    def _outcome_upsert(self, terminal: bool) -> postgresql.Insert | sqlite.Insert:
        """Insert an outcome row, or update the existing one where the outcome applies.

        Built once per store (statement construction costs more than running it on
        SQLite); the row's values are bound at execution.
        """
        stmt = self._insert(invocations)
        set_: dict[str, Any] = {column: stmt.excluded[column] for column in _OUTCOME_COLUMNS}
        # An outcome that does not name its version keeps the one recorded at accept.
        given = func.nullif(stmt.excluded.version, "")
        set_["version"] = func.coalesce(given, invocations.c.version)
        return stmt.on_conflict_do_update(
            index_elements=[invocations.c.tenant, invocations.c.request_id],
            set_=set_,
            where=rows.outcome_applies_to(terminal, stmt.excluded.attempt),
        )

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """INSERT with the backend's ON CONFLICT clauses (both spell them the same)."""
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    async def _get_config(
        self, table: Table, tenant: str, service: str, qualifier: str, function: str
    ) -> RowMapping | None:
        query = select(table).where(
            *_function_key(tenant, service, function, table), table.c.qualifier == qualifier
        )
        async with self._begin() as conn:
            return (await conn.execute(query)).mappings().first()

    async def _put_config(self, table: Table, tenant: str, cfg: _Config) -> _Config:
        """Upsert a per function+qualifier config; the foreign key rejects a missing function."""
        rows.check_resource_name("service", cfg.service_name)
        rows.check_resource_name("function", cfg.function_name)
        stamp = rows.now_iso()
        row = rows.to_row(
            tenant, msgspec.structs.replace(cfg, created_time=stamp, last_modified_time=stamp)
        )
        changed = {k: v for k, v in row.items() if k not in _CONFIG_KEY and k != "created_time"}
        query = (
            self._insert(table)
            .values(row)
            .on_conflict_do_update(index_elements=list(_CONFIG_KEY), set_=changed)
            .returning(*table.c)
        )
        try:
            async with self._begin() as conn:
                stored = (await conn.execute(query)).mappings().one()
        except IntegrityError as e:
            await self.get_function(tenant, cfg.service_name, cfg.function_name)
            raise FunctionNotFound(f"function {cfg.function_name!r} was just deleted") from e
        return rows.from_row(type(cfg), stored)

    async def _delete_config(
        self, table: Table, tenant: str, service: str, qualifier: str, function: str
    ) -> bool:
        query = delete(table).where(
            *_function_key(tenant, service, function, table), table.c.qualifier == qualifier
        )
        async with self._begin() as conn:
            return bool((await conn.execute(query)).rowcount)

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


_OUTCOME_COLUMNS = ("status", "attempt", "result", "error_type", "error_message", "finished_time")
_ACCEPT = insert(invocations)


def _function_key(
    tenant: str, service: str, name: str, table: Table = functions
) -> tuple[ColumnElement[bool], ...]:
    """The conditions that pick one function of one tenant's service (in `table`)."""
    return (
        table.c.tenant == tenant,
        table.c.service_name == service,
        table.c.function_name == name,
    )


def _dead_letter_filter(tenant: str, service: str, function: str) -> list[ColumnElement[bool]]:
    where = [dead_letters.c.tenant == tenant]
    if service:
        where.append(dead_letters.c.service_name == service)
    if function:
        where.append(dead_letters.c.function_name == function)
    return where


async def _reserved_total(conn: AsyncConnection, tenant: str) -> int:
    query = select(func.coalesce(func.sum(functions.c.reserved_concurrency), 0)).where(
        functions.c.tenant == tenant
    )
    return int((await conn.execute(query)).scalar_one())


async def _reserve(
    conn: AsyncConnection, tenant: str, service: str, function: str, wanted: int
) -> None:
    """Check, inside the caller's transaction, that `function` may reserve `wanted` slots.

    The first statement is a no-op UPDATE of the tenant's row: on PostgreSQL it takes the
    row lock, on SQLite the database write lock (the driver opens the transaction before
    it), so concurrent reservations of one tenant are checked one after another and two
    cannot both fit into the same free slots.
    """
    if wanted < 0:
        raise BadRequest(f"reservedConcurrency must not be negative, got {wanted}")
    lock = (
        update(tenants)
        .where(tenants.c.name == tenant)
        .values(concurrency=tenants.c.concurrency)
        .returning(tenants.c.concurrency)
    )
    cap = (await conn.execute(lock)).scalar_one_or_none()
    if cap is None:
        raise NotFound(f"tenant {tenant!r} not found")
    if wanted > cap:
        raise BadRequest(f"reservedConcurrency {wanted} exceeds the tenant's concurrency {cap}")
    others = select(func.coalesce(func.sum(functions.c.reserved_concurrency), 0)).where(
        functions.c.tenant == tenant,
        not_(and_(functions.c.service_name == service, functions.c.function_name == function)),
    )
    taken = int((await conn.execute(others)).scalar_one())
    if taken + wanted > cap:
        raise ReservationExceeded(
            f"reservedConcurrency {wanted} does not fit: other functions reserve {taken} of "
            f"the tenant's concurrency {cap} ({cap - taken} free)"
        )


def _reason(e: BaseException) -> str:
    if isinstance(e, DBAPIError) and e.orig is not None:
        return f"{type(e.orig).__name__}: {e.orig}"
    return f"{type(e).__name__}: {e}"
