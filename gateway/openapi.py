"""The OpenAPI 3.1 document, built from the same msgspec Structs that validate requests."""

from __future__ import annotations

import re
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
    MessagePublish,
    MessagePublished,
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
from shared.logread import MAX_LIMIT as MAX_LOG_LIMIT
from shared.models import AsyncConfig, Function, ProvisionConfig, Service, Trigger
from shared.release import Alias, Version
from shared.trigger_types import HttpConfig, MqConfig, TimerConfig

REF = "#/components/schemas/{name}"

# Every error is {"errorCode", "errorMessage"}; these are the statuses any authenticated
# route can answer with, on top of its own (see `_op(errors=...)`).
COMMON_ERRORS = {
    "400": "bad input: the message names the field and the reason",
    "401": "missing or unknown API key",
    "403": "the credential may not use this route (an invoke token outside its grant)",
    "503": "a platform dependency (broker, store) is unavailable; retry",
}
ERROR_TEXT = {
    "404": "the resource (or its service, function or qualifier) does not exist",
    "409": "conflict: the name exists, or the resource is in use",
    "405": "the method is not among the http trigger's methods (Allow names them)",
    "413": "the body is over the limit",
    "429": "throttled: the tenant's or function's concurrency is exhausted",
    "502": "the function failed (FC's error body: errorMessage, errorType, stackTrace)",
    "504": "the function did not answer within its timeout",
}

# The path parameters of every route, by their name in the document.
NAME_PATTERN = r"^[A-Za-z_][-A-Za-z0-9_]{0,127}$"
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "service": {
        "description": "service name; on invocation, async-config and provision-config routes "
        "`service.qualifier` (a version id, an alias or LATEST) is accepted too",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    },
    "function": {
        "description": "function name",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    },
    "trigger": {
        "description": "trigger name",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    },
    "alias": {"description": "alias name", "schema": {"type": "string", "pattern": NAME_PATTERN}},
    "version": {
        "description": "version id",
        "schema": {"type": "string", "pattern": r"^[1-9][0-9]{0,9}$"},
    },
    "requestId": {"description": "request id", "schema": {"type": "string", "minLength": 1}},
    "triggerId": {"description": "trigger id", "schema": {"type": "string", "minLength": 1}},
    "path": {
        "description": "the path under the function, as the app sees it (`/` when empty)",
        "schema": {"type": "string", "pattern": "^(/.*)?$"},
    },
    "exchange": {
        "description": "an exchange of the platform's broker tenants may use (not `{namespace}.*` "
        "nor `amq.*`; within PYFC_MQ_EXCHANGES)",
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,255}$"},
    },
}

INVOKE_HEADERS = [
    {
        "name": "X-Fc-Invocation-Type",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["Sync", "Async", "sync", "async"]},
    },
    {
        "name": "X-Fc-Log-Type",
        "in": "header",
        "required": False,
        # Tail returns the log tail; any other value (FC's None) returns none.
        "schema": {"type": "string", "examples": ["Tail", "None"]},
    },
]


# One example body per request schema (tests/test_api_contract.py checks each against its
# schema, and that every JSON body has one).
ZIP = "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="  # base64 of an (empty) zip: put your package here
REQUEST_EXAMPLES: dict[str, Any] = {
    "ServiceCreate": {"serviceName": "demo", "description": "image pipeline"},
    "ServiceUpdate": {"description": "image pipeline, v2"},
    "FunctionCreate": {
        "functionName": "thumbnail",
        "runtime": "python3.11",
        "handler": "index.handler",
        "code": {"zipFile": ZIP},
        "memorySize": 256,
        "timeout": 30,
        "instanceConcurrency": 4,
        "environmentVariables": {"OUT_PREFIX": "thumbs/"},
    },
    "FunctionUpdate": {"timeout": 60, "environmentVariables": {"OUT_PREFIX": "small/"}},
    "PublishVersion": {"description": "first release"},
    "AliasCreate": {
        "aliasName": "prod",
        "versionId": "1",
        "additionalVersionWeight": {"2": 0.1},
        "autoRollback": {"maxErrorRate": 0.05, "windowSeconds": 60, "minInvocations": 20},
    },
    "AliasUpdate": {"versionId": "2", "additionalVersionWeight": {}},
    "TriggerCreate": {
        "triggerName": "nightly",
        "triggerType": "timer",
        "qualifier": "prod",
        "triggerConfig": {"cronExpression": "0 0 2 * * *", "timezone": "Asia/Shanghai"},
    },
    "TriggerUpdate": {"enabled": False},
    "AsyncConfigUpdate": {
        "maxAsyncRetryAttempts": 2,
        "maxAsyncEventAgeInSeconds": 3600,
        "destinationConfig": {"onFailure": {"destination": "function:demo/on-failure"}},
    },
    "ProvisionConfigUpdate": {"target": 2},
    "MessagePublish": {
        "routingKey": "order.created",
        "body": '{"id": 1, "total": 9.5}',
        "messageId": "order-1",
    },
}


OPTIONAL_BODIES = frozenset({"PublishVersion"})


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _page_of(key: str, item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            key: {"type": "array", "items": _ref(item)},
            "nextToken": {"type": "string"},
        },
        "required": [key],
    }


def _op(
    summary: str,
    request: str | None = None,
    response: str | dict[str, Any] | None = None,
    status: str = "200",
    raw: bool = False,
    query: tuple[str, ...] = (),
    errors: tuple[str, ...] = ("404",),
    media: str = "application/json",
    limit_max: int = 100,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if query:
        op["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": _query_schema(name, limit_max),
            }
            for name in query
        ]
    if request:
        # A body whose fields all have defaults may be left out (publish a version).
        optional = request in OPTIONAL_BODIES
        op["requestBody"] = {"required": not optional, "content": _json(_ref(request))}
        if request in REQUEST_EXAMPLES:
            op["requestBody"]["content"]["application/json"]["example"] = REQUEST_EXAMPLES[request]
        errors = (*errors, "413")
    if raw:
        op["requestBody"] = {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}}
        }
    ok: dict[str, Any] = {"description": "OK"}
    if isinstance(response, str):
        ok["content"] = _json(_ref(response))
    elif response is not None:
        ok["content"] = {media: {"schema": response}}
    op["responses"][status] = ok
    for code, text in sorted({**COMMON_ERRORS, **{e: ERROR_TEXT[e] for e in errors}}.items()):
        op["responses"][code] = {"description": text, "content": _json(_ref("Error"))}
    return op


def _query_schema(name: str, limit_max: int) -> dict[str, Any]:
    if name == "limit":
        return {"type": "integer", "minimum": 1, "maximum": limit_max}
    return {"type": "string"}


def _with_path_params(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Declare each `{name}` of a path once, at the path level (OpenAPI 3.1 requires it)."""
    for path, item in paths.items():
        names = re.findall(r"{(\w+)}", path)
        if names:
            item["parameters"] = [
                {"name": name, "in": "path", "required": True, **PATH_PARAMS[name]}
                for name in names
            ]
        for method, op in item.items():
            if method != "parameters":
                op.setdefault("operationId", _operation_id(method, path))
    return paths


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[/{}-]+", path.removeprefix("/v1")) if w]
    return method + "".join(w[:1].upper() + w[1:] for w in words)


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
            MqConfig,
            HttpConfig,
            MessagePublish,
            MessagePublished,
        ],
        ref_template=REF,
    )
    components["Error"] = {
        "type": "object",
        "properties": {"errorCode": {"type": "string"}, "errorMessage": {"type": "string"}},
        "required": ["errorCode", "errorMessage"],
        "examples": [{"errorCode": "ServiceNotFound", "errorMessage": "service demo not found"}],
    }
    components["InvocationStatus"] = {
        "type": "object",
        "properties": {
            "requestId": {"type": "string"},
            "serviceName": {"type": "string"},
            "qualifier": {"type": "string"},
            "version": {"type": "string"},
            "functionName": {"type": "string"},
            "status": {"type": "string"},
            "attempt": {"type": "integer"},
            "createdTime": {"type": "string"},
            "finishedTime": {"type": "string"},
            "origin": {"type": "string"},
            "errorType": {"type": "string"},
            "errorMessage": {"type": "string"},
            "result": {"type": "string"},
            "resultEncoding": {"type": "string", "enum": ["utf-8", "base64"]},
        },
        "required": ["requestId", "serviceName", "functionName", "status", "attempt"],
    }
    svc = "/v1/services/{service}"
    fn = svc + "/functions/{function}"
    dlq_filters = ("serviceName", "functionName")
    listing = ("prefix", "limit", "startKey")
    public: dict[str, Any] = {"security": []}
    paths = {
        "/v1/services": {
            "post": _op("create a service", "ServiceCreate", "Service", "201", errors=("409",)),
            "get": _op("list services", response=_page_of("services", "Service"), query=listing),
        },
        svc: {
            "get": _op("get a service", response="Service"),
            "put": _op("update a service (partial)", "ServiceUpdate", "Service"),
            "delete": _op(
                "delete an empty service (409 while it has functions)",
                status="204",
                errors=("404", "409"),
            ),
        },
        svc + "/functions": {
            "post": _op(
                "create a function (code: a base64 zip)",
                "FunctionCreate",
                "Function",
                "201",
                errors=("404", "409"),
            ),
            "get": _op("list functions", response=_page_of("functions", "Function"), query=listing),
        },
        fn: {
            "get": _op("get a function", response="Function"),
            "put": _op("update a function (partial)", "FunctionUpdate", "Function"),
            "delete": _op(
                "delete a function (409 while it has triggers)", status="204", errors=("404", "409")
            ),
        },
        fn + "/code": {
            "get": _op(
                "download the code package",
                response={"type": "string"},
                media="application/zip",
            )
        },
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
            "delete": _op(
                "delete a version (409 VersionInUse if an alias uses it)",
                status="204",
                errors=("404", "409"),
            ),
        },
        svc + "/aliases": {
            "post": _op("create an alias", "AliasCreate", "Alias", "201", errors=("404", "409")),
            "get": _op("list aliases", response="AliasPage", query=listing),
        },
        svc + "/aliases/{alias}": {
            "get": _op("get an alias (with its last automatic rollback)", response="Alias"),
            "put": _op("update an alias (partial)", "AliasUpdate", "Alias"),
            "delete": _op("delete an alias", status="204"),
        },
        fn + "/triggers": {
            "post": _op(
                "create a trigger (triggerConfig by triggerType; timer: TimerConfig, mq: MqConfig, "
                "http: HttpConfig; an http trigger's answers add urlPath)",
                "TriggerCreate",
                "Trigger",
                "201",
                errors=("404", "409"),
            ),
            "get": _op(
                "list the function's triggers",
                response=_page_of("triggers", "Trigger"),
                query=listing,
            ),
        },
        fn + "/triggers/{trigger}": {
            "get": _op("get a trigger", response="Trigger"),
            "put": _op("update a trigger (partial)", "TriggerUpdate", "Trigger"),
            "delete": _op("delete a trigger", status="204"),
        },
        fn + "/invocations": {"post": _invoke_op()},
        fn + "/invocations/{requestId}": {
            "get": _op("async invocation status and result", response="InvocationStatus")
        },
        fn + "/stats": {
            "get": _op(
                "the function's stats over a window (default 15m) and per step: invocations, "
                "errors by type, throttles, p50/p99 duration, cold-start share, retries, "
                "dead letters",
                query=("window", "step", "until"),
            ),
        },
        "/v1/stats": {
            "get": _op(
                "the tenant's stats over a window, in total and per function",
                query=("window", "step", "until"),
            ),
        },
        fn + "/logs": {
            "get": _op(
                "the function's log lines, oldest first, paged ({logs, nextToken}); times are "
                "ISO 8601, epoch seconds or back from now (10m); level: at least this; "
                "follow=true streams lines as they arrive (application/x-ndjson)",
                query=("requestId", "since", "until", "q", "level", "limit", "nextToken", "follow"),
                limit_max=MAX_LOG_LIMIT,
            ),
            "post": _op(
                "append the tenant's own records: {records: [{message, level, requestId, time}]}"
            ),
        },
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
        "/v1/messages/{exchange}": {
            "post": _op(
                "publish a message (lineage in its headers) to an existing exchange; an "
                "invoke token may publish too",
                "MessagePublish",
                "MessagePublished",
                errors=("404",),
            ),
        },
        "/v1/proxy/{service}/{function}{path}": _proxy_ops(
            "the function's enabled http trigger, with the caller's API key or invoke token"
        ),
        "/v1/http/{triggerId}{path}": _proxy_ops(
            "an http trigger's own URL (`urlPath`): no credential for authType anonymous"
        ),
        "/v1/tenant": {
            "get": _op("the caller's tenant and its caps", response="TenantView", errors=())
        },
        "/v1/dlq": {
            "get": _op(
                "list dead letters (no payloads)",
                response="DeadLetterPage",
                query=(*dlq_filters, "limit", "startKey"),
                errors=(),
            ),
            "delete": _op(
                "purge dead letters",
                response={
                    "type": "object",
                    "properties": {"purged": {"type": "integer"}},
                    "required": ["purged"],
                },
                query=dlq_filters,
                errors=(),
            ),
        },
        "/v1/dlq/redrive": {
            "post": _op(
                "redrive up to `limit` (<= 100) matching dead letters",
                response="RedriveResult",
                query=(*dlq_filters, "limit", "startKey"),
                errors=(),
            ),
        },
        "/v1/dlq/{requestId}": {
            "get": _op("one dead letter with payload and response", response="DeadLetterDetail"),
            "delete": _op("delete one dead letter", status="204"),
        },
        "/v1/dlq/{requestId}/redrive": {
            "post": _op(
                "publish the invocation again",
                response={
                    "type": "object",
                    "properties": {"requestId": {"type": "string"}},
                    "required": ["requestId"],
                },
                status="202",
            ),
        },
        "/healthz": {"get": {**public, **_public_op("liveness")}},
        "/readyz": {"get": {**public, **_public_op("readiness")}},
        "/v1/openapi.json": {"get": {**public, **_public_op("this document")}},
        "/metrics": {
            "get": {
                **public,
                "summary": "Prometheus metrics (loopback clients, or Bearer PYFC_METRICS_TOKEN)",
                "responses": {
                    "200": {
                        "description": "the exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "403": {
                        "description": "not a permitted scraper",
                        "content": _json(_ref("Error")),
                    },
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pyfc", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _with_path_params(paths),
    }


def _public_op(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": _json({"type": "object"})}},
    }


def _proxy_ops(where: str) -> dict[str, Any]:
    """HTTP trigger routes: any of the trigger's methods; the app's own answer."""
    ops: dict[str, Any] = {}
    for method in ("get", "post", "put", "delete", "patch", "options"):
        op = _op(
            f"HTTP trigger ({where}): the request as it came to the function (a WSGI app, "
            "an FC 3.0 HTTP event handler or an ASGI app), its answer as the response; "
            "405 for a method the trigger does not take, 502 with FC's error body when the "
            "function fails, 504 at its timeout; X-Fc-Invocation-Type: Async answers 202",
            raw=True,
            response={"type": "string"},
            media="*/*",
            errors=("404", "405", "413", "429", "502", "504"),
        )
        op["responses"]["default"] = {"description": "whatever the app answers"}
        ops[method] = op
    return ops


def _invoke_op() -> dict[str, Any]:
    op = _op(
        "invoke service[.qualifier]/function (qualifier: LATEST, a version id or an alias). "
        "Sync: the function's answer as the body (X-Fc-Error-Type set on a function error); "
        "Async: 202 with X-Fc-Request-Id. The response's X-Fc-Invocation-Service-Version names "
        "the version that ran; X-Fc-Log-Type: Tail returns the log tail in X-Fc-Log-Result",
        raw=True,
        errors=("404", "413", "429", "504"),
    )
    request_id = {"X-Fc-Request-Id": {"schema": {"type": "string"}}}
    op["parameters"] = INVOKE_HEADERS
    op["responses"]["200"] = {
        "description": "the function's answer (sync)",
        "headers": request_id,
        "content": {"*/*": {"schema": {}}},
    }
    op["responses"]["202"] = {"description": "accepted (async)", "headers": request_id}
    return op


async def document(request: web.Request) -> web.Response:
    return json_response(build())
