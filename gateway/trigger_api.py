"""Control plane: triggers of a function (create, read, list, partial update, delete).

A trigger's config is validated by its type (`shared.trigger_types`), and its function
and qualifier must resolve, before anything is stored; every change is announced on the
control fanout (`trigger-changed`), which the trigger processes of that kind reload from.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from gateway.bodies import TriggerCreate, TriggerUpdate, parse
from gateway.http import gateway_of, json_response, list_params, page, tenant_of
from shared.errors import BadRequest
from shared.models import Trigger
from shared.protocol import ControlEvent
from shared.trigger_types import Limits, public_config, restore_secrets, trigger_type, validate


def _check_qualifier(qualifier: str) -> None:
    """A version number, an alias name or LATEST (which ones exist is the catalog's call)."""
    if not 1 <= len(qualifier) <= 128 or not all(c.isalnum() or c in "_-" for c in qualifier):
        raise BadRequest(f"qualifier: {qualifier!r} is not a version, alias or LATEST")


async def create_trigger(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    service, function = request.match_info["service"], request.match_info["function"]
    body = parse(await request.read(), TriggerCreate)
    _check_qualifier(body.qualifier)
    config = validate(body.trigger_type, body.trigger_config, _limits(request))
    # The function (and qualifier) must resolve: a 404 before anything is stored.
    await gw.catalog.spec(tenant, service, body.qualifier, function)
    trigger = Trigger(
        trigger_name=body.trigger_name,
        # FC's names of a type (`oss`) are stored as the type's own (`s3`).
        trigger_type=trigger_type(body.trigger_type).name,
        trigger_config=config,
        qualifier=body.qualifier,
        enabled=body.enabled,
        description=body.description,
    )
    created = await gw.store.create_trigger(tenant, service, function, trigger)
    await _changed(request, created)
    return json_response(_shown(created), 201)


async def get_trigger(request: web.Request) -> web.Response:
    trigger = await gateway_of(request).store.get_trigger(tenant_of(request).name, *_path(request))
    return json_response(_shown(trigger))


async def list_triggers(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    prefix, limit, start = list_params(request)
    service, function = request.match_info["service"], request.match_info["function"]
    items = await gw.store.list_triggers(
        tenant, service, function, prefix=prefix, limit=limit + 1, start_key=start
    )
    result = page(list(items), limit, "trigger_name")
    result["items"] = [_shown(t) for t in result["items"]]  # type: ignore[attr-defined]
    result["triggers"] = result.pop("items")
    return json_response(result)


async def update_trigger(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    service, function, name = _path(request)
    body = parse(await request.read(), TriggerUpdate)
    current = await gw.store.get_trigger(tenant, service, function, name)
    changes: dict[str, Any] = {}
    if body.trigger_config is not None:
        config = restore_secrets(body.trigger_config, current.trigger_config)
        changes["trigger_config"] = validate(current.trigger_type, config, _limits(request))
    if body.qualifier is not None:
        _check_qualifier(body.qualifier)
        await gw.catalog.spec(tenant, service, body.qualifier, function)
        changes["qualifier"] = body.qualifier
    if body.enabled is not None:
        changes["enabled"] = body.enabled
    if body.description is not None:
        changes["description"] = body.description
    if not changes:
        raise BadRequest("nothing to update: give triggerConfig, qualifier, enabled or description")
    updated = await gw.store.update_trigger(tenant, service, function, name, changes)
    await _changed(request, updated)
    return json_response(_shown(updated))


async def delete_trigger(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    service, function, name = _path(request)
    current = await gw.store.get_trigger(tenant, service, function, name)
    await gw.store.delete_trigger(tenant, service, function, name)
    await _changed(request, current)
    return web.Response(status=204)


def _path(request: web.Request) -> tuple[str, str, str]:
    m = request.match_info
    return m["service"], m["function"], m["trigger"]


def _limits(request: web.Request) -> Limits:
    settings = gateway_of(request).settings
    return Limits(
        max_event_bytes=settings.max_event_bytes,
        namespace=settings.namespace,
        mq_exchanges=settings.mq_exchange_patterns,
        tenant=tenant_of(request).name,
    )


def _shown(trigger: Trigger) -> dict[str, Any]:
    """The trigger as the API shows it: secrets in its config blanked; an http trigger's
    own URL path (`urlPath`: `/v1/http/{triggerId}/`, anonymous with authType anonymous)."""
    shown = msgspec.structs.replace(trigger, trigger_config=public_config(trigger.trigger_config))
    out: dict[str, Any] = msgspec.to_builtins(shown)
    if trigger.trigger_type == "http":
        out["urlPath"] = f"/v1/http/{trigger.trigger_id}/"
    return out


async def _changed(request: web.Request, trigger: Trigger) -> None:
    await gateway_of(request).changed(
        ControlEvent(
            kind="trigger-changed",
            tenant=tenant_of(request).name,
            service=trigger.service_name,
            function=trigger.function_name,
            trigger_type=trigger.trigger_type,
        )
    )


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/v1/services/{service}/functions/{function}/triggers"
    router.add_post(base, create_trigger)
    router.add_get(base, list_triggers)
    router.add_get(base + "/{trigger}", get_trigger)
    router.add_put(base + "/{trigger}", update_trigger)
    router.add_delete(base + "/{trigger}", delete_trigger)
