"""Triggers, the fires timers claim, and the origin and first admission of invocations.

Revision ID: 0005_triggers
Revises: 0004_versions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_triggers"
down_revision: str | None = "0004_versions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """New tables, and two columns added in place (no batch copy of `invocations`)."""
    op.add_column(
        "invocations",
        sa.Column("origin", sa.String(256), nullable=False, server_default=sa.text("''")),
    )
    op.add_column(
        "invocations",
        sa.Column("admitted", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "triggers",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("function_name", sa.String(128), nullable=False),
        sa.Column("trigger_name", sa.String(128), nullable=False),
        sa.Column("trigger_id", sa.String(36), nullable=False),
        sa.Column("trigger_type", sa.String(32), nullable=False),
        sa.Column("qualifier", sa.String(128), nullable=False),
        sa.Column("trigger_config", sa.Text, nullable=False),
        sa.Column("enabled", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("last_modified_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "service_name", "function_name", "trigger_name", name="pk_triggers"
        ),
        sa.UniqueConstraint("trigger_id", name="uq_triggers_trigger_id"),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name", "function_name"],
            ["functions.tenant", "functions.service_name", "functions.function_name"],
            ondelete="RESTRICT",
            name="fk_triggers_function",
        ),
    )
    op.create_index("ix_triggers_trigger_type", "triggers", ["trigger_type"])
    op.create_table(
        "trigger_fires",
        sa.Column("trigger_id", sa.String(36), nullable=False),
        sa.Column("scheduled_ms", sa.BigInteger, nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("trigger_id", "scheduled_ms", name="pk_trigger_fires"),
    )
    op.create_index("ix_trigger_fires_state", "trigger_fires", ["state"])


def downgrade() -> None:
    op.drop_index("ix_trigger_fires_state", "trigger_fires")
    op.drop_table("trigger_fires")
    op.drop_index("ix_triggers_trigger_type", "triggers")
    op.drop_table("triggers")
    with op.batch_alter_table("invocations") as batch:
        batch.drop_column("admitted")
        batch.drop_column("origin")
