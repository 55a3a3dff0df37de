"""Versions and aliases; the version counter of a service; the resolved version of an
async invocation.

Revision ID: 0004_versions
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_versions"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Only ADD COLUMN (in place on SQLite): a batch copy of `services` would cascade.
    op.add_column(
        "services",
        sa.Column("last_version_id", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "invocations",
        sa.Column("version", sa.String(32), nullable=False, server_default=sa.text("''")),
    )
    op.create_table(
        "versions",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("last_modified_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "service_name", "version_id", name="pk_versions"),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name"],
            ["services.tenant", "services.service_name"],
            name="fk_versions_service",
            ondelete="RESTRICT",
        ),
    )
    op.create_table(
        "aliases",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("service_name", sa.String(128), nullable=False),
        sa.Column("alias_name", sa.String(128), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("additional_version_id", sa.Integer, nullable=True),
        sa.Column("additional_weight", sa.Float, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("auto_rollback", sa.Text, nullable=False),
        sa.Column("last_rollback", sa.Text, nullable=False),
        sa.Column("created_time", sa.String(32), nullable=False),
        sa.Column("last_modified_time", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "service_name", "alias_name", name="pk_aliases"),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name"],
            ["services.tenant", "services.service_name"],
            name="fk_aliases_service",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name", "version_id"],
            ["versions.tenant", "versions.service_name", "versions.version_id"],
            name="fk_aliases_version",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "service_name", "additional_version_id"],
            ["versions.tenant", "versions.service_name", "versions.version_id"],
            name="fk_aliases_additional_version",
            ondelete="RESTRICT",
        ),
    )


def downgrade() -> None:
    op.drop_table("aliases")
    op.drop_table("versions")
    with op.batch_alter_table("invocations") as batch:
        batch.drop_column("version")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("last_version_id")
