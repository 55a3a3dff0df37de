"""The gateway's aiohttp application: middleware and the route table; it only assembles.

The state and the helpers the API modules share live in `gateway.http`, below them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway import (
    console,
    control_api,
    dlq_api,
    function_config_api,
    invoke_api,
    log_api,
    message_api,
    openapi,
    proxy_api,
    release_api,
    stats_api,
    trigger_api,
)
from gateway.http import (
    GATEWAY_KEY,
    INVOKE_TOKEN_ROUTES,
    Gateway,
    error_response,
    gateway_of,
    json_response,
)
from shared.errors import Forbidden, PayloadTooLarge, PyfcError
from shared.logs import request_id_var
from shared.scrape import may_scrape

log = logging.getLogger(f"pyfc.{__name__}")

# `/v1/http/{triggerId}/...`: an HTTP trigger's own URL checks its authType itself.
# `/console`: static files of the web console, which calls /v1 with the user's key.
PUBLIC_PATHS = ("/healthz", "/readyz", "/v1/openapi.json", "/metrics", "/v1/http/", "/console")


def token_may_use(request: web.Request) -> bool:
    """Whether an invoke token is a credential for this route (see INVOKE_TOKEN_ROUTES)."""
    resource = request.match_info.route.resource
    return resource is not None and resource.name in INVOKE_TOKEN_ROUTES


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    # The route pattern, not the path: one series per endpoint, not per resource.
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    gateway_of(request).metrics.requests.labels(request.method, name, str(response.status)).inc()
    return response


@web.middleware
async def errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    request_id_var.set("-")
    try:
        if not request.path.startswith(PUBLIC_PATHS):
            tenant, grant = await gateway_of(request).authenticate(
                request.headers.get("Authorization")
            )
            if grant is not None and not token_may_use(request):
                raise Forbidden("an invoke token may only invoke functions and read invocations")
            request["tenant"], request["grant"] = tenant, grant
        response: web.StreamResponse = await handler(request)
        return response
    except PyfcError as e:
        if e.status >= 500:
            log.error("%s %s -> %s: %s", request.method, request.path, e.code, e.message)
        return error_response(e)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(PayloadTooLarge(f"request body too large ({e.text})"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(e.status, "InvalidArgument")
        # A 405 names the allowed methods (RFC 9110 requires Allow).
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return json_response({"errorCode": code, "errorMessage": e.reason}, e.status, allow)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(
            {"errorCode": "InternalError", "errorMessage": "internal error; see gateway log"}, 500
        )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    if not may_scrape(
        request.remote, request.headers.get("Authorization"), gw.settings.metrics_token
    ):
        raise Forbidden("metrics are served to loopback clients or with PYFC_METRICS_TOKEN")
    body, content_type = gw.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_app(gateway: Gateway) -> web.Application:
    # Code uploads arrive base64 in JSON: allow for the 4/3 expansion plus the envelope.
    max_size = max(
        gateway.settings.max_event_bytes, gateway.settings.max_code_bytes * 4 // 3 + 65536
    )
    app = web.Application(middlewares=[count_requests, errors_and_auth], client_max_size=max_size)
    app[GATEWAY_KEY] = gateway
    add_routes(app.router)
    return app


def add_routes(router: web.UrlDispatcher) -> None:
    """The whole route table (the OpenAPI document must list each route: a test checks)."""
    router.add_get("/healthz", healthz)
    router.add_get("/readyz", healthz)
    router.add_get("/metrics", metrics)
    router.add_get("/v1/openapi.json", openapi.document)
    control_api.add_routes(router)
    function_config_api.add_routes(router)
    release_api.add_routes(router)
    dlq_api.add_routes(router)
    trigger_api.add_routes(router)
    invoke_api.add_routes(router)
    log_api.add_routes(router)
    stats_api.add_routes(router)
    message_api.add_routes(router)
    proxy_api.add_routes(router)
    console.add_routes(router)  # static, not /v1: the OpenAPI document leaves it out
