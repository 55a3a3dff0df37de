"""What every event source shares: the triggers it serves, and how its events enter.

An adapter (one per trigger kind: timer here; object storage, MQ, HTTP and log streams to
come) is a `Source`: it is told which enabled triggers of its kind exist (`sync`) and
turns its source's events into invocations through an `Emitter`, which accepts them as
an HTTP async call is accepted (recorded, then published with a broker confirm to the
dispatcher, where admission, caps, retries, destinations and the DLQ apply). The
`TriggerCache` keeps the set of triggers fresh from the store and control notices; the
runtime (`triggers/runtime.py`) wires them together. docs/architecture.md "Triggers".
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.accept import Acceptor
from shared.models import Trigger
from shared.protocol import Invocation, Lineage
from shared.trigger_types import TriggerType, decode_config, trigger_type
from triggers.metrics import TriggerMetrics


@dataclass(frozen=True, slots=True)
class ActiveTrigger:
    """An enabled trigger as an adapter serves it: its record and its typed config."""

    tenant: str
    trigger: Trigger
    config: Any

    @property
    def trigger_id(self) -> str:
        return self.trigger.trigger_id

    @property
    def version(self) -> tuple[str, str]:
        """Changes whenever the trigger does (a reload of an unchanged one is a no-op)."""
        return self.trigger.trigger_id, self.trigger.last_modified_time

    @property
    def label(self) -> str:
        t = self.trigger
        return f"{self.tenant}/{t.service_name}.{t.qualifier}/{t.function_name}#{t.trigger_name}"

    @staticmethod
    def of(tenant: str, trigger: Trigger) -> ActiveTrigger:
        kind = trigger_type(trigger.trigger_type)
        return ActiveTrigger(tenant, trigger, decode_config(kind, trigger.trigger_config))


class Source(Protocol):
    """One kind's adapter. `sync` is called with the triggers that appeared or changed
    (enabled only) and the ids of those that went (deleted, disabled), first with the
    whole set once it is loaded (possibly empty); `close` stops it."""

    kind: str

    async def sync(self, changed: list[ActiveTrigger], removed: list[str]) -> None: ...

    async def close(self) -> None: ...


def event_id(trigger_id: str, key: str) -> str:
    """A deterministic request id for one event of a trigger (a fire's scheduled time, an
    object event's sequencer): every replica that sees the event derives the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pyfc:trigger:{trigger_id}/{key}"))


def iso_utc(ts: float) -> str:
    """FC's trigger time: ISO-8601 UTC to the second with `Z`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Emitter:
    """Turns a trigger's event into an accepted async invocation (never bypassing the
    dispatcher); lineage origin `<kind>:<triggerName>`."""

    def __init__(self, kind: TriggerType, acceptor: Acceptor, metrics: TriggerMetrics) -> None:
        self._kind = kind
        self._acceptor = acceptor
        self._metrics = metrics

    def invocation(
        self,
        active: ActiveTrigger,
        payload: bytes,
        request_id: str,
        *,
        once: bool,
        created_at: float = 0.0,
        lineage: Lineage | None = None,
    ) -> Invocation:
        """`lineage`: the chain the event continues (an MQ message's headers); a new one
        (hops 0) by default."""
        t = active.trigger
        return Invocation(
            id=request_id,
            tenant=active.tenant,
            service=t.service_name,
            qualifier=t.qualifier,
            function=t.function_name,
            kind="async",
            source=self._kind.source,
            payload=payload,
            # The event's own time (a fire's scheduled time): max event age counts from it.
            created_at=created_at or time.time(),
            lineage=lineage
            or Lineage(trace_id=request_id, hops=0, origin=f"{t.trigger_type}:{t.trigger_name}"),
            once=once,
        )

    async def emit(self, active: ActiveTrigger, inv: Invocation, *, again: bool = False) -> None:
        """Accept `inv` (recorded, published, confirmed); raises Unavailable if not."""
        await self.record(active, inv, again=again)
        await self.publish(active, inv)

    async def record(self, active: ActiveTrigger, inv: Invocation, *, again: bool = True) -> None:
        """The first half of `emit`, for a source that records ahead of the event's time
        (a timer): the id may be recorded already when `again` (a takeover)."""
        try:
            await self._acceptor.record(inv, again=again)
        except Exception:
            self._metrics.failed.labels(self._kind.name, active.tenant).inc()
            raise

    async def publish_all(
        self, events: list[tuple[ActiveTrigger, Invocation]]
    ) -> list[BaseException | None]:
        """Publish recorded invocations due together; per event None or its error."""
        results = await self._acceptor.publish_all([inv for _, inv in events])
        for (active, _), error in zip(events, results, strict=True):
            counter = self._metrics.emitted if error is None else self._metrics.failed
            counter.labels(self._kind.name, active.tenant).inc()
        return results

    async def publish(self, active: ActiveTrigger, inv: Invocation) -> None:
        """The second half of `emit`: publish a recorded invocation, confirmed."""
        try:
            await self._acceptor.publish(inv)
        except Exception:
            self._metrics.failed.labels(self._kind.name, active.tenant).inc()
            raise
        self._metrics.emitted.labels(self._kind.name, active.tenant).inc()
