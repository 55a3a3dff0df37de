"""CPU time of processes (and their descendants) from /proc, to put CPU per call per
process beside a latency: where the time of a round trip goes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on (field 3)


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` itself (0 when it is gone): the scheduler's nanoseconds summed over
    its live threads (/proc/<pid>/task/*/schedstat); clock ticks (10 ms) where those are
    not kept. Threads that have exited are not counted (pools keep theirs)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        total = 0
        for task in tasks:
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        fields = _stat(pid)
        return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def tree_seconds(pid: int) -> float:
    """CPU of `pid` and of its live descendants (a worker's zygote and instances)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid))


def broker_pid() -> int | None:
    """The RabbitMQ node's Erlang VM (read only; it is shared with others' runs)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "beam.smp":
                    return int(entry)
            except OSError:
                continue
    return None


class CpuMeter:
    """CPU seconds of named processes between `start` and `stop`; those named in `trees`
    with their descendants."""

    def __init__(self, pids: dict[str, int], trees: frozenset[str] = frozenset()) -> None:
        self.pids = dict(pids)
        self.trees = trees
        if (broker := broker_pid()) is not None:
            self.pids["rabbitmq (shared)"] = broker
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {
            name: tree_seconds(pid) if name in self.trees else cpu_seconds(pid)
            for name, pid in self.pids.items()
        }

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        self.used = {name: end[name] - self._start.get(name, 0.0) for name in end}
        return self.used

    def per_call_ms(self, calls: int) -> dict[str, float]:
        return {name: round(s / calls * 1000, 4) for name, s in self.used.items()}
