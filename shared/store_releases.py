"""Metadata store, release part: versions (immutable snapshots) and aliases.

A mixin of `shared.store.Store` (same engine and transactions). Every write that must see
a consistent service takes the service's row first (the version counter's UPDATE, or a
no-op UPDATE): the row lock on PostgreSQL, the write lock on SQLite, so a publish, an
alias write and a version delete of one service never interleave between a check and a
write. The foreign keys from `aliases` to `versions` refuse a dangling alias in the
database itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, delete, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import rows
from shared.errors import (
    AliasNotFound,
    AlreadyExists,
    BadRequest,
    FunctionNotFound,
    NoChanges,
    ServiceNotFound,
    VersionInUse,
    VersionNotFound,
)
from shared.models import Function, Service
from shared.release import (
    Alias,
    AutoRollback,
    RollbackRecord,
    Snapshot,
    Version,
    check_alias_name,
    check_weights,
    fingerprint,
)
from shared.schema import aliases, functions, services, versions

MAX_LIST = 1000
# Fields of an alias a partial update (PUT) may change.
ALIAS_MUTABLE = frozenset(
    ("version_id", "additional_version_weight", "description", "auto_rollback")
)


class ReleaseStore:
    """Versions and aliases; `Store` provides the connection."""

    def _begin(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    # -- versions ------------------------------------------------------------------------

    async def publish_version(self, tenant: str, service: str, description: str) -> Version:
        """Snapshot LATEST as the next version id (never reused).

        BadRequest for a service with no functions; NoChanges (400 VersionExists) when
        LATEST equals the newest version. Either refusal leaves the counter as it was.
        """
        take_id = (
            update(services)
            .where(*_service_key(tenant, service))
            .values(last_version_id=services.c.last_version_id + 1)
            .returning(*services.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(take_id)).mappings().first()
            if row is None:
                raise ServiceNotFound(f"service {service!r} not found")
            version_id = int(row["last_version_id"])
            query = (
                select(functions)
                .where(functions.c.tenant == tenant, functions.c.service_name == service)
                .order_by(functions.c.function_name)
            )
            fns = [rows.from_row(Function, r) for r in (await conn.execute(query)).mappings()]
            if not fns:
                raise BadRequest(f"service {service!r} has no functions: nothing to publish")
            svc = rows.from_row(Service, row)
            digest = fingerprint(svc, fns)
            newest = (
                await conn.execute(
                    select(versions.c.version_id, versions.c.fingerprint)
                    .where(*_service_key(tenant, service, versions))
                    .order_by(versions.c.version_id.desc())
                    .limit(1)
                )
            ).first()
            if newest is not None and newest.fingerprint == digest:
                raise NoChanges(
                    f"no changes since version {newest.version_id} of service {service!r}: "
                    "change LATEST before publishing"
                )
            stamp = rows.now_iso()
            snapshot = Snapshot(service=svc, functions={fn.function_name: fn for fn in fns})
            await conn.execute(
                insert(versions).values(
                    tenant=tenant,
                    service_name=service,
                    version_id=version_id,
                    description=description,
                    fingerprint=digest,
                    snapshot=msgspec.json.encode(snapshot).decode(),
                    created_time=stamp,
                    last_modified_time=stamp,
                )
            )
        return Version(
            version_id=str(version_id),
            description=description,
            created_time=stamp,
            last_modified_time=stamp,
        )

    async def get_version(self, tenant: str, service: str, version_id: int) -> Version:
        """One version; VersionNotFound (ServiceNotFound when the service is missing)."""
        row = await self._version_row(tenant, service, version_id)
        return _version(row)

    async def version_function(
        self, tenant: str, service: str, version_id: int, function: str
    ) -> tuple[Service, Function]:
        """The service config and one function as version `version_id` keeps them."""
        row = await self._version_row(tenant, service, version_id)
        snapshot = msgspec.json.decode(row["snapshot"], type=Snapshot)
        fn = snapshot.functions.get(function)
        if fn is None:
            raise FunctionNotFound(
                f"function {function!r} not found in version {version_id} of service {service!r}"
            )
        return snapshot.service, fn

    async def list_versions(
        self, tenant: str, service: str, limit: int = 100, start_key: int | None = None
    ) -> list[Version]:
        """Versions newest first (as FC lists them), from `start_key` (inclusive) down."""
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(f"limit must be between 1 and {MAX_LIST}, got {limit}")
        query = (
            select(versions)
            .where(*_service_key(tenant, service, versions))
            .order_by(versions.c.version_id.desc())
            .limit(limit)
        )
        if start_key is not None:
            query = query.where(versions.c.version_id <= start_key)
        async with self._begin() as conn:
            await _lock_service(conn, tenant, service, lock=False)
            found = (await conn.execute(query)).mappings().all()
        return [_version(row) for row in found]

    async def delete_version(self, tenant: str, service: str, version_id: int) -> None:
        """Delete a version; VersionInUse (409, naming the aliases) while an alias uses it."""
        query = delete(versions).where(
            *_service_key(tenant, service, versions), versions.c.version_id == version_id
        )
        try:
            async with self._begin() as conn:
                await _lock_service(conn, tenant, service)
                deleted = (await conn.execute(query)).rowcount
        except IntegrityError as e:  # the RESTRICT foreign keys from aliases
            users = await self._aliases_using(tenant, service, version_id)
            raise VersionInUse(
                f"version {version_id} of service {service!r} is used by alias(es) "
                f"{', '.join(users) or '?'}; point them elsewhere first"
            ) from e
        if not deleted:
            raise VersionNotFound(f"version {version_id} of service {service!r} not found")

    # -- aliases -------------------------------------------------------------------------

    async def create_alias(self, tenant: str, service: str, alias: Alias) -> Alias:
        """Store a new alias; AlreadyExists, or BadRequest naming a version that is missing."""
        check_alias_name(alias.alias_name)
        stamp = rows.now_iso()
        values = {
            **_alias_values(alias),
            "tenant": tenant,
            "service_name": service,
            "alias_name": alias.alias_name,
            "last_rollback": "",
            "created_time": stamp,
            "last_modified_time": stamp,
        }
        try:
            async with self._begin() as conn:
                await _lock_service(conn, tenant, service)
                await conn.execute(insert(aliases).values(values))
        except IntegrityError as e:
            async with self._begin() as conn:
                if await _alias_row(conn, tenant, service, alias.alias_name) is not None:
                    raise AlreadyExists(f"alias {alias.alias_name!r} already exists") from e
                await _check_versions(conn, tenant, service, values)
            raise
        return _alias(values)

    async def get_alias(self, tenant: str, service: str, name: str) -> Alias:
        async with self._begin() as conn:
            row = await _alias_row(conn, tenant, service, name)
            if row is None:
                await _lock_service(conn, tenant, service, lock=False)
                raise AliasNotFound(f"alias {name!r} of service {service!r} not found")
        return _alias(row)

    async def list_aliases(
        self, tenant: str, service: str, prefix: str = "", limit: int = 100, start_key: str = ""
    ) -> list[Alias]:
        """Aliases ordered by name, from `start_key` (inclusive)."""
        query = rows.page(aliases, aliases.c.alias_name, prefix, limit, start_key).where(
            *_service_key(tenant, service, aliases)
        )
        async with self._begin() as conn:
            await _lock_service(conn, tenant, service, lock=False)
            found = (await conn.execute(query)).mappings().all()
        return [_alias(row) for row in found]

    async def service_aliases(self, tenant: str, service: str) -> list[Alias]:
        """Every alias of a service (none for a missing service): what resolution caches."""
        query = select(aliases).where(*_service_key(tenant, service, aliases))
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [_alias(row) for row in found]

    async def update_alias(
        self, tenant: str, service: str, name: str, changes: Mapping[str, Any]
    ) -> Alias:
        """Change only the given fields (python names); `auto_rollback` None turns it off.

        The merged alias is checked as a whole (the weighted version must differ from a
        new versionId too). Read and write happen under the service's lock, so two partial
        updates never lose each other's fields.
        """
        unknown = sorted(set(changes) - ALIAS_MUTABLE)
        if unknown:
            raise BadRequest(f"cannot change {', '.join(unknown)} of an alias")
        if not changes:
            raise BadRequest("nothing to update: give at least one field")
        values: dict[str, Any] = {}
        try:
            async with self._begin() as conn:
                await _lock_service(conn, tenant, service)
                row = await _alias_row(conn, tenant, service, name)
                if row is None:
                    raise AliasNotFound(f"alias {name!r} of service {service!r} not found")
                merged = msgspec.structs.replace(_alias(row), **changes)
                values = {**_alias_values(merged), "last_modified_time": rows.now_iso()}
                stored = (
                    (
                        await conn.execute(
                            update(aliases)
                            .where(*_alias_key(tenant, service, name))
                            .values(values)
                            .returning(*aliases.c)
                        )
                    )
                    .mappings()
                    .one()
                )
        except IntegrityError as e:
            async with self._begin() as conn:
                await _check_versions(conn, tenant, service, values)
            raise BadRequest(f"alias {name!r}: {e.orig}") from e
        return _alias(stored)

    async def delete_alias(self, tenant: str, service: str, name: str) -> None:
        query = delete(aliases).where(*_alias_key(tenant, service, name))
        async with self._begin() as conn:
            deleted = (await conn.execute(query)).rowcount
            if not deleted:
                await _lock_service(conn, tenant, service, lock=False)
                raise AliasNotFound(f"alias {name!r} of service {service!r} not found")

    async def roll_back_alias(
        self, tenant: str, service: str, name: str, record: RollbackRecord
    ) -> Alias | None:
        """Take the weighted version's share to 0 and keep why; None (nothing done) when
        the alias no longer sends a share to that version (someone changed it first)."""
        query = (
            update(aliases)
            .where(
                *_alias_key(tenant, service, name),
                aliases.c.additional_version_id == int(record.version_id),
                aliases.c.additional_weight > 0,
            )
            .values(
                additional_weight=0.0,
                last_rollback=msgspec.json.encode(record).decode(),
                last_modified_time=rows.now_iso(),
            )
            .returning(*aliases.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _alias(row)

    # -- plumbing ------------------------------------------------------------------------

    async def _version_row(self, tenant: str, service: str, version_id: int) -> RowMapping:
        query = select(versions).where(
            *_service_key(tenant, service, versions), versions.c.version_id == version_id
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                await _lock_service(conn, tenant, service, lock=False)
                raise VersionNotFound(f"version {version_id} of service {service!r} not found")
        return row

    async def _aliases_using(self, tenant: str, service: str, version_id: int) -> list[str]:
        query = (
            select(aliases.c.alias_name)
            .where(
                *_service_key(tenant, service, aliases),
                or_(
                    aliases.c.version_id == version_id,
                    aliases.c.additional_version_id == version_id,
                ),
            )
            .order_by(aliases.c.alias_name)
        )
        async with self._begin() as conn:
            return list((await conn.execute(query)).scalars())


def _service_key(
    tenant: str, service: str, table: Any = services
) -> tuple[ColumnElement[bool], ...]:
    return (table.c.tenant == tenant, table.c.service_name == service)


def _alias_key(tenant: str, service: str, name: str) -> tuple[ColumnElement[bool], ...]:
    return (*_service_key(tenant, service, aliases), aliases.c.alias_name == name)


async def _lock_service(
    conn: AsyncConnection, tenant: str, service: str, *, lock: bool = True
) -> None:
    """ServiceNotFound unless the service exists; with `lock`, take its row (a no-op
    UPDATE: the row lock on PostgreSQL, the write lock on SQLite) for this transaction."""
    if lock:
        query: Any = (
            update(services)
            .where(*_service_key(tenant, service))
            .values(last_version_id=services.c.last_version_id)
            .returning(services.c.service_name)
        )
    else:
        query = select(services.c.service_name).where(*_service_key(tenant, service))
    if (await conn.execute(query)).first() is None:
        raise ServiceNotFound(f"service {service!r} not found")


async def _alias_row(
    conn: AsyncConnection, tenant: str, service: str, name: str
) -> RowMapping | None:
    query = select(aliases).where(*_alias_key(tenant, service, name))
    return (await conn.execute(query)).mappings().first()


async def _check_versions(
    conn: AsyncConnection, tenant: str, service: str, values: Mapping[str, Any]
) -> None:
    """BadRequest naming the first version of an alias's values that does not exist."""
    await _lock_service(conn, tenant, service, lock=False)
    for column in ("version_id", "additional_version_id"):
        wanted = values.get(column)
        if wanted is None:
            continue
        query = select(versions.c.version_id).where(
            *_service_key(tenant, service, versions), versions.c.version_id == wanted
        )
        if (await conn.execute(query)).first() is None:
            raise BadRequest(f"version {wanted} of service {service!r} does not exist")


def _alias_values(alias: Alias) -> dict[str, Any]:
    """The stored columns of an alias's routing fields, validated."""
    try:
        version_id = int(alias.version_id)
    except ValueError:
        version_id = 0
    if version_id < 1 or str(version_id) != alias.version_id:
        raise BadRequest(f"invalid versionId {alias.version_id!r}: a version id such as '1'")
    extra = check_weights(alias.version_id, alias.additional_version_weight)
    rollback = alias.auto_rollback
    return {
        "version_id": version_id,
        "additional_version_id": None if extra is None else extra[0],
        "additional_weight": 0.0 if extra is None else extra[1],
        "description": alias.description,
        "auto_rollback": "" if rollback is None else msgspec.json.encode(rollback).decode(),
    }


def _alias(row: Mapping[Any, Any]) -> Alias:
    extra = row["additional_version_id"]
    return Alias(
        alias_name=row["alias_name"],
        version_id=str(row["version_id"]),
        additional_version_weight={} if extra is None else {str(extra): row["additional_weight"]},
        description=row["description"],
        auto_rollback=(
            msgspec.json.decode(row["auto_rollback"], type=AutoRollback)
            if row["auto_rollback"]
            else None
        ),
        last_rollback=(
            msgspec.json.decode(row.get("last_rollback") or "null", type=RollbackRecord | None)
        ),
        created_time=row.get("created_time", ""),
        last_modified_time=row.get("last_modified_time", ""),
    )


def _version(row: Mapping[Any, Any]) -> Version:
    return Version(
        version_id=str(row["version_id"]),
        description=row["description"],
        created_time=row["created_time"],
        last_modified_time=row["last_modified_time"],
    )
