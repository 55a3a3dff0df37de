"""Metadata tables (SQLAlchemy Core). The migrations in `shared/migrations/` create them.

`tests/test_store.py` checks that a migrated database matches these definitions, so a
column added here without a migration (or the other way round) fails the tests.
Times are ISO-8601 UTC strings ending in `Z`; JSON-ish columns hold msgspec-encoded text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

# Named constraints, so later migrations (SQLite batch mode included) can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("concurrency", Integer, nullable=False),
    Column("max_chain_depth", Integer, nullable=False, server_default=text("16")),
    Column("created_time", String(32), nullable=False),
    # The tenant's instance uid on workers (uid base + number); the default only stands
    # until migration 0003 numbers a database's existing tenants.
    Column("number", Integer, nullable=False, unique=True, index=True, server_default=text("0")),
)

# Numbers handed out once: `tenant_number` is the last tenant number given, so a deleted
# tenant's number (and with it its instance uid) never goes to a new tenant.
counters = Table(
    "counters",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("value", Integer, nullable=False),
)
TENANT_NUMBER = "tenant_number"

# A table of its own so a tenant can hold several keys (rotation) later on.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_sha256", String(64), primary_key=True),
    Column(
        "tenant",
        String(63),
        ForeignKey("tenants.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_time", String(32), nullable=False),
)

services = Table(
    "services",
    metadata,
    Column(
        "tenant",
        String(63),
        ForeignKey("tenants.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("service_name", String(128), primary_key=True),
    Column("service_id", String(36), nullable=False),
    Column("description", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("log_config", Text, nullable=False),
    Column("environment_variables", Text, nullable=False),
    Column("created_time", String(32), nullable=False),
    Column("last_modified_time", String(32), nullable=False),
    # The last version id given in this service: ids are never reused (migration 0005).
    Column("last_version_id", Integer, nullable=False, server_default=text("0")),
)

functions = Table(
    "functions",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("service_name", String(128), primary_key=True),
    Column("function_name", String(128), primary_key=True),
    Column("function_id", String(36), nullable=False),
    Column("description", Text, nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("handler", String(256), nullable=False),
    Column("timeout", Float, nullable=False),
    Column("memory_size", Integer, nullable=False),
    Column("initializer", String(256), nullable=True),
    Column("initialization_timeout", Float, nullable=False),
    Column("instance_concurrency", Integer, nullable=False),
    Column("environment_variables", Text, nullable=False),
    Column("code_checksum", String(64), nullable=False),
    Column("code_size", Integer, nullable=False),
    Column("reserved_concurrency", Integer, nullable=True),
    Column("revision", Integer, nullable=False),
    Column("created_time", String(32), nullable=False),
    Column("last_modified_time", String(32), nullable=False),
    # RESTRICT: deleting a service that still has functions fails in the database
    # itself, so a concurrent create_function cannot slip in between check and delete.
    ForeignKeyConstraint(
        ["tenant", "service_name"],
        ["services.tenant", "services.service_name"],
        ondelete="RESTRICT",
        name="fk_functions_service",
    ),
)

# No foreign key to functions: the record of an invocation outlives its function.
invocations = Table(
    "invocations",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("service_name", String(128), nullable=False),
    Column("qualifier", String(128), nullable=False),
    Column("function_name", String(128), nullable=False),
    # The version the qualifier resolved to ("" until known; LATEST, "1", "2"...).
    Column("version", String(32), nullable=False, server_default=text("''")),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error_type", Text, nullable=False),
    Column("error_message", Text, nullable=False),
    Column("result", LargeBinary, nullable=False),
    Column("created_time", String(32), nullable=False),
    Column("finished_time", String(32), nullable=False),
    # The lineage origin of the invocation (`http`, `timer:<triggerName>`, ...).
    Column("origin", String(256), nullable=False, server_default=text("''")),
    # 1 once a dispatcher admitted the first copy of an invocation whose id is
    # deterministic (`Invocation.once`): a second copy is not run (migration 0005).
    Column("admitted", Integer, nullable=False, server_default=text("0")),
)


def _function_config(name: str, *columns: Column[Any]) -> Table:
    """A per function+qualifier config table; it goes when its function goes (CASCADE)."""
    return Table(
        name,
        metadata,
        Column("tenant", String(63), primary_key=True),
        Column("service_name", String(128), primary_key=True),
        Column("qualifier", String(128), primary_key=True),
        Column("function_name", String(128), primary_key=True),
        *columns,
        Column("created_time", String(32), nullable=False),
        Column("last_modified_time", String(32), nullable=False),
        # The foreign key also makes "put a config" fail for a missing (or concurrently
        # deleted) function, in the database itself.
        ForeignKeyConstraint(
            ["tenant", "service_name", "function_name"],
            ["functions.tenant", "functions.service_name", "functions.function_name"],
            ondelete="CASCADE",
            name=f"fk_{name}_function",
        ),
    )


async_configs = _function_config(
    "async_configs",
    Column("max_async_retry_attempts", Integer, nullable=False),
    Column("max_async_event_age_in_seconds", Integer, nullable=False),
    Column("destination_config", Text, nullable=False),
)

provision_configs = _function_config(
    "provision_configs",
    Column("target", Integer, nullable=False),
)

# No foreign key to functions: a dead letter outlives its function (like invocations).
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("service_name", String(128), nullable=False),
    Column("qualifier", String(128), nullable=False),
    Column("function_name", String(128), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("error_type", Text, nullable=False),
    Column("error_message", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("hops", Integer, nullable=False),
    Column("trace_id", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("created_time", String(32), nullable=False),
)


# Published versions: immutable snapshots of a service (`snapshot`, a msgspec JSON
# `shared.release.Snapshot`). RESTRICT: a service with versions cannot be deleted.
versions = Table(
    "versions",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("service_name", String(128), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    # sha256 of the versioned config (`shared.release.fingerprint`): "no changes" check.
    Column("fingerprint", String(64), nullable=False),
    Column("snapshot", Text, nullable=False),
    Column("created_time", String(32), nullable=False),
    Column("last_modified_time", String(32), nullable=False),
    ForeignKeyConstraint(
        ["tenant", "service_name"],
        ["services.tenant", "services.service_name"],
        ondelete="RESTRICT",
        name="fk_versions_service",
    ),
)

# Aliases: a version and at most one weighted extra version. The foreign keys to
# `versions` make "delete a version an alias uses" and "point at a missing version" fail
# in the database itself, whatever runs concurrently.
aliases = Table(
    "aliases",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("service_name", String(128), primary_key=True),
    Column("alias_name", String(128), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("additional_version_id", Integer, nullable=True),
    Column("additional_weight", Float, nullable=False),
    Column("description", Text, nullable=False),
    Column("auto_rollback", Text, nullable=False),  # JSON AutoRollback, "" = off
    Column("last_rollback", Text, nullable=False),  # JSON RollbackRecord, "" = none
    Column("created_time", String(32), nullable=False),
    Column("last_modified_time", String(32), nullable=False),
    ForeignKeyConstraint(
        ["tenant", "service_name"],
        ["services.tenant", "services.service_name"],
        ondelete="RESTRICT",
        name="fk_aliases_service",
    ),
    ForeignKeyConstraint(
        ["tenant", "service_name", "version_id"],
        ["versions.tenant", "versions.service_name", "versions.version_id"],
        ondelete="RESTRICT",
        name="fk_aliases_version",
    ),
    ForeignKeyConstraint(
        ["tenant", "service_name", "additional_version_id"],
        ["versions.tenant", "versions.service_name", "versions.version_id"],
        ondelete="RESTRICT",
        name="fk_aliases_additional_version",
    ),
)

# Triggers (migration 0005). RESTRICT: a function with triggers cannot be deleted (FC
# refuses it too), checked by the database itself, so a concurrent create cannot slip in.
triggers = Table(
    "triggers",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("service_name", String(128), primary_key=True),
    Column("function_name", String(128), primary_key=True),
    Column("trigger_name", String(128), primary_key=True),
    Column("trigger_id", String(36), nullable=False, unique=True),
    Column("trigger_type", String(32), nullable=False, index=True),
    Column("qualifier", String(128), nullable=False),
    Column("trigger_config", Text, nullable=False),
    Column("enabled", Integer, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_time", String(32), nullable=False),
    Column("last_modified_time", String(32), nullable=False),
    ForeignKeyConstraint(
        ["tenant", "service_name", "function_name"],
        ["functions.tenant", "functions.service_name", "functions.function_name"],
        ondelete="RESTRICT",
        name="fk_triggers_function",
    ),
)

# One row per scheduled time a timer claimed (exactly once across replicas; see
# docs/architecture.md "Triggers"). No foreign key: a fire outlives its trigger briefly
# (pruned after the catch-up window).
trigger_fires = Table(
    "trigger_fires",
    metadata,
    Column("trigger_id", String(36), primary_key=True),
    Column("scheduled_ms", BigInteger, primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("request_id", String(128), nullable=False),
    # claimed -> published | skipped
    Column("state", String(16), nullable=False, index=True),
    Column("owner", String(64), nullable=False),
    Column("lease_until", Float, nullable=False),
)
