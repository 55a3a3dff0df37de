"""Spares: the next instance's id, workdir and memory group, made ahead of its cold start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.instances import eventually, process_gone
from worker import spares as spares_module
from worker.forking import Zygote
from worker.limits import MemoryCgroup, detect_worker_group
from worker.spares import Spare, Spares


@pytest.fixture(autouse=True)
def no_refill_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spares_module, "REFILL_DELAY", 0.0)


async def test_take_hands_out_what_was_made_ahead() -> None:
    spares = Spares()
    try:
        assert await spares.take(128, memory_cgroups=False) is None  # nothing made yet
        await eventually(lambda: spares._spare is not None)
        spare = await spares.take(128, memory_cgroups=False)
        assert spare is not None and spare.group is None
        assert spare.instance_id in spare.workdir.name
        assert (spare.workdir / "home").is_dir() and (spare.workdir / "tmp").is_dir()
        assert spare.workdir.stat().st_mode & 0o777 == 0o700
        await eventually(lambda: spares._spare is not None)
        waiting = spares._spare
        assert waiting is not None and waiting.instance_id != spare.instance_id
    finally:
        await spares.close()
    assert not waiting.workdir.exists()  # close removes the one nobody took
    spare.discard()


async def test_memory_group_is_resized_for_the_taker() -> None:
    if detect_worker_group() is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    spares = Spares()
    try:
        await spares.take(128, memory_cgroups=True)
        await eventually(lambda: spares._spare is not None)
        for size in (512, 64):
            spare = await spares.take(size, memory_cgroups=True)
            assert spare is not None and spare.group is not None
            limit = (spare.group.path / "memory.limit_in_bytes").read_text()
            assert int(limit) == size * 1024 * 1024
            spare.discard()
            assert not spare.group.path.exists()
            await eventually(lambda: spares._spare is not None)
        spare = await spares.take(128, memory_cgroups=False)  # cgroups off: group dropped
        assert spare is not None and spare.group is None
        spare.discard()
    finally:
        await spares.close()


async def test_refill_now_does_not_wait_for_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spares_module, "REFILL_DELAY", 3600.0)
    spares = Spares()
    try:
        assert await spares.take(128, memory_cgroups=False) is None
        spares.refill_now()  # the cold start that took the last one is over
        await eventually(lambda: spares._spare is not None)
    finally:
        await spares.close()


async def test_spare_child_is_moved_into_its_group_ahead() -> None:
    """With a zygote each spare has a child, in its memory group before anyone takes it;
    a taker without memory cgroups gets neither (the child would carry the limit)."""
    if detect_worker_group() is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    zygote = Zygote()
    spares = zygote.spares
    try:
        await spares.take(128, memory_cgroups=True)
        await eventually(lambda: spares._spare is not None)
        spare = spares._spare
        assert spare is not None and spare.child is not None and spare.group is not None
        assert spare.joined
        pid, group = spare.child.pid, spare.group.path
        assert str(pid) in (group / "cgroup.procs").read_text().split()
        taken = await spares.take(128, memory_cgroups=False)
        assert taken is spare and taken.child is None and taken.group is None
        await eventually(lambda: process_gone(pid) and not group.exists())
        taken.discard()
    finally:
        await zygote.close()


@pytest.mark.parametrize(
    ("old", "new", "order"),
    [
        (128, 512, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),
        (512, 128, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),
    ],
)
def test_resize_keeps_memory_below_memsw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: int, new: int, order: list[str]
) -> None:
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("0")
    written: list[str] = []
    monkeypatch.setattr(MemoryCgroup, "_write", lambda self, name, value: written.append(name))
    MemoryCgroup(tmp_path).resize(old, new)
    assert written == order


async def test_close_removes_a_spare_still_being_made(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Spare] = []

    def prepare(memory_size: int, memory_cgroups: bool) -> Spare:
        made.append(real_prepare(memory_size, memory_cgroups))
        return made[-1]

    real_prepare = spares_module.prepare
    monkeypatch.setattr(spares_module, "prepare", prepare)
    spares = Spares()
    await spares.take(128, memory_cgroups=False)
    await eventually(lambda: bool(made))  # made in the thread, maybe not handed back yet
    await spares.close()
    assert spares._spare is None and len(made) == 1
    assert not made[0].workdir.exists()


def test_workdirs_of_dead_workers_are_swept(tmp_path: Path) -> None:
    import subprocess

    from worker.spares import WORKDIR_ROOT_PREFIX, sweep_stale_workdirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{WORKDIR_ROOT_PREFIX}{dead.pid}"
    (stale / "pyfc-i-x" / "home").mkdir(parents=True)
    live = tmp_path / f"{WORKDIR_ROOT_PREFIX}{os.getpid()}"
    live.mkdir()
    other = tmp_path / f"{WORKDIR_ROOT_PREFIX}1"  # init: alive
    other.mkdir()
    assert sweep_stale_workdirs(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()
