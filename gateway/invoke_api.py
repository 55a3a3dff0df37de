"""Data plane: sync and async invoke, and async status/result lookup."""

from __future__ import annotations

import base64
import logging
import re
import time

from aiohttp import web
from opentelemetry.trace import SpanKind, StatusCode

from gateway.http import (
    GET_INVOCATION_ROUTE,
    INVOKE_ROUTE,
    Gateway,
    gateway_of,
    grant_of,
    json_response,
    request_lineage,
    split_qualifier,
    tenant_of,
)
from shared import telemetry
from shared.errors import BadRequest, InvocationNotFound, PayloadTooLarge, PyfcError
from shared.logread import new_request_id
from shared.logs import request_id_var
from shared.logstore import (
    THROTTLED,
    LogRecord,
    Retention,
    append_records,
    store_name,
    stream_queue,
)
from shared.protocol import LATEST, Invocation, Outcome

log = logging.getLogger(f"pyfc.{__name__}")

# Which version ran (FC's header): LATEST, or the version the qualifier resolved to.
VERSION_HEADER = "X-Fc-Invocation-Service-Version"
# Cold start, initializer and queueing come on top of the function's own timeout.
SYNC_SLACK_SECONDS = 10.0
TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def invocation_type(header: str | None) -> str:
    kind = (header or "Sync").strip().lower()
    if kind not in ("sync", "async"):
        raise BadRequest("X-Fc-Invocation-Type must be Sync or Async")
    return kind


def outcome_response(outcome: Outcome, tail_logs: bool, version: str = LATEST) -> web.Response:
    """Map an outcome to FC's response: 200 + X-Fc-Error-Type for function errors."""
    headers = {"X-Fc-Request-Id": outcome.request_id, VERSION_HEADER: version}
    if tail_logs:
        headers["X-Fc-Log-Result"] = base64.b64encode(outcome.log_tail[-4096:]).decode()
    if outcome.status == "succeeded":
        return web.Response(
            body=outcome.body, status=200, headers=headers, content_type="application/octet-stream"
        )
    if outcome.status == "function_error":
        headers["X-Fc-Error-Type"] = outcome.error_type or "UnhandledInvocationError"
        return web.Response(
            body=outcome.body,
            status=outcome.http_status,
            headers=headers,
            content_type="application/json",
        )
    return json_response(
        {"errorCode": outcome.error_type, "errorMessage": outcome.error_message},
        outcome.http_status,
        headers,
    )


async def invoke(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request)
    service, qualifier = split_qualifier(request.match_info["service"])
    function = request.match_info["function"]
    kind = invocation_type(request.headers.get("X-Fc-Invocation-Type"))
    request_id = new_request_id()
    request_id_var.set(request_id)
    lineage = request_lineage(request.headers.get("X-Fc-Lineage"), request_id, grant_of(request))
    payload = await request.read()
    if len(payload) > gw.settings.max_event_bytes:
        raise PayloadTooLarge(
            f"event is {len(payload)} bytes; the limit is {gw.settings.max_event_bytes}"
        )
    # Resolved once, here: the envelope carries the version to every later hop.
    version = await gw.catalog.resolve(tenant.name, service, qualifier, request_id)
    spec = await gw.catalog.spec(tenant.name, service, version, function)
    # W3C says to ignore (not reject) a malformed traceparent: start a new trace instead.
    incoming = request.headers.get("traceparent", "")
    incoming = incoming if TRACEPARENT_RE.match(incoming) else ""
    with telemetry.span(
        "pyfc.invoke",
        incoming,
        SpanKind.SERVER,
        {
            "faas.invocation_id": request_id,
            "faas.name": f"{service}/{function}",
            "faas.version": version,
            "faas.trigger": "http",
            "pyfc.tenant": tenant.name,
            "pyfc.kind": kind,
        },
    ) as span:
        now = time.time()
        timeout = spec.timeout + spec.initialization_timeout + SYNC_SLACK_SECONDS
        inv = Invocation(
            id=request_id,
            tenant=tenant.name,
            service=service,
            qualifier=qualifier,
            version=version,
            function=function,
            kind="sync" if kind == "sync" else "async",
            source="http",
            payload=payload,
            created_at=now,
            deadline=now + timeout if kind == "sync" else 0.0,
            lineage=lineage,
            traceparent=telemetry.current_traceparent(fallback=incoming),
            log_tail=request.headers.get("X-Fc-Log-Type", "").lower() == "tail",
            min_revision=spec.revision,
        )
        if inv.kind == "sync":
            started = time.perf_counter()
            try:
                outcome = await gw.rpc.call(inv, timeout)
            except PyfcError as e:
                gw.metrics.invocations.labels(tenant.name, "sync", e.code).inc()
                if span is not None:
                    span.set_status(StatusCode.ERROR, e.code)
                raise
            gw.metrics.invoke_seconds.labels(tenant.name).observe(time.perf_counter() - started)
            gw.metrics.invocations.labels(tenant.name, "sync", outcome.status).inc()
            if outcome.error_type == "ThrottlingException" and gw.settings.log_store:
                # Nothing ran, so no worker logs it: the store gets the throttle here.
                await _log_throttle(gw, inv, spec.log_store)
            if span is not None:
                span.set_attribute("pyfc.outcome", outcome.status)
            return outcome_response(outcome, inv.log_tail, version)
        response = await _accept_async(request, inv)
        gw.metrics.invocations.labels(tenant.name, "async", "accepted").inc()
        return response


async def _log_throttle(gw: Gateway, inv: Invocation, logstore: str) -> None:
    record = LogRecord(
        time=time.time(),
        service=inv.service,
        function=inv.function,
        qualifier=inv.qualifier,
        version=inv.version,
        request_id=inv.id,
        level="WARNING",
        message=THROTTLED.format(inv.id),
        kind="platform",
    )
    queue = stream_queue(gw.settings.namespace, inv.tenant, store_name(inv.service, logstore))
    retention = Retention(max_age=gw.settings.log_max_age, max_bytes=gw.settings.log_max_bytes)
    try:
        await append_records(gw.log_markers, queue, [record], retention)
    except Exception as e:  # the caller's answer does not wait on the log store
        log.warning("cannot log the throttle of %s: %r", inv.id, e)


async def _accept_async(request: web.Request, inv: Invocation) -> web.Response:
    """Record, then publish with a broker confirm: 202 means the invocation is persisted.
    If the broker cannot take it, its record says so and the caller gets 503."""
    await gateway_of(request).acceptor.accept(inv, refused="not accepted: broker unavailable")
    return web.Response(
        status=202, headers={"X-Fc-Request-Id": inv.id, VERSION_HEADER: inv.version}
    )


def _result_fields(result: bytes) -> dict[str, str]:
    try:
        return {"result": result.decode("utf-8"), "resultEncoding": "utf-8"}
    except UnicodeDecodeError:
        return {"result": base64.b64encode(result).decode(), "resultEncoding": "base64"}


async def get_invocation(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request)
    service, _ = split_qualifier(request.match_info["service"])
    rec = await gw.store.get_invocation(tenant.name, request.match_info["request_id"])
    if rec.service_name != service or rec.function_name != request.match_info["function"]:
        raise InvocationNotFound(f"invocation {rec.request_id} not found for this function")
    body: dict[str, object] = {
        "requestId": rec.request_id,
        "serviceName": rec.service_name,
        "qualifier": rec.qualifier,
        "version": rec.version,
        "functionName": rec.function_name,
        "status": rec.status,
        "attempt": rec.attempt,
        "createdTime": rec.created_time,
        "finishedTime": rec.finished_time,
        # Where it came from: `http`, `timer:<triggerName>`, `destination:<svc>/<fn>`...
        "origin": rec.origin,
    }
    if rec.error_type:
        body["errorType"], body["errorMessage"] = rec.error_type, rec.error_message
    if rec.status in ("Succeeded", "Failed"):
        body.update(_result_fields(rec.result))
    return json_response(body, headers={"X-Fc-Request-Id": rec.request_id})


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/v1/services/{service}/functions/{function}/invocations"
    router.add_post(base, invoke, name=INVOKE_ROUTE)
    router.add_get(base + "/{request_id}", get_invocation, name=GET_INVOCATION_ROUTE)
