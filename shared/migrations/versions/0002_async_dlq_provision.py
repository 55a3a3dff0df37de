"""Async configs, provision configs, dead letters; tenant chain depth, reserved concurrency.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _function_config(name: str, *columns: sa.Column[Any]) -> None:
    op.create_table(
        name,
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("qualifier", sa.String(128), nullable=False),
        sa.Column("function_name", sa.String(128), nullable=False),
        *columns,
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("last_modified_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "service_name", "qualifier", "function_name", name=f"pk_{name}"
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name", "function_name"],
            ["functions.tenant", "functions.service_name", "functions.function_name"],
            name=f"fk_{name}_function",
            ondelete="CASCADE",
        ),
    )


def upgrade() -> None:
    """Add the columns and the three tables (spelled out: frozen).

    Plain ADD COLUMN, never batch mode: on SQLite a batch copies the table and drops the
    old one, and with foreign keys on, dropping `tenants` cascades to every tenant's
    services, functions and keys (a constant default and a nullable column need no copy).
    """
    op.add_column(
        "tenants",
        sa.Column("max_chain_depth", sa.Integer, nullable=False, server_default=sa.text("16")),
    )
    op.add_column("functions", sa.Column("reserved_concurrency", sa.Integer, nullable=True))
    _function_config(
        "async_configs",
        sa.Column("max_async_retry_attempts", sa.Integer, nullable=False),
        sa.Column("max_async_event_age_in_seconds", sa.Integer, nullable=False),
        sa.Column("destination_config", sa.Text, nullable=False),
    )
    _function_config("provision_configs", sa.Column("target", sa.Integer, nullable=False))
    op.create_table(
        "dead_letters",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("qualifier", sa.String(128), nullable=False),
        sa.Column("function_name", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("error_type", sa.Text, nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("hops", sa.Integer, nullable=False),
        sa.Column("trace_id", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "request_id", name="pk_dead_letters"),
    )


def downgrade() -> None:
    """Drop everything 0002 added."""
    for table in ("dead_letters", "provision_configs", "async_configs"):
        op.drop_table(table)
    with op.batch_alter_table("functions") as batch:
        batch.drop_column("reserved_concurrency")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_chain_depth")
