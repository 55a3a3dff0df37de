"""Trigger persistence: the trigger resource, the fires timers claim, first admissions.

A mixin of `shared.store.Store` (kept apart so the store module does not keep growing);
it uses the store's connection handling (`_begin`, `_insert`, `_guard`).

Fires (`trigger_fires`, one row per trigger and scheduled time) make a timer fire exactly
once across replicas: a replica claims a time by inserting its row (the primary key
refuses a second claim), publishes, then marks it `published`; a claim whose owner died
before that is taken over by compare-and-set once its lease has lapsed. The takeover's
publish may be a second copy of one already sent, so the invocation carries `once`, and
the dispatcher admits only the first copy of its id (`admit_first`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import rows
from shared.errors import AlreadyExists, TriggerNotFound
from shared.models import Function, InvocationStatus, Trigger
from shared.schema import invocations, trigger_fires, triggers

FireState = Literal["claimed", "published", "skipped"]
ClaimResult = Literal["claimed", "held", "done"]
TRIGGER_MUTABLE = frozenset(("qualifier", "trigger_config", "enabled", "description"))


@dataclass(frozen=True, slots=True)
class Fire:
    """A claimed scheduled time of a trigger."""

    trigger_id: str
    scheduled_ms: int
    tenant: str
    request_id: str


@dataclass(frozen=True, slots=True)
class PreviousRun:
    request_id: str
    status: InvocationStatus | None
    earlier_pending: bool


def _trigger(row: RowMapping) -> Trigger:
    values = dict(row)
    values.pop("tenant", None)
    values["trigger_config"] = msgspec.json.decode(values["trigger_config"])
    values["enabled"] = bool(values["enabled"])
    return Trigger(**values)


def _row(tenant: str, trig: Trigger) -> dict[str, Any]:
    values = msgspec.structs.asdict(trig)
    values["trigger_config"] = msgspec.json.encode(trig.trigger_config).decode()
    values["enabled"] = int(trig.enabled)
    return {"tenant": tenant, **values}


class TriggerRecords:
    """Trigger queries of the metadata store (mixed into `Store`)."""

    def _begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # Store's

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        raise NotImplementedError  # Store's

    async def get_function(self, tenant: str, service: str, name: str) -> Function:
        raise NotImplementedError  # Store's

    # -- the resource ----------------------------------------------------------------

    async def create_trigger(
        self, tenant: str, service: str, function: str, trig: Trigger
    ) -> Trigger:
        """Store a new trigger; AlreadyExists for a taken name, FunctionNotFound (from the
        foreign key) for a missing function."""
        rows.check_resource_name("trigger", trig.trigger_name)
        stamp = rows.now_iso()
        created = msgspec.structs.replace(
            trig,
            trigger_id=str(uuid.uuid4()),
            service_name=service,
            function_name=function,
            created_time=stamp,
            last_modified_time=stamp,
        )
        try:
            async with self._begin() as conn:
                await conn.execute(self._insert(triggers).values(_row(tenant, created)))
        except IntegrityError as e:
            await self.get_function(tenant, service, function)  # the foreign key
            raise AlreadyExists(
                f"trigger {trig.trigger_name!r} already exists on {service}/{function}"
            ) from e
        return created

    async def get_trigger(self, tenant: str, service: str, function: str, name: str) -> Trigger:
        query = select(triggers).where(*_key(tenant, service, function, name))
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            await self.get_function(tenant, service, function)
            raise TriggerNotFound(f"trigger {name!r} not found on {service}/{function}")
        return _trigger(row)

    async def list_triggers(
        self,
        tenant: str,
        service: str,
        function: str,
        prefix: str = "",
        limit: int = 100,
        start_key: str = "",
    ) -> list[Trigger]:
        """The function's triggers ordered by name, from `start_key` (inclusive)."""
        await self.get_function(tenant, service, function)
        query = rows.page(triggers, triggers.c.trigger_name, prefix, limit, start_key).where(
            triggers.c.tenant == tenant,
            triggers.c.service_name == service,
            triggers.c.function_name == function,
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [_trigger(row) for row in found]

    async def update_trigger(
        self, tenant: str, service: str, function: str, name: str, changes: Mapping[str, Any]
    ) -> Trigger:
        """Change only the given fields (python names; see TRIGGER_MUTABLE)."""
        unknown = changes.keys() - TRIGGER_MUTABLE
        if unknown:
            raise ValueError(f"not changeable: {sorted(unknown)}")
        values = dict(changes)
        if "trigger_config" in values:
            values["trigger_config"] = msgspec.json.encode(values["trigger_config"]).decode()
        if "enabled" in values:
            values["enabled"] = int(values["enabled"])
        query = (
            update(triggers)
            .where(*_key(tenant, service, function, name))
            .values(**values, last_modified_time=rows.now_iso())
            .returning(*triggers.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            await self.get_function(tenant, service, function)
            raise TriggerNotFound(f"trigger {name!r} not found on {service}/{function}")
        return _trigger(row)

    async def delete_trigger(self, tenant: str, service: str, function: str, name: str) -> None:
        query = delete(triggers).where(*_key(tenant, service, function, name))
        async with self._begin() as conn:
            deleted = (await conn.execute(query)).rowcount
        if not deleted:
            await self.get_function(tenant, service, function)
            raise TriggerNotFound(f"trigger {name!r} not found on {service}/{function}")

    async def trigger_by_id(self, trigger_id: str) -> tuple[str, Trigger]:
        """(tenant, trigger) of the trigger with this id; TriggerNotFound otherwise."""
        query = select(triggers).where(triggers.c.trigger_id == trigger_id)
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise TriggerNotFound(f"trigger {trigger_id} not found")
        return row["tenant"], _trigger(row)

    async def triggers_of_type(
        self,
        trigger_type: str,
        *,
        tenant: str = "",
        service: str = "",
        function: str = "",
    ) -> list[tuple[str, Trigger]]:
        """(tenant, trigger) of every trigger of a type, or of one function's (for a cache)."""
        query = select(triggers).where(triggers.c.trigger_type == trigger_type)
        if tenant:
            query = query.where(
                triggers.c.tenant == tenant,
                triggers.c.service_name == service,
                triggers.c.function_name == function,
            )
        async with self._begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [(row["tenant"], _trigger(row)) for row in found]

    async def enabled_triggers(self, trigger_ids: list[str]) -> set[str]:
        """Those of these trigger ids that exist and are enabled."""
        if not trigger_ids:
            return set()
        query = select(triggers.c.trigger_id).where(
            triggers.c.trigger_id.in_(trigger_ids), triggers.c.enabled == 1
        )
        async with self._begin() as conn:
            return set((await conn.execute(query)).scalars().all())

    # -- fires -----------------------------------------------------------------------

    async def claim_fires(self, fires: list[Fire], owner: str, lease_until: float) -> list[Fire]:
        """Claim scheduled times, all in one statement; the ones now ours. A time claimed
        before (by another replica, or published or skipped already) is not; a claim whose
        owner's lease lapsed is left to `take_over_lapsed` (one sweep for all triggers)."""
        if not fires:
            return []
        values = [
            {
                "trigger_id": f.trigger_id,
                "scheduled_ms": f.scheduled_ms,
                "tenant": f.tenant,
                "request_id": f.request_id,
                "state": "claimed",
                "owner": owner,
                "lease_until": lease_until,
            }
            for f in fires
        ]
        insert = (
            self._insert(trigger_fires)
            .values(values)
            .on_conflict_do_nothing(index_elements=["trigger_id", "scheduled_ms"])
            .returning(trigger_fires.c.trigger_id, trigger_fires.c.scheduled_ms)
        )
        async with self._begin() as conn:
            won = {(tid, ms) for tid, ms in (await conn.execute(insert)).all()}
        return [f for f in fires if (f.trigger_id, f.scheduled_ms) in won]

    async def take_over_lapsed(
        self, owner: str, now: float, lease_until: float, limit: int = 100
    ) -> list[Fire]:
        """Claims whose owner's lease lapsed before `now`, made ours (compare-and-set each)."""
        c = trigger_fires.c
        query = (
            select(c.trigger_id, c.scheduled_ms, c.tenant, c.request_id, c.lease_until)
            .where(c.state == "claimed", c.lease_until < now)
            .order_by(c.scheduled_ms)
            .limit(limit)
        )
        taken: list[Fire] = []
        async with self._begin() as conn:
            for found in (await conn.execute(query)).all():
                swap = (
                    update(trigger_fires)
                    .where(
                        *_fire_key(found.trigger_id, found.scheduled_ms),
                        c.state == "claimed",
                        c.lease_until == found.lease_until,
                    )
                    .values(owner=owner, lease_until=lease_until)
                )
                if (await conn.execute(swap)).rowcount:
                    taken.append(
                        Fire(found.trigger_id, found.scheduled_ms, found.tenant, found.request_id)
                    )
        return taken

    async def extend_fire(self, fire: Fire, owner: str, lease_until: float) -> bool:
        """Renew our claim's lease (a queued fire waiting for the previous run)."""
        query = (
            update(trigger_fires)
            .where(
                *_fire_key(fire.trigger_id, fire.scheduled_ms),
                trigger_fires.c.state == "claimed",
                trigger_fires.c.owner == owner,
            )
            .values(lease_until=lease_until)
        )
        async with self._begin() as conn:
            return bool((await conn.execute(query)).rowcount)

    async def release_fires(self, owner: str) -> int:
        """Hand back our unfinished claims (a clean stop): their lease ends now, so another
        replica's next sweep takes them over instead of waiting for it to lapse."""
        c = trigger_fires.c
        query = (
            update(trigger_fires)
            .where(c.state == "claimed", c.owner == owner)
            .values(lease_until=0.0)
        )
        async with self._begin() as conn:
            return int((await conn.execute(query)).rowcount)

    async def finish_fires(self, fires: list[Fire], owner: str, state: FireState) -> int:
        """Mark our claims published or skipped; how many were still ours."""
        if not fires:
            return 0
        c = trigger_fires.c
        query = (
            update(trigger_fires)
            .where(
                or_(*(and_(*_fire_key(f.trigger_id, f.scheduled_ms)) for f in fires)),
                c.state == "claimed",
                c.owner == owner,
            )
            .values(state=state)
        )
        async with self._begin() as conn:
            return int((await conn.execute(query)).rowcount)

    async def last_fires(self, trigger_ids: list[str] | None = None) -> dict[str, int]:
        """The latest claimed scheduled time (ms) per trigger (all triggers if None)."""
        c = trigger_fires.c
        query = select(c.trigger_id, func.max(c.scheduled_ms)).group_by(c.trigger_id)
        if trigger_ids is not None:
            query = query.where(c.trigger_id.in_(trigger_ids))
        async with self._begin() as conn:
            return {tid: int(ms) for tid, ms in (await conn.execute(query)).all()}

    async def previous_run(self, trigger_id: str, before_ms: int) -> PreviousRun | None:
        """What came before a trigger's fire at `before_ms`: the latest published fire's
        request id and the status of its invocation (None if it left no record), and
        whether an earlier fire is still claimed (waiting or being published). None when
        there was no earlier fire at all."""
        c = trigger_fires.c
        published = (
            select(c.request_id, c.tenant)
            .where(c.trigger_id == trigger_id, c.scheduled_ms < before_ms, c.state == "published")
            .order_by(c.scheduled_ms.desc())
            .limit(1)
        )
        pending = select(func.count()).where(
            c.trigger_id == trigger_id, c.scheduled_ms < before_ms, c.state == "claimed"
        )
        async with self._begin() as conn:
            found = (await conn.execute(published)).first()
            waiting = int((await conn.execute(pending)).scalar_one())
            status: InvocationStatus | None = None
            if found is not None:
                status = (
                    await conn.execute(
                        select(invocations.c.status).where(
                            invocations.c.tenant == found.tenant,
                            invocations.c.request_id == found.request_id,
                        )
                    )
                ).scalar_one_or_none()
        if found is None and not waiting:
            return None
        return PreviousRun(
            request_id=found.request_id if found is not None else "",
            status=status,
            earlier_pending=bool(waiting),
        )

    async def prune_fires(self, before_ms: int) -> int:
        """Forget finished fires scheduled before `before_ms`; how many."""
        query = delete(trigger_fires).where(
            trigger_fires.c.scheduled_ms < before_ms, trigger_fires.c.state != "claimed"
        )
        async with self._begin() as conn:
            return int((await conn.execute(query)).rowcount)

    # -- first admissions ------------------------------------------------------------

    async def admit_first(self, tenant: str, request_ids: list[str]) -> set[str]:
        """Of these invocations (deterministic ids, `Invocation.once`), the ones admitted
        now for the first time; the others were admitted before (a second copy)."""
        if not request_ids:
            return set()
        query = (
            update(invocations)
            .where(
                invocations.c.tenant == tenant,
                invocations.c.request_id.in_(request_ids),
                invocations.c.admitted == 0,
            )
            .values(admitted=1)
            .returning(invocations.c.request_id)
        )
        async with self._begin() as conn:
            return set((await conn.execute(query)).scalars().all())


def _key(tenant: str, service: str, function: str, name: str) -> tuple[Any, ...]:
    return (
        triggers.c.tenant == tenant,
        triggers.c.service_name == service,
        triggers.c.function_name == function,
        triggers.c.trigger_name == name,
    )


def _fire_key(trigger_id: str, scheduled_ms: int) -> tuple[Any, ...]:
    return (trigger_fires.c.trigger_id == trigger_id, trigger_fires.c.scheduled_ms == scheduled_ms)
