"""A real pyfc stack for tests: each role its own OS process, unique names everywhere.

Readiness is awaited on events (a health endpoint, a "ready" log line), never on sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

import aio_pika

from shared.topology import Topology, backoff_steps, delete_all

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
RETRY_BASE, RETRY_MAX = 0.2, 1.6
PG_ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def code_body(files: dict[str, str | bytes]) -> dict[str, str]:
    return {"zipFile": base64.b64encode(make_zip(files)).decode()}


class PostgresDatabase:
    """A throwaway PostgreSQL database, dropped on close."""

    def __init__(self) -> None:
        self.name = f"pyfc_t_{uuid.uuid4().hex[:12]}"
        subprocess.run([*PG_ADMIN, f"CREATE DATABASE {self.name}"], check=True)
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.name}"

    def close(self) -> None:
        subprocess.run(
            [*PG_ADMIN, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"], check=False
        )


class Stack:
    def __init__(
        self,
        root: Path,
        database: str = "sqlite",
        worker_slots: int = 4,
        amqp_url: str = AMQP_URL,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.namespace = f"t{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pg = PostgresDatabase() if database == "postgres" else None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
            "PYFC_DATA_DIR": str(root / "data"),
            # CLI profiles of the test's own (never the user's ~/.config/pyfc).
            "PYFC_CONFIG": str(root / "cli-config.toml"),
            "PYFC_AMQP_URL": amqp_url,
            "PYFC_NAMESPACE": self.namespace,
            "PYFC_HTTP_PORT": str(self.port),
            "PYFC_WORKER_SLOTS": str(worker_slots),
            "PYFC_LOG_LEVEL": "INFO",
            # Short async retry backoff so retry tests take seconds, not minutes.
            "PYFC_RETRY_BASE_SECONDS": str(RETRY_BASE),
            "PYFC_RETRY_MAX_SECONDS": str(RETRY_MAX),
            # Below stop()'s 15 s before SIGKILL.
            "PYFC_WORKER_STOP_GRACE_SECONDS": "10",
            **instance_uids(),
        }
        if self.pg:
            self.env["PYFC_DATABASE_URL"] = self.pg.url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._counter = 0
        # process name -> worker id (names its affinity queue, deleted at stop)
        self.worker_ids: dict[str, str] = {}

    @property
    def database_url(self) -> str:
        """The metadata store the stack's roles use (to open it from a test)."""
        if self.pg:
            return self.pg.url
        return f"sqlite+aiosqlite:///{self.root / 'data' / 'pyfc.db'}"

    # --- processes ------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def spawn(
        self,
        module: str,
        name: str | None = None,
        extra_env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> str:
        if name is None:
            self._counter += 1
            name = f"{module}-{self._counter}"
        log = open(self.log_path(name), "wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return name

    def wait_log(self, name: str, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs(name)}")
            return text in self.log_path(name).read_text(errors="replace")

        wait_until(seen, timeout, f"{name!r} to log {text!r}")

    def logs(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")[-8000:]

    def start_worker(self, extra_env: dict[str, str] | None = None) -> str:
        worker_id = (extra_env or {}).get("PYFC_WORKER_ID") or f"w-{uuid.uuid4().hex[:8]}"
        name = self.spawn("worker", extra_env={**(extra_env or {}), "PYFC_WORKER_ID": worker_id})
        self.worker_ids[name] = worker_id
        self.wait_log(name, "ready")
        return name

    def start(self, workers: int = 1) -> Stack:
        self.spawn("gateway", "gateway")
        self.wait_healthy()
        self.spawn("dispatcher", "dispatcher")
        for _ in range(workers):
            self.start_worker()
        self.wait_log("dispatcher", "ready")
        return self

    def start_timers(self, name: str = "timer-1") -> str:
        """A `pyfc trigger timer` process, once it serves its triggers."""
        self.spawn("triggers", name, args=["timer"])
        self.wait_log(name, "timer triggers ready")
        return name

    def start_trigger(
        self, kind: str, name: str = "", extra_env: dict[str, str] | None = None
    ) -> str:
        """A `pyfc trigger <kind>` process, once it serves its triggers."""
        name = name or f"{kind}-1"
        self.spawn("triggers", name, args=[kind], extra_env=extra_env)
        self.wait_log(name, f"{kind} triggers ready")
        return name

    def start_gateway(self, name: str) -> str:
        """Another gateway replica on a port of its own; returns its base URL."""
        port = free_port()
        self.spawn("gateway", name, extra_env={"PYFC_HTTP_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(name=name, url=url)
        return url

    def wait_healthy(self, timeout: float = 30.0, name: str = "gateway", url: str = "") -> None:
        url = url or self.url

        def healthy() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.logs(name)}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(healthy, timeout, "gateway /healthz")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "pyfc", *args],
            env=self.env,
            input=input,
            capture_output=True,
            check=check,
            timeout=60,
        )

    def create_tenant(self, name: str | None = None) -> tuple[str, str]:
        name = name or f"tenant-{uuid.uuid4().hex[:8]}"
        out = json.loads(self.cli("tenant", "create", name, "--json").stdout)
        return out["tenant"], out["apiKey"]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"{name} needed SIGKILL to stop:\n{self.logs(name)}")
        if on_shared_broker(self.env["PYFC_AMQP_URL"]):  # a private broker goes away whole
            asyncio.run(delete_namespace(self.namespace, list(self.worker_ids.values())))
        if self.pg:
            self.pg.close()
        remove_network_policy(self.env)


def instance_uids() -> dict[str, str]:
    """A uid range of the stack's own (the workers' network policy holds exactly it), so
    stacks running at once on this host, in this run or another, never share a policy."""
    base = 1_000_000 + secrets.randbelow(40_000) * 100_000
    return {"PYFC_INSTANCE_UID_BASE": str(base), "PYFC_INSTANCE_UID_COUNT": "10000"}


def remove_network_policy(env: dict[str, str]) -> None:
    """Remove the table a stack's workers installed (a worker leaves it on purpose)."""
    if os.geteuid() == 0 and shutil.which("nft"):
        table = f"pyfc_{env['PYFC_INSTANCE_UID_BASE']}"
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, check=False)


def on_shared_broker(url: str) -> bool:
    """Whether `url` (or one of its comma-separated node URLs) reaches the machine's shared
    node (as guest or a user of a test's)."""
    return any(
        (parts.hostname, parts.port or 5672) == ("127.0.0.1", 5672)
        for parts in map(urllib.parse.urlsplit, url.split(","))
    )


async def delete_namespace(namespace: str, worker_ids: Sequence[str] = ()) -> None:
    """Delete a namespace's queues and exchanges; affinity queues of workers not named
    (`pyfc up` picks their ids) expire by themselves."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        # The delay queues of the tests' short backoff and of the defaults (`pyfc up`).
        delays = {*backoff_steps(RETRY_BASE, RETRY_MAX), *backoff_steps(1.0, 300.0)}
        channel = await connection.channel()
        await delete_all(channel, Topology(namespace), sorted(delays), worker_ids)
        for name in await asyncio.to_thread(log_streams, namespace):
            await channel.queue_delete(name)


def log_streams(namespace: str) -> list[str]:
    """The log store streams of a namespace (named by tenant and store, so listed)."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "list_queues", "name", "-q", "--no-table-headers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [q for q in out.split() if q.startswith(f"{namespace}.logs.")]
