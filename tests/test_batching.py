"""Batcher: items sent while a publish is in flight go together; failures stay scoped."""

from __future__ import annotations

import asyncio

import pytest

from shared.batching import Batcher


class Broker:
    """Records each publish; holds it open until released, so batches can form."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def publish(self, key: str, items: list[int]) -> None:
        self.batches.append((key, list(items)))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker gone")


async def test_a_lone_item_goes_at_once() -> None:
    broker = Broker()
    batcher: Batcher[str, int] = Batcher(broker.publish, lambda _: 1)
    await asyncio.wait_for(batcher.send("k", 1), 1)
    assert broker.batches == [("k", [1])]


async def test_items_arriving_during_a_publish_share_the_next_one() -> None:
    broker = Broker()
    broker.gate.clear()
    batcher: Batcher[str, int] = Batcher(broker.publish, lambda _: 1)
    first = asyncio.create_task(batcher.send("k", 0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first publish is in flight, held by the gate
    rest = [asyncio.create_task(batcher.send("k", i)) for i in range(1, 6)]
    other = asyncio.create_task(batcher.send("other", 9))
    await asyncio.sleep(0)
    assert not first.done()
    broker.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest, other), 1)
    assert broker.batches == [("k", [0]), ("other", [9]), ("k", [1, 2, 3, 4, 5])]


@pytest.mark.parametrize(
    ("limit", "max_bytes", "sizes", "expected"),
    [
        (3, 1000, [1] * 7, [[1], [2, 3, 4], [5, 6, 7]]),
        (64, 10, [4, 4, 4, 4, 4], [[1], [2, 3], [4, 5]]),
        (64, 10, [4, 20, 4], [[1], [2], [3]]),  # an oversized item still goes, alone
    ],
)
async def test_batches_stop_at_the_limit_and_the_byte_cap(
    limit: int, max_bytes: int, sizes: list[int], expected: list[list[int]]
) -> None:
    broker = Broker()
    broker.gate.clear()
    size = dict(zip(range(1, len(sizes) + 1), sizes, strict=True))
    batcher: Batcher[str, int] = Batcher(broker.publish, size.__getitem__, max_bytes=max_bytes)
    tasks = [asyncio.create_task(batcher.send("k", 1, limit=limit))]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(batcher.send("k", i, limit=limit)) for i in size if i > 1]
    await asyncio.sleep(0)
    broker.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert [items for _, items in broker.batches] == expected


async def test_a_failed_publish_fails_its_own_items_only() -> None:
    broker = Broker()
    broker.gate.clear()
    broker.fail_next = True
    batcher: Batcher[str, int] = Batcher(broker.publish, lambda _: 1)
    first = asyncio.create_task(batcher.send("k", 0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = [asyncio.create_task(batcher.send("k", i)) for i in (1, 2)]
    await asyncio.sleep(0)
    broker.gate.set()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(first, 1)
    await asyncio.wait_for(asyncio.gather(*later), 1)
    assert broker.batches == [("k", [0]), ("k", [1, 2])]
