"""memorySize enforcement for instances: a cgroup v1 memory group each, or RLIMIT_AS.

With a writable cgroup v1 memory controller the worker creates
`<its own memory cgroup>/pyfc-<worker pid>/<instance id>`, writes `memory.limit_in_bytes`
(and `memory.memsw.limit_in_bytes` when the kernel has it, so swap cannot dodge the limit)
and moves the child in before it imports user code. The kernel then SIGKILLs an instance
that exceeds its memorySize, and `memory.oom_control` tells us that is why it died.

Without one, the child sets RLIMIT_AS on itself (`worker.child.bootstrap`) before importing user
code. RLIMIT_AS counts virtual address space, not resident memory: the interpreter, shared
libraries and thread stacks map far more than they touch, so the limit is memorySize plus
`ADDRESS_SPACE_ALLOWANCE_MB`. Going over raises `MemoryError` inside the function.

The parsing and path helpers are pure; `MemoryCgroup` only writes the files they name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(f"pyfc.{__name__}")

MB = 1024 * 1024
# RLIMIT_AS counts address space, and glibc reserves 64 MB per malloc arena and 8 MB per
# thread stack up front. Under the fallback the child caps malloc at 2 arenas and request
# threads at THREAD_STACK_MB, so memorySize + this allowance + THREAD_STACK_MB per request
# thread covers an idle interpreter (~20 MB measured) and the reservations, while a
# function allocating well past memorySize still gets MemoryError.
ADDRESS_SPACE_ALLOWANCE_MB = 256
THREAD_STACK_MB = 2


def memory_cgroup_path(proc_self_cgroup: str) -> str | None:
    """This process's cgroup v1 memory group (`/a/b`) from `/proc/self/cgroup` text."""
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            return parts[2] or "/"
    return None


def memory_mount(mountinfo: str) -> tuple[str, str] | None:
    """(mount point, mounted root) of a read-write cgroup v1 memory controller, if any."""
    for line in mountinfo.splitlines():
        fields, sep, tail = line.partition(" - ")
        head = fields.split()
        rest = tail.split()
        if not sep or len(head) < 6 or len(rest) < 3 or rest[0] != "cgroup":
            continue
        if "memory" in rest[2].split(",") and "rw" in head[5].split(","):
            return _unescape(head[4]), _unescape(head[3])
    return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def own_group_dir(mount_point: str, mount_root: str, group: str) -> Path | None:
    """Where `group` appears under the mount, or None when the mount does not show it."""
    root, path = PurePosixPath(mount_root), PurePosixPath(group)
    if path != root and root not in path.parents:
        return None
    return Path(mount_point) / path.relative_to(root)


def instance_group_dir(own: Path, worker_pid: int, instance_id: str) -> Path:
    """`<own>/pyfc-<worker pid>/<instance id>`: one parent per worker, one group per instance."""
    return own / f"pyfc-{worker_pid}" / instance_id


def limit_bytes(memory_size_mb: int) -> int:
    """memorySize (MB) as the byte limit the cgroup enforces."""
    return memory_size_mb * MB


def address_space_bytes(memory_size_mb: int, concurrency: int = 1) -> int:
    """RLIMIT_AS for the fallback: memorySize plus the interpreter's and threads' allowance."""
    return (memory_size_mb + ADDRESS_SPACE_ALLOWANCE_MB + THREAD_STACK_MB * concurrency) * MB


def oom_kills(oom_control: str) -> int:
    """The `oom_kill` counter (or 1 if `under_oom` is set) from `memory.oom_control` text."""
    values: dict[str, int] = {}
    for line in oom_control.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values.get("oom_kill", 0) or values.get("under_oom", 0)


def stale_worker_pid(name: str, alive: Callable[[int], bool]) -> int | None:
    """The pid of a `pyfc-<pid>` group whose worker is gone (a SIGKILLed worker's leftovers)."""
    prefix, _, pid = name.partition("-")
    if prefix != "pyfc" or not pid.isdigit() or alive(int(pid)):
        return None
    return int(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_groups(own: Path) -> None:
    """Delete the empty groups of dead workers; their instances died with them (PDEATHSIG)."""
    with contextlib.suppress(OSError):
        for group in own.glob("pyfc-*"):
            if stale_worker_pid(group.name, _pid_alive) is None:
                continue
            for child in group.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()


@functools.cache
def detect_worker_group() -> Path | None:
    """`<own memory cgroup>/pyfc-<pid>` if we may create groups there, else None (cached)."""
    try:
        group = memory_cgroup_path(Path("/proc/self/cgroup").read_text())
        mount = memory_mount(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
    if group is None or mount is None:
        return None
    own = own_group_dir(*mount, group)
    if own is None or not (own / "memory.limit_in_bytes").exists():
        return None
    _remove_stale_groups(own)
    parent = own / f"pyfc-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
    except OSError as e:
        log.info("no memory cgroups (%s); instances get RLIMIT_AS instead", e)
        return None
    return parent


@dataclass(slots=True)
class MemoryCgroup:
    """One instance's memory group; create, `attach` the child, `remove` after it exited."""

    path: Path

    @classmethod
    def create(cls, worker_group: Path, instance_id: str, memory_size_mb: int) -> MemoryCgroup:
        """Make the group and set its limit; raises OSError if the kernel refuses."""
        path = worker_group / instance_id
        path.mkdir()
        group = cls(path)
        try:
            group._write("memory.limit_in_bytes", limit_bytes(memory_size_mb))
            if (path / "memory.memsw.limit_in_bytes").exists():
                try:
                    group._write("memory.memsw.limit_in_bytes", limit_bytes(memory_size_mb))
                except OSError as e:  # no swap accounting: the plain limit still holds
                    log.debug("memsw limit not set for %s: %s", instance_id, e)
        except BaseException:
            group.remove()
            raise
        return group

    def resize(self, old_mb: int, new_mb: int) -> None:
        """Change the limit from `old_mb` to `new_mb`; the kernel wants memory <= memsw
        at every step, so which limit moves first depends on the direction."""
        memsw = (self.path / "memory.memsw.limit_in_bytes").exists()
        names = ["memory.limit_in_bytes"]
        if memsw:
            names.append("memory.memsw.limit_in_bytes")
        if new_mb > old_mb:
            names.reverse()
        for name in names:
            self._write(name, limit_bytes(new_mb))

    def attach(self, pid: int) -> None:
        """Move `pid` into the group (its future children follow it)."""
        self._write("cgroup.procs", pid)

    def out_of_memory(self) -> bool:
        """True if the kernel OOM-killed something in this group."""
        try:
            return oom_kills((self.path / "memory.oom_control").read_text()) > 0
        except OSError:
            return False

    def remove(self, within: float = 2.0) -> None:
        """Delete the group; blocks up to `within` s while SIGKILLed members finish dying."""
        deadline = time.monotonic() + within
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("cannot remove memory cgroup %s: %s", self.path, e)
                    return
            time.sleep(0.01)

    def _write(self, name: str, value: int) -> None:
        with open(self.path / name, "w") as f:
            f.write(str(value))


def release_worker_group() -> None:
    """Remove this worker's `pyfc-<pid>` group once its instances are gone (best effort)."""
    if detect_worker_group.cache_info().currsize == 0:
        return
    parent = detect_worker_group()
    if parent is not None:
        with contextlib.suppress(OSError):
            parent.rmdir()
    detect_worker_group.cache_clear()
