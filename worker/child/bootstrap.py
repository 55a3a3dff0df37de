"""Entry of a function instance child process: `python -m worker.child.bootstrap <fd> <parent-pid>`.

Imports the user's handler once, runs the initializer once, then serves `Invoke` frames
from the parent over the socket `<fd>` until `Shutdown` or EOF. Only stdlib, msgspec and
`worker.child.frames` / `worker.child.context` are imported here: every millisecond counts in a cold
start, and user code must not find broker or database clients loaded in its process.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import msgspec

from worker.child.capture import capturing, install, setup_logging
from worker.child.context import (
    Credentials,
    FCContext,
    FunctionMeta,
    InvocationLineage,
    ServiceMeta,
    Tracing,
)
from worker.child.frames import FrameSocket, Init, InitDone, Invoke, Result, Shutdown

_PR_SET_PDEATHSIG = 1
_SIGKILL = 9
_ALLOWED = "bytes, str, dict, list, int, float, bool or None"


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL us when the worker dies, and exit if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    # Checked after prctl: a parent that died before the call would never signal us.
    if os.getppid() != parent_pid:
        os._exit(1)


_M_ARENA_MAX = -8
_MALLOC_ARENAS = 2
_THREAD_STACK_BYTES = 2 * 1024 * 1024  # worker.limits.THREAD_STACK_MB


def _limit_address_space(limit: int) -> None:
    """memorySize without a cgroup: over `limit` bytes of address space, MemoryError.

    Address space is not memory: cap what glibc reserves without using (a 64 MB arena per
    thread, 8 MB stacks) so the limit tracks what the function allocates.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)
    threading.stack_size(_THREAD_STACK_BYTES)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def user_trace(exc: BaseException) -> list[str]:
    """Traceback lines of `exc` without our own frames or importlib's machinery."""
    frames = [
        fs
        for fs in traceback.extract_tb(exc.__traceback__)
        if fs.filename != __file__ and not fs.filename.startswith("<frozen ")
    ]
    return traceback.format_list(frames)


def to_body(value: object) -> bytes:
    """The response body for a handler's return value (FC's rules, JSON for data)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list | tuple | int | float | bool):
        return msgspec.json.encode(value)
    raise TypeError(f"handler returned {type(value).__name__}; return {_ALLOWED}")


class _InitFailure(Exception):
    def __init__(self, error_type: str, message: str, trace: list[str]) -> None:
        super().__init__(message)
        self.error_type, self.message, self.trace = error_type, message, trace


def _resolve(module: Any, name: str, what: str, spec: str) -> Callable[..., Any]:
    fn = getattr(module, name, None)
    if not callable(fn):
        raise _InitFailure(
            "FunctionNotFound", f"{what} {spec!r}: module has no callable {name!r}", []
        )
    return fn  # type: ignore[no-any-return]


def _import(spec: str, what: str) -> Callable[..., Any]:
    """`pkg.module.func` → the function, with a clear error for each way it can be wrong."""
    module_name, _, name = spec.rpartition(".")
    if not module_name or not name:
        raise _InitFailure("FunctionNotFound", f"{what} {spec!r} is not 'module.function'", [])
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise _InitFailure(type(e).__name__, f"{what} {spec!r}: {e}", user_trace(e)) from e
    return _resolve(module, name, what, spec)


class Runtime:
    """One imported function and the metadata its contexts share."""

    def __init__(self, init: Init) -> None:
        self.init = init
        self.function = FunctionMeta(
            init.function, init.handler, init.memory, init.timeout, init.initializer
        )
        self.service = ServiceMeta(init.service, init.log_store, init.qualifier, init.version)
        # Outside a request (initializer, pre_stop) there is no token to hand out.
        self.no_credentials = Credentials()
        self.handler = _import(init.handler, "handler")
        # Created on the first async call only (asyncio is slow to import). With
        # instanceConcurrency > 1 it runs forever in its own thread and request threads
        # hand their coroutines to it, so all async requests share one loop.
        self._loop: Any = None
        self._loop_lock = threading.Lock()
        # One request at a time: the handler runs in the main thread and stray threads'
        # output belongs to the request running.
        self.serial = init.instance_concurrency <= 1

    def context(self, request_id: str, deadline: float, req: Invoke | None = None) -> FCContext:
        """A fresh `context` for one call: a request `req`, or the initializer or pre_stop."""
        if req is None:
            credentials, lineage, traceparent = self.no_credentials, None, ""
        else:
            token = req.security_token
            credentials = Credentials(self.init.tenant, "", token) if token else self.no_credentials
            lineage = InvocationLineage(req.trace_id, req.hops, req.origin)
            traceparent = req.traceparent
        return FCContext(
            request_id=request_id,
            deadline=deadline,
            tenant=self.init.tenant,
            instance_id=self.init.instance_id,
            function=self.function,
            service=self.service,
            credentials=credentials,
            tracing=Tracing(traceparent),
            lineage=lineage,
            gateway_url=self.init.gateway_url,
        )

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn`; an `async def` one runs to completion on one persistent event loop."""
        value = fn(*args)
        if not isinstance(value, Awaitable):
            return value
        loop = self._event_loop()
        if self.serial:
            return loop.run_until_complete(_awaited(value))
        import asyncio

        # The task copies this thread's context, so the request's capture follows it.
        return asyncio.run_coroutine_threadsafe(_awaited(value), loop).result()

    def _event_loop(self) -> Any:
        with self._loop_lock:
            if self._loop is None:
                import asyncio

                self._loop = asyncio.new_event_loop()
                if self.serial:
                    asyncio.set_event_loop(self._loop)
                else:
                    threading.Thread(
                        target=self._loop.run_forever, name="pyfc-event-loop", daemon=True
                    ).start()
            return self._loop

    def invoke(self, req: Invoke) -> Result:
        """Run the handler once, capturing its output; never raises for the user's errors."""
        ctx = self.context(req.request_id, req.deadline, req)
        ctx.retry_count = req.attempt - 1
        started = time.perf_counter()
        with capturing(req.request_id, shared=self.serial) as capture:
            try:
                if req.http:
                    from worker.child import web  # on first use: plain events never need it

                    body = web.serve(req.http, self.handler, req.payload, ctx, self.call)
                else:
                    body = to_body(self.call(self.handler, req.payload, ctx))
                result = Result(request_id=req.request_id, ok=True, body=body)
            except BaseException as e:  # the function's failure is its result, not our crash
                result = Result(
                    request_id=req.request_id,
                    ok=False,
                    error_type=type(e).__name__,
                    error_message=str(e),
                    stack_trace=user_trace(e),
                )
        result.duration_ms = (time.perf_counter() - started) * 1000
        result.log = capture.tail()
        result.lines = capture.finish()
        result.max_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return result

    def pre_stop(self) -> None:
        """Run the module's `pre_stop(context)` if it has one; errors only get logged."""
        module = sys.modules.get(self.init.handler.rpartition(".")[0])
        hook = getattr(module, "pre_stop", None)
        if callable(hook):
            try:
                self.call(hook, self.context("", 0.0))
            except Exception:
                traceback.print_exc()


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def start(init: Init) -> tuple[Runtime | None, InitDone]:
    """Import the handler and run the initializer, capturing output and any failure."""
    started = time.perf_counter()
    runtime: Runtime | None = None
    with capturing(init.instance_id, shared=True) as capture:
        try:
            sys.path.insert(0, init.code_dir)
            runtime = Runtime(init)
            if init.initializer:
                initializer = _import(init.initializer, "initializer")
                deadline = time.time() + init.initialization_timeout
                runtime.call(initializer, runtime.context("", deadline))
            done = InitDone(ok=True)
        except _InitFailure as e:
            runtime = None
            done = InitDone(ok=False, error_type=e.error_type, error_message=e.message)
            done.stack_trace = e.trace
        except BaseException as e:  # the initializer's failure, reported to the parent
            runtime = None
            done = InitDone(ok=False, error_type=type(e).__name__, error_message=str(e))
            done.stack_trace = user_trace(e)
    done.duration_ms = (time.perf_counter() - started) * 1000
    done.log = capture.tail()
    return runtime, done


def _serial(conn: FrameSocket, runtime: Runtime) -> Callable[[Invoke], None]:
    def run(req: Invoke) -> None:
        conn.write(runtime.invoke(req))

    return run


def _concurrent(conn: FrameSocket, runtime: Runtime) -> Callable[[Invoke], None]:
    from concurrent.futures import ThreadPoolExecutor

    threads = ThreadPoolExecutor(runtime.init.instance_concurrency, "pyfc-request")
    write_lock = threading.Lock()

    def answer(req: Invoke) -> None:
        result = runtime.invoke(req)
        try:
            with write_lock:
                conn.write(result)
        except OSError:  # the parent is gone or dropped us: nobody reads results now
            _exit(0)

    def run(req: Invoke) -> None:
        threads.submit(answer, req)

    return run


def serve(conn: FrameSocket, runtime: Runtime) -> NoReturn:
    """Answer frames until Shutdown or until the parent closes the socket.

    With instanceConcurrency 1 each request runs here, in the main thread. Above that
    this loop only reads: requests run in a pool of that many threads (async handlers
    on the shared event loop), and results are written under a lock, whole frames each.
    """
    run = _serial(conn, runtime) if runtime.serial else _concurrent(conn, runtime)
    while True:
        frame = conn.read()
        if isinstance(frame, Invoke):
            run(frame)
        elif isinstance(frame, Shutdown):
            runtime.pre_stop()
            _exit(0)
        else:  # EOF: the worker is gone or dropped us; nobody would read a result
            _exit(0)


def _exit(code: int) -> NoReturn:
    # os._exit: threads the function left running must not keep the instance alive.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def prepare() -> None:
    """Everything an instance sets up before it knows its function (a zygote's spare child
    does it before it is handed out): output capture, logging, warm code paths."""
    install()
    setup_logging()


def warm_up() -> None:
    """Run, once and on nothing, the code paths a cold start runs, so that a zygote's spare
    child pays their copy-on-write page faults (~2.5 us each, a few hundred) before it is
    handed out rather than during the start. Leaves no trace a function could see."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(saved)
    os.chdir(os.getcwd())
    sys.path[:] = list(sys.path)
    ours, theirs = socket.socketpair()
    try:
        sender, receiver = FrameSocket(ours), FrameSocket(theirs)
        init = Init(handler="", function="", service="", tenant="", instance_id="", code_dir="")
        sender.write(init)
        receiver.read()
        sender.write(Invoke(request_id="", payload=b"", deadline=0.0))
        receiver.read()
        receiver.write(InitDone(ok=True))
        receiver.write(Result(request_id="", ok=True, body=to_body({})))
        sender.read()
        sender.read()
    finally:
        ours.close()
        theirs.close()
    runtime = Runtime.__new__(Runtime)
    runtime.init = init
    runtime.function = FunctionMeta("", "", 0, 0.0, None)
    runtime.service = ServiceMeta("", "", "", "")
    runtime.no_credentials = Credentials()
    with capturing("", shared=True):
        print("", end="")
        logging.getLogger().debug("")
        runtime.context("", 0.0, Invoke(request_id="", payload=b"", deadline=0.0))
        _warm_up_import()


_WARM_UP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warm_up")
_WARM_UP_MODULE = "pyfc_warm_up_handler"


def _warm_up_import() -> None:
    """Import a small handler module from a directory of its own, as `start` imports the
    function's from the code directory, then forget it."""
    sys.path.insert(0, _WARM_UP_DIR)
    try:
        module = importlib.import_module(_WARM_UP_MODULE)
        module.handler(b"", None)
        # Compiled too: a wheel's installer may have left this module a .pyc.
        with open(module.__file__ or "", "rb") as f:
            compile(f.read(), "<warm-up>", "exec")
    finally:
        sys.modules.pop(_WARM_UP_MODULE, None)
        sys.path.remove(_WARM_UP_DIR)
        sys.path_importer_cache.pop(_WARM_UP_DIR, None)


def run(sock: socket.socket) -> NoReturn:
    """Be an instance on the frame socket `sock`, once `prepare` ran: read Init, import the
    handler, run the initializer, then serve until Shutdown or EOF."""
    conn = FrameSocket(sock)
    first = conn.read()
    if not isinstance(first, Init):
        _exit(2)
    if first.address_space_limit:
        _limit_address_space(first.address_space_limit)
    runtime, done = start(first)
    conn.write(done)
    if runtime is None:
        _exit(1)
    serve(conn, runtime)


def main(argv: list[str]) -> NoReturn:
    """Child entry point; see the module docstring for the arguments."""
    fd, parent_pid = int(argv[1]), int(argv[2])
    _die_with_parent(parent_pid)
    sock = socket.socket(fileno=fd)
    # Processes the function spawns must not hold our socket open after we die.
    sock.set_inheritable(False)
    prepare()
    run(sock)


if __name__ == "__main__":
    main(sys.argv)
