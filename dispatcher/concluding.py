"""Concluding async work: record its outcome, then retry it, forward it, or give it up.

What to do is decided by `dispatcher/verdict.py` (pure); this module does it: outcome rows
in the store, a confirmed publish to the retry delay queues, the record sent to an
onSuccess/onFailure destination, a dead letter. A failure raises to the caller, whose
message then goes back to its queue: concluding twice records the same outcome again (an
upsert) and may schedule a retry twice (at least once).
"""

from __future__ import annotations

import logging
import time

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from dispatcher.destinations import DestinationError, Destinations
from dispatcher.metrics import DispatcherMetrics
from dispatcher.verdict import DESTINATION_FAILED, destination_record, judge
from shared import codec
from shared.broker import PUBLISH_TIMEOUT, persistent_invocation, ready
from shared.catalog import FunctionCatalog, FunctionPolicy
from shared.errors import FunctionNotFound, PyfcError, ServiceNotFound
from shared.models import DeadLetter, InvocationStatus
from shared.protocol import Invocation, Outcome, system_outcome
from shared.store import Store
from shared.topology import HDR_DELAY, invoke_routing_key

log = logging.getLogger(f"pyfc.{__name__}")


class Conclusions:
    """The dispatcher's effects once async work is done with (or refused)."""

    def __init__(
        self,
        store: Store,
        catalog: FunctionCatalog,
        metrics: DispatcherMetrics,
        destinations: Destinations,
        *,
        confirmed: AbstractChannel,
        retry: AbstractExchange,
        steps_ms: list[int],
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._metrics = metrics
        self._destinations = destinations
        self._confirmed = confirmed  # the retry exchange's channel
        self._retry = retry
        self._steps = steps_ms

    async def policy(self, inv: Invocation) -> FunctionPolicy:
        try:
            return await self._catalog.policy(inv.tenant, inv.service, inv.qualifier, inv.function)
        except (FunctionNotFound, ServiceNotFound):
            return FunctionPolicy()  # deleted since: no retries' worth of config left

    async def concluded(self, invs: list[Invocation]) -> set[str]:
        """The async invocations among `invs` (redelivered) already concluded for good.

        A broker restart or a replica's crash gives back whole batches, parts of which ran
        and were concluded since (Succeeded, Failed, or retried: a later attempt is under
        way): those are not run again. One query per tenant; if the store cannot answer,
        all run (at least once).
        """
        by_tenant: dict[str, dict[str, int]] = {}
        for inv in invs:
            if inv.kind == "async":
                by_tenant.setdefault(inv.tenant, {})[inv.id] = inv.attempt
        concluded: set[str] = set()
        for tenant, attempts in by_tenant.items():
            try:
                found = await self._store.concluded(tenant, attempts)
            except PyfcError as e:
                log.warning("cannot tell which redelivered invocations ran already: %s", e.message)
                continue
            if found:
                self._metrics.redelivered_concluded.labels(tenant).inc(len(found))
                log.info(
                    "%d redelivered invocations already concluded, not run again: %s",
                    len(found),
                    ", ".join(sorted(found)),
                )
            concluded |= found
        return concluded

    async def second_copies(self, invs: list[Invocation]) -> set[str]:
        """Those of the `once` invocations among `invs` (a first delivery) whose id was
        admitted before: a second copy of a trigger's fire (a takeover after its first
        publisher died before marking it published). Not run. One statement per tenant,
        only when there are such invocations; if the store cannot answer, all run (at
        least once, as for redeliveries)."""
        by_tenant: dict[str, list[str]] = {}
        for inv in invs:
            if inv.once and inv.attempt == 1 and inv.kind == "async":
                by_tenant.setdefault(inv.tenant, []).append(inv.id)
        second: set[str] = set()
        for tenant, ids in by_tenant.items():
            try:
                first = await self._store.admit_first(tenant, ids)
            except PyfcError as e:
                log.warning("cannot check first admissions, admitting all: %s", e.message)
                continue
            if dropped := set(ids) - first:
                self._metrics.second_copies.labels(tenant).inc(len(dropped))
                log.info("second copies not run: %s", ", ".join(sorted(dropped)))
                second |= dropped
        return second

    async def conclude(self, inv: Invocation, outcome: Outcome) -> None:
        """An attempt's outcome: Succeeded (and onSuccess), a retry, or given up."""
        policy = await self.policy(inv)
        verdict = judge(
            inv,
            outcome,
            max_retry_attempts=policy.max_retry_attempts,
            max_event_age=policy.max_event_age,
            steps_ms=self._steps,
        )
        if verdict.action == "succeeded":
            await self._record(outcome, "Succeeded", inv.version)
            if policy.on_success:
                await self._forward(policy.on_success, inv, outcome, verdict.reason)
        elif verdict.action == "retry":
            await self._record(outcome, "Enqueued", inv.version)
            await self._schedule_retry(inv, verdict.delay_ms)
        else:
            await self.give_up(inv, outcome, verdict.reason, notify=True, policy=policy)

    async def give_up(
        self,
        inv: Invocation,
        outcome: Outcome | None,
        reason: str,
        *,
        notify: bool,
        policy: FunctionPolicy | None = None,
    ) -> None:
        """Failed for good: record it, tell onFailure (if `notify`) and dead-letter it."""
        if outcome is None:
            outcome = system_outcome(
                inv, reason, f"event older than its max age; attempt {inv.attempt} not made", 410
            )
        await self._record(outcome, "Failed", inv.version)
        if notify:
            policy = policy or await self.policy(inv)
            if policy.on_failure:
                await self._forward(policy.on_failure, inv, outcome, reason)
        await self._dead_letter(inv, outcome, reason)

    async def refused(self, inv: Invocation, outcome: Outcome, reason: str) -> None:
        """Async work not admitted (no such function, a loop): Failed and dead-lettered,
        no onFailure. Its message is acked either way: a store outage is only logged."""
        try:
            await self.give_up(inv, outcome, reason, notify=False)
        except PyfcError:
            log.exception("cannot record a refused invocation")

    async def _schedule_retry(self, inv: Invocation, delay_ms: int) -> None:
        await ready(self._confirmed)
        inv.attempt += 1
        inv.spec = None
        self._metrics.retries.labels(inv.tenant).inc()
        log.info("retrying %s (attempt %d) in %.1fs", inv.id, inv.attempt, delay_ms / 1000)
        await self._retry.publish(
            persistent_invocation(inv, **{HDR_DELAY: str(delay_ms)}),
            # Kept through dead-lettering: back on the tenant's shard after the delay.
            routing_key=invoke_routing_key(inv.tenant),
            timeout=PUBLISH_TIMEOUT,
        )

    async def _dead_letter(self, inv: Invocation, outcome: Outcome, reason: str) -> None:
        self._metrics.dead_letters.labels(inv.tenant, reason).inc()
        inv.spec = None
        await self._store.add_dead_letter(
            inv.tenant,
            DeadLetter(
                request_id=inv.id,
                service_name=inv.service,
                qualifier=inv.qualifier,
                function_name=inv.function,
                reason=reason,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
                attempts=inv.attempt,
                hops=inv.lineage.hops,
                trace_id=inv.lineage.trace_id,
                payload=inv.payload,
                response=outcome.body,
                envelope=codec.encode(inv),
            ),
        )
        log.warning(
            "dead letter %s/%s %s: %s %s", inv.service, inv.function, inv.id, reason,
            outcome.error_type,
        )  # fmt: skip

    async def _forward(
        self, destination: str, inv: Invocation, outcome: Outcome, condition: str
    ) -> None:
        record = destination_record(inv, outcome, condition)
        try:
            await self._destinations.send(destination, inv, record, condition)
        except (DestinationError, aio_pika.exceptions.AMQPError) as e:
            log.error("destination %s of %s failed: %s", destination, inv.id, e)
            failed = system_outcome(inv, DESTINATION_FAILED, f"{destination}: {e}", 502)
            failed.body = record
            await self._dead_letter(inv, failed, DESTINATION_FAILED)
            return
        self._metrics.destinations.labels(inv.tenant, condition).inc()

    async def _record(self, outcome: Outcome, status: InvocationStatus, version: str) -> None:
        started = time.perf_counter()
        await self._store.record_outcome(
            outcome.tenant,
            outcome.request_id,
            status=status,
            attempt=outcome.attempt,
            result=outcome.body,
            error_type=outcome.error_type,
            error_message=outcome.error_message,
            version=version,
        )
        log.info(
            "async invocation %s attempt %d (version %s): %s%s -> %s (recorded in %.1f ms)",
            outcome.request_id,
            outcome.attempt,
            version or "-",
            outcome.status,
            f" {outcome.error_type}" if outcome.error_type else "",
            status,
            (time.perf_counter() - started) * 1000,
        )
