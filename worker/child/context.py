"""The `context` object handed to user functions, with Function Compute's attribute names.

Imported by the instance child process: stdlib only. FC users' code reads these fields
unchanged (`context.request_id`, `context.function.name`, `context.credentials`, ...).

pyfc adds the invocation's `lineage` and a way to invoke functions that carries it:
`context.invoke(...)`, or `context.lineage_headers()` for any HTTP client. Both use the
invoke token in `context.credentials.security_token`, which is valid for this tenant's
invoke API only and only until shortly after this invocation's deadline.
"""

from __future__ import annotations

import time
from typing import Any

# When the invocation has no deadline (never, on a worker), how long `invoke` waits.
DEFAULT_INVOKE_TIMEOUT = 300.0
_opener: Any = None


class Credentials:
    """Temporary credentials scoped to the function: the tenant's name and an invoke token.

    `security_token` is valid during one invocation (empty in the initializer and pre_stop)
    for the tenant's invoke API only; `access_key_secret` stays empty.
    """

    __slots__ = ("access_key_id", "access_key_secret", "security_token")

    def __init__(self, access_key_id: str = "", access_key_secret: str = "", token: str = ""):
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.security_token = token


class FunctionMeta:
    """`context.function`: the running function's configuration."""

    __slots__ = ("handler", "initializer", "memory", "name", "timeout")

    def __init__(
        self, name: str, handler: str, memory: int, timeout: float, initializer: str | None
    ) -> None:
        self.name = name
        self.handler = handler
        self.memory = memory
        self.timeout = timeout
        self.initializer = initializer


class ServiceMeta:
    """`context.service`: the service the function belongs to."""

    __slots__ = ("log_project", "log_store", "name", "qualifier", "version_id")

    def __init__(self, name: str, log_store: str, qualifier: str, version_id: str) -> None:
        self.name = name
        self.log_project = ""
        self.log_store = log_store
        self.qualifier = qualifier
        self.version_id = version_id


class Tracing:
    """`context.tracing`: FC's tracing fields; pyfc carries only the W3C traceparent."""

    __slots__ = ("jaeger_endpoint", "parent_span_id", "span_baggages", "span_context")

    def __init__(self, traceparent: str = "") -> None:
        self.span_context = traceparent or None
        self.jaeger_endpoint = ""
        self.span_baggages: dict[str, str] = {}
        self.parent_span_id = ""


class InvocationLineage:
    """`context.lineage`: the chain this invocation is part of (loop protection).

    `hops` counts the invocations before this one in the chain; `origin` says what caused
    it (`http`, `function:<service>/<function>`, `destination:...`, ...).
    """

    __slots__ = ("hops", "origin", "trace_id")

    def __init__(self, trace_id: str = "", hops: int = 0, origin: str = "") -> None:
        self.trace_id = trace_id
        self.hops = hops
        self.origin = origin

    def __repr__(self) -> str:
        return f"InvocationLineage({self.trace_id!r}, hops={self.hops}, origin={self.origin!r})"


class InvokeError(Exception):
    """`context.invoke` failed: the gateway refused it, or the invoked function failed.

    `status` is the HTTP status (0 when the gateway could not be reached); `error_code` the
    API's `errorCode`, or the `X-Fc-Error-Type` when the function itself failed (then
    `error_message` is its `errorType: errorMessage`).
    """

    def __init__(
        self, status: int, error_code: str, error_message: str, request_id: str = ""
    ) -> None:
        where = f"HTTP {status}" if status else "no answer"
        suffix = f", request {request_id}" if request_id else ""
        super().__init__(f"{error_code}: {error_message} ({where}{suffix})")
        self.status = status
        self.error_code = error_code
        self.error_message = error_message
        self.request_id = request_id


def _error_fields(body: bytes) -> dict[str, Any]:
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _response_error(status: int, request_id: str, error_type: str, body: bytes) -> InvokeError:
    fields = _error_fields(body)
    text = body.decode("utf-8", "replace")[:1000]
    if error_type:  # the invoked function failed: FC's `{errorType, errorMessage}` body
        message = f"{fields.get('errorType', '')}: {fields.get('errorMessage', text)}"
        return InvokeError(status, error_type, message, request_id)
    code = str(fields.get("errorCode") or f"HTTP{status}")
    return InvokeError(status, code, str(fields.get("errorMessage", text)), request_id)


def _open(request: Any, timeout: float) -> Any:
    global _opener
    import urllib.request  # on first use only: it costs a cold start ~10 ms

    if _opener is None:
        # No proxies from the function's environment: the token goes to pyfc only.
        _opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return _opener.open(request, timeout=timeout)


def _encode_payload(
    payload: bytes | bytearray | memoryview | str | dict[str, Any] | list[Any],
) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, dict | list):
        import json  # here, not at the top: the instance's cold start does not pay for it

        return json.dumps(payload).encode("utf-8")
    return bytes(payload)


class FCContext:
    """What a handler receives as `context` (one per request; the metadata is shared)."""

    InvokeError = InvokeError  # `except context.InvokeError` without importing pyfc

    __slots__ = (
        "_deadline",
        "account_id",
        "credentials",
        "function",
        "gateway_url",
        "instance_id",
        "lineage",
        "region",
        "request_id",
        "retry_count",
        "service",
        "tenant",
        "tracing",
    )

    def __init__(
        self,
        *,
        request_id: str,
        deadline: float,
        tenant: str,
        instance_id: str,
        function: FunctionMeta,
        service: ServiceMeta,
        credentials: Credentials,
        tracing: Tracing,
        retry_count: int = 0,
        lineage: InvocationLineage | None = None,
        gateway_url: str = "",
    ) -> None:
        self.request_id = request_id
        self.credentials = credentials
        self.function = function
        self.service = service
        self.region = "local"
        self.account_id = tenant
        self.tenant = tenant
        self.instance_id = instance_id
        self.tracing = tracing
        self.retry_count = retry_count
        self.lineage = lineage or InvocationLineage()
        self._deadline = deadline
        # pyfc's API, for `invoke` or any HTTP client with `lineage_headers()`.
        self.gateway_url = gateway_url

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the platform kills this invocation (0 when none)."""
        if not self._deadline:
            return 0
        return max(0, int((self._deadline - time.time()) * 1000))

    def lineage_headers(self) -> dict[str, str]:
        """Headers that carry this invocation's lineage and token to pyfc's invoke API.

        For any HTTP client: `requests.post(url, data=..., headers=context.lineage_headers())`.
        Empty outside a request (initializer, pre_stop).
        """
        headers: dict[str, str] = {}
        if self.lineage.trace_id:
            origin = f"function:{self.service.name}/{self.function.name}"
            headers["X-Fc-Lineage"] = f"{self.lineage.trace_id}/{self.lineage.hops}/{origin}"
        if self.credentials.security_token:
            headers["Authorization"] = f"Bearer {self.credentials.security_token}"
        return headers

    def invoke(
        self,
        service: str,
        function: str,
        payload: bytes | bytearray | memoryview | str | dict[str, Any] | list[Any] = b"",
        *,
        qualifier: str | None = None,
        invocation_type: str = "Sync",
        timeout: float | None = None,
    ) -> bytes | str:
        """Invoke a function of this tenant through the gateway, as the next hop of the chain.

        Sync returns the function's response body (bytes); Async returns the request id
        once the invocation is accepted. Raises `InvokeError` when the gateway refuses it
        or cannot be reached, and when the invoked function failed. `timeout` defaults to
        the time this invocation has left. str payloads are sent as UTF-8, dicts and lists
        as JSON.
        """
        import urllib.error
        import urllib.parse
        import urllib.request

        kind = invocation_type.capitalize()
        if kind not in ("Sync", "Async"):
            raise ValueError(f"invocation_type must be 'Sync' or 'Async', not {invocation_type!r}")
        if not self.gateway_url or not self.credentials.security_token:
            raise InvokeError(
                0, "NoCredentials", "context.invoke works only while handling a request on pyfc"
            )
        segment = urllib.parse.quote(service, safe="")
        if qualifier:
            segment += "." + urllib.parse.quote(qualifier, safe="")
        url = (
            f"{self.gateway_url}/v1/services/{segment}/functions/"
            f"{urllib.parse.quote(function, safe='')}/invocations"
        )
        headers = self.lineage_headers()
        headers["X-Fc-Invocation-Type"] = kind
        headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(
            url, data=_encode_payload(payload), headers=headers, method="POST"
        )
        if timeout is None:
            left = self.get_remaining_time_in_millis() / 1000
            timeout = left if left > 0 else DEFAULT_INVOKE_TIMEOUT
        try:
            with _open(request, timeout) as response:
                status: int = response.status
                body: bytes = response.read()
                request_id: str = response.headers.get("X-Fc-Request-Id", "")
                error_type: str = response.headers.get("X-Fc-Error-Type", "")
        except urllib.error.HTTPError as e:
            body = e.read()
            raise _response_error(
                e.code,
                e.headers.get("X-Fc-Request-Id", ""),
                e.headers.get("X-Fc-Error-Type", ""),
                body,
            ) from None
        except OSError as e:  # URLError, timeouts, refused connections
            reason = getattr(e, "reason", e)
            raise InvokeError(0, "GatewayUnreachable", f"{url}: {reason}") from e
        if error_type:
            raise _response_error(status, request_id, error_type, body)
        return request_id if kind == "Async" else body
