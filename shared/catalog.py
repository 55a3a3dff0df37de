"""Cached resolution of (tenant, service, qualifier, function) to a runnable `FunctionSpec`.

Cached per process for `ttl` seconds, dropped on control notices, and re-read whenever a
caller knows of a newer revision than the cached one (so an update is never missed).
"""

from __future__ import annotations

import time
from typing import Protocol

from shared.errors import FunctionNotFound
from shared.models import Function, Service
from shared.protocol import LATEST, ControlEvent, FunctionSpec


class _MetadataReader(Protocol):
    async def get_service(self, tenant: str, name: str) -> Service: ...

    async def get_function(self, tenant: str, service: str, name: str) -> Function: ...


def build_spec(tenant: str, service: Service, fn: Function, qualifier: str) -> FunctionSpec:
    """Merge service and function config into what a worker needs (function env wins)."""
    return FunctionSpec(
        tenant=tenant,
        service=service.service_name,
        function=fn.function_name,
        qualifier=qualifier,
        version=LATEST,
        revision=fn.revision,
        runtime=fn.runtime,
        handler=fn.handler,
        code_digest=fn.code_checksum,
        timeout=fn.timeout,
        memory_size=fn.memory_size,
        initializer=fn.initializer,
        initialization_timeout=fn.initialization_timeout,
        instance_concurrency=fn.instance_concurrency,
        environment={**service.environment_variables, **fn.environment_variables},
        log_store=service.log_config.logstore,
    )


Key = tuple[str, str, str, str]


class FunctionCatalog:
    def __init__(self, store: _MetadataReader, ttl: float = 30.0) -> None:
        self._store = store
        self._ttl = ttl
        self._cache: dict[Key, tuple[FunctionSpec, float]] = {}

    async def spec(
        self, tenant: str, service: str, qualifier: str, function: str, min_revision: int = 0
    ) -> FunctionSpec:
        """The spec to run; raises ServiceNotFound / FunctionNotFound."""
        key = (tenant, service, qualifier, function)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now and hit[0].revision >= min_revision:
            return hit[0]
        if qualifier != LATEST:
            # Versions and aliases are not built yet: only the mutable head exists.
            raise FunctionNotFound(
                f"qualifier {qualifier!r} of {service}/{function} not found (only LATEST exists)"
            )
        svc = await self._store.get_service(tenant, service)
        fn = await self._store.get_function(tenant, service, function)
        spec = build_spec(tenant, svc, fn, qualifier)
        self._cache[key] = (spec, now + self._ttl)
        return spec

    def invalidate(self, event: ControlEvent) -> None:
        """Drop every cached entry the notice could have changed."""
        for key in list(self._cache):
            tenant, service, _, function = key
            if tenant != event.tenant:
                continue
            if event.kind == "tenant-changed" or (
                service == event.service
                and (event.kind == "service-changed" or function == event.function)
            ):
                del self._cache[key]
