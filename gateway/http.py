"""What every API module shares: the `Gateway` state and the request/response helpers.

A low module: it imports no API module and not `gateway.app` (which assembles them), only
the gateway's own clients below it (`rpc`, `metrics`); the API modules import
it and never each other. An import-linter contract (pyproject.toml) keeps it so.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.rpc import RpcClient
from shared import control, tokens
from shared.accept import Acceptor
from shared.blobs import BlobStore
from shared.catalog import FunctionCatalog
from shared.errors import BadRequest, NotFound, PyfcError, Unauthorized
from shared.models import Tenant
from shared.protocol import LATEST, ControlEvent, Lineage
from shared.settings import Settings
from shared.store import Store
from shared.tokens import InvokeGrant
from shared.topology import Topology

AUTH_CACHE_SECONDS = 10.0
# Routes an invoke token (a running function's credential, shared/tokens.py) may use:
# invoking, reading the invocations it made, and publishing messages (lineage in the
# headers). Everything else answers 403 to one.
INVOKE_ROUTE = "invoke"
GET_INVOCATION_ROUTE = "get-invocation"
PUBLISH_ROUTE = "publish-message"
INVOKE_TOKEN_ROUTES = frozenset({INVOKE_ROUTE, GET_INVOCATION_ROUTE, PUBLISH_ROUTE})
MAX_LIST = 100
# HTTP triggers: how long the gateway keeps a trigger it looked up (a change, such as
# disabling it, shows within this).
HTTP_TRIGGER_CACHE_SECONDS = 1.0


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
    # Log stores are read and appended to over this connection (a channel per query),
    # and queries publish their end markers on this confirming channel.
    connection: AbstractRobustConnection
    log_markers: AbstractChannel
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    # Verifies invoke tokens; empty = none accepted.
    token_secret: bytes = field(default=b"", repr=False)
    _auth_cache: dict[str, tuple[Tenant, float]] = field(default_factory=dict)
    # HTTP triggers looked up (gateway/proxy_api.py): key -> (expiry, found).
    http_triggers: dict[Any, tuple[float, Any]] = field(default_factory=dict)
    # Async invocations are accepted (recorded, then published with a confirm) here, as
    # the dispatcher's destinations and the trigger adapters accept theirs.
    acceptor: Acceptor = field(init=False)

    def __post_init__(self) -> None:
        self.acceptor = Acceptor(self.store, self.invoke_exchange)

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


# --- the request -------------------------------------------------------------------------


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]


def tenant_of(request: web.Request) -> Tenant:
    tenant: Tenant = request["tenant"]
    return tenant


def grant_of(request: web.Request) -> InvokeGrant | None:
    """The invoke token's grant when a running function made this request, else None."""
    grant: InvokeGrant | None = request.get("grant")
    return grant


def split_qualifier(segment: str) -> tuple[str, str]:
    """`svc` or `svc.qualifier` (FC's URL form) -> (service, qualifier)."""
    service, _, qualifier = segment.partition(".")
    if not service or (_ and not qualifier):
        raise BadRequest(f"bad service segment {segment!r}: expected service[.qualifier]")
    return service, qualifier or LATEST


def list_params(request: web.Request) -> tuple[str, int, str]:
    """prefix, limit, startKey of a list call (FC's names)."""
    try:
        limit = int(request.query.get("limit", str(MAX_LIST)))
    except ValueError as e:
        raise BadRequest("limit must be an integer") from e
    if not 1 <= limit <= MAX_LIST:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST}")
    return request.query.get("prefix", ""), limit, request.query.get("startKey", "")


# --- the response ------------------------------------------------------------------------


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


def page(items: list[object], limit: int, key_of: str) -> dict[str, object]:
    """FC-style page: `nextToken` is the first key of the next page (we fetch limit+1)."""
    out: dict[str, object] = {}
    if len(items) > limit:
        out["nextToken"] = getattr(items[limit], key_of)
        items = items[:limit]
    out["items"] = items
    return out


LINEAGE_RE = re.compile(
    r"^(?P<trace>[A-Za-z0-9-]{1,64})/(?P<hops>\d{1,4})(?:/(?P<origin>[\w.:/-]{0,200}))?$"
)


def parse_lineage(header: str | None, request_id: str) -> Lineage:
    """`X-Fc-Lineage: <traceId>/<hops>[/<origin>]`, set by callers inside a chain."""
    if not header:
        return Lineage(trace_id=request_id, hops=0, origin="http")
    m = LINEAGE_RE.match(header.strip())
    if m is None:
        raise BadRequest("bad X-Fc-Lineage header: expected <traceId>/<hops>[/<origin>]")
    return Lineage(trace_id=m["trace"], hops=int(m["hops"]) + 1, origin=m["origin"] or "http")


def request_lineage(header: str | None, request_id: str, grant: InvokeGrant | None) -> Lineage:
    """The lineage of a new invocation: from the invoke token when a function calls.

    A token's chain is authoritative: its trace and one hop below its holder, attributed to
    the holder. An `X-Fc-Lineage` header beside it may only make the chain deeper, so a
    function cannot shorten its chain by dropping or rewriting the header.
    """
    claimed = parse_lineage(header, request_id)
    if grant is None:
        return claimed
    return Lineage(
        trace_id=grant.trace_id, hops=max(grant.hops + 1, claimed.hops), origin=grant.origin
    )
