"""Who a function instance runs as: a uid of its tenant's own when the worker is root.

A root worker runs every instance of a tenant as uid = gid = `PYFC_INSTANCE_UID_BASE` +
the tenant's number (`FunctionSpec.tenant_number`), with no supplementary groups and
PR_SET_NO_NEW_PRIVS (no setuid binary gives root back), and RLIMIT_NPROC: a tenant's
processes and threads on this host together stay under `PYFC_INSTANCE_MAX_PROCS` (the
kernel counts them per real uid), so a fork bomb cannot take the host's pids from the
other tenants and the worker (pid_max is 32768 on many hosts). So a function cannot read the
worker's `/proc/<pid>/environ` (broker and database URLs), the private data dir, or another
tenant's workdir, nor signal another tenant's instances. The child drops to that user
itself, after anything it does as root (joining its memory cgroup) and before any function
code runs: the zygote's child (`worker.child.zygote`), the spawned bootstrap and the custom
runtime (`preexec`). A non-root worker cannot change uids: its instances keep its uid, and
it and its zygote make themselves non-dumpable, so those instances at least cannot read
their `/proc/<pid>/environ` or memory.

Imported by the zygote and run in forked children: stdlib only, nothing that allocates
locks a fork could leave held (prctl is looked up before the fork).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import resource
import signal
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(f"pyfc.{__name__}")

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REC, _MS_PRIVATE = 0x4000, 1 << 18
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
# Checked at start: the namespace must hold at least this many instance uids.
MAPPED_TENANTS = 10000
# Instance uids from the base by default (PYFC_INSTANCE_UID_COUNT).
UID_COUNT = 1_000_000

Prctl = Callable[[int, int, int, int, int], int]


class InstanceUser(NamedTuple):
    """The uid and gid an instance runs as (no supplementary groups), the most
    processes and threads that uid may have on the host (0: no limit), and the host's
    directories it must not see (each an empty read-only tmpfs in its mount namespace)."""

    uid: int
    gid: int
    max_procs: int = 0
    hidden: tuple[str, ...] = ()


class TenantUsers:
    """Tenant number → the user its instances run as; None means the worker's own uid."""

    def __init__(
        self,
        uid_base: int,
        *,
        privileged: bool,
        max_procs: int = 0,
        count: int = UID_COUNT,
        hidden: tuple[str, ...] = (),
    ) -> None:
        if not 0 <= uid_base <= MAX_ID:
            raise ValueError(f"PYFC_INSTANCE_UID_BASE must be in 0..{MAX_ID}, got {uid_base}")
        if count < 1:
            raise ValueError(f"PYFC_INSTANCE_UID_COUNT must be 1 or more, got {count}")
        self.count = min(count, MAX_ID - uid_base + 1)  # no uid past MAX_ID
        self.hidden = hidden
        if max_procs < 0:
            raise ValueError(
                f"PYFC_INSTANCE_MAX_PROCS must be 0 (no limit) or more, got {max_procs}"
            )
        self.uid_base = uid_base
        self.max_procs = max_procs
        # Only root can run a child as another uid; a base of 0 turns isolation off.
        self.enabled = privileged and uid_base > 0

    @classmethod
    def for_worker(
        cls,
        uid_base: int,
        max_procs: int = 0,
        count: int = UID_COUNT,
        hidden: tuple[str, ...] = (),
    ) -> TenantUsers:
        return cls(
            uid_base, privileged=os.geteuid() == 0, max_procs=max_procs, count=count, hidden=hidden
        )

    @property
    def last_uid(self) -> int:
        """The highest uid an instance may get (the network policy holds them all)."""
        return self.uid_base + self.count - 1

    def user(self, tenant_number: int) -> InstanceUser | None:
        """Who `tenant_number`'s instances run as; ValueError past the uid range."""
        if not self.enabled:
            return None
        uid = self.uid_base + tenant_number
        if not 0 < uid <= self.last_uid or tenant_number < 0:
            raise ValueError(f"tenant number {tenant_number} is outside the instance uid range")
        return InstanceUser(uid, uid, self.max_procs, self.hidden)

    def __repr__(self) -> str:
        return (
            f"TenantUsers(uid_base={self.uid_base}, enabled={self.enabled}, "
            f"max_procs={self.max_procs})"
        )


@functools.cache
def prctl() -> Prctl:
    """libc's prctl; call once before forking, so the child does not dlopen."""
    function: Prctl = ctypes.CDLL(None, use_errno=True).prctl
    return function


@functools.cache
def mount_calls() -> tuple[Callable[[int], int], Callable[..., int]]:
    """libc's unshare and mount; call once before forking, so the child does not dlopen."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare, libc.mount


def hide(paths: Iterable[str]) -> None:
    """Give this (single-threaded, root) process a mount namespace of its own in which
    each directory of `paths` is an empty read-only tmpfs: Unix sockets there (a
    PostgreSQL `local trust`, Redis, MySQL) are not the network policy's to refuse."""
    unshare, mount = mount_calls()

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    check(unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing we mount propagates back to the host's namespace.
    check(mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    for path in paths:
        flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        check(mount(b"tmpfs", path.encode(), b"tmpfs", flags, b"size=4k,mode=0555"), path)


def _check_hiding(paths: tuple[str, ...], python: str) -> None:
    """Hide `paths` once in a throwaway child, so a worker that cannot (no CAP_SYS_ADMIN,
    as in a container by default) says so at start instead of failing every instance."""
    import subprocess

    try:
        child = [python, "-I", "-S", "-c", ""]
        subprocess.run(child, preexec_fn=lambda: hide(paths), check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise ValueError(
            f"cannot hide {', '.join(paths)} from function instances ({e}): that takes a "
            "mount namespace (CAP_SYS_ADMIN). Set PYFC_INSTANCE_HIDDEN_PATHS= (empty) to "
            "leave them visible, or close their sockets to other users"
        ) from e


def hidden_dirs(paths: Iterable[str]) -> tuple[str, ...]:
    """Of `paths`, the directories that exist here, symlinks resolved, each once."""
    found = (os.path.realpath(p) for p in paths if p.strip())
    return tuple(dict.fromkeys(p for p in found if os.path.isdir(p)))


def _call(fn: Prctl, option: int, value: int) -> None:
    if fn(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}): {os.strerror(errno)}")


def become(user: InstanceUser, fn: Prctl | None = None) -> None:
    """Drop to `user` for good: its process limit (soft and hard, so it cannot be raised
    back), umask 077, no supplementary groups, gid, uid, then no_new_privs.

    The kernel clears PR_SET_PDEATHSIG on a uid change: callers set it again after.
    """
    fn = fn or prctl()
    if user.hidden:
        hide(user.hidden)
    if user.max_procs:
        resource.setrlimit(resource.RLIMIT_NPROC, (user.max_procs, user.max_procs))
    # Files it makes in the host's shared /tmp or /dev/shm are its tenant's alone.
    os.umask(0o077)
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    _call(fn, _PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(dumpable: bool) -> None:
    """Whether processes of our uid may read our /proc/<pid>/environ, mem, fds (ptrace)."""
    _call(prctl(), _PR_SET_DUMPABLE, int(dumpable))


def preexec(
    user: InstanceUser | None, parent_pid: int, join: Callable[[], None] | None = None
) -> Callable[[], None]:
    """A subprocess preexec_fn: `join` (as root: the memory cgroup), become `user`, then
    die with the worker (set after the drop, which clears it) and exit if it is gone."""
    fn = prctl()
    mount_calls()

    def setup() -> None:
        if join is not None:
            join()
        if user is not None:
            become(user, fn)
        fn(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the worker died before prctl: nobody signals us
            os._exit(1)

    return setup


def mapped(id_map: str, first: int, count: int) -> bool:
    """Whether ids `first`..`first + count - 1` all exist in this user namespace, from
    `/proc/self/uid_map` (or gid_map) text: `inside outside count` per line."""
    for line in id_map.splitlines():
        fields = line.split()
        if len(fields) == 3:
            inside, length = int(fields[0]), int(fields[2])
            if inside <= first and first + count <= inside + length:
                return True
    return False


def may(st: os.stat_result, user: InstanceUser, want: int) -> bool:
    """Whether `user` has the permission bits `want` (octal r=4, w=2, x=1) on an inode
    with these stats; mode bits only (ACLs are not looked at)."""
    if st.st_uid == user.uid:
        bits = st.st_mode >> 6
    elif st.st_gid == user.gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def first_unreachable(
    path: str | Path,
    user: InstanceUser,
    read: bool = True,
    stat_fn: Callable[[str], os.stat_result] = os.stat,
) -> str | None:
    """The first directory on the way to `path` (symlinks resolved) that `user` may not
    pass, or `path` itself if it may not search it (a directory) or, with `read`, read it;
    None when it can. A path the worker cannot stat raises OSError."""
    target = Path(os.path.realpath(path))
    for directory in reversed(target.parents):
        if not may(stat_fn(str(directory)), user, 1):
            return str(directory)
    st = stat_fn(str(target))
    want = (4 if read else 0) | (1 if stat.S_ISDIR(st.st_mode) else 0)
    return None if may(st, user, want) else str(target)


def unreachable(
    paths: Iterable[str | Path], user: InstanceUser, read: bool = True
) -> dict[str, str]:
    """Of `paths` (those that exist), each one `user` cannot reach → where it is stopped."""
    stopped = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        blocker = first_unreachable(path, user, read)
        if blocker is not None:
            stopped[str(path)] = blocker
    return stopped


def runtime_paths(python: str) -> list[str]:
    """What a Python instance reads after the drop: the interpreter, its standard library
    and site-packages (a venv's too), and the directory holding the `worker` package."""
    import sys
    import sysconfig

    import worker

    names = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = [python, sys.prefix, *(sysconfig.get_paths()[name] for name in names)]
    paths.append(str(Path(worker.__file__).resolve().parent.parent))
    return list(dict.fromkeys(paths))


def for_this_worker(
    uid_base: int,
    python: str,
    passed: Iterable[str | Path],
    max_procs: int = 0,
    count: int = UID_COUNT,
    hidden: Iterable[str] = (),
) -> TenantUsers:
    """The worker's users, checked once at start.

    Root: every instance uid must read `python`'s installation and the `worker` package,
    and pass through the directories `passed` (code cache, temp dir), else ValueError
    saying what to open up: no instance would start. Not root (or a base of 0): one
    warning, and this process (the worker) is made non-dumpable, as the zygote makes itself.
    """
    users = TenantUsers.for_worker(uid_base, max_procs, count, hidden_dirs(hidden))
    if not users.enabled:
        euid = os.geteuid()
        why = "PYFC_INSTANCE_UID_BASE is 0" if euid == 0 else f"the worker runs as uid {euid}"
        log.warning(
            "tenant isolation is off (%s): function instances run as the worker's uid and "
            "reach what it can reach; a root worker runs each tenant's instances as a uid of "
            "their own",
            why,
        )
        if euid != 0:
            set_dumpable(False)
        return users
    needed = min(count, MAPPED_TENANTS)
    for kind in ("uid", "gid"):
        with open(f"/proc/self/{kind}_map") as f:
            if not mapped(f.read(), uid_base, needed):
                raise ValueError(
                    f"{kind}s {uid_base}..{uid_base + needed - 1} do not exist in this "
                    "user namespace (a rootless container?): set PYFC_INSTANCE_UID_BASE to a "
                    f"mapped range (see /proc/self/{kind}_map), or 0 (no tenant isolation)"
                )
    if users.hidden:
        _check_hiding(users.hidden, python)
    probe = InstanceUser(uid_base, uid_base)
    stopped = unreachable(runtime_paths(python), probe) | unreachable(passed, probe, read=False)
    if stopped:
        path, blocker = next(iter(stopped.items()))
        raise ValueError(
            f"function instances run as uids from {uid_base} on but cannot reach {path}: "
            f"{blocker} is closed to other users. Open it to them (chmod o+rx, o+x for a "
            "directory on the way), or set PYFC_INSTANCE_UID_BASE=0 (no tenant isolation)"
        )
    return users


# The worker's users, set once by `worker.main`. Instance.start and CustomInstance.start
# take `users=`; the pool does not pass it yet, so they fall back to this (None: unit
# tests and other embedders keep the caller's uid).
_worker_users: TenantUsers | None = None


def configure(users: TenantUsers | None) -> None:
    global _worker_users
    _worker_users = users


def worker_users() -> TenantUsers | None:
    return _worker_users
