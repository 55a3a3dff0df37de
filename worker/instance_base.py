"""What the pool reads of any instance, Python or custom runtime: identity, slots, liveness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from shared.protocol import FunctionSpec
from worker.limits import MemoryCgroup
from worker.spawn import ChildProcess

log = logging.getLogger(f"pyfc.{__name__}")

# How long to wait for a SIGKILLed process to be reaped before reporting it as hung.
EXIT_WAIT_SECONDS = 10.0


def describe_exit(returncode: int) -> str:
    """Human wording of a child's exit status (negative = killed by that signal)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


class InstanceBase:
    """Identity, request-slot accounting and process state shared by every instance kind."""

    def __init__(self, spec: FunctionSpec, instance_id: str, proc: ChildProcess) -> None:
        self.spec = spec
        self.instance_id = instance_id
        self.init_duration_ms = 0.0
        # Requests the pool has promised to this instance (in flight or about to be).
        self.reserved = 0
        # Kept warm by a provision config (worker/provision.py); the pool never evicts or
        # reaps it while this is set.
        self.provisioned = False
        self._proc = proc
        self._alive = True
        # Set when we stop or kill it ourselves: its exit is then expected, not a crash.
        self._stopping = False
        self._last_used = time.monotonic()
        # Set by the subclass's exit watcher once the process is reaped and cleaned up.
        self._closed = asyncio.Event()
        # The instance's memory cgroup (memorySize), when it has one; removed at exit.
        self._memory_group: MemoryCgroup | None = None
        self._out_of_memory = False

    @property
    def alive(self) -> bool:
        """False once the process died, was killed or is being stopped: never reuse it then."""
        return self._alive

    @property
    def in_flight(self) -> int:
        """Requests currently running on this instance."""
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """True while at least one request is in flight on this instance."""
        return self.in_flight > 0

    @property
    def room(self) -> int:
        """How many more requests the pool may promise this instance."""
        return self.spec.instance_concurrency - self.reserved

    @property
    def last_used(self) -> float:
        """`time.monotonic()` when the last request finished (or the instance started)."""
        return self._last_used

    @property
    def pid(self) -> int:
        """The process id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited."""
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the process and everything it spawned; cleanup follows in the exit watcher."""
        self._stopping = True  # on purpose: not worth a warning when it exits
        self._sigkill()

    def _sigkill(self) -> None:
        self._alive = False
        if self._proc.returncode is None:  # not reaped: the pid (and group id) is still ours
            # os.kill, not Popen.kill: that polls first and would reap the child under
            # asyncio's child watcher, which then reports exit code 255.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)  # before setsid ran in the child

    async def _reaped(self) -> int:
        """Wait for the process to exit; kill whatever it spawned, learn whether it went over
        its memorySize, and warn unless we stopped it ourselves. Its exit status."""
        returncode = await self._proc.wait()
        self._alive = False
        # Whatever the function spawned dies with it (the group id cannot be reused while
        # members remain, so this cannot hit a stranger).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        group = self._memory_group
        if group is not None and not self._stopping:
            self._out_of_memory = await asyncio.to_thread(group.out_of_memory)
        if not self._stopping:
            log.warning(
                "instance %s %s%s",
                self.instance_id,
                describe_exit(returncode),
                " (over its memorySize)" if self._out_of_memory else "",
            )
        return returncode

    async def exited(self) -> None:
        """Return once the process has exited and been cleaned up, however long it runs."""
        await self._closed.wait()

    async def wait_closed(self) -> bool:
        """Wait until the process exited and its resources are released; False if it hangs."""
        try:
            async with asyncio.timeout(EXIT_WAIT_SECONDS):
                await self._closed.wait()
        except TimeoutError:
            log.error("instance %s (pid %d) did not exit after SIGKILL", self.instance_id, self.pid)
            return False
        return True
