"""What the pool reads of any instance, Python or custom runtime: identity, slots, liveness."""

from __future__ import annotations

import time

from shared.protocol import FunctionSpec
from worker.spawn import ChildProcess


class InstanceBase:
    """Identity, request-slot accounting and process state shared by every instance kind."""

    def __init__(self, spec: FunctionSpec, instance_id: str, proc: ChildProcess) -> None:
        self.spec = spec
        self.instance_id = instance_id
        self.init_duration_ms = 0.0
        # Requests the pool has promised to this instance (in flight or about to be).
        self.reserved = 0
        self._proc = proc
        self._alive = True
        self._last_used = time.monotonic()

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
