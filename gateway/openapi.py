"""The OpenAPI 3.1 document, built from the same msgspec Structs that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from gateway.bodies import (
    AliasCreate,
    AliasPage,
    AliasUpdate,
    AsyncConfigUpdate,
    DeadLetterDetail,
    DeadLetterPage,
    FunctionCreate,
    FunctionUpdate,
    ProvisionConfigUpdate,
    PublishVersion,
    RedriveResult,
    ServiceCreate,
    ServiceUpdate,
    TenantView,
    TriggerCreate,
    TriggerUpdate,
    VersionPage,
)
from gateway.http import json_response
from shared.models import AsyncConfig, Function, ProvisionConfig, Service, Trigger
from shared.release import Alias, Version
from shared.trigger_types import TimerConfig

REF = "#/components/schemas/{name}"


def _op(
    summary: str,
    request: str | None = None,
    response: str | None = None,
    status: str = "200",
    raw: bool = False,
    query: tuple[str, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if query:
        op["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in query
        ]
    if request:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(name=request)}}},
        }
    if raw:
        op["requestBody"] = {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}}
        }
    ok: dict[str, Any] = {"description": "OK"}
    if response:
        ok["content"] = {"application/json": {"schema": {"$ref": REF.format(name=response)}}}
    op["responses"][status] = ok
    op["responses"]["default"] = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": REF.format(name="Error")}}},
    }
    return op


@cache
def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            ServiceCreate,
            ServiceUpdate,
            FunctionCreate,
            FunctionUpdate,
            Service,
            Function,
            AsyncConfigUpdate,
            AsyncConfig,
            ProvisionConfigUpdate,
            ProvisionConfig,
            TenantView,
            DeadLetterPage,
            DeadLetterDetail,
            RedriveResult,
            PublishVersion,
            Version,
            VersionPage,
            AliasCreate,
            AliasUpdate,
            Alias,
            AliasPage,
            TriggerCreate,
            TriggerUpdate,
            Trigger,
            TimerConfig,
        ],
        ref_template=REF,
    )
    components["Error"] = {
        "type": "object",
        "properties": {"errorCode": {"type": "string"}, "errorMessage": {"type": "string"}},
        "required": ["errorCode", "errorMessage"],
    }
    svc = "/v1/services/{service}"
    fn = svc + "/functions/{function}"
    dlq_filters = ("serviceName", "functionName")
    paths = {
        "/v1/services": {
            "post": _op("create a service", "ServiceCreate", "Service", "201"),
            "get": _op("list services"),
        },
        svc: {
            "get": _op("get a service", response="Service"),
            "put": _op("update a service (partial)", "ServiceUpdate", "Service"),
            "delete": _op("delete an empty service", status="204"),
        },
        svc + "/functions": {
            "post": _op("create a function", "FunctionCreate", "Function", "201"),
            "get": _op("list functions"),
        },
        fn: {
            "get": _op("get a function", response="Function"),
            "put": _op("update a function (partial)", "FunctionUpdate", "Function"),
            "delete": _op("delete a function (409 while it has triggers)", status="204"),
        },
        fn + "/code": {"get": _op("download the code package (zip)")},
        svc + "/versions": {
            "post": _op(
                "publish LATEST as the next version (400 VersionExists when unchanged)",
                "PublishVersion",
                "Version",
                "201",
            ),
            "get": _op(
                "list versions, newest first", response="VersionPage", query=("limit", "startKey")
            ),
        },
        svc + "/versions/{version}": {
            "get": _op("get a version", response="Version"),
            "delete": _op("delete a version (409 VersionInUse if an alias uses it)", status="204"),
        },
        svc + "/aliases": {
            "post": _op("create an alias", "AliasCreate", "Alias", "201"),
            "get": _op("list aliases", response="AliasPage", query=("prefix", "limit", "startKey")),
        },
        svc + "/aliases/{alias}": {
            "get": _op("get an alias (with its last automatic rollback)", response="Alias"),
            "put": _op("update an alias (partial)", "AliasUpdate", "Alias"),
            "delete": _op("delete an alias", status="204"),
        },
        fn + "/triggers": {
            "post": _op(
                "create a trigger (triggerConfig by triggerType; timer: TimerConfig)",
                "TriggerCreate",
                "Trigger",
                "201",
            ),
            "get": _op("list the function's triggers", query=("prefix", "limit", "startKey")),
        },
        fn + "/triggers/{trigger}": {
            "get": _op("get a trigger", response="Trigger"),
            "put": _op("update a trigger (partial)", "TriggerUpdate", "Trigger"),
            "delete": _op("delete a trigger", status="204"),
        },
        fn + "/invocations": {
            "post": _op(
                "invoke service[.qualifier]/function (qualifier: LATEST, a version id or an "
                "alias); X-Fc-Invocation-Type: Sync|Async, X-Fc-Log-Type: Tail; the response's "
                "X-Fc-Invocation-Service-Version names the version that ran",
                raw=True,
            ),
        },
        fn + "/invocations/{requestId}": {"get": _op("async invocation status and result")},
        fn + "/async-config": {
            "put": _op(
                "set the async config of service[.qualifier]/function (partial)",
                "AsyncConfigUpdate",
                "AsyncConfig",
            ),
            "get": _op("get the async config", response="AsyncConfig"),
            "delete": _op("remove the async config (defaults apply)", status="204"),
        },
        fn + "/provision-config": {
            "put": _op(
                "set the provision config (min warm instances)",
                "ProvisionConfigUpdate",
                "ProvisionConfig",
            ),
            "get": _op("get the provision config", response="ProvisionConfig"),
            "delete": _op("remove the provision config", status="204"),
        },
        "/v1/tenant": {"get": _op("the caller's tenant and its caps", response="TenantView")},
        "/v1/dlq": {
            "get": _op(
                "list dead letters (no payloads)",
                response="DeadLetterPage",
                query=(*dlq_filters, "limit", "startKey"),
            ),
            "delete": _op("purge dead letters -> {purged}", query=dlq_filters),
        },
        "/v1/dlq/redrive": {
            "post": _op(
                "redrive up to `limit` (<= 100) matching dead letters",
                response="RedriveResult",
                query=(*dlq_filters, "limit", "startKey"),
            ),
        },
        "/v1/dlq/{requestId}": {
            "get": _op("one dead letter with payload and response", response="DeadLetterDetail"),
            "delete": _op("delete one dead letter", status="204"),
        },
        "/v1/dlq/{requestId}/redrive": {
            "post": _op("publish the invocation again -> {requestId}", status="202"),
        },
        "/healthz": {"get": _op("liveness")},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pyfc", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


async def document(request: web.Request) -> web.Response:
    return json_response(build())
