"""The `context` object handed to user functions, with Function Compute's attribute names.

Imported by the instance child process: stdlib only. FC users' code reads these fields
unchanged (`context.request_id`, `context.function.name`, `context.credentials`, ...).
"""

from __future__ import annotations

import time


class Credentials:
    """Temporary credentials scoped to the function (empty until pyfc issues them)."""

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


class FCContext:
    """What a handler receives as `context` (one per request; the metadata is shared)."""

    __slots__ = (
        "_deadline",
        "account_id",
        "credentials",
        "function",
        "instance_id",
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
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the platform kills this invocation (0 when none)."""
        if not self._deadline:
            return 0
        return max(0, int((self._deadline - time.time()) * 1000))
