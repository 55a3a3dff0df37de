"""FunctionCatalog: cached function policies, tenant limits and alias resolution, dropped by
control notices."""

from __future__ import annotations

import pytest

from shared.catalog import FunctionCatalog, FunctionPolicy, TenantLimits
from shared.errors import AliasNotFound, AsyncConfigNotFound, FunctionNotFound, VersionNotFound
from shared.models import (
    AsyncConfig,
    DestinationConfig,
    DestinationTarget,
    Function,
    Service,
    Tenant,
)
from shared.protocol import ControlEvent
from shared.release import Alias


class FakeStore:
    def __init__(self) -> None:
        self.functions = {("t", "s", "f"): Function(function_name="f", service_name="s")}
        self.configs: dict[tuple[str, str, str, str], AsyncConfig] = {}
        self.tenant = Tenant(name="t", concurrency=50, max_chain_depth=8)
        self.reserved = 0
        self.reads = 0
        self.versions: dict[int, Function] = {}
        self.aliases: dict[str, Alias] = {}

    async def get_service(self, tenant: str, name: str) -> Service:
        return Service(service_name=name)

    async def get_function(self, tenant: str, service: str, name: str) -> Function:
        self.reads += 1
        try:
            return self.functions[(tenant, service, name)]
        except KeyError:
            raise FunctionNotFound(name) from None

    async def get_async_config(
        self, tenant: str, service: str, qualifier: str, function: str
    ) -> AsyncConfig:
        try:
            return self.configs[(tenant, service, qualifier, function)]
        except KeyError:
            raise AsyncConfigNotFound(function) from None

    async def get_tenant(self, name: str) -> Tenant:
        self.reads += 1
        return self.tenant

    async def reserved_total(self, tenant: str) -> int:
        return self.reserved

    async def version_function(
        self, tenant: str, service: str, version_id: int, function: str
    ) -> tuple[Service, Function]:
        self.reads += 1
        if version_id not in self.versions:
            raise VersionNotFound(f"version {version_id} of service {service!r} not found")
        return Service(service_name=service), self.versions[version_id]

    async def service_aliases(self, tenant: str, service: str) -> list[Alias]:
        self.reads += 1
        return list(self.aliases.values())


async def test_policy_defaults_config_and_invalidation() -> None:
    store = FakeStore()
    catalog = FunctionCatalog(store)
    assert await catalog.policy("t", "s", "LATEST", "f") == FunctionPolicy()
    store.functions[("t", "s", "f")] = Function(
        function_name="f", service_name="s", reserved_concurrency=5
    )
    store.configs[("t", "s", "LATEST", "f")] = AsyncConfig(
        max_async_retry_attempts=1,
        max_async_event_age_in_seconds=60,
        destination_config=DestinationConfig(
            on_success=DestinationTarget(destination="function:s/g"),
            on_failure=DestinationTarget(destination="mq:x/y"),
        ),
    )
    reads = store.reads
    assert await catalog.policy("t", "s", "LATEST", "f") == FunctionPolicy()  # cached
    assert store.reads == reads
    catalog.invalidate(ControlEvent(kind="function-changed", tenant="t", service="s", function="g"))
    assert await catalog.policy("t", "s", "LATEST", "f") == FunctionPolicy()  # other function
    catalog.invalidate(ControlEvent(kind="function-changed", tenant="t", service="s", function="f"))
    assert await catalog.policy("t", "s", "LATEST", "f") == FunctionPolicy(
        reserved_concurrency=5,
        max_retry_attempts=1,
        max_event_age=60.0,
        on_success="function:s/g",
        on_failure="mq:x/y",
    )
    with pytest.raises(FunctionNotFound):
        await catalog.policy("t", "s", "LATEST", "gone")
    # Another qualifier (a version or an alias): the function's reservation, its own config.
    assert await catalog.policy("t", "s", "prod", "f") == FunctionPolicy(reserved_concurrency=5)


async def test_tenant_limits_follow_function_and_tenant_changes() -> None:
    store = FakeStore()
    catalog = FunctionCatalog(store)
    assert await catalog.tenant_limits("t") == TenantLimits(50, 0, 8)
    store.reserved = 7
    assert (await catalog.tenant_limits("t")).reserved_total == 0  # cached
    catalog.invalidate(ControlEvent(kind="service-changed", tenant="t", service="s"))
    assert (await catalog.tenant_limits("t")).reserved_total == 0
    catalog.invalidate(ControlEvent(kind="function-changed", tenant="t", service="s", function="f"))
    assert (await catalog.tenant_limits("t")).reserved_total == 7
    store.tenant = Tenant(name="t", concurrency=60, max_chain_depth=3)
    catalog.invalidate(ControlEvent(kind="tenant-changed", tenant="other"))
    assert (await catalog.tenant_limits("t")).concurrency == 50
    catalog.invalidate(ControlEvent(kind="tenant-changed", tenant="t"))
    assert await catalog.tenant_limits("t") == TenantLimits(60, 7, 3)


async def test_a_cache_hit_does_not_yield() -> None:
    store = FakeStore()
    catalog = FunctionCatalog(store)
    await catalog.policy("t", "s", "LATEST", "f")
    await catalog.tenant_limits("t")
    for call in (catalog.policy("t", "s", "LATEST", "f"), catalog.tenant_limits("t")):
        with pytest.raises(StopIteration):  # finished on the first step: no suspension
            call.send(None)


async def test_a_spec_names_its_tenants_number() -> None:
    """Workers run the instances as uid base + number: the spec carries it."""
    store = FakeStore()
    store.tenant = Tenant(name="t", number=17)
    spec = await FunctionCatalog(store).spec("t", "s", "LATEST", "f")
    assert (spec.tenant, spec.tenant_number, spec.function) == ("t", 17, "f")


async def test_resolve_qualifiers_and_alias_changes() -> None:
    """LATEST and version ids are themselves; an alias is read once per service and cached
    until an alias-changed notice for its service; unknown aliases are 404 naming them."""
    store = FakeStore()
    store.versions = {1: Function(function_name="f", service_name="s", code_checksum="a" * 64)}
    store.aliases["prod"] = Alias(alias_name="prod", version_id="1")
    catalog = FunctionCatalog(store)
    assert await catalog.resolve("t", "s", "LATEST", "id") == "LATEST"
    assert await catalog.resolve("t", "s", "7", "id") == "7"
    assert store.reads == 0
    assert await catalog.resolve("t", "s", "prod", "id") == "1"
    reads = store.reads
    store.aliases["prod"] = Alias(alias_name="prod", version_id="2")
    assert await catalog.resolve("t", "s", "prod", "id") == "1"  # cached
    with pytest.raises(AliasNotFound, match="'beta'"):
        await catalog.resolve("t", "s", "beta", "id")
    assert store.reads == reads
    catalog.invalidate(ControlEvent(kind="alias-changed", tenant="t", service="other"))
    assert await catalog.resolve("t", "s", "prod", "id") == "1"
    catalog.invalidate(ControlEvent(kind="alias-changed", tenant="t", service="s"))
    assert await catalog.resolve("t", "s", "prod", "id") == "2"
    # A cache hit does not yield: no database read, not even a suspension, per call.
    call = catalog.resolve("t", "s", "prod", "id")
    with pytest.raises(StopIteration):
        call.send(None)


async def test_a_version_spec_is_its_snapshot() -> None:
    store = FakeStore()
    store.versions = {3: Function(function_name="f", service_name="s", revision=4, timeout=9.0)}
    store.aliases["prod"] = Alias(alias_name="prod", version_id="3")
    catalog = FunctionCatalog(store)
    spec = await catalog.spec("t", "s", "3", "f")
    assert (spec.version, spec.qualifier, spec.revision, spec.timeout) == ("3", "3", 4, 9.0)
    assert "@3#4" in spec.instance_key
    assert (await catalog.spec("t", "s", "prod", "f")) == spec  # an alias's main version
    latest = await catalog.spec("t", "s", "LATEST", "f")
    assert latest.version == "LATEST" and latest.instance_key != spec.instance_key
    with pytest.raises(VersionNotFound, match="version 5"):
        await catalog.spec("t", "s", "5", "f")
    store.versions = {}
    catalog.invalidate(ControlEvent(kind="version-changed", tenant="t", service="s"))
    with pytest.raises(VersionNotFound):
        await catalog.spec("t", "s", "3", "f")
    assert (await catalog.spec("t", "s", "LATEST", "f")) == latest  # LATEST stays cached
