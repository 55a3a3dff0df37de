"""Opening the metadata database and migrating it, for SQLite and PostgreSQL alike.

Split from `shared.store` so the store reads as queries only. Every pyfc process calls
`migrate` at start, so it serialises concurrent callers: a PostgreSQL advisory lock, or a
`flock` next to the SQLite file (which also serialises engines inside one process,
because each call opens its own file description).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.errors import BadRequest, Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary but fixed: every pyfc process must ask PostgreSQL for the same lock id.
_PG_MIGRATE_LOCK = 0x7079_6663_6D69_67  # "pyfcmig"
_SQLITE_BUSY_MS = 10_000
_CONNECT_TIMEOUT_S = 10.0
_STATEMENT_TIMEOUT_S = 60.0
_MIGRATE_LOCK_TIMEOUT_S = 120.0


def normalize_url(raw: str) -> URL:
    """Parse a database URL and pick our async driver; BadRequest for anything else."""
    try:
        url = make_url(raw)
    except ArgumentError as e:
        raise BadRequest(f"invalid database URL {raw!r}: {e}") from e
    backend = url.drivername.split("+", 1)[0]
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise BadRequest(f"database URL {raw!r}: SQLite needs a file path")
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise BadRequest(
        f"unsupported database URL {url.render_as_string(hide_password=True)!r}; "
        "use sqlite+aiosqlite:///path or postgresql://user@host/db"
    )


def create_engine(url: URL) -> AsyncEngine:
    """An async engine with our connection settings; does no I/O yet."""
    if url.get_backend_name() == "sqlite":
        assert url.database is not None  # normalize_url guarantees a path
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": _SQLITE_BUSY_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,  # a restarted PostgreSQL leaves dead pooled connections
        connect_args={"timeout": _CONNECT_TIMEOUT_S, "command_timeout": _STATEMENT_TIMEOUT_S},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching to WAL needs a lock that another process may hold.
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives any process crash (SIGKILL included) and is
    # fsynced at checkpoints, not on every commit (FULL costs an fsync per async status
    # write). Accepted work itself is durable in the broker, confirmed before the 202.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the schema to the newest revision, one process at a time."""
    if engine.url.get_backend_name() == "sqlite":
        async with _file_lock(_lock_path(engine.url)), engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    async with engine.begin() as conn:
        # Transaction-scoped: released by the commit, even if this process dies mid-way.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATE_LOCK})
        await conn.run_sync(_upgrade)


def _lock_path(url: URL) -> Path:
    assert url.database is not None  # normalize_url guarantees a path
    return Path(url.database).expanduser().with_name(Path(url.database).name + ".migrate-lock")


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """Exclusive `flock` on `path`, polled so the event loop stays free and it can be cancelled."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _MIGRATE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if loop.time() > deadline:
                    raise Unavailable(
                        f"another process holds the migration lock {path} for over "
                        f"{_MIGRATE_LOCK_TIMEOUT_S:.0f}s"
                    ) from None
                await asyncio.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
