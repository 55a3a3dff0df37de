"""Runtime `custom`: the instance is the function's own `bootstrap` executable serving HTTP.

Function Compute's custom runtime protocol, so any language works: the worker starts
`<code>/bootstrap` with `FC_SERVER_HOST`/`FC_SERVER_PORT` in its environment and waits
until that port accepts connections; then `POST /initialize` once (only when the function
has an initializer) and `POST /invoke` per request, the event as body and the request's
metadata as `x-fc-*` headers. A 2xx answer is the result; anything else is an unhandled
error. As for Python instances (`worker.instance`), the worker enforces the timeout by
SIGKILL of the process group and memorySize by a memory cgroup when it has one (there is
no RLIMIT_AS fallback: runtimes such as V8 or Go reserve far more address space than
they use). `CustomInstance` offers the pool what `Instance` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yarl
from multidict import CIMultiDict

from shared.codepkg import BOOTSTRAP
from shared.http_trigger import HttpResponse, decode_request, encode_response
from shared.protocol import FunctionSpec, Invocation, Outcome
from worker.child import isolation
from worker.child.frames import Result
from worker.child.isolation import InstanceUser, TenantUsers
from worker.credentials import TokenIssuer
from worker.custom_protocol import (
    HOST,
    ResponseTooLarge,
    credential_headers,
    error_from_response,
    free_port,
    read_capped,
    request_headers,
)
from worker.instance import InstanceStartError, invocation_budget, tenant_user
from worker.instance_base import InstanceBase, describe_exit
from worker.limits import MemoryCgroup, detect_worker_group
from worker.outcomes import crashed, error_body, from_result, late, out_of_memory, timed_out
from worker.output import ProcessOutput
from worker.spares import new_instance_id
from worker.spawn import private_workdir

log = logging.getLogger(f"pyfc.{__name__}")

_CONNECT_POLL = 0.02
# Below common servers' idle timeout (Node's is 5 s): never reuse a connection being closed.
_KEEPALIVE = 4.0
_LOST_WAIT = 1.0  # after a dropped connection, how long the process gets to show it died


def _child_setup(
    parent_pid: int, group: MemoryCgroup | None, user: InstanceUser | None
) -> Callable[[], None]:
    """preexec_fn: be in the memory cgroup (as root) and become `user` before `bootstrap`
    runs, and die with the worker."""
    join = (lambda: group.attach(os.getpid())) if group is not None else None
    return isolation.preexec(user, parent_pid, join)


class CustomInstance(InstanceBase):
    """A running `bootstrap` process of one function version; see `start`."""

    def __init__(
        self,
        spec: FunctionSpec,
        instance_id: str,
        proc: asyncio.subprocess.Process,
        output_fd: int,
        workdir: Path,
        port: int,
        memory_group: MemoryCgroup | None,
        issuer: TokenIssuer | None = None,
    ) -> None:
        super().__init__(spec, instance_id, proc)
        self._proc: asyncio.subprocess.Process = proc
        self.port = port
        self._workdir = workdir
        self._memory_group = memory_group
        self._issuer = issuer
        self._session = aiohttp.ClientSession(
            f"http://{HOST}:{port}",
            connector=aiohttp.TCPConnector(
                limit=spec.instance_concurrency, keepalive_timeout=_KEEPALIVE
            ),
            timeout=aiohttp.ClientTimeout(total=None),  # ours: asyncio.timeout per request
        )
        self._in_flight = 0
        self._invoked = False
        self._kill_reason = ""  # why we killed it, for the other requests it was running
        self._output = ProcessOutput(output_fd, instance_id)
        self._exited = asyncio.Event()
        self._exit_task = asyncio.create_task(self._watch_exit())

    @classmethod
    async def start(
        cls,
        spec: FunctionSpec,
        code_dir: Path,
        *,
        memory_cgroups: bool = True,
        issuer: TokenIssuer | None = None,
        users: TenantUsers | None = None,
    ) -> CustomInstance:
        """Spawn `bootstrap`, wait until it listens, and call its `/initialize` if configured.

        With an `issuer`, `FC_GATEWAY_URL` is in its environment and each `/invoke` carries
        an invoke token and the lineage (`credential_headers`). `users` (default: the
        worker's, `worker.child.isolation`) says which uid it runs as.

        Raises `InstanceStartError` (InstanceStartFailed, InstanceCrashed,
        InitializationTimeout, or the initializer's own errorType).
        """
        bootstrap = code_dir / BOOTSTRAP
        if not os.access(bootstrap, os.X_OK):
            raise InstanceStartError(
                "InstanceStartFailed", f"{BOOTSTRAP} is missing or not executable in the package"
            )
        try:
            user = tenant_user(spec, users)
        except ValueError as e:
            raise InstanceStartError("InstanceStartFailed", str(e)) from e
        instance_id = new_instance_id()
        group = await _memory_group(instance_id, spec.memory_size) if memory_cgroups else None
        port = free_port()
        try:
            workdir, env = private_workdir(spec, code_dir, instance_id, user=user)
        except OSError as e:
            if group is not None:
                await asyncio.to_thread(group.remove)
            raise InstanceStartError("InstanceStartFailed", f"no workdir: {e}") from e
        # Those two serve worker.child.bootstrap; a custom runtime gets only the function's own.
        for name in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
            if name in spec.environment:
                env[name] = spec.environment[name]
        env.update(FC_SERVER_HOST=HOST, FC_SERVER_PORT=str(port), FC_RUNTIME="custom")
        if issuer is not None:
            env["FC_GATEWAY_URL"] = issuer.gateway_url
        out_read, out_write = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                # Relative to cwd: its path, which names the code's digest, stays out of
                # the `/proc/<pid>/cmdline` every uid can read.
                f"./{BOOTSTRAP}",
                env=env,
                cwd=code_dir,
                stdin=subprocess.DEVNULL,
                stdout=out_write,  # our pipe, not PIPE: see worker.spawn
                stderr=out_write,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid(), group, user),
            )
        except (OSError, subprocess.SubprocessError) as e:  # the latter: preexec_fn failed
            os.close(out_read)
            shutil.rmtree(workdir, ignore_errors=True)
            if group is not None:
                await asyncio.to_thread(group.remove)
            raise InstanceStartError("InstanceStartFailed", f"cannot run {BOOTSTRAP}: {e}") from e
        finally:
            os.close(out_write)
        self = cls(spec, instance_id, proc, out_read, workdir, port, group, issuer)
        try:
            await self._initialize()
        except BaseException:
            self.kill()
            await self.wait_closed()
            raise
        return self

    async def _initialize(self) -> None:
        spec, started = self.spec, time.monotonic()
        try:
            async with asyncio.timeout(spec.initialization_timeout):
                await self._wait_listening()
                if spec.initializer:
                    await self._call_initializer()
        except TimeoutError:
            self._output.read()
            raise InstanceStartError(
                "InitializationTimeout",
                f"{BOOTSTRAP} did not listen on port {self.port} and initialize within "
                f"{spec.initialization_timeout:g}s",
                log=self._output.tail(0),
            ) from None
        except aiohttp.ClientError as e:
            raise await self._start_crashed(f"connection lost during /initialize: {e}") from None
        self.init_duration_ms = (time.monotonic() - started) * 1000

    async def _wait_listening(self) -> None:
        while True:
            if self._exited.is_set():
                raise await self._start_crashed(f"before listening on port {self.port}")
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                await asyncio.sleep(_CONNECT_POLL)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _call_initializer(self) -> None:
        headers = request_headers(self.spec, f"init-{self.instance_id}")
        async with self._session.post("/initialize", data=b"", headers=headers) as response:
            body = await response.read()
        self._output.read()
        if not 200 <= response.status < 300:
            error_type, message, trace = error_from_response(response.status, body)
            raise InstanceStartError(error_type, message, trace, log=self._output.tail(0))

    async def _start_crashed(self, when: str) -> InstanceStartError:
        await self._settle(f"it failed {when}")
        code = self._proc.returncode
        reason = describe_exit(code) if code is not None else "stopped answering"
        return InstanceStartError(
            "InstanceCrashed", f"{BOOTSTRAP} {reason} {when}", log=self._output.tail(0)
        )

    async def _settle(self, why: str) -> None:
        """After a broken connection: let a dying process show its exit status, or kill it
        (a server that drops requests serves no one else); then wait until it is gone."""
        try:
            async with asyncio.timeout(_LOST_WAIT):
                await self._exited.wait()
        except TimeoutError:
            self._kill_reason = self._kill_reason or why
            self.kill()
        await self.wait_closed()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def invoke(self, inv: Invocation) -> Outcome:
        """POST `inv` to `/invoke`; function failures come back as an Outcome, not raised."""
        now = time.time()
        budget = invocation_budget(self.spec.timeout, inv.deadline, now)
        if budget <= 0:
            return late(inv, self.instance_id)
        if not self._alive:
            return crashed(inv, self.instance_id, "instance is not running", cold=False)
        cold, self._invoked = not self._invoked, True
        headers = request_headers(self.spec, inv.id)
        if inv.traceparent:
            headers["traceparent"] = inv.traceparent
        if self._issuer is not None:
            token = self._issuer.token(self.spec, inv.lineage, now + budget)
            headers.update(credential_headers(self.spec, inv.lineage, token))
        mark, started = self._output.offset, time.monotonic()
        self._in_flight += 1
        try:
            async with asyncio.timeout(budget):
                if inv.http:
                    # An HTTP trigger's request goes to the server as it came (FC's rule
                    # for custom runtimes); whatever it answers is the response.
                    status, body = 200, await self._forward(inv, headers)
                else:
                    async with self._session.post(
                        "/invoke", data=inv.payload, headers=headers
                    ) as r:
                        status, body = r.status, await read_capped(r)
        except TimeoutError:
            log.info("instance %s killed: %s ran past %.3gs", self.instance_id, inv.id, budget)
            self._kill_reason = self._kill_reason or (
                f"request {inv.id} on it timed out after {round(budget, 3):g}s"
            )
            self.kill()
            await self.wait_closed()
            elapsed = (time.monotonic() - started) * 1000
            return timed_out(inv, self.instance_id, budget, elapsed, cold=cold)
        except aiohttp.ClientError as e:
            return await self._lost(inv, e, mark, cold=cold)
        except ResponseTooLarge as e:  # the connection is dropped; the process may go on
            status, body = 502, error_body("ResponseTooLarge", str(e))
        finally:
            self._in_flight -= 1
            self._last_used = time.monotonic()
        self._output.read()  # what it printed before answering is in the pipe by now
        result = Result(
            request_id=inv.id,
            ok=200 <= status < 300,
            body=body,
            log=self._output.tail(mark),
            duration_ms=(time.monotonic() - started) * 1000,
        )
        if not result.ok:
            result.error_type, result.error_message, result.stack_trace = error_from_response(
                status, body
            )
        return from_result(inv, self.instance_id, result, cold=cold)

    async def _forward(self, inv: Invocation, fc_headers: dict[str, str]) -> bytes:
        """Send an HTTP trigger's request (`shared/http_trigger.py`) to the server with its
        own method, path, query, headers and body (plus FC's `x-fc-*`); the encoded answer."""
        request = decode_request(inv.payload)
        target = request.path + (f"?{request.query}" if request.query else "")
        headers = CIMultiDict(
            (k, v) for k, v in request.headers if k.lower() not in ("host", "content-length")
        )
        headers.update(fc_headers)
        async with self._session.request(
            request.method,
            yarl.URL(target, encoded=True),
            data=request.body,
            headers=headers,
            allow_redirects=False,
        ) as r:
            answer = HttpResponse(
                status=r.status,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in r.raw_headers],
                body=await read_capped(r),
            )
        return encode_response(answer)

    async def _lost(self, inv: Invocation, error: Exception, mark: int, *, cold: bool) -> Outcome:
        """The connection broke mid-request: the process died, or is broken and is killed."""
        await self._settle(f"it dropped request {inv.id} ({error})")
        tail = self._output.tail(mark)
        if self._out_of_memory:
            return out_of_memory(inv, self.instance_id, self.spec.memory_size, cold=cold, log=tail)
        code = self._proc.returncode
        reason = describe_exit(code) if code is not None else str(error)
        if self._kill_reason:
            reason = f"{reason}: {self._kill_reason}"
        return crashed(inv, self.instance_id, f"instance {reason}", cold=cold, log=tail)

    async def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the process group; SIGKILL it if it takes longer than `grace` to exit."""
        self._stopping = True
        self._alive = False
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._exited.wait()
        self.kill()
        await self.wait_closed()

    async def _watch_exit(self) -> None:
        await self._reaped()
        self._exited.set()
        group = self._memory_group
        # Fails requests still waiting: a grandchild might hold their sockets open.
        await self._session.close()
        self._output.close()
        await asyncio.to_thread(shutil.rmtree, self._workdir, True)
        if group is not None:
            await asyncio.to_thread(group.remove)
        self._closed.set()


async def _memory_group(instance_id: str, memory_size: int) -> MemoryCgroup | None:
    parent = detect_worker_group()
    if parent is None:
        return None
    try:
        return await asyncio.to_thread(MemoryCgroup.create, parent, instance_id, memory_size)
    except OSError as e:
        log.warning("instance %s: no memory cgroup, memorySize not enforced (%s)", instance_id, e)
        return None
