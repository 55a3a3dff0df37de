"""Control plane: services and functions (create, read, list, partial update, delete)."""

from __future__ import annotations

from aiohttp import web

from gateway.bodies import (
    FunctionCreate,
    FunctionUpdate,
    ServiceCreate,
    ServiceUpdate,
    changes,
    parse,
)
from gateway.http import gateway_of, json_response, list_params, page, tenant_of
from shared.codepkg import inspect_package, validate_runtime
from shared.errors import BadRequest, PayloadTooLarge
from shared.models import Function, Service
from shared.protocol import ControlEvent

# --- services -----------------------------------------------------------------------------


async def create_service(request: web.Request) -> web.Response:
    body = parse(await request.read(), ServiceCreate)
    service = Service(
        service_name=body.service_name,
        description=body.description,
        role=body.role,
        log_config=body.log_config,
        environment_variables=body.environment_variables,
    )
    created = await gateway_of(request).store.create_service(tenant_of(request).name, service)
    return json_response(created, 201)


async def get_service(request: web.Request) -> web.Response:
    service = await gateway_of(request).store.get_service(
        tenant_of(request).name, request.match_info["service"]
    )
    return json_response(service)


async def list_services(request: web.Request) -> web.Response:
    prefix, limit, start = list_params(request)
    items = await gateway_of(request).store.list_services(
        tenant_of(request).name, prefix=prefix, limit=limit + 1, start_key=start
    )
    result = page(list(items), limit, "service_name")
    result["services"] = result.pop("items")
    return json_response(result)


async def update_service(request: web.Request) -> web.Response:
    gw, tenant, name = gateway_of(request), tenant_of(request).name, request.match_info["service"]
    body = parse(await request.read(), ServiceUpdate)
    updated = await gw.store.update_service(tenant, name, changes(body))
    await gw.changed(ControlEvent(kind="service-changed", tenant=tenant, service=name))
    return json_response(updated)


async def delete_service(request: web.Request) -> web.Response:
    gw, tenant, name = gateway_of(request), tenant_of(request).name, request.match_info["service"]
    await gw.store.delete_service(tenant, name)
    await gw.changed(ControlEvent(kind="service-changed", tenant=tenant, service=name))
    return web.Response(status=204)


# --- functions ----------------------------------------------------------------------------


async def _store_code(
    request: web.Request, zip_bytes: bytes, runtime: str, handler: str, initializer: str | None
) -> tuple[str, int]:
    gw = gateway_of(request)
    if len(zip_bytes) > gw.settings.max_code_bytes:
        raise PayloadTooLarge(
            f"code package is {len(zip_bytes)} bytes; the limit is {gw.settings.max_code_bytes}"
        )
    info = inspect_package(zip_bytes, runtime=runtime, handler=handler, initializer=initializer)
    digest = await gw.blobs.put(zip_bytes)
    return digest, info.size


async def create_function(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    service = request.match_info["service"]
    body = parse(await request.read(), FunctionCreate)
    validate_runtime(body.runtime)
    # Fail fast on a missing service before storing any code.
    await gw.store.get_service(tenant, service)
    digest, size = await _store_code(
        request, body.code.zip_bytes(), body.runtime, body.handler, body.initializer
    )
    fn = Function(
        function_name=body.function_name,
        service_name=service,
        description=body.description,
        runtime=body.runtime,
        handler=body.handler,
        timeout=body.timeout,
        memory_size=body.memory_size,
        initializer=body.initializer,
        initialization_timeout=body.initialization_timeout,
        instance_concurrency=body.instance_concurrency,
        environment_variables=body.environment_variables,
        reserved_concurrency=body.reserved_concurrency,
        code_checksum=digest,
        code_size=size,
    )
    created = await gw.store.create_function(tenant, service, fn)
    await gw.changed(
        ControlEvent(
            kind="function-changed", tenant=tenant, service=service, function=fn.function_name
        )
    )
    return json_response(created, 201)


async def get_function(request: web.Request) -> web.Response:
    fn = await gateway_of(request).store.get_function(
        tenant_of(request).name, request.match_info["service"], request.match_info["function"]
    )
    return json_response(fn)


async def get_function_code(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    fn = await gw.store.get_function(
        tenant_of(request).name, request.match_info["service"], request.match_info["function"]
    )
    data = await gw.blobs.get(fn.code_checksum)
    return web.Response(
        body=data,
        content_type="application/zip",
        headers={"X-Fc-Code-Checksum": fn.code_checksum},
    )


async def list_functions(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    prefix, limit, start = list_params(request)
    await gw.store.get_service(tenant, request.match_info["service"])
    items = await gw.store.list_functions(
        tenant, request.match_info["service"], prefix=prefix, limit=limit + 1, start_key=start
    )
    result = page(list(items), limit, "function_name")
    result["functions"] = result.pop("items")
    return json_response(result)


async def update_function(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    service, name = request.match_info["service"], request.match_info["function"]
    body = parse(await request.read(), FunctionUpdate)
    current = await gw.store.get_function(tenant, service, name)
    update = changes(body)
    runtime = body.runtime or current.runtime
    validate_runtime(runtime)
    handler = body.handler or current.handler
    initializer = body.initializer if body.initializer is not None else current.initializer
    if body.code is not None:
        digest, size = await _store_code(
            request, body.code.zip_bytes(), runtime, handler, initializer
        )
        update["code_checksum"], update["code_size"] = digest, size
    elif {"runtime", "handler", "initializer"} & update.keys():
        # The entry points moved: they must exist in the code already stored.
        inspect_package(
            await gw.blobs.get(current.code_checksum),
            runtime=runtime,
            handler=handler,
            initializer=initializer,
        )
    if not update:
        raise BadRequest("nothing to update: give at least one field")
    updated = await gw.store.update_function(tenant, service, name, update)
    await gw.changed(
        ControlEvent(kind="function-changed", tenant=tenant, service=service, function=name)
    )
    return json_response(updated)


async def delete_function(request: web.Request) -> web.Response:
    gw, tenant = gateway_of(request), tenant_of(request).name
    service, name = request.match_info["service"], request.match_info["function"]
    await gw.store.delete_function(tenant, service, name)
    await gw.changed(
        ControlEvent(kind="function-changed", tenant=tenant, service=service, function=name)
    )
    return web.Response(status=204)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/services", create_service)
    router.add_get("/v1/services", list_services)
    router.add_get("/v1/services/{service}", get_service)
    router.add_put("/v1/services/{service}", update_service)
    router.add_delete("/v1/services/{service}", delete_service)
    router.add_post("/v1/services/{service}/functions", create_function)
    router.add_get("/v1/services/{service}/functions", list_functions)
    router.add_get("/v1/services/{service}/functions/{function}", get_function)
    router.add_put("/v1/services/{service}/functions/{function}", update_function)
    router.add_delete("/v1/services/{service}/functions/{function}", delete_function)
    router.add_get("/v1/services/{service}/functions/{function}/code", get_function_code)
