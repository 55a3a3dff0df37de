"""How an instance process is launched: its clean environment, private dirs and group.

The child gets nothing of the worker's environment but PATH (no broker or database URLs),
a private HOME and TMPDIR per instance, its own process group, and one end of a
socketpair for frames; its stdout/stderr go to a pipe the worker reads. Given a `user`
(`worker.child.isolation`), the workdir is that user's and the child runs as it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Protocol

import worker
from shared.protocol import FunctionSpec
from worker.child import isolation
from worker.child.isolation import InstanceUser
from worker.forking import SpareChild, Zygote, ZygoteUnavailable, interpreter_settings
from worker.spares import Spare, make_workdir, own_workdir

log = logging.getLogger(f"pyfc.{__name__}")


class ChildProcess(Protocol):
    """What `Instance` needs of its process: `asyncio.subprocess.Process` or `ForkedProcess`."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def private_workdir(
    spec: FunctionSpec,
    code_dir: Path,
    instance_id: str,
    workdir: Path | None = None,
    user: InstanceUser | None = None,
) -> tuple[Path, dict[str, str]]:
    """A private HOME and TMPDIR for one instance (fresh unless `workdir`, one made ahead
    by `make_workdir`, is given), owned by `user` if given, and its clean environment."""
    if workdir is None:
        workdir = make_workdir(instance_id, user)
    elif user is not None:
        own_workdir(workdir, user)
    env = build_environment(
        spec,
        code_dir=code_dir,
        instance_id=instance_id,
        home=workdir / "home",
        tmp=workdir / "tmp",
        inherited=os.environ,
    )
    return workdir, env


class Spawned(NamedTuple):
    """A started child, not yet initialized; the caller owns every part of it."""

    proc: ChildProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    output_fd: int  # read end of the child's stdout/stderr pipe
    workdir: Path  # holds home/ and tmp/; remove once the child exited
    joined: bool  # the child is in the spare's memory group already (moved in ahead)


@functools.cache
def package_root() -> str:
    """The directory holding the `worker` package, so `-m worker.child.bootstrap` resolves."""
    return str(Path(worker.__file__).resolve().parent.parent)


def build_environment(
    spec: FunctionSpec,
    *,
    code_dir: Path,
    instance_id: str,
    home: Path,
    tmp: Path,
    inherited: Mapping[str, str],
) -> dict[str, str]:
    """The child's whole environment: nothing of the worker's leaks in but PATH.

    PYFC_* is the platform's reserved prefix (it holds broker and database URLs), so it is
    dropped even from the function's own variables.
    """
    env = {
        "PATH": inherited.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(spec.environment)
    # Ours first: a PYTHONPATH of the function's must not hide worker.child.bootstrap.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root(), spec.environment.get("PYTHONPATH", "")) if p
    )
    env.update(
        FC_FUNCTION_NAME=spec.function,
        FC_SERVICE_NAME=spec.service,
        FC_QUALIFIER=spec.qualifier,
        FC_INSTANCE_ID=instance_id,
        FC_FUNCTION_HANDLER=spec.handler,
        FC_FUNCTION_MEMORY_SIZE=str(spec.memory_size),
        FC_FUNC_CODE_PATH=str(code_dir),
        FC_REGION="local",
    )
    return {k: v for k, v in env.items() if not k.startswith("PYFC_")}


def forkable(spec: FunctionSpec, python: str, zygote: Zygote) -> bool:
    """Whether an instance of `spec` may be forked from `zygote` instead of spawned."""
    return zygote.python == python and not interpreter_settings(spec.environment)


async def _fork(
    zygote: Zygote,
    env: dict[str, str],
    code_dir: Path,
    child_sock: socket.socket,
    out_write: int,
    instance_id: str,
    spare: SpareChild | None,
    user: InstanceUser | None,
) -> ChildProcess | None:
    """The spare child made ahead if it is still there, else one forked now; None if the
    zygote cannot give one (the caller spawns then)."""
    if spare is not None:
        try:
            return spare.hand_over(env, str(code_dir), child_sock.fileno(), out_write, user)
        except OSError as e:
            log.info("instance %s: spare child gone (%s), forking one", instance_id, e)
    try:
        return await zygote.fork(env, str(code_dir), child_sock.fileno(), out_write, user)
    except ZygoteUnavailable as e:
        log.warning("instance %s: spawned, not forked (%s)", instance_id, e)
        return None


async def spawn(
    spec: FunctionSpec,
    code_dir: Path,
    instance_id: str,
    python: str,
    zygote: Zygote | None = None,
    spare: Spare[SpareChild] | None = None,
    user: InstanceUser | None = None,
) -> Spawned:
    """Start `python -m worker.child.bootstrap` for `spec`; raises OSError if it cannot start.

    With a `zygote` (of the same `python`) the child is forked from it, already imported;
    it is spawned instead when the function sets interpreter variables (PYTHONHASHSEED...)
    or the zygote is unavailable. `spare`: the workdir and child made ahead
    (`worker.spares`); the child owns the workdir from here, as one made here, and the
    spare's child is used or let go. `user`: who the child runs as (`worker.child.isolation`;
    None: the worker's uid).
    """
    spare_child = spare.child if spare is not None else None
    try:
        workdir, env = private_workdir(
            spec, code_dir, instance_id, spare.workdir if spare else None, user
        )
    except BaseException:
        if spare is not None:
            if spare_child is not None:
                spare_child.discard()
            shutil.rmtree(spare.workdir, ignore_errors=True)
        raise
    parent_sock, child_sock = socket.socketpair()
    out_read, out_write = os.pipe()
    try:
        proc = None
        if zygote is not None and forkable(spec, python, zygote):
            proc = await _fork(
                zygote, env, code_dir, child_sock, out_write, instance_id, spare_child, user
            )
        proc = proc or await asyncio.create_subprocess_exec(
            python,
            *("-u", "-X", "faulthandler", "-m", "worker.child.bootstrap"),
            *(str(child_sock.fileno()), str(os.getpid())),
            pass_fds=(child_sock.fileno(),),
            env=env,
            cwd=code_dir,
            stdin=subprocess.DEVNULL,
            # Our own pipe, not PIPE: asyncio's wait() would also wait for PIPE to close,
            # which a grandchild of the function can hold open forever.
            stdout=out_write,
            stderr=out_write,
            # Own process group: killing the instance takes what it spawned along, and
            # a Ctrl-C meant for the worker does not hit functions mid-request.
            start_new_session=True,
            # Without a user, no preexec_fn: subprocess can use vfork then.
            preexec_fn=isolation.preexec(user, os.getpid()) if user is not None else None,
        )
    except BaseException:
        parent_sock.close()
        os.close(out_read)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        child_sock.close()
        os.close(out_write)
        handed_over = spare_child is not None and proc is not None and proc is spare_child.process
        if spare_child is not None and not handed_over:
            spare_child.discard()  # not used: it exits
    joined = handed_over and spare is not None and spare.joined
    try:
        reader, writer = await asyncio.open_connection(sock=parent_sock)
    except BaseException:
        parent_sock.close()
        os.close(out_read)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Spawned(proc, reader, writer, out_read, workdir, joined)
