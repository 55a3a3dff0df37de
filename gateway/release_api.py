"""Control plane: versions (publish, list, get, delete) and aliases (CRUD, partial PUT).

Every change is announced with a `version-changed` / `alias-changed` control notice, so
every gateway's and dispatcher's resolution cache (`FunctionCatalog.resolve`) drops the
service's aliases at once and reads them again on the next call.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from gateway.bodies import (
    AliasCreate,
    AliasPage,
    AliasUpdate,
    PublishVersion,
    VersionPage,
    changes,
    parse,
)
from gateway.http import Gateway, gateway_of, json_response, list_params, tenant_of
from shared.errors import BadRequest
from shared.protocol import ControlEvent
from shared.release import Alias, check_version_id


def _scope(request: web.Request) -> tuple[Gateway, str, str]:
    return gateway_of(request), tenant_of(request).name, request.match_info["service"]


def _version_id(value: str | int) -> str:
    text = str(value)
    check_version_id(text)
    return text


async def _changed(
    request: web.Request, kind: Literal["version-changed", "alias-changed"], service: str
) -> None:
    event = ControlEvent(kind=kind, tenant=tenant_of(request).name, service=service)
    await gateway_of(request).changed(event)


# --- versions -------------------------------------------------------------------------


async def publish_version(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    raw = await request.read()
    body = parse(raw, PublishVersion) if raw.strip() else PublishVersion()
    version = await gw.store.publish_version(tenant, service, body.description)
    await _changed(request, "version-changed", service)
    return json_response(version, 201)


async def list_versions(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    _, limit, start = list_params(request)
    start_key = int(_version_id(start)) if start else None
    found = await gw.store.list_versions(tenant, service, limit + 1, start_key)
    page = VersionPage(versions=found[:limit])
    if len(found) > limit:
        page.next_token = found[limit].version_id
    return json_response(page)


async def get_version(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    number = check_version_id(request.match_info["version"])
    return json_response(await gw.store.get_version(tenant, service, number))


async def delete_version(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    number = check_version_id(request.match_info["version"])
    await gw.store.delete_version(tenant, service, number)
    await _changed(request, "version-changed", service)
    return web.Response(status=204)


# --- aliases --------------------------------------------------------------------------


async def create_alias(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    body = parse(await request.read(), AliasCreate)
    alias = Alias(
        alias_name=body.alias_name,
        version_id=_version_id(body.version_id),
        additional_version_weight=body.additional_version_weight,
        description=body.description,
        auto_rollback=body.auto_rollback,
    )
    created = await gw.store.create_alias(tenant, service, alias)
    await _changed(request, "alias-changed", service)
    return json_response(created, 201)


async def get_alias(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    return json_response(await gw.store.get_alias(tenant, service, request.match_info["alias"]))


async def list_aliases(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    prefix, limit, start = list_params(request)
    found = await gw.store.list_aliases(tenant, service, prefix, limit + 1, start)
    page = AliasPage(aliases=found[:limit])
    if len(found) > limit:
        page.next_token = found[limit].alias_name
    return json_response(page)


async def update_alias(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    body = parse(await request.read(), AliasUpdate)
    update: dict[str, Any] = changes(body)
    if "version_id" in update:
        update["version_id"] = _version_id(update["version_id"])
    if not update:
        raise BadRequest("nothing to update: give at least one field")
    updated = await gw.store.update_alias(tenant, service, request.match_info["alias"], update)
    await _changed(request, "alias-changed", service)
    return json_response(updated)


async def delete_alias(request: web.Request) -> web.Response:
    gw, tenant, service = (
        gateway_of(request),
        tenant_of(request).name,
        request.match_info["service"],
    )
    await gw.store.delete_alias(tenant, service, request.match_info["alias"])
    await _changed(request, "alias-changed", service)
    return web.Response(status=204)


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/v1/services/{service}"
    router.add_post(base + "/versions", publish_version)
    router.add_get(base + "/versions", list_versions)
    router.add_get(base + "/versions/{version}", get_version)
    router.add_delete(base + "/versions/{version}", delete_version)
    router.add_post(base + "/aliases", create_alias)
    router.add_get(base + "/aliases", list_aliases)
    router.add_get(base + "/aliases/{alias}", get_alias)
    router.add_put(base + "/aliases/{alias}", update_alias)
    router.add_delete(base + "/aliases/{alias}", delete_alias)
