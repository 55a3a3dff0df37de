"""Alembic migrations of the metadata database; run by `Store.migrate()`."""
