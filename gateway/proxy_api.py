"""Data plane: HTTP triggers. A request to `/v1/proxy/{s}[.{q}]/{f}/{path}` (credentials
required) or to the trigger's own URL `/v1/http/{triggerId}/{path}` (none for an
`authType: anonymous` trigger) runs the function with the request as it came, and the
function's answer is the response.

The request travels in the invocation's payload (`shared/http_trigger.py`); the instance
runs it as a WSGI app, an FC 3.0 HTTP event handler or an ASGI app (the trigger's
`requestFormat`; `worker/child/web.py`). Errors as FC shapes them: a function that raises
or answers a bad status is a 502 with FC's error body, its timeout a 504, a method the
trigger does not take a 405, a body over PYFC_MAX_EVENT_BYTES a 413.
`X-Fc-Invocation-Type: Async` accepts the request as an async invocation (202).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.http import (
    HTTP_TRIGGER_CACHE_SECONDS,
    gateway_of,
    grant_of,
    json_response,
    request_lineage,
    split_qualifier,
    tenant_of,
)
from shared.errors import BadRequest, NotFound, PayloadTooLarge, PyfcError, TriggerNotFound
from shared.http_trigger import HttpRequest, decode_response, encode_request
from shared.logs import request_id_var
from shared.models import Trigger
from shared.protocol import Invocation, Outcome
from shared.trigger_types import HTTP_METHODS, HttpConfig, decode_config, trigger_type

# Cold start, initializer and queueing come on top of the function's own timeout.
SYNC_SLACK_SECONDS = 10.0
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the app's.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
HTTP = trigger_type("http")


async def _cached(request: web.Request, key: Any, load: Any) -> Any:
    """A lookup kept HTTP_TRIGGER_CACHE_SECONDS (a change shows within that)."""
    cache = gateway_of(request).http_triggers
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = await load()
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = (now + HTTP_TRIGGER_CACHE_SECONDS, value)
    return value


async def proxy(request: web.Request) -> web.StreamResponse:
    """`/v1/proxy/{s}[.{q}]/{f}/{path}`: the function's enabled HTTP trigger, the caller's
    tenant (its API key or an invoke token)."""
    gw, tenant = gateway_of(request), tenant_of(request).name
    segment, function = request.match_info["service"], request.match_info["function"]
    service, qualifier = split_qualifier(segment)

    async def load() -> Trigger | None:
        found = await gw.store.list_triggers(tenant, service, function)
        return next((t for t in found if t.trigger_type == "http"), None)

    trigger = await _cached(request, ("fn", tenant, service, function), load)
    if trigger is None or not trigger.enabled:
        raise TriggerNotFound(f"{service}/{function} has no enabled http trigger")
    if "." not in segment:
        qualifier = trigger.qualifier
    script = f"/v1/proxy/{segment}/{function}"
    return await _serve(request, tenant, trigger, service, qualifier, script)


async def by_trigger(request: web.Request) -> web.StreamResponse:
    """`/v1/http/{triggerId}/{path}`: anonymous, or the trigger's tenant's credential."""
    gw = gateway_of(request)
    trigger_id = request.match_info["trigger_id"]

    async def load() -> tuple[str, Trigger] | None:
        try:
            return await gw.store.trigger_by_id(trigger_id)
        except NotFound:
            return None

    found = await _cached(request, ("id", trigger_id), load)
    if found is None or found[1].trigger_type != "http" or not found[1].enabled:
        raise TriggerNotFound(f"no enabled http trigger {trigger_id}")
    tenant, trigger = found
    config: HttpConfig = decode_config(HTTP, trigger.trigger_config)
    if config.auth_type == "function":
        caller, grant = await gw.authenticate(request.headers.get("Authorization"))
        if caller.name != tenant:
            # Another tenant learns nothing: as if the trigger did not exist.
            raise TriggerNotFound(f"no enabled http trigger {trigger_id}")
        request["tenant"], request["grant"] = caller, grant
    script = f"/v1/http/{trigger_id}"
    return await _serve(request, tenant, trigger, trigger.service_name, trigger.qualifier, script)


async def _serve(
    request: web.Request,
    tenant: str,
    trigger: Trigger,
    service: str,
    qualifier: str,
    script: str,
) -> web.StreamResponse:
    gw = gateway_of(request)
    config: HttpConfig = decode_config(HTTP, trigger.trigger_config)
    if request.method not in config.methods:
        return json_response(
            {
                "errorCode": "MethodNotAllowed",
                "errorMessage": f"{request.method} is not among the trigger's methods",
            },
            405,
            {"Allow": ", ".join(config.methods)},
        )
    function = trigger.function_name
    body = await request.read()
    if len(body) > gw.settings.max_event_bytes:
        raise PayloadTooLarge(
            f"request body is {len(body)} bytes; the limit is {gw.settings.max_event_bytes}"
        )
    kind = (request.headers.get("X-Fc-Invocation-Type") or "Sync").strip().lower()
    if kind not in ("sync", "async"):
        raise BadRequest("X-Fc-Invocation-Type must be Sync or Async")
    request_id = str(uuid.uuid4())
    request_id_var.set(request_id)
    lineage = request_lineage(request.headers.get("X-Fc-Lineage"), request_id, grant_of(request))
    version = await gw.catalog.resolve(tenant, service, qualifier, request_id)
    spec = await gw.catalog.spec(tenant, service, version, function)
    host, _, port = request.host.partition(":")
    # The path under the function as the client sent it (percent-encoded; the instance
    # decodes it for PATH_INFO): what follows the script name's segments.
    rest = script.count("/") + 1
    parts = request.rel_url.raw_path.split("/", rest)
    path = "/" + parts[rest] if len(parts) > rest else "/"
    wire = HttpRequest(
        method=request.method,
        path=path,
        query=request.rel_url.raw_query_string,
        headers=[(str(k), v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP],
        body=body,
        script_name=script,
        request_uri=str(request.rel_url),
        client_ip=request.remote or "",
        scheme=request.scheme,
        host=host,
        port=int(port) if port.isdigit() else (443 if request.scheme == "https" else 80),
    )
    now = time.time()
    timeout = spec.timeout + spec.initialization_timeout + SYNC_SLACK_SECONDS
    inv = Invocation(
        id=request_id,
        tenant=tenant,
        service=service,
        qualifier=qualifier,
        version=version,
        function=function,
        kind="sync" if kind == "sync" else "async",
        source="http",
        payload=encode_request(wire),
        created_at=now,
        deadline=now + timeout if kind == "sync" else 0.0,
        lineage=lineage,
        min_revision=spec.revision,
        http=config.request_format,
    )
    if inv.kind == "async":
        await gw.acceptor.accept(inv, refused="not accepted: broker unavailable")
        return web.Response(status=202, headers={"X-Fc-Request-Id": request_id})
    outcome = await gw.rpc.call(inv, timeout)
    gw.metrics.invocations.labels(tenant, "http", outcome.status).inc()
    return _response(outcome, gw.settings.max_event_bytes)


def _response(outcome: Outcome, limit: int) -> web.StreamResponse:
    headers = {"X-Fc-Request-Id": outcome.request_id}
    if outcome.status == "system_error":
        return json_response(
            {"errorCode": outcome.error_type, "errorMessage": outcome.error_message},
            outcome.http_status,
            headers,
        )
    if outcome.status == "function_error":
        # FC: the app raised, answered a bad status, timed out or crashed: its error body.
        headers["X-Fc-Error-Type"] = outcome.error_type or "UnhandledInvocationError"
        status = outcome.http_status if outcome.http_status >= 500 else 502
        return web.Response(
            body=outcome.body, status=status, headers=headers, content_type="application/json"
        )
    try:
        answer = decode_response(outcome.body)
    except PyfcError as e:
        return json_response({"errorCode": "BadResponse", "errorMessage": e.message}, 502, headers)
    if len(answer.body) > limit:
        return json_response(
            {
                "errorCode": "FunctionResponseTooLarge",
                "errorMessage": f"the response body is {len(answer.body)} bytes; "
                f"the limit is {limit}",
            },
            502,
            headers,
        )
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in answer.headers:
        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
            out.add(name, value)
    out.add("X-Fc-Request-Id", outcome.request_id)
    return web.Response(status=answer.status, headers=out, body=answer.body)


def add_routes(router: web.UrlDispatcher) -> None:
    for method in HTTP_METHODS:
        router.add_route(method, "/v1/proxy/{service}/{function}{path:(/.*)?}", proxy)
        router.add_route(method, "/v1/http/{trigger_id}{path:(/.*)?}", by_trigger)
