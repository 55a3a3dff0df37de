"""`pyfc up`: every role as its own OS process, supervised; Ctrl-C stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp
import msgspec

from pyfc.broker_user import PASSWORD_FILE, local_broker_url, user_name
from shared.broker import connect
from shared.errors import AlreadyExists, BadRequest, Unavailable
from shared.settings import Settings
from shared.store import Store
from shared.topology import Topology, declare_all
from shared.trigger_types import PROCESS_KINDS

# The trigger kinds `pyfc up` runs, a process each.
TRIGGER_KINDS = PROCESS_KINDS

# Beyond the workers' own grace for running work (PYFC_WORKER_STOP_GRACE_SECONDS).
STOP_GRACE_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0
CREDENTIALS_FILE = "credentials"


def command_name() -> str:
    """How the person who ran us can run `pyfc` again (it may not be on PATH)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "pyfc" and shutil.which("pyfc") != str(argv0.resolve()):
        with contextlib.suppress(ValueError):
            return str(argv0.resolve().relative_to(Path.cwd()))
        return str(argv0)
    return "pyfc"


def say(message: str) -> None:
    print(f"pyfc: {message}", file=sys.stderr, flush=True)


async def preflight(settings: Settings) -> str | None:
    """Check the broker, migrate the store, make the default tenant; return its new key."""
    connection = await connect(settings.amqp_url, "pyfc-up")
    try:
        await declare_all(
            await connection.channel(), Topology(settings.namespace, settings.queue_type)
        )
    finally:
        await connection.close()
    store = await Store.open(settings.effective_database_url)
    try:
        await store.migrate()
        key_file = settings.data_dir / CREDENTIALS_FILE
        if key_file.exists():
            return None
        try:
            _, key = await store.create_tenant("default", settings.tenant_concurrency)
        except AlreadyExists:
            return None
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        return key
    finally:
        await store.close()


class Role:
    """One supervised child process, restarted with backoff if it dies on its own."""

    def __init__(self, name: str, module: str, env: dict[str, str], *args: str) -> None:
        self.name, self.module, self.env, self.args = name, module, env, args
        self.proc: asyncio.subprocess.Process | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = 1.0
        while not stopping.is_set():
            started = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, *self.args, env=self.env
            )
            code = await self.proc.wait()
            if stopping.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            say(f"{self.name} exited with code {code}; restarting in {backoff:.0f}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff)
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


async def wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.2)
    return False


async def up(settings: Settings, workers: int) -> int:
    settings.private_data_dir()  # 0700: functions run on this host
    try:
        settings.token_secret()  # made here once, so the roles only read it
        amqp_url, made_user = await local_broker_url(
            settings.amqp_url, settings.data_dir, settings.namespace
        )
        if made_user:
            say(
                f"broker user {user_name(settings.namespace)!r} made on the local RabbitMQ; "
                f"its password is in {settings.data_dir / PASSWORD_FILE}"
            )
        settings = msgspec.structs.replace(settings, amqp_url=amqp_url)
        new_key = await preflight(settings)
    except (BadRequest, Unavailable) as e:
        say(e.message)
        return 2
    env = {**os.environ, **settings.child_environ(), "PYFC_PARENT_PID": str(os.getpid())}
    roles = [Role("gateway", "gateway", env), Role("dispatcher", "dispatcher", env)]
    roles += [Role(f"worker-{i + 1}", "worker", env) for i in range(workers)]
    # One process per trigger kind (`pyfc trigger <kind>`).
    roles += [Role(f"trigger-{kind}", "triggers", env, kind) for kind in TRIGGER_KINDS]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    tasks = [asyncio.create_task(role.run(stopping)) for role in roles]
    base = f"http://{settings.http_host}:{settings.http_port}"
    if await wait_healthy(base + "/healthz", 60):
        say(
            f"up: gateway {base}, 1 dispatcher, {workers} worker(s), triggers "
            f"({', '.join(TRIGGER_KINDS)}); data in {settings.data_dir}"
        )
        if new_key:
            say(
                f'tenant "default" created; API key saved in {settings.data_dir / CREDENTIALS_FILE}'
            )
        cli = command_name()
        say(
            f"try: {cli} deploy docs/examples/echo --service demo --function echo && "
            f"{cli} invoke demo/echo --data hello    (Ctrl-C stops everything)"
        )
    elif not stopping.is_set():
        say(f"gateway did not answer on {base}/healthz within 60s; see the logs above")
    await stopping.wait()
    say(f"stopping (running functions get up to {settings.worker_stop_grace_seconds:g}s)...")
    for role in roles:
        role.signal(signal.SIGTERM)
    grace = settings.worker_stop_grace_seconds + STOP_GRACE_SECONDS
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for role in roles:
        role.signal(signal.SIGKILL)
    if pending:
        await asyncio.wait(pending, timeout=5)
    say("stopped")
    return 0
