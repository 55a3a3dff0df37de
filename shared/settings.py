"""Typed settings, built once in each role's `main` from `PYFC_*` variables (and CLI flags).

Nothing reads the environment at import time; `Settings.from_env()` is the only reader.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from shared.errors import BadRequest


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot convert {value!r} to {kind}")


SECRET_FILE = "secret"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MIN_SECRET_CHARS = 32


def _secret_file(path: Path) -> bytes:
    """Read the secret kept at `path`, creating it (0600) if there is none yet.

    Race-safe across processes: the secret is written to a private temporary file, then
    hard-linked into place, which fails if another role got there first; the loser reads
    the winner's. No reader ever sees a partly written file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=path.parent)  # mode 0600
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise BadRequest(f"the secret in {path} is damaged; delete it to make a new one")
    return secret


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) or take it as it is, then make it 0700 if it is ours.

    A directory others may write to (sticky, like /tmp) is never a data dir: left alone.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and not st.st_mode & 0o1002 and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def load_or_exit() -> Settings:
    """Settings for a role `main`: a bad `PYFC_*` value ends the process with one clear line."""
    try:
        return Settings.from_env()
    except BadRequest as e:
        raise SystemExit(f"pyfc: {e.message}") from None


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob of every role; each role uses the ones it needs."""

    data_dir: Path
    # The default reaches a local broker as guest; `pyfc up` replaces it with a user of its
    # own (pyfc/broker_user.py).
    amqp_url: str = DEFAULT_AMQP_URL
    database_url: str = ""
    blob_url: str = ""
    # Prefix of every exchange and queue: several stacks (or tests) share one broker.
    namespace: str = "pyfc"
    # The type of every durable queue: `classic` (one broker node holds each) or `quorum`
    # (replicated over a RabbitMQ cluster; deploy/ sets it). All roles must agree.
    queue_type: Literal["classic", "quorum"] = "classic"
    http_host: str = "127.0.0.1"
    http_port: int = 9000
    log_level: str = "INFO"
    # Worker: how many instances may run at once and how long an idle one is kept.
    worker_id: str = ""
    worker_slots: int = 8
    instance_idle_seconds: float = 300.0
    # Fork Python instances from a pre-imported zygote process (ms cold starts) instead of
    # spawning an interpreter each (~50 ms); spawning stays the fallback either way.
    worker_zygote: bool = True
    # Worker: work routed to this worker's warm instances waits this long in its own queue
    # (ms) before it falls back to the shared work queue (the worker is busy or dead);
    # 0 = no affinity queue (the worker takes shared work only and advertises no warm room).
    worker_affinity_ttl_ms: int = 500
    # Worker: on a clean stop (SIGTERM), how long running work may take to finish before
    # the worker disconnects and the rest goes back to the queue (keep it under the
    # orchestrator's kill timeout: Kubernetes' terminationGracePeriodSeconds is 30).
    worker_stop_grace_seconds: float = 25.0
    # Worker Prometheus endpoint (per-function instance metrics); 0 = off.
    worker_metrics_port: int = 0
    # Worker: a root worker runs each tenant's instances as uid and gid this + the tenant's
    # number, without supplementary groups; 0 = as the worker's own uid (no isolation).
    instance_uid_base: int = 100000
    # Worker: how many instance uids from the base (tenant numbers 0..count - 1; a tenant
    # past them gets no instance): the network policy below holds exactly these uids.
    instance_uid_count: int = 1_000_000
    # Worker: "restricted" installs the instance network policy at start (worker/netpolicy.py:
    # instances cannot connect to this host, link-local addresses, the broker, database and
    # blob store, but reach the gateway and the outside world), and refuses to run if it
    # cannot; "open" skips it (trusted code only). Extra destinations, comma-separated
    # `address[/prefix][:port]` (`[v6]:port`): allowed ones win over the default denials.
    instance_network: str = "restricted"
    instance_network_allow: str = ""
    instance_network_deny: str = ""
    # Worker: host directories a root worker's instances must not see (comma-separated;
    # those that exist become empty read-only tmpfs mounts in the instances' own mount
    # namespace, the zygote's for forked ones): the Unix sockets of local services, which
    # no network policy holds (a PostgreSQL `local ... trust` answers every uid). "" = none.
    instance_hidden_paths: str = (
        "/run/postgresql,/var/run/postgresql,/run/mysqld,/run/redis,/var/run/redis"
    )
    # Worker: under isolation, the most processes and threads one tenant's instances may
    # have on this host together (RLIMIT_NPROC of its uid); 0 = no limit.
    instance_max_procs: int = 2048
    # Worker: where code packages are unpacked, shared by the host's workers. Instance uids
    # read it, so it is not in the (private) data dir; default `<tmp>/pyfc-code-<euid>`.
    code_cache_dir: str = ""
    # Limits at the HTTP edge.
    max_event_bytes: int = 6 * 1024 * 1024
    max_code_bytes: int = 50 * 1024 * 1024
    # Function credentials (shared/tokens.py): the gateway URL functions invoke through
    # (default: this host's gateway), and the secret invoke tokens are signed with. Without
    # PYFC_SECRET a random one is kept in `{data_dir}/secret`, which every role of a local
    # stack shares; several hosts need one PYFC_SECRET. Never passed to function code.
    gateway_url: str = ""
    secret: str = ""
    # `/metrics` names tenants: served to loopback peers, or to holders of this token.
    metrics_token: str = ""
    # Traces: "" (off), "console", or "jsonl:<dir>" (see shared/telemetry.py).
    otel_exporter: str = ""
    # Default tenant concurrency cap for `pyfc tenant create`.
    tenant_concurrency: int = 100
    # Dispatcher: async retry backoff (base, doubling up to max) and its Prometheus port.
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    dispatcher_metrics_port: int = 0
    # Unacked deliveries one dispatcher shard may hold (async work waiting for a slot).
    dispatch_prefetch: int = 5000
    # Trigger processes: Prometheus port (0 = off; `pyfc up` runs one process per kind,
    # so give each its own port there), and how far back a timer's `missedRuns` policy
    # (once, all) looks after downtime, and at most how many runs `all` fires.
    trigger_metrics_port: int = 0
    timer_catch_up_seconds: float = 3600.0
    timer_catch_up_limit: int = 100
    # Log stores (shared/logstore.py): workers ship every line functions print or log, and
    # the per-invocation lines, to the service's store (false: nothing is shipped). A
    # worker flushes each store this often, and keeps at most this many characters
    # waiting per store (beyond that lines are dropped and counted). Retention of a store:
    # its age (RabbitMQ units: 7D, 12h, 30m) and size.
    log_store: bool = True
    log_flush_seconds: float = 0.2
    log_buffer_chars: int = 4 * 1024 * 1024
    log_max_age: str = "7D"
    log_max_bytes: int = 1024**3
    # Which exchanges of the platform's broker tenants may bind `mq` triggers to and
    # publish to (`POST /v1/messages/{exchange}`): comma-separated glob patterns where
    # `{tenant}` is the tenant's name (e.g. `{tenant}.*,shared.events`); empty = any
    # exchange but the platform's own (`{namespace}.*`, `amq.*`), which are always refused.
    mq_exchanges: str = ""
    # MQ trigger process: unacked messages one consumer of a trigger's queue may hold.
    mq_prefetch: int = 100

    @property
    def mq_exchange_patterns(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.mq_exchanges.split(",") if p.strip())

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'pyfc.db'}"

    @property
    def effective_blob_url(self) -> str:
        return self.blob_url or f"file://{self.data_dir / 'blobs'}"

    @property
    def effective_code_cache_dir(self) -> Path:
        if self.code_cache_dir:
            return Path(self.code_cache_dir)
        return Path(tempfile.gettempdir()) / f"pyfc-code-{os.geteuid()}"

    def private_data_dir(self) -> Path:
        """The data dir, created or made mode 0700: it holds the metadata DB, blobs and the
        secret, which function instances (other uids) must not read."""
        return private_dir(self.data_dir)

    @property
    def effective_gateway_url(self) -> str:
        if self.gateway_url:
            return self.gateway_url.rstrip("/")
        # A wildcard listen address is reached through loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            self.http_host, self.http_host
        )
        return f"http://{f'[{host}]' if ':' in host else host}:{self.http_port}"

    def token_secret(self) -> bytes:
        """The key invoke tokens are signed with: PYFC_SECRET, else `{data_dir}/secret`."""
        if self.secret:
            return self.secret.encode()
        return _secret_file(self.data_dir / SECRET_FILE)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `PYFC_*` variables; `overrides` (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get(f"PYFC_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = raw
        values.setdefault("data_dir", str(Path.cwd() / ".pyfc-data"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(values, cls, strict=False, dec_hook=_decode_path)
        except msgspec.ValidationError as e:
            raise BadRequest(f"invalid PYFC_* setting: {e}") from e
        if settings.instance_network not in ("restricted", "open"):
            raise BadRequest(
                "PYFC_INSTANCE_NETWORK must be restricted or open, "
                f"got {settings.instance_network!r}"
            )
        if settings.secret and len(settings.secret) < MIN_SECRET_CHARS:
            raise BadRequest(f"PYFC_SECRET must be at least {MIN_SECRET_CHARS} characters")
        if not settings.worker_id:
            settings = msgspec.structs.replace(settings, worker_id=f"w-{uuid.uuid4().hex[:8]}")
        return settings

    def child_environ(self) -> dict[str, str]:
        """The `PYFC_*` variables that give a child role process these same settings."""
        out: dict[str, str] = {}
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if field.name == "worker_id":
                continue
            out[f"PYFC_{field.name.upper()}"] = str(value)
        return out
