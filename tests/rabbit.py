"""A private RabbitMQ node for tests that stop or restart the broker.

Own node name, ports, data and log directories and plugins file, in a directory owned by
the `rabbitmq` user (the server drops to it); the machine's shared node is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.stack import free_port, wait_until

PLUGINS = "[rabbitmq_consistent_hash_exchange]."


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class OwnRabbit:
    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and the server runs as
        # the rabbitmq user.
        self.dir = Path(tempfile.mkdtemp(prefix="pyfc-rabbit-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.node = f"pyfc{uuid.uuid4().hex[:8]}@localhost"
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.dir / "enabled_plugins").write_text(PLUGINS)
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        for path in self.dir.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True)
        wait_until(lambda: _port_open(self.port), timeout, f"RabbitMQ node {self.node}", 0.2)

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"], env=self.env, capture_output=True, timeout=60
        )
        wait_until(lambda: not _port_open(self.port), 30, f"{self.node} to stop", 0.1)

    def queues(self) -> str:
        """`name ready unacked` of every queue on the node, a line each."""
        return subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, "list_queues", "name", "messages_ready",
             "messages_unacknowledged"],
            env=self.env, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip

    def close(self) -> None:
        if _port_open(self.port):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class BrokerUser:
    """A user of its own on the machine's shared node, with a random password; `url`
    reaches the node as it. Deleted on `close` (rabbitmqctl: ~3 s a call here)."""

    def __init__(self) -> None:
        self.name = f"pyfc-t-{uuid.uuid4().hex[:8]}"
        self.password = uuid.uuid4().hex
        self.url = f"amqp://{self.name}:{self.password}@127.0.0.1:5672/"
        _ctl("add_user", self.name, password=self.password)
        _ctl("set_permissions", "-p", "/", self.name, ".*", ".*", ".*")

    def close(self) -> None:
        _ctl("delete_user", self.name)


def _ctl(*args: str, password: str | None = None) -> None:
    # A password goes on stdin: a command line is readable by every local user.
    subprocess.run(
        ["rabbitmqctl", "-q", *args],
        input=None if password is None else f"{password}\n".encode(),
        check=True,
        capture_output=True,
        timeout=60,
    )
