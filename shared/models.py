"""Metadata records (**contract**): field names as Function Compute's, camelCase in JSON.

The store returns these; the gateway encodes them as the API's response bodies.
"""

from __future__ import annotations

from typing import Literal

import msgspec

InvocationStatus = Literal["Enqueued", "Running", "Succeeded", "Failed"]


class Tenant(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    concurrency: int = 100
    created_time: str = ""


class LogConfig(msgspec.Struct, kw_only=True, frozen=True, rename="camel", omit_defaults=True):
    logstore: str = ""
    project: str = ""


class Service(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    service_name: str
    service_id: str = ""
    description: str = ""
    role: str = ""
    log_config: LogConfig = LogConfig()
    environment_variables: dict[str, str] = {}
    created_time: str = ""
    last_modified_time: str = ""


class Function(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    function_name: str
    service_name: str
    function_id: str = ""
    description: str = ""
    runtime: str = "python3.11"
    handler: str = "index.handler"
    timeout: float = 3.0
    memory_size: int = 128
    initializer: str | None = None
    initialization_timeout: float = 3.0
    instance_concurrency: int = 1
    environment_variables: dict[str, str] = {}
    code_checksum: str = ""  # sha256 hex of the code zip; the blob store key
    code_size: int = 0
    # Bumped on every change; warm instances of an older revision are not reused.
    revision: int = 1
    created_time: str = ""
    last_modified_time: str = ""


class InvocationRecord(msgspec.Struct, kw_only=True, rename="camel"):
    """An async invocation as the status API shows it."""

    request_id: str
    tenant: str
    service_name: str
    qualifier: str
    function_name: str
    status: InvocationStatus = "Enqueued"
    attempt: int = 0
    error_type: str = ""
    error_message: str = ""
    result: bytes = b""
    created_time: str = ""
    finished_time: str = ""
