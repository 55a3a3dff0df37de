"""Dead letters: list, show, redrive and purge the async invocations pyfc gave up on.

Redrive publishes the stored envelope again exactly as an async invoke does (persistent,
broker-confirmed, same request id), so the invocation's status API follows the new run.
The dead letter is deleted only after the broker confirmed: a crash in between leaves a
dead letter whose invocation also runs (at-least-once), never one that is lost.
"""

from __future__ import annotations

import base64
import time

import msgspec
from aiohttp import web

from gateway.bodies import (
    DeadLetterDetail,
    DeadLetterPage,
    DeadLetterSummary,
    RedriveFailure,
    RedriveResult,
)
from gateway.http import gateway_of, json_response, list_params, tenant_of
from shared import codec
from shared.errors import Conflict, DeadLetterNotFound, PyfcError, Unavailable
from shared.models import DeadLetter
from shared.protocol import Invocation

# One POST /v1/dlq/redrive handles at most this many; `nextToken` continues.
REDRIVE_BATCH = 100


def summary(dl: DeadLetter) -> DeadLetterSummary:
    return DeadLetterSummary(
        request_id=dl.request_id,
        service_name=dl.service_name,
        qualifier=dl.qualifier,
        function_name=dl.function_name,
        reason=dl.reason,
        error_type=dl.error_type,
        error_message=dl.error_message,
        attempts=dl.attempts,
        hops=dl.hops,
        trace_id=dl.trace_id,
        created_time=dl.created_time,
    )


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def detail(dl: DeadLetter) -> DeadLetterDetail:
    return DeadLetterDetail(
        **msgspec.structs.asdict(summary(dl)),
        payload=base64.b64encode(dl.payload).decode(),
        response=base64.b64encode(dl.response).decode(),
        payload_text=_text(dl.payload),
        response_text=_text(dl.response),
    )


def _filters(request: web.Request) -> tuple[str, str]:
    return request.query.get("serviceName", ""), request.query.get("functionName", "")


async def _page(request: web.Request, limit: int, start: str) -> list[DeadLetter]:
    """Up to limit + 1 matching dead letters (the extra one is the next page's first)."""
    service, function = _filters(request)
    return await gateway_of(request).store.list_dead_letters(
        tenant_of(request).name,
        service=service,
        function=function,
        limit=limit + 1,
        start_key=start,
    )


def redrive_envelope(dl: DeadLetter, tenant: str, now: float) -> Invocation:
    """The invocation to publish again: a fresh async run (attempt 1) of the same request.

    The lineage is kept, so a dead letter stopped as a loop is stopped again.
    """
    try:
        inv = codec.decode(dl.envelope, Invocation)
    except PyfcError as e:
        raise Conflict(f"dead letter {dl.request_id!r} holds no usable envelope to redrive") from e
    if inv.tenant != tenant or inv.id != dl.request_id:
        raise Conflict(f"dead letter {dl.request_id!r} holds another invocation's envelope")
    inv.attempt, inv.created_at, inv.kind, inv.spec = 1, now, "async", None
    inv.deadline = 0.0
    return inv


async def _redrive(request: web.Request, dl: DeadLetter) -> None:
    """Publish one dead letter again (confirmed), then delete it."""
    gw, tenant = gateway_of(request), tenant_of(request).name
    inv = redrive_envelope(dl, tenant, time.time())
    # The version first chosen runs again (an envelope from before versions resolves now).
    if not inv.version:
        inv.version = await gw.catalog.resolve(tenant, inv.service, inv.qualifier, inv.id)
    # A function (or version) deleted since is a clear 404 here, and the dead letter stays.
    spec = await gw.catalog.spec(tenant, inv.service, inv.version, inv.function)
    inv.min_revision = max(inv.min_revision, spec.revision)
    await gw.store.reenqueue(tenant, inv.id, inv.service, inv.qualifier, inv.function)
    await gw.acceptor.publish(
        inv, refused="redrive not accepted: broker unavailable; the dead letter is kept"
    )
    try:
        await gw.store.delete_dead_letter(tenant, dl.request_id)
    except DeadLetterNotFound:
        pass  # a concurrent redrive or purge took it: the run is queued either way


async def list_dead_letters(request: web.Request) -> web.Response:
    _, limit, start = list_params(request)
    found = await _page(request, limit, start)
    page = DeadLetterPage(dead_letters=[summary(d) for d in found[:limit]])
    if len(found) > limit:
        page.next_token = found[limit].request_id
    return json_response(page)


async def get_dead_letter(request: web.Request) -> web.Response:
    dl = await gateway_of(request).store.get_dead_letter(
        tenant_of(request).name, request.match_info["request_id"]
    )
    return json_response(detail(dl), headers={"X-Fc-Request-Id": dl.request_id})


async def redrive_one(request: web.Request) -> web.Response:
    dl = await gateway_of(request).store.get_dead_letter(
        tenant_of(request).name, request.match_info["request_id"]
    )
    await _redrive(request, dl)
    return json_response(
        {"requestId": dl.request_id}, 202, headers={"X-Fc-Request-Id": dl.request_id}
    )


async def redrive_many(request: web.Request) -> web.Response:
    """Redrive up to `limit` (≤ 100) matching dead letters; per-item failures are listed and
    those stay; a broker outage stops the batch (what is done stays done)."""
    _, limit, start = list_params(request)
    limit = min(limit, REDRIVE_BATCH)
    found = await _page(request, limit, start)
    result = RedriveResult(redriven=[])
    for dl in found[:limit]:
        try:
            await _redrive(request, dl)
        except PyfcError as e:
            if isinstance(e, Unavailable) and not result.redriven:
                raise
            result.failed.append(
                RedriveFailure(request_id=dl.request_id, error_code=e.code, error_message=e.message)
            )
            if isinstance(e, Unavailable):
                result.next_token = dl.request_id  # it is still there: start again from it
                return json_response(result)
        else:
            result.redriven.append(dl.request_id)
    if len(found) > limit:
        result.next_token = found[limit].request_id
    return json_response(result)


async def delete_dead_letter(request: web.Request) -> web.Response:
    await gateway_of(request).store.delete_dead_letter(
        tenant_of(request).name, request.match_info["request_id"]
    )
    return web.Response(status=204)


async def purge(request: web.Request) -> web.Response:
    service, function = _filters(request)
    purged = await gateway_of(request).store.purge_dead_letters(
        tenant_of(request).name, service=service, function=function
    )
    return json_response({"purged": purged})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/dlq", list_dead_letters)
    router.add_delete("/v1/dlq", purge)
    # Registered before /v1/dlq/{request_id}/... so "redrive" is never taken for an id.
    router.add_post("/v1/dlq/redrive", redrive_many)
    router.add_get("/v1/dlq/{request_id}", get_dead_letter)
    router.add_delete("/v1/dlq/{request_id}", delete_dead_letter)
    router.add_post("/v1/dlq/{request_id}/redrive", redrive_one)
