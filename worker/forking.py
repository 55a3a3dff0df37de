"""The worker's side of the zygote (`worker.child.zygote`): fork instances instead of spawning them.

`Zygote.prefork` has the zygote fork a spare child ahead of demand and returns it as a
`SpareChild`; `SpareChild.hand_over` then sends it the instance's environment, cwd and fds
directly (one packet, no reply to wait for). `Zygote.fork` asks the zygote for a child
there and then, for a cold start that found no spare. Either way the child is a
`ForkedProcess`, which `Instance` uses as it would an `asyncio.subprocess.Process` (pid,
returncode, wait): the exit status arrives from the zygote, which reaps its children.

The zygote is started on first use and started again on the next use after it died; a
zygote that cannot be reached raises `ZygoteUnavailable` (an OSError), on which the caller
spawns the instance the old way, so a zygote crash never stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import worker
from worker.child.isolation import InstanceUser
from worker.child.zygote import Exited, Fork, Forked, Prefork, Ready, decode_reply, encode
from worker.spares import Spares

log = logging.getLogger(f"pyfc.{__name__}")

_REPLY_TIMEOUT = 5.0
# After the zygote died its children get SIGKILL from the kernel; how long to watch them go.
_ORPHAN_WAIT = 5.0


class ZygoteUnavailable(OSError):
    """The zygote could not be started or stopped answering; spawn the instance instead."""


def interpreter_settings(environment: Mapping[str, str]) -> list[str]:
    """The function's variables the interpreter reads only at start (PYTHONHASHSEED, ...).

    A forked instance shares the zygote's interpreter, so a function setting any of these
    must be spawned to get them. PYTHONPATH is the exception: the child rebuilds sys.path.
    """
    return sorted(k for k in environment if k.startswith("PYTHON") and k != "PYTHONPATH")


def zygote_environment(inherited: Mapping[str, str]) -> dict[str, str]:
    """The zygote's whole environment: like an instance's, nothing of the worker's but PATH.

    Each child replaces it with its own instance environment right after the fork.
    """
    return {
        "PATH": inherited.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(Path(worker.__file__).resolve().parent.parent),
    }


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _fork_request(
    env: Mapping[str, str], cwd: str, user: InstanceUser | None, hidden_by_zygote: Sequence[str]
) -> Fork:
    """The `Fork` for an instance; directories the zygote hid already (its children share
    its mount namespace) are not hidden again, in a namespace per child."""
    if user is None:
        return Fork(request_id=0, env=dict(env), cwd=cwd)
    return Fork(
        request_id=0,
        env=dict(env),
        cwd=cwd,
        uid=user.uid,
        gid=user.gid,
        max_procs=user.max_procs,
        hidden=[path for path in user.hidden if path not in hidden_by_zygote],
    )


class ForkedProcess:
    """A zygote's child, with the part of `asyncio.subprocess.Process` that `Instance` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def exited(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


class SpareChild:
    """A child the zygote forked ahead, waiting on `sock` for its `Fork` (worker.spares)."""

    def __init__(
        self, process: ForkedProcess, sock: socket.socket, hidden_by_zygote: Sequence[str] = ()
    ) -> None:
        self.process = process
        self._sock = sock
        self._hidden_by_zygote = hidden_by_zygote

    @property
    def pid(self) -> int:
        return self.process.pid

    def hand_over(
        self,
        env: Mapping[str, str],
        cwd: str,
        sock_fd: int,
        out_fd: int,
        user: InstanceUser | None = None,
    ) -> ForkedProcess:
        """Make it the instance running bootstrap on `sock_fd`, output to `out_fd`, as
        `user` (None: the zygote's uid).

        Raises OSError if it is gone (its zygote died, ...): fork one the usual way then.
        """
        try:
            if self.process.returncode is not None:
                raise ProcessLookupError(f"spare child {self.pid} has exited")
            request = _fork_request(env, cwd, user, self._hidden_by_zygote)
            socket.send_fds(self._sock, [encode(request)], [sock_fd, out_fd])
        finally:
            self._sock.close()
        return self.process

    def discard(self) -> None:
        """Not needed after all: it exits when its socket closes (the zygote reaps it)."""
        self._sock.close()


class Zygote:
    """One zygote process per worker, (re)started on demand; see the module docstring."""

    def __init__(self, python: str = sys.executable, hidden: Sequence[str] = ()) -> None:
        self.python = python
        # Directories a root zygote hides in its own mount namespace at start, for every
        # child it forks (`PYFC_INSTANCE_HIDDEN_PATHS`): no namespace per start.
        self.hidden = tuple(hidden) if os.geteuid() == 0 else ()
        self._environment = zygote_environment(os.environ)
        self._proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._replies: dict[int, asyncio.Future[ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._closed = False
        self._ready = asyncio.Event()
        # The next instance made ahead: its workdir, memory group and spare child.
        self.spares = Spares(self.prefork)

    @property
    def pid(self) -> int | None:
        """The zygote process's id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._control is not None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the zygote now unless it runs (else the first `fork` does) and wait until
        it has imported everything; raises `ZygoteUnavailable` if it does not get there."""
        async with self._lock:
            if self._control is None:
                await self._start()
            ready = self._ready
        try:
            async with asyncio.timeout(timeout):
                await ready.wait()
        except TimeoutError:
            raise ZygoteUnavailable(f"the zygote was not ready within {timeout:g}s") from None
        if self._control is None:
            raise ZygoteUnavailable("the zygote died while starting")

    async def _start(self) -> None:
        if self._closed:
            raise ZygoteUnavailable("zygote closed")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.python,
                *("-u", "-X", "faulthandler", "-m", "worker.child.zygote"),
                *(str(theirs.fileno()), str(os.getpid()), ",".join(self.hidden)),
                pass_fds=(theirs.fileno(),),
                env=self._environment,
                cwd="/",
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # the worker's Ctrl-C must not reach it
            )
        except OSError as e:
            ours.close()
            raise ZygoteUnavailable(f"cannot start the zygote: {e}") from e
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        self._ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ours, self._proc, self._ready))
        log.info("zygote started (pid %d)", self._proc.pid)

    async def fork(
        self,
        env: Mapping[str, str],
        cwd: str,
        sock_fd: int,
        out_fd: int,
        user: InstanceUser | None = None,
    ) -> ForkedProcess:
        """Fork an instance running bootstrap on `sock_fd`, its output going to `out_fd`,
        as `user` (None: the zygote's uid)."""
        request = _fork_request(env, cwd, user, self.hidden)
        return await self._request(request, [sock_fd, out_fd])

    async def prefork(self) -> SpareChild:
        """A spare child, forked now and ready to be handed an instance (see `SpareChild`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)  # a packet to a waiting child never has to wait
            process = await self._request(Prefork(request_id=0), [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return SpareChild(process, ours, self.hidden)

    async def _request(self, request: Fork | Prefork, fds: list[int]) -> ForkedProcess:
        async with self._lock:
            if self._control is None:
                await self._start()
            control = self._control
            assert control is not None
            self._next_id += 1
            request.request_id = request_id = self._next_id
            reply: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
            self._replies[request_id] = reply
        try:
            async with asyncio.timeout(_REPLY_TIMEOUT):
                await self._send(control, request, fds)
                return await reply
        except ZygoteUnavailable:
            raise
        except TimeoutError:
            self._lose(control, "did not answer a fork request")
            raise ZygoteUnavailable("the zygote did not answer") from None
        except OSError as e:
            self._lose(control, f"control socket failed: {e}")
            raise ZygoteUnavailable(f"zygote unreachable: {e}") from e
        finally:
            self._replies.pop(request_id, None)

    @staticmethod
    async def _send(control: socket.socket, request: Fork | Prefork, fds: list[int]) -> None:
        data = encode(request)
        while True:
            try:
                socket.send_fds(control, [data], fds)
                return
            except BlockingIOError:  # a burst filled the socket buffer: let the zygote read
                await asyncio.sleep(0.001)

    async def _listen(
        self, control: socket.socket, proc: asyncio.subprocess.Process, ready: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        reason = "exited"
        try:
            while data := await loop.sock_recv(control, 65536):
                self._received(decode_reply(data), ready)
        except (OSError, ValueError) as e:  # msgspec.DecodeError is a ValueError
            reason = f"broke: {e!r}"
        finally:
            self._lose(control, reason)
            control.close()
            ready.set()  # wakes `start`, which then finds no zygote
        returncode = await proc.wait()
        if not self._closed:
            log.warning("zygote (pid %d) %s, returncode %s", proc.pid, reason, returncode)

    def _received(self, message: Ready | Forked | Exited, ready: asyncio.Event) -> None:
        if isinstance(message, Forked):
            future = self._replies.get(message.request_id)
            if message.pid:  # registered here, before the Exited that may follow
                forked = self._children[message.pid] = ForkedProcess(message.pid)
                if future is not None and not future.done():
                    future.set_result(forked)
            elif future is not None and not future.done():
                error = ZygoteUnavailable(f"zygote could not fork: {message.error}")
                future.set_exception(error)
        elif isinstance(message, Exited):
            child = self._children.pop(message.pid, None)
            if child is not None:
                child.exited(message.returncode)
        else:
            ready.set()

    def _lose(self, control: socket.socket, reason: str) -> None:
        """Forget a zygote gone bad: kill it; its children die with it (PDEATHSIG).

        The listener sees the socket's EOF then, and closes it."""
        if self._control is not control:
            return
        self._control = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ZygoteUnavailable(f"zygote {reason}"))
        orphans, self._children = self._children, {}
        if orphans:
            asyncio.get_running_loop().create_task(_bury(list(orphans.values())))

    async def close(self) -> None:
        """Stop the zygote (its remaining children die with it) and start none again."""
        self._closed = True
        await self.spares.close()
        control = self._control
        if control is not None:
            self._lose(control, "closed")
        if self._listener is not None:
            _, pending = await asyncio.wait({self._listener}, timeout=_ORPHAN_WAIT)
            for task in pending:
                task.cancel()


async def _bury(orphans: list[ForkedProcess]) -> None:
    """Exit statuses for children of a dead zygote: nobody can reap them for us now."""
    deadline = time.monotonic() + _ORPHAN_WAIT
    waiting = orphans
    while waiting and time.monotonic() < deadline:
        waiting = [c for c in waiting if not _gone(c.pid)]
        if waiting:
            await asyncio.sleep(0.01)
    for child in orphans:
        if child in waiting:
            log.error("instance pid %d outlived its zygote", child.pid)
        child.exited(-signal.SIGKILL)
