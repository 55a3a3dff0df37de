"""Cached resolution of (tenant, service, qualifier, function) to a runnable `FunctionSpec`,
and of the admission settings the dispatcher needs: a function's `FunctionPolicy` and a
tenant's `TenantLimits`.

`resolve` is the one place a qualifier (LATEST, a version id, an alias) becomes the
version an invocation runs: every source (HTTP invoke, function calls, destinations,
triggers, redrive) goes through it once, and the envelope carries the answer after that.

Cached per process for `ttl` seconds, dropped on control notices, and re-read whenever a
caller knows of a newer revision than the cached one (so an update is never missed).
A cache hit is a dict lookup with no await that yields: these sit on the dispatcher's
hot path.
"""

from __future__ import annotations

import time
from typing import Protocol

import msgspec

from shared.errors import AliasNotFound, AsyncConfigNotFound, FunctionNotFound
from shared.models import AsyncConfig, Function, Service, Tenant
from shared.protocol import LATEST, ControlEvent, FunctionSpec
from shared.release import Alias, AliasRoute, is_version_id, pick_version


class _MetadataReader(Protocol):
    async def get_service(self, tenant: str, name: str) -> Service: ...

    async def get_function(self, tenant: str, service: str, name: str) -> Function: ...

    async def get_async_config(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> AsyncConfig: ...

    async def get_tenant(self, name: str) -> Tenant: ...

    async def reserved_total(self, tenant: str) -> int: ...

    async def version_function(
        self, tenant: str, service: str, version_id: int, function: str
    ) -> tuple[Service, Function]: ...

    async def service_aliases(self, tenant: str, service: str) -> list[Alias]: ...


class FunctionPolicy(msgspec.Struct, frozen=True):
    """How the dispatcher admits and finishes async work of one function+qualifier."""

    reserved_concurrency: int | None = None
    max_retry_attempts: int = 3
    max_event_age: float = 86400.0
    on_success: str = ""  # destination strings as in the async config; "" = none
    on_failure: str = ""


class TenantLimits(msgspec.Struct, frozen=True):
    concurrency: int = 100
    reserved_total: int = 0  # sum of the tenant's functions' reserved concurrency
    max_chain_depth: int = 16


def build_policy(fn: Function | None, cfg: AsyncConfig | None) -> FunctionPolicy:
    """A function's reservation plus its async config (defaults when it has none)."""
    cfg = cfg or AsyncConfig()
    dest = cfg.destination_config
    return FunctionPolicy(
        reserved_concurrency=fn.reserved_concurrency if fn is not None else None,
        max_retry_attempts=cfg.max_async_retry_attempts,
        max_event_age=float(cfg.max_async_event_age_in_seconds),
        on_success=dest.on_success.destination if dest.on_success else "",
        on_failure=dest.on_failure.destination if dest.on_failure else "",
    )


def build_spec(
    tenant: str,
    service: Service,
    fn: Function,
    qualifier: str,
    tenant_number: int = 0,
    version: str = LATEST,
) -> FunctionSpec:
    """Merge service and function config into what a worker needs (function env wins)."""
    return FunctionSpec(
        tenant=tenant,
        tenant_number=tenant_number,
        service=service.service_name,
        function=fn.function_name,
        qualifier=qualifier,
        version=version,
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
        self._policies: dict[Key, tuple[FunctionPolicy, float]] = {}
        self._limits: dict[str, tuple[TenantLimits, float]] = {}
        self._aliases: dict[tuple[str, str], tuple[dict[str, AliasRoute], float]] = {}

    async def resolve(self, tenant: str, service: str, qualifier: str, request_id: str) -> str:
        """The version an invocation with `qualifier` runs: LATEST and version ids are
        themselves, an alias picks its version or, for its weighted share of request ids,
        its additional one (`shared.release.pick_version`, the same answer for the same
        id). AliasNotFound (404 naming it) for an unknown alias. A cached hit is two dict
        lookups and a hash: no database read per call."""
        if qualifier == LATEST or is_version_id(qualifier):
            return qualifier
        return pick_version(await self.alias(tenant, service, qualifier), request_id)

    async def alias(self, tenant: str, service: str, name: str) -> AliasRoute:
        """An alias's routing, from the service's cached aliases; AliasNotFound."""
        key = (tenant, service)
        hit = self._aliases.get(key)
        now = time.monotonic()
        if hit is None or hit[1] <= now:
            routes = {a.alias_name: a.route for a in await self._store.service_aliases(*key)}
            hit = self._aliases[key] = (routes, now + self._ttl)
        route = hit[0].get(name)
        if route is None:
            raise AliasNotFound(f"alias {name!r} of service {service!r} not found")
        return route

    async def spec(
        self, tenant: str, service: str, qualifier: str, function: str, min_revision: int = 0
    ) -> FunctionSpec:
        """The spec of a version (LATEST or an id) of the function; raises ServiceNotFound /
        FunctionNotFound / VersionNotFound.

        An alias gives its main version's spec (for callers that need one spec for a
        qualifier: provisioning, checks); an invocation resolves the alias with `resolve`
        first, so its weighted share is honoured.
        """
        if qualifier != LATEST and not is_version_id(qualifier):
            qualifier = (await self.alias(tenant, service, qualifier)).version
        key = (tenant, service, qualifier, function)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now and hit[0].revision >= min_revision:
            return hit[0]
        if qualifier == LATEST:
            svc = await self._store.get_service(tenant, service)
            fn = await self._store.get_function(tenant, service, function)
        else:
            svc, fn = await self._store.version_function(tenant, service, int(qualifier), function)
        owner = await self._store.get_tenant(tenant)
        spec = build_spec(tenant, svc, fn, qualifier, owner.number, version=qualifier)
        self._cache[key] = (spec, now + self._ttl)
        return spec

    async def policy(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> FunctionPolicy:
        """Reserved concurrency and async config; FunctionNotFound when the function is gone."""
        key = (tenant, service, qualifier, function)
        hit = self._policies.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        # The reservation is the function's (LATEST), the async config its qualifier's. A
        # version or alias outlives its function in LATEST: no reservation, no config then.
        try:
            fn: Function | None = await self._store.get_function(tenant, service, function)
        except FunctionNotFound:
            if qualifier == LATEST:
                raise
            fn = None
        try:
            cfg: AsyncConfig | None = await self._store.get_async_config(
                tenant, service, qualifier, function
            )
        except (AsyncConfigNotFound, FunctionNotFound):
            cfg = None
        policy = build_policy(fn, cfg)
        self._policies[key] = (policy, now + self._ttl)
        return policy

    async def tenant_limits(self, tenant: str) -> TenantLimits:
        """The tenant's caps and the slots its functions reserve; NotFound for no tenant."""
        hit = self._limits.get(tenant)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        row = await self._store.get_tenant(tenant)
        limits = TenantLimits(
            concurrency=row.concurrency,
            reserved_total=await self._store.reserved_total(tenant),
            max_chain_depth=row.max_chain_depth,
        )
        self._limits[tenant] = (limits, now + self._ttl)
        return limits

    def invalidate(self, event: ControlEvent) -> None:
        """Drop every cached entry the notice could have changed.

        A changed function may have changed its reservation, so the tenant's limits
        (which carry the reserved total) go too. A provision change touches neither.
        """
        if event.kind in ("provision-changed", "trigger-changed"):
            return
        for tenant, service in list(self._aliases):
            if tenant == event.tenant and (
                event.kind == "tenant-changed" or service == event.service
            ):
                del self._aliases[(tenant, service)]
        if event.kind == "alias-changed":
            return
        if event.kind == "version-changed":
            for key in list(self._cache):
                if key[:2] == (event.tenant, event.service) and key[2] != LATEST:
                    del self._cache[key]
            return
        for cache in (self._cache, self._policies):
            for key in list(cache):
                tenant, service, _, function = key
                if tenant != event.tenant:
                    continue
                if event.kind == "tenant-changed" or (
                    service == event.service
                    and (event.kind == "service-changed" or function == event.function)
                ):
                    del cache[key]
        if event.kind in ("tenant-changed", "function-changed"):
            self._limits.pop(event.tenant, None)
