"""The gateway's aiohttp application: state, auth and error middleware, route table."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.rpc import RpcClient
from shared import control
from shared.blobs import BlobStore
from shared.catalog import FunctionCatalog
from shared.errors import Forbidden, PayloadTooLarge, PyfcError, Unauthorized
from shared.logs import request_id_var
from shared.models import Tenant
from shared.protocol import ControlEvent
from shared.scrape import may_scrape
from shared.settings import Settings
from shared.store import Store
from shared.topology import Topology

log = logging.getLogger("pyfc.gateway")

AUTH_CACHE_SECONDS = 10.0


@dataclass
class Gateway:
    """Everything a request handler needs; built once in `main`."""

    settings: Settings
    store: Store
    blobs: BlobStore
    topo: Topology
    rpc: RpcClient
    invoke_exchange: AbstractExchange  # on a confirming channel: async accept = persisted
    control_channel: AbstractChannel
    catalog: FunctionCatalog
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    _auth_cache: dict[str, tuple[Tenant, float]] = field(default_factory=dict)

    async def authenticate(self, header: str | None) -> Tenant:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing `Authorization: Bearer <api key>` header")
        key = header[len("Bearer ") :].strip()
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = self._auth_cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        tenant = await self.store.tenant_by_api_key(key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        self._auth_cache[digest] = (tenant, now + AUTH_CACHE_SECONDS)
        return tenant

    async def changed(self, event: ControlEvent) -> None:
        """Tell every process (this one included) that metadata changed."""
        self.catalog.invalidate(event)
        await control.publish(self.control_channel, self.topo, event)


GATEWAY_KEY = web.AppKey("gateway", Gateway)
PUBLIC_PATHS = ("/healthz", "/readyz", "/v1/openapi.json", "/metrics")


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]


def tenant_of(request: web.Request) -> Tenant:
    tenant: Tenant = request["tenant"]
    return tenant


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(err: PyfcError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"errorCode": err.code, "errorMessage": err.message}, err.status, headers)


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
            request["tenant"] = await gateway_of(request).authenticate(
                request.headers.get("Authorization")
            )
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
        return json_response({"errorCode": code, "errorMessage": e.reason}, e.status)
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
    from gateway import control_api, dlq_api, function_config_api, invoke_api, openapi

    # Code uploads arrive base64 in JSON: allow for the 4/3 expansion plus the envelope.
    max_size = max(
        gateway.settings.max_event_bytes, gateway.settings.max_code_bytes * 4 // 3 + 65536
    )
    app = web.Application(middlewares=[count_requests, errors_and_auth], client_max_size=max_size)
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi.document)
    control_api.add_routes(app.router)
    function_config_api.add_routes(app.router)
    dlq_api.add_routes(app.router)
    invoke_api.add_routes(app.router)
    return app
