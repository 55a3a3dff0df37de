"""The filesystem side of the next cold start, made before it is asked for.

The zygote keeps a child forked ahead; `Spares` (held by `worker.forking.Zygote`) keeps the
rest of what a new instance needs from the filesystem ready too: its id, its private
workdir (HOME and TMPDIR) and its memory cgroup with the limit set. Those are a handful of
mkdirs and writes, 0.1-0.3 ms each on a journaled /tmp or cgroupfs, and were the largest
part of a forked cold start. `take` hands the prepared set out and prepares the next one
in a thread, off the cold start's path; with none ready (a burst), the caller makes its
own the old way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from worker.limits import MemoryCgroup, detect_worker_group

log = logging.getLogger(__name__)

# The next spare is made this long after one is taken: until then the cold start that took
# it is using the CPUs (and, with a thread running Python, the GIL).
REFILL_DELAY = 0.005


def new_instance_id() -> str:
    """`i-` and 16 hex digits: unique enough across a fleet, short in log lines."""
    return f"i-{secrets.token_hex(8)}"


WORKDIR_ROOT_PREFIX = "pyfc-w-"


def workdir_root() -> Path:
    """This worker's directory of instance workdirs (`<tmp>/pyfc-w-<worker pid>`), so
    what a SIGKILLed worker leaves behind is found and removed by the next one."""
    root = Path(tempfile.gettempdir()) / f"{WORKDIR_ROOT_PREFIX}{os.getpid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def sweep_stale_workdirs(tmp: Path | None = None) -> int:
    """Remove the workdir roots of workers that are no longer running; how many."""
    removed = 0
    for root in Path(tmp or tempfile.gettempdir()).glob(f"{WORKDIR_ROOT_PREFIX}*"):
        try:
            pid = int(root.name.removeprefix(WORKDIR_ROOT_PREFIX))
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(root, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def make_workdir(instance_id: str) -> Path:
    """A fresh private directory (mode 0700) holding the instance's `home/` and `tmp/`."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pyfc-{instance_id}-", dir=workdir_root()))
    (workdir / "home").mkdir()
    (workdir / "tmp").mkdir()
    return workdir


@dataclass(slots=True)
class Spare:
    """A new instance's id, workdir and (when cgroups are used) memory group."""

    instance_id: str
    workdir: Path
    group: MemoryCgroup | None
    memory_size: int

    def discard(self) -> None:
        """Remove what was made (blocking; for a thread)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.group is not None:
            self.group.remove()


def prepare(memory_size: int, memory_cgroups: bool) -> Spare:
    """Make one spare (blocking); raises OSError if the filesystem refuses."""
    instance_id = new_instance_id()
    workdir = make_workdir(instance_id)
    parent = detect_worker_group() if memory_cgroups else None
    group = None
    if parent is not None:
        try:
            group = MemoryCgroup.create(parent, instance_id, memory_size)
        except OSError as e:  # the instance then tries again, and falls back to RLIMIT_AS
            log.debug("spare %s: no memory cgroup (%s)", instance_id, e)
    return Spare(instance_id, workdir, group, memory_size)


class Spares:
    """One spare prepared ahead, for instances sized like the last one started."""

    def __init__(self) -> None:
        self._spare: Spare | None = None
        self._filling: asyncio.Future[Spare] | None = None
        self._refill_timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def take(self, memory_size: int, memory_cgroups: bool) -> Spare | None:
        """The prepared spare fitted to `memory_size` (None if none is ready); starts the
        next one. Its group is None when `memory_cgroups` is off or it could not be made."""
        spare, self._spare = self._spare, None
        self._refill(memory_size, memory_cgroups)
        if spare is None:
            return None
        group = spare.group
        try:
            if group is not None and not memory_cgroups:
                spare.group = None
                await asyncio.to_thread(group.remove)
            elif group is not None and spare.memory_size != memory_size:
                await asyncio.to_thread(group.resize, spare.memory_size, memory_size)
                spare.memory_size = memory_size
        except OSError as e:
            log.warning("spare %s: memory group not resized (%s)", spare.instance_id, e)
            await asyncio.to_thread(spare.discard)
            return None
        return spare

    def _refill(self, memory_size: int, memory_cgroups: bool) -> None:
        if self._refill_timer is None:
            loop = asyncio.get_running_loop()
            self._refill_timer = loop.call_later(
                REFILL_DELAY, self._start_refill, memory_size, memory_cgroups
            )

    def _start_refill(self, memory_size: int, memory_cgroups: bool) -> None:
        self._refill_timer = None
        if self._closed or self._filling is not None or self._spare is not None:
            return
        loop = asyncio.get_running_loop()
        self._filling = filling = loop.run_in_executor(None, prepare, memory_size, memory_cgroups)
        filling.add_done_callback(self._filled)

    def _filled(self, filling: asyncio.Future[Spare]) -> None:
        self._filling = None
        if filling.cancelled():
            return
        error = filling.exception()
        if error is not None:
            log.warning("could not prepare a spare instance workdir: %s", error)
            return
        spare = filling.result()
        if self._closed:  # `close` is waiting for it and removes it
            return
        if self._spare is not None:
            asyncio.get_running_loop().run_in_executor(None, spare.discard)
        else:
            self._spare = spare

    async def close(self) -> None:
        """Remove the spare and make no more (before the worker's cgroup is released)."""
        self._closed = True
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None
        if self._filling is not None:
            with contextlib.suppress(Exception):
                made = await self._filling
                await asyncio.to_thread(made.discard)
        spare, self._spare = self._spare, None
        if spare is not None:
            await asyncio.to_thread(spare.discard)
