"""Tenant numbers (a tenant's instance uid on workers) and the counter that hands them out.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Number the existing tenants 1..n by age, and start the counter after them.

    Only ADD COLUMN and CREATE INDEX: a batch copy of `tenants` on SQLite would drop the
    table, and with foreign keys on that deletes every tenant's services and keys.
    """
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    # Not batch mode: SQLite adds a NOT NULL column with a default in place.
    op.add_column(
        "tenants", sa.Column("number", sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    tenants = sa.table("tenants", sa.column("name"), sa.column("created_time"), sa.column("number"))
    conn = op.get_bind()
    by_age = sa.select(tenants.c.name).order_by(tenants.c.created_time, tenants.c.name)
    names = list(conn.execute(by_age).scalars())
    for number, name in enumerate(names, start=1):
        conn.execute(sa.update(tenants).where(tenants.c.name == name).values(number=number))
    op.bulk_insert(counters, [{"name": "tenant_number", "value": len(names)}])
    op.create_index("ix_tenants_number", "tenants", ["number"], unique=True)


def downgrade() -> None:
    """Drop the numbers and the counter."""
    op.drop_index("ix_tenants_number", table_name="tenants")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("number")
    op.drop_table("counters")
