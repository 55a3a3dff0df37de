"""Group commit: concurrent writes share transactions; a bad write fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import IntegrityError

from shared import dbengine
from shared.groupcommit import GroupCommit

meta = MetaData()
items = Table("items", meta, Column("id", Integer, primary_key=True), Column("v", String(8)))


async def test_concurrent_writes_land_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    engine = dbengine.create_engine(dbengine.normalize_url(f"sqlite:///{tmp_path}/g.db"))
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    writes = GroupCommit(engine.begin)
    stmt = insert(items)
    rows = [{"id": i, "v": "x"} for i in range(100)]
    results = await asyncio.gather(
        *(writes.execute(stmt, row) for row in rows),
        writes.execute(stmt, {"id": 5, "v": "dup"}),  # a duplicate key
        return_exceptions=True,
    )
    assert all(r is None for r in results[:100])
    assert isinstance(results[100], IntegrityError)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(items))).scalar() == 100
    await engine.dispose()


async def test_writes_submitted_together_share_transactions(tmp_path: Path) -> None:
    engine = dbengine.create_engine(dbengine.normalize_url(f"sqlite:///{tmp_path}/g.db"))
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    transactions = 0

    def begin():  # type: ignore[no-untyped-def]
        nonlocal transactions
        transactions += 1
        return engine.begin()

    writes = GroupCommit(begin)
    await asyncio.gather(*(writes.execute(insert(items), {"id": i, "v": "x"}) for i in range(300)))
    assert transactions <= 3, transactions  # batches of up to 200
    await engine.dispose()


async def test_an_idle_store_writes_at_once(tmp_path: Path) -> None:
    engine = dbengine.create_engine(dbengine.normalize_url(f"sqlite:///{tmp_path}/g.db"))
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    writes = GroupCommit(engine.begin)
    await asyncio.wait_for(writes.execute(insert(items), {"id": 1, "v": "a"}), 5)
    with pytest.raises(IntegrityError):
        await writes.execute(insert(items), {"id": 1, "v": "b"})
    await engine.dispose()
