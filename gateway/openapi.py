"""The OpenAPI 3.1 document, built from the same msgspec Structs that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from gateway.app import json_response
from gateway.bodies import FunctionCreate, FunctionUpdate, ServiceCreate, ServiceUpdate
from shared.models import Function, Service

REF = "#/components/schemas/{name}"


def _op(
    summary: str,
    request: str | None = None,
    response: str | None = None,
    status: str = "200",
    raw: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
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
        [ServiceCreate, ServiceUpdate, FunctionCreate, FunctionUpdate, Service, Function],
        ref_template=REF,
    )
    components["Error"] = {
        "type": "object",
        "properties": {"errorCode": {"type": "string"}, "errorMessage": {"type": "string"}},
        "required": ["errorCode", "errorMessage"],
    }
    svc = "/v1/services/{service}"
    fn = svc + "/functions/{function}"
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
            "delete": _op("delete a function", status="204"),
        },
        fn + "/code": {"get": _op("download the code package (zip)")},
        fn + "/invocations": {
            "post": _op("invoke; X-Fc-Invocation-Type: Sync|Async, X-Fc-Log-Type: Tail", raw=True),
        },
        fn + "/invocations/{requestId}": {"get": _op("async invocation status and result")},
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
