"""One warm function instance, seen from the worker: a `worker.child.bootstrap` child process.

The parent talks to the child over a socketpair with `worker.child.frames`; a reader task routes
each `Result` to the waiting `invoke` by request id, and an exit watcher turns the child's
death into `InstanceCrashed` for whatever was in flight. Timeouts are enforced here, by
SIGKILL of the child's whole process group: the child cannot be trusted to stop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path

from shared.errors import PyfcError
from shared.protocol import FunctionSpec, Invocation, Outcome
from worker.child.frames import (
    FrameError,
    Init,
    InitDone,
    Invoke,
    Result,
    Shutdown,
    read_frame,
    write_frame,
)
from worker.child.isolation import InstanceUser, TenantUsers, worker_users
from worker.credentials import TokenIssuer
from worker.forking import SpareChild, Zygote
from worker.instance_base import InstanceBase, describe_exit
from worker.limits import MemoryCgroup, address_space_bytes, detect_worker_group
from worker.outcomes import crashed, from_result, late, out_of_memory, timed_out
from worker.spares import Spares, new_instance_id
from worker.spawn import ChildProcess, spawn

log = logging.getLogger(f"pyfc.{__name__}")
function_log = logging.getLogger("pyfc.function")

_RECENT_OUTPUT_LINES = 50
_MAX_OUTPUT_LINE = 64 * 1024
# SIGKILL takes effect at once unless the process is stuck in the kernel (D state).


class InstanceStartError(PyfcError):
    """An instance could not be brought up: the import, the initializer or the process failed."""

    code = "FunctionInitializationError"

    def __init__(
        self, error_type: str, message: str, stack_trace: list[str] | None = None, log: bytes = b""
    ) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.error_message = message
        self.stack_trace = stack_trace or []
        self.log = log


class InstanceCrashed(Exception):
    """The child process exited while a request was waiting for it."""

    def __init__(self, returncode: int) -> None:
        super().__init__(describe_exit(returncode))
        self.returncode = returncode


def tenant_user(spec: FunctionSpec, users: TenantUsers | None) -> InstanceUser | None:
    """Who an instance of `spec` runs as: `users`' (else the worker's) user for its tenant;
    ValueError if its number is out of range."""
    users = users if users is not None else worker_users()
    return users.user(spec.tenant_number) if users is not None else None


def invocation_budget(timeout: float, deadline: float, now: float) -> float:
    """Seconds the function may run: its own timeout, cut short by the caller's deadline."""
    return min(timeout, deadline - now) if deadline else timeout


class Instance(InstanceBase):
    """A running child process hosting one function version; see `start`."""

    def __init__(
        self,
        spec: FunctionSpec,
        instance_id: str,
        proc: ChildProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        workdir: Path,
    ) -> None:
        super().__init__(spec, instance_id, proc)
        self._reader = reader
        self._writer = writer
        self._workdir = workdir
        self._pending: dict[str, asyncio.Future[Result]] = {}
        self._address_space_limit = 0
        self._retiring = False
        # Why we killed the child ourselves, for the other requests it was running.
        self._kill_reason = ""
        self._invoked = False
        self._recent_output: deque[str] = deque(maxlen=_RECENT_OUTPUT_LINES)
        self._issuer: TokenIssuer | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._output_task: asyncio.Task[None] | None = None
        self._exit_task: asyncio.Task[None] | None = None
        # Told to make the next spare once this instance's first request is over.
        self._spares: Spares[SpareChild] | None = None

    @classmethod
    async def start(
        cls,
        spec: FunctionSpec,
        code_dir: Path,
        *,
        python: str = sys.executable,
        memory_cgroups: bool = True,
        zygote: Zygote | None = None,
        issuer: TokenIssuer | None = None,
        users: TenantUsers | None = None,
    ) -> Instance:
        """Spawn a child for `spec`, import its handler and run its initializer.

        memorySize is enforced by a cgroup of its own when the machine has a writable
        cgroup v1 memory controller (and `memory_cgroups`), else by RLIMIT_AS in the child.
        Raises `InstanceStartError` (error_type InitializationTimeout, InstanceCrashed, or
        the child's own error such as FunctionNotFound / the initializer's exception type).
        With a `zygote` the child is forked from it when it can be (see `spawn`). With an
        `issuer` each invocation hands the function an invoke token (`worker.credentials`).
        `users` (default: the worker's, `worker.child.isolation`) says which uid it runs as.
        """
        try:
            user = tenant_user(spec, users)
        except ValueError as e:
            raise InstanceStartError("InstanceStartFailed", str(e)) from e
        # A forking worker has the id, workdir, memory group and child made ahead
        # (worker.spares).
        spare = await zygote.spares.take(spec.memory_size, memory_cgroups) if zygote else None
        instance_id = spare.instance_id if spare is not None else new_instance_id()
        group = spare.group if spare is not None else None
        try:
            child = await spawn(spec, code_dir, instance_id, python, zygote, spare, user)
        except OSError as e:
            if group is not None:
                await asyncio.to_thread(group.remove)
            raise InstanceStartError("InstanceStartFailed", f"cannot spawn {python}: {e}") from e
        except BaseException:
            if group is not None:
                await asyncio.to_thread(group.remove)
            raise
        proc, reader, writer, out_read, workdir, joined = child
        self = cls(spec, instance_id, proc, reader, writer, workdir)
        self._issuer = issuer
        self._output_task = asyncio.create_task(self._forward_output(out_read))
        self._exit_task = asyncio.create_task(self._watch_exit())
        try:
            # Before Init: the child imports no user code until it has that frame.
            await self._limit_memory(memory_cgroups, group, joined)
            await self._initialize(code_dir)
        except BaseException:
            self.kill()
            await self.wait_closed()
            raise
        self._spares = zygote.spares if zygote is not None else None
        self._reader_task = asyncio.create_task(self._read_results())
        return self

    async def _limit_memory(
        self, memory_cgroups: bool, ready: MemoryCgroup | None, joined: bool = False
    ) -> None:
        """Join the child to its memory group (`ready`: made ahead; `joined`: the child
        was moved in ahead too), else RLIMIT_AS."""
        if ready is not None:
            self._memory_group = ready  # removed by the exit watcher from here on
            if joined:
                return
            try:
                # On the loop, not in a thread: one write, cheaper than the thread hop.
                ready.attach(self.pid)
                return
            except OSError as e:
                log.warning(
                    "instance %s: no memory cgroup, RLIMIT_AS instead (%s)", self.instance_id, e
                )
        parent = detect_worker_group() if memory_cgroups and ready is None else None
        if parent is not None:
            try:
                self._memory_group = await asyncio.to_thread(
                    MemoryCgroup.create, parent, self.instance_id, self.spec.memory_size
                )
                await asyncio.to_thread(self._memory_group.attach, self.pid)
                return
            except OSError as e:  # removed again by the exit watcher
                log.warning(
                    "instance %s: no memory cgroup, RLIMIT_AS instead (%s)", self.instance_id, e
                )
        self._address_space_limit = address_space_bytes(
            self.spec.memory_size, self.spec.instance_concurrency
        )

    async def _initialize(self, code_dir: Path) -> None:
        spec = self.spec
        init = Init(
            handler=spec.handler,
            initializer=spec.initializer,
            initialization_timeout=spec.initialization_timeout,
            function=spec.function,
            service=spec.service,
            qualifier=spec.qualifier,
            version=spec.version,
            memory=spec.memory_size,
            timeout=spec.timeout,
            tenant=spec.tenant,
            instance_id=self.instance_id,
            code_dir=str(code_dir),
            log_store=spec.log_store,
            instance_concurrency=spec.instance_concurrency,
            address_space_limit=self._address_space_limit,
            gateway_url=self._issuer.gateway_url if self._issuer is not None else "",
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(spec.initialization_timeout):
                await write_frame(self._writer, init)
                done = await read_frame(self._reader)
        except TimeoutError:
            raise InstanceStartError(
                "InitializationTimeout",
                f"initialization did not finish within {spec.initialization_timeout:g}s",
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, FrameError):
            self._sigkill()
            await self.wait_closed()
            output = "\n".join(self._recent_output)
            raise InstanceStartError(
                "InstanceCrashed",
                f"instance {describe_exit(self.returncode or 0)} during start",
                log=output.encode()[-4096:],
            ) from None
        if not isinstance(done, InitDone):
            raise InstanceStartError("InstanceCrashed", f"unexpected {type(done).__name__}")
        self._log_output(done.log)
        if not done.ok:
            raise InstanceStartError(
                done.error_type, done.error_message, done.stack_trace, done.log
            )
        self.init_duration_ms = (time.monotonic() - started) * 1000

    @property
    def in_flight(self) -> int:
        """Requests currently running on this instance."""
        return len(self._pending)

    async def invoke(self, inv: Invocation) -> Outcome:
        """Run `inv` on this instance; function failures come back as an Outcome, not raised."""
        now = time.time()
        budget = invocation_budget(self.spec.timeout, inv.deadline, now)
        if budget <= 0:
            return late(inv, self.instance_id)
        if not self._alive:
            return crashed(inv, self.instance_id, "instance is not running", cold=False)
        cold, self._invoked = not self._invoked, True
        deadline = now + budget
        issuer = self._issuer
        request = Invoke(
            request_id=inv.id,
            payload=inv.payload,
            deadline=deadline,
            attempt=inv.attempt,
            traceparent=inv.traceparent,
            trace_id=inv.lineage.trace_id,
            hops=inv.lineage.hops,
            origin=inv.lineage.origin,
            security_token=(
                issuer.token(self.spec, inv.lineage, deadline) if issuer is not None else ""
            ),
            http=inv.http,
        )
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[inv.id] = future
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                await write_frame(self._writer, request)
                result = await future
        except TimeoutError:
            log.info("instance %s killed: %s ran past %.3gs", self.instance_id, inv.id, budget)
            self._kill_reason = self._kill_reason or (
                f"request {inv.id} on it timed out after {round(budget, 3):g}s"
            )
            self.kill()
            await self.wait_closed()
            elapsed = (time.monotonic() - started) * 1000
            return timed_out(inv, self.instance_id, budget, elapsed, cold=cold)
        except (InstanceCrashed, ConnectionError) as e:
            self._sigkill()
            await self.wait_closed()
            tail = "\n".join(self._recent_output).encode()[-4096:]
            if self._out_of_memory:
                return out_of_memory(
                    inv, self.instance_id, self.spec.memory_size, cold=cold, log=tail
                )
            reason = describe_exit(self.returncode) if self.returncode is not None else str(e)
            if self._kill_reason:
                reason = f"{reason}: {self._kill_reason}"
            return crashed(inv, self.instance_id, f"instance {reason}", cold=cold, log=tail)
        finally:
            if self._spares is not None:  # this cold start is over: make the next spare
                self._spares.refill_now()
                self._spares = None
            self._pending.pop(inv.id, None)
            self._last_used = time.monotonic()
            if self._retiring and not self._pending:
                self.kill()
        if not result.ok and result.error_type == "MemoryError" and self._address_space_limit:
            # RLIMIT_AS hit: the process may be left half-broken, so it serves no one else.
            self._retire()
            return out_of_memory(
                inv, self.instance_id, self.spec.memory_size, cold=cold, log=result.log
            )
        return from_result(inv, self.instance_id, result, cold=cold)

    def _retire(self) -> None:
        """Take no more requests; the child is killed once those in flight have finished."""
        self._alive = False
        self._retiring = True
        if not self._pending:
            self.kill()

    async def stop(self, grace: float = 2.0) -> None:
        """Ask the child to run `pre_stop` and exit; SIGKILL it if it takes longer than grace."""
        self._stopping = True
        self._alive = False
        if self._proc.returncode is None:
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(grace):
                    await write_frame(self._writer, Shutdown())
                    await self._closed.wait()
        self.kill()
        await self.wait_closed()

    async def _read_results(self) -> None:
        try:
            while True:
                frame = await read_frame(self._reader)
                if isinstance(frame, Result):
                    future = self._pending.get(frame.request_id)
                    if future is not None and not future.done():
                        future.set_result(frame)
                else:
                    log.warning("instance %s sent %s", self.instance_id, type(frame).__name__)
        except (asyncio.IncompleteReadError, ConnectionError, FrameError) as e:
            if not self._stopping:
                log.debug("instance %s channel closed: %r", self.instance_id, e)
        # A child whose channel broke cannot answer anything more; the exit watcher cleans up.
        self._sigkill()

    async def _watch_exit(self) -> None:
        returncode = await self._reaped()
        group = self._memory_group
        crash = InstanceCrashed(returncode)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(crash)
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._writer.close()
        if self._output_task is not None:
            # The pipe closes when the child exits; give the last lines a moment to arrive.
            _, pending = await asyncio.wait({self._output_task}, timeout=1.0)
            for task in pending:
                task.cancel()
        await asyncio.to_thread(shutil.rmtree, self._workdir, True)
        if group is not None:
            await asyncio.to_thread(group.remove)
        self._closed.set()

    async def _forward_output(self, fd: int) -> None:
        """Relay the child's raw stdout/stderr (output outside requests) to the worker log."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        partial = b""
        try:
            while chunk := await reader.read(65536):
                *lines, partial = (partial + chunk).split(b"\n")
                if len(partial) > _MAX_OUTPUT_LINE:
                    lines.append(partial)
                    partial = b""
                for line in lines:
                    self._emit_line(line)
            if partial:
                self._emit_line(partial)
        finally:
            transport.close()

    def _log_output(self, output: bytes) -> None:
        for line in output.splitlines():
            self._emit_line(line)

    def _emit_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._recent_output.append(text)
        function_log.info("%s %s", self.instance_id, text)
