"""The next cold start, made before it is asked for.

`Spares` (held by `worker.forking.Zygote`) keeps one new instance ready but for its
function: its id, its private workdir (HOME and TMPDIR), its memory cgroup with the limit
set, and a child forked from the zygote, already in that group and set up as an instance
(`bootstrap.prepare`), waiting for its environment and frame socket. Those are a handful
of mkdirs and writes (0.1-0.3 ms each on a journaled /tmp or cgroupfs), a fork, and the
move into the group, which costs a whole RCU grace period (~10 ms here) when no other
process changed cgroups in the last few milliseconds: that move is why the child must be
made ahead together with its group, and it must happen before any user code runs in it.
`take` hands the prepared set out and prepares the next one off the cold start's path;
with none ready (a burst), the caller makes its own the old way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from worker.child.isolation import InstanceUser
from worker.limits import MemoryCgroup, detect_worker_group

log = logging.getLogger(f"pyfc.{__name__}")

# The next spare is made this long after one is taken: until then the cold start that took
# it is using the CPUs (and, with a thread running Python, the GIL).
REFILL_DELAY = 0.005


def new_instance_id() -> str:
    """`i-` and 16 hex digits: unique enough across a fleet, short in log lines."""
    return f"i-{secrets.token_hex(8)}"


WORKDIR_ROOT_PREFIX = "pyfc-w-"


def workdir_root() -> Path:
    """This worker's directory of instance workdirs (`<tmp>/pyfc-w-<worker pid>`), so
    what a SIGKILLed worker leaves behind is found and removed by the next one.

    Mode 0711: instances (other uids) pass through to their own workdir but cannot list
    the others'. One found there already must be ours: anyone may create names in <tmp>.
    """
    root = Path(tempfile.gettempdir()) / f"{WORKDIR_ROOT_PREFIX}{os.getpid()}"
    try:
        root.mkdir(mode=0o711)
        root.chmod(0o711)  # whatever the umask
    except FileExistsError:
        check_private_root(root)
    return root


def check_private_root(path: Path) -> None:
    """OSError unless `path` is a real directory of ours that no one else may write to."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(
            f"{path} is not a directory of uid {os.geteuid()} closed to others' writes; "
            "remove it or point elsewhere"
        )


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


def make_workdir(instance_id: str, user: InstanceUser | None = None) -> Path:
    """A fresh private directory (mode 0700) holding the instance's `home/` and `tmp/`
    (0700 too), owned by `user` if given (`own_workdir`)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pyfc-{instance_id}-", dir=workdir_root()))
    (workdir / "home").mkdir(mode=0o700)
    (workdir / "tmp").mkdir(mode=0o700)
    if user is not None:
        own_workdir(workdir, user)
    return workdir


def own_workdir(workdir: Path, user: InstanceUser) -> None:
    """Give a workdir made by `make_workdir` to the instance's user (three chowns, ~10 us:
    spares are made before their tenant is known, so this happens when one is taken)."""
    for path in (workdir, workdir / "home", workdir / "tmp"):
        os.chown(path, user.uid, user.gid)


class SpareProcess(Protocol):
    """A child forked ahead (`worker.forking.SpareChild`), as far as spares handle it."""

    @property
    def pid(self) -> int: ...

    def discard(self) -> None:
        """Let it go unused: it exits."""
        ...


P = TypeVar("P", bound=SpareProcess)


@dataclass(slots=True)
class Spare(Generic[P]):
    """A new instance's id, workdir, (when cgroups are used) memory group, and (with a
    zygote) a child forked for it; `joined`: the child is in `group` already."""

    instance_id: str
    workdir: Path
    group: MemoryCgroup | None
    memory_size: int
    child: P | None = None
    joined: bool = False

    def discard(self) -> None:
        """Remove what was made, child first (blocking; for a thread)."""
        if self.child is not None:
            self.child.discard()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.group is not None:
            self.group.remove()  # waits while a child in it exits


def prepare(memory_size: int, memory_cgroups: bool) -> Spare[P]:
    """Make one spare's id, workdir and group (blocking); raises OSError if the filesystem
    refuses."""
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


class Spares(Generic[P]):
    """One spare prepared ahead, for instances sized like the last one started.

    `prefork` (the zygote's) forks the child of each spare; without it spares have none.
    """

    def __init__(self, prefork: Callable[[], Awaitable[P]] | None = None) -> None:
        self._prefork = prefork
        self._spare: Spare[P] | None = None
        self._filling: asyncio.Task[None] | None = None
        self._refill_timer: asyncio.TimerHandle | None = None
        self._refill_for = (128, True)  # memory size and cgroups of the last taker
        self._closed = False

    async def take(self, memory_size: int, memory_cgroups: bool) -> Spare[P] | None:
        """The prepared spare fitted to `memory_size` (None if none is ready); starts the
        next one. Its group is None when `memory_cgroups` is off or it could not be made."""
        spare, self._spare = self._spare, None
        self._refill(memory_size, memory_cgroups)
        if spare is None:
            return None
        group = spare.group
        try:
            if group is not None and not memory_cgroups:
                if spare.joined and spare.child is not None:  # it would keep the limit
                    spare.child.discard()
                    spare.child, spare.joined = None, False
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

    def refill_now(self) -> None:
        """Make the next spare now rather than when the timer runs out: the cold start
        that took the last one is over (its first request ran)."""
        timer, self._refill_timer = self._refill_timer, None
        if timer is not None:
            timer.cancel()
            self._start_refill(*self._refill_for)

    def _refill(self, memory_size: int, memory_cgroups: bool) -> None:
        if self._refill_timer is None:
            self._refill_for = (memory_size, memory_cgroups)
            loop = asyncio.get_running_loop()
            self._refill_timer = loop.call_later(
                REFILL_DELAY, self._start_refill, memory_size, memory_cgroups
            )

    def _start_refill(self, memory_size: int, memory_cgroups: bool) -> None:
        self._refill_timer = None
        if self._closed or self._filling is not None or self._spare is not None:
            return
        self._filling = asyncio.get_running_loop().create_task(
            self._make(memory_size, memory_cgroups)
        )

    async def _make(self, memory_size: int, memory_cgroups: bool) -> None:
        """Make the next spare: the filesystem part in a thread while the zygote forks its
        child, then the child moved into the group (in a thread: it can take ~10 ms)."""
        loop = asyncio.get_running_loop()
        try:
            made: asyncio.Future[Spare[P]] = loop.run_in_executor(
                None, prepare, memory_size, memory_cgroups
            )
            child = None
            if self._prefork is not None:
                try:
                    child = await self._prefork()
                except OSError as e:  # the cold start forks (or spawns) its own child
                    log.debug("no spare child: %s", e)
            try:
                spare = await made
            except OSError as e:
                log.warning("could not prepare a spare instance workdir: %s", e)
                if child is not None:
                    child.discard()
                return
            spare.child = child
            if child is not None and spare.group is not None:
                try:
                    await loop.run_in_executor(None, spare.group.attach, child.pid)
                    spare.joined = True
                except OSError as e:  # the instance tries again once it has the child
                    log.debug("spare %s: child not in its memory group (%s)", spare.instance_id, e)
            if self._closed or self._spare is not None:
                await asyncio.to_thread(spare.discard)
            else:
                self._spare = spare
        finally:
            self._filling = None

    async def close(self) -> None:
        """Remove the spare and make no more (before the worker's cgroup is released)."""
        self._closed = True
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None
        if self._filling is not None:  # it discards what it makes, seeing us closed
            with contextlib.suppress(Exception):
                await self._filling
        spare, self._spare = self._spare, None
        if spare is not None:
            await asyncio.to_thread(spare.discard)
