"""A private three-node RabbitMQ cluster for the high-availability tests.

Each node is a `tests.rabbit.OwnRabbit`: its own node name, AMQP and distribution ports,
data, log and plugins directories (owned by the `rabbitmq` user the server drops to).
The nodes share one Erlang cookie (that user's, as every node it runs does), start
together, and the second and third `join_cluster` the first. The machine's shared node
is never touched.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.rabbit import OwnRabbit, _port_open
from tests.stack import wait_until


class ClusterNode(OwnRabbit):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self.env["RABBITMQ_NODENAME"] = node

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """`rabbitmqctl -n <this node> args...`; its output (raises on failure)."""
        out = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)}: {out.stderr}")
        return out.stdout

    def pid(self) -> int:
        return int(Path(self.env["RABBITMQ_PID_FILE"]).read_text().strip())

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM: no goodbye to its peers or its clients."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _port_open(self.port), 30, f"{self.node} to die", 0.05)

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)
        # The port opens before the node finished booting (plugins, its queues).
        self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)


class RabbitCluster:
    def __init__(self, size: int = 3) -> None:
        prefix = f"pyfc{uuid.uuid4().hex[:6]}"
        self.nodes = [ClusterNode(f"{prefix}-{i}@localhost") for i in range(size)]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, the first node first (PYFC_AMQP_URL)."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> float:
        """Start the nodes together and cluster them; seconds it took."""
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
            list(pool.map(self._join, self.nodes[1:]))
        self.wait_healthy()
        return time.monotonic() - started

    def _join(self, node: ClusterNode) -> None:
        node.ctl("stop_app")
        node.ctl("join_cluster", self.nodes[0].node)
        node.ctl("start_app")

    def running(self, via: ClusterNode | None = None) -> set[str]:
        """The nodes the cluster reports running (asked of `via`, else the first live)."""
        via = via or next(node for node in self.nodes if _port_open(node.port))
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def wait_healthy(self, timeout: float = 60) -> None:
        want = {node.node for node in self.nodes}
        wait_until(lambda: self.running() >= want, timeout, "all nodes running", 0.5)

    def quorum_members_online(self, prefix: str, via: ClusterNode | None = None) -> dict[str, int]:
        """Per quorum queue whose name starts with `prefix`: how many members are online."""
        via = via or next(node for node in self.nodes if _port_open(node.port))
        out = via.ctl("list_queues", "name", "type", "online", "--no-table-headers")
        online = {}
        for line in out.splitlines():
            name, kind, members = ([*line.split("\t"), "", ""])[:3]
            if name.startswith(prefix) and kind == "quorum":
                online[name] = members.count("@")
        return online

    def save_logs(self, dest: Path) -> None:
        """Copy every node's log directory under `dest` (a failure's evidence outlives the
        nodes' directories)."""
        for node in self.nodes:
            shutil.copytree(node.dir / "log", dest / node.node, dirs_exist_ok=True)

    def close(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.close(), self.nodes))
