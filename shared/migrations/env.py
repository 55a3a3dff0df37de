"""Alembic environment: always handed an open connection by `Store.migrate()`.

There is no alembic.ini: the store builds the `Config` in code and passes the
connection (already holding the cross-process migration lock) in `attributes`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from shared.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("pyfc migrations run through Store.migrate(), which passes a connection")

# Batch mode lets later migrations alter SQLite tables (copy-and-move); no-op on PostgreSQL.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
