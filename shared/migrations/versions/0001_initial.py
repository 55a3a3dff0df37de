"""Initial metadata tables: tenants, api keys, services, functions, invocations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the initial tables (spelled out, not imported: migrations stay frozen)."""
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("key_sha256", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.name"], name="fk_api_keys_tenant_tenants", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "services",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("service_id", sa.String(36), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("log_config", sa.Text, nullable=False),
        sa.Column("environment_variables", sa.Text, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("last_modified_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "service_name", name="pk_services"),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.name"], name="fk_services_tenant_tenants", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "functions",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("function_name", sa.String(128), nullable=False),
        sa.Column("function_id", sa.String(36), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("handler", sa.String(256), nullable=False),
        sa.Column("timeout", sa.Float, nullable=False),
        sa.Column("memory_size", sa.Integer, nullable=False),
        sa.Column("initializer", sa.String(256), nullable=True),
        sa.Column("initialization_timeout", sa.Float, nullable=False),
        sa.Column("instance_concurrency", sa.Integer, nullable=False),
        sa.Column("environment_variables", sa.Text, nullable=False),
        sa.Column("code_checksum", sa.String(64), nullable=False),
        sa.Column("code_size", sa.Integer, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("last_modified_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "service_name", "function_name", name="pk_functions"),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name"],
            ["services.tenant", "services.service_name"],
            name="fk_functions_service",
            ondelete="RESTRICT",
        ),
    )
    op.create_table(
        "invocations",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("qualifier", sa.String(128), nullable=False),
        sa.Column("function_name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("error_type", sa.Text, nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("finished_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "request_id", name="pk_invocations"),
    )


def downgrade() -> None:
    """Drop everything 0001 created."""
    for table in ("invocations", "functions", "services", "api_keys", "tenants"):
        op.drop_table(table)
