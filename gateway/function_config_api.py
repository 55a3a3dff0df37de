"""Control plane: a function's async config and provision config, and the caller's tenant.

`/v1/services/{service}[.{qualifier}]/functions/{function}/async-config|provision-config`.
A qualifier is LATEST, a version id or an alias; an unknown one is a 404,
as on the invoke path.
"""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from gateway.bodies import AsyncConfigUpdate, ProvisionConfigUpdate, TenantView, parse
from gateway.http import gateway_of, json_response, split_qualifier, tenant_of
from shared.errors import AsyncConfigNotFound, BadRequest
from shared.models import AsyncConfig, DestinationConfig, DestinationTarget, ProvisionConfig
from shared.protocol import LATEST, ControlEvent
from shared.release import is_version_id

_NAME = r"[A-Za-z_][A-Za-z0-9_-]{0,127}"
# A version id or an alias name (LATEST today; the grammar is ready for the rest).
_QUALIFIER = r"(?:LATEST|[1-9][0-9]{0,9}|[A-Za-z_][A-Za-z0-9_-]{0,127})"
FUNCTION_DESTINATION = re.compile(rf"function:{_NAME}(?:\.{_QUALIFIER})?/{_NAME}")
# AMQP exchange names: letters, digits, '-', '_', '.', ':' (at most 255 bytes); routing keys
# here: printable ASCII without spaces (at most 255 bytes).
MQ_DESTINATION = re.compile(r"mq:(?P<exchange>[A-Za-z0-9_.:-]{1,255})(?:/[!-~]{0,255})?")


def check_destination(destination: str, namespace: str) -> None:
    """BadRequest unless `destination` is a well-formed destination a tenant may use.

    MQ destinations must not name the broker's own exchanges (`amq.*`) or pyfc's
    (`{namespace}.*`): a tenant must never publish into the platform's plumbing.
    """
    if FUNCTION_DESTINATION.fullmatch(destination):
        return
    m = MQ_DESTINATION.fullmatch(destination)
    if m is None:
        raise BadRequest(
            f"invalid destination {destination!r}: expected "
            "'function:{service}[.{qualifier}]/{function}' or 'mq:{exchange}[/{routingKey}]'"
        )
    exchange = m["exchange"].lower()
    if (
        exchange.startswith("amq.")
        or exchange == namespace.lower()
        or exchange.startswith(namespace.lower() + ".")
    ):
        raise BadRequest(
            f"invalid destination {destination!r}: exchange {m['exchange']!r} is reserved "
            f"(amq.* and {namespace}.* belong to the broker and to pyfc)"
        )


async def _target(request: web.Request) -> tuple[str, str, str, str]:
    """tenant, service, qualifier, function of a config URL; 404 naming an unknown version
    or alias (configs are per qualifier: LATEST, a version id or an alias)."""
    service, qualifier = split_qualifier(request.match_info["service"])
    function = request.match_info["function"]
    tenant = tenant_of(request).name
    store = gateway_of(request).store
    if is_version_id(qualifier):
        await store.version_function(tenant, service, int(qualifier), function)
    elif qualifier != LATEST:
        await store.get_alias(tenant, service, qualifier)
    return tenant, service, qualifier, function


def merge_async_config(current: AsyncConfig, body: AsyncConfigUpdate) -> AsyncConfig:
    """`current` with only the fields `body` gives changed (a destination set to null goes)."""
    changes: dict[str, object] = {}
    if body.max_async_retry_attempts is not None:
        changes["max_async_retry_attempts"] = body.max_async_retry_attempts
    if body.max_async_event_age_in_seconds is not None:
        changes["max_async_event_age_in_seconds"] = body.max_async_event_age_in_seconds
    if body.destination_config is not None:
        dest = current.destination_config
        for name in ("on_success", "on_failure"):
            given = getattr(body.destination_config, name)
            if given is msgspec.UNSET:
                continue
            target = None if given is None else DestinationTarget(destination=given.destination)
            dest = msgspec.structs.replace(dest, **{name: target})
        changes["destination_config"] = dest
    return msgspec.structs.replace(current, **changes)


# --- async config -------------------------------------------------------------------------


async def put_async_config(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    tenant, service, qualifier, function = await _target(request)
    body = parse(await request.read(), AsyncConfigUpdate)
    if body.destination_config is not None:
        for given in (body.destination_config.on_success, body.destination_config.on_failure):
            if isinstance(given, msgspec.Struct):
                check_destination(given.destination, gw.settings.namespace)
    try:
        current = await gw.store.get_async_config(tenant, service, qualifier, function)
    except AsyncConfigNotFound:
        current = AsyncConfig(
            service_name=service,
            qualifier=qualifier,
            function_name=function,
            destination_config=DestinationConfig(),
        )
    stored = await gw.store.put_async_config(tenant, merge_async_config(current, body))
    await gw.changed(
        ControlEvent(kind="function-changed", tenant=tenant, service=service, function=function)
    )
    return json_response(stored)


async def get_async_config(request: web.Request) -> web.Response:
    tenant, service, qualifier, function = await _target(request)
    cfg = await gateway_of(request).store.get_async_config(tenant, service, qualifier, function)
    return json_response(cfg)


async def delete_async_config(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    tenant, service, qualifier, function = await _target(request)
    await gw.store.delete_async_config(tenant, service, qualifier, function)
    await gw.changed(
        ControlEvent(kind="function-changed", tenant=tenant, service=service, function=function)
    )
    return web.Response(status=204)


# --- provision config ---------------------------------------------------------------------


async def put_provision_config(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    tenant, service, qualifier, function = await _target(request)
    body = parse(await request.read(), ProvisionConfigUpdate)
    stored = await gw.store.put_provision_config(
        tenant,
        ProvisionConfig(
            service_name=service, qualifier=qualifier, function_name=function, target=body.target
        ),
    )
    await gw.changed(
        ControlEvent(kind="provision-changed", tenant=tenant, service=service, function=function)
    )
    return json_response(stored)


async def get_provision_config(request: web.Request) -> web.Response:
    tenant, service, qualifier, function = await _target(request)
    cfg = await gateway_of(request).store.get_provision_config(tenant, service, qualifier, function)
    return json_response(cfg)


async def delete_provision_config(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    tenant, service, qualifier, function = await _target(request)
    await gw.store.delete_provision_config(tenant, service, qualifier, function)
    await gw.changed(
        ControlEvent(kind="provision-changed", tenant=tenant, service=service, function=function)
    )
    return web.Response(status=204)


# --- the caller's tenant ------------------------------------------------------------------


async def get_tenant(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    # Fresh from the store: the auth cache may hold the tenant for a few seconds.
    tenant = await gw.store.get_tenant(tenant_of(request).name)
    return json_response(
        TenantView(
            name=tenant.name,
            concurrency=tenant.concurrency,
            max_chain_depth=tenant.max_chain_depth,
            reserved_concurrency=await gw.store.reserved_total(tenant.name),
            created_time=tenant.created_time,
        )
    )


def add_routes(router: web.UrlDispatcher) -> None:
    fn = "/v1/services/{service}/functions/{function}"
    router.add_put(fn + "/async-config", put_async_config)
    router.add_get(fn + "/async-config", get_async_config)
    router.add_delete(fn + "/async-config", delete_async_config)
    router.add_put(fn + "/provision-config", put_provision_config)
    router.add_get(fn + "/provision-config", get_provision_config)
    router.add_delete(fn + "/provision-config", delete_provision_config)
    router.add_get("/v1/tenant", get_tenant)
