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

from gateway.accepted import AcceptedInvocations
from gateway.metrics import GatewayMetrics
from gateway.rpc import RpcClient
from shared import control, tokens
from shared.blobs import BlobStore
from shared.catalog import FunctionCatalog
from shared.errors import Forbidden, NotFound, PayloadTooLarge, PyfcError, Unauthorized
from shared.logs import request_id_var
from shared.models import Tenant
from shared.protocol import ControlEvent
from shared.scrape import may_scrape
from shared.settings import Settings
from shared.store import Store
from shared.tokens import InvokeGrant
from shared.topology import Topology

log = logging.getLogger("pyfc.gateway")

AUTH_CACHE_SECONDS = 10.0
# Routes an invoke token (a running function's credential, shared/tokens.py) may use:
# invoking, and reading the invocations it made. Everything else answers 403 to one.
INVOKE_ROUTE = "invoke"
GET_INVOCATION_ROUTE = "get-invocation"
INVOKE_TOKEN_ROUTES = frozenset({INVOKE_ROUTE, GET_INVOCATION_ROUTE})


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
    # Verifies invoke tokens; empty = none accepted.
    token_secret: bytes = field(default=b"", repr=False)
    _auth_cache: dict[str, tuple[Tenant, float]] = field(default_factory=dict)
    accepted: AcceptedInvocations = field(init=False)

    def __post_init__(self) -> None:
        self.accepted = AcceptedInvocations(self.invoke_exchange)

    async def authenticate(self, header: str | None) -> tuple[Tenant, InvokeGrant | None]:
        """The caller's tenant, and its grant when the credential is an invoke token."""
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing `Authorization: Bearer <api key>` header")
        key = header[len("Bearer ") :].strip()
        if tokens.looks_like_token(key):
            if not self.token_secret:
                raise Unauthorized("this gateway accepts no invoke tokens")
            grant = tokens.verify(self.token_secret, key, time.time())
            return await self._tenant_named(grant.tenant), grant
        return await self._tenant_by_key(key), None

    async def _tenant_by_key(self, key: str) -> Tenant:
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

    async def _tenant_named(self, name: str) -> Tenant:
        """The tenant a valid token names (it may have been deleted since it was minted)."""
        cache_key = "tenant:" + name  # never a sha256 hex digest
        hit = self._auth_cache.get(cache_key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            tenant = await self.store.get_tenant(name)
        except NotFound:
            raise Unauthorized(f"the tenant of this invoke token ({name}) does not exist") from None
        self._auth_cache[cache_key] = (tenant, now + AUTH_CACHE_SECONDS)
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


def grant_of(request: web.Request) -> InvokeGrant | None:
    """The invoke token's grant when a running function made this request, else None."""
    grant: InvokeGrant | None = request.get("grant")
    return grant


def token_may_use(request: web.Request) -> bool:
    """Whether an invoke token is a credential for this route (see INVOKE_TOKEN_ROUTES)."""
    resource = request.match_info.route.resource
    return resource is not None and resource.name in INVOKE_TOKEN_ROUTES


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
