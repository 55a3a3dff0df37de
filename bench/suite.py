"""Every benchmark in one run: one table, a JSON file and a PNG of latency distributions.

    make bench                       # = .venv/bin/python -m bench
    .venv/bin/python -m bench [--smoke] [--only invoke,peers] [--out DIR] [--reps 3]

Each row's baseline is measured in the same run (most of them in the same minute); the
table puts the targets of issue 18 first, then the other figures, then the peers (Celery,
dramatiq) on the same broker. Values measured over repetitions are medians with the
[min-max] beside them. `--smoke` runs a few iterations of everything (for the test that
keeps this command working; its figures mean nothing). The machine's load average is
recorded before and after each benchmark: others may share the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Result, Row, markdown, table, write_json, write_png
from tests.stack import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCHES = (
    "tokens",
    "instance",
    "cold_start",
    "invoke",
    "dispatch",
    "provision",
    "control",
    "logs",
    "peers",
)
ON_STACK = ("invoke", "dispatch", "provision", "control")


@dataclass(frozen=True)
class Sizes:
    """Iteration counts: FULL takes 3.5-5.5 minutes on these 2 cores at load 4-8."""

    tokens: int
    instance: int
    instance_starts: int
    cold: int
    cold_baseline: int
    cold_spawned: int
    cold_hundred: bool
    invoke: int
    invoke_blocks: int
    dispatch: int
    decisions: int
    dispatch_reps: int
    provision_rounds: int
    provision_init: float
    control_sizes: tuple[int, ...]
    control_window: float
    control_settle: float
    peer_reps: int
    peer_tasks: int
    peer_calls: int
    logs: int = 2000
    log_lines: int = 100_000
    log_queries: int = 100


FULL = Sizes(
    tokens=50_000,
    instance=2000,
    instance_starts=10,
    cold=200,
    cold_baseline=30,
    cold_spawned=20,
    cold_hundred=True,
    invoke=3000,
    invoke_blocks=3,
    dispatch=4000,
    decisions=20000,
    dispatch_reps=3,
    provision_rounds=5,
    provision_init=0.3,
    control_sizes=(2, 20),
    control_window=6.0,
    control_settle=1.5,
    peer_reps=3,
    peer_tasks=3000,
    peer_calls=500,
)
SMOKE = Sizes(
    tokens=500,
    instance=20,
    instance_starts=1,
    cold=5,
    cold_baseline=2,
    cold_spawned=1,
    cold_hundred=False,
    invoke=20,
    invoke_blocks=1,
    dispatch=40,
    decisions=100,
    dispatch_reps=1,
    provision_rounds=1,
    provision_init=0.01,
    control_sizes=(2, 3),
    control_window=0.5,
    control_settle=0.2,
    peer_reps=1,
    peer_tasks=20,
    peer_calls=5,
    logs=40,
    log_lines=2000,
    log_queries=5,
)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def steps(sizes: Sizes, stack: Callable[[], tuple[Stack, int]]) -> dict[str, Callable[[], Result]]:
    """Each benchmark as a call (imported when it runs: the peers import Celery)."""
    s = sizes

    def tokens() -> Result:
        from bench import tokens

        return tokens.run(s.tokens)

    def instance() -> Result:
        from bench import instance

        return instance.run(s.instance, s.instance_starts)

    def cold_start() -> Result:
        from bench import cold_start

        return cold_start.run(s.cold, s.cold_baseline, s.cold_spawned, hundred_n=s.cold_hundred)

    def invoke() -> Result:
        from bench import invoke

        return invoke.run(s.invoke, s.invoke_blocks, stack=stack()[0])

    def dispatch() -> Result:
        from bench import dispatch

        return dispatch.run(s.dispatch, s.decisions, s.dispatch_reps, stack=stack()[0])

    def provision() -> Result:
        from bench import provision

        shared, port = stack()
        return provision.run(s.provision_rounds, s.provision_init, shared, port)

    def control() -> Result:
        from bench import control

        return control.run(s.control_sizes, s.control_window, stack()[0], s.control_settle)

    def logs() -> Result:
        from bench import logs

        # Two stacks of its own (log store on and off), called in alternating blocks.
        return logs.run(s.logs, 4 if s.logs >= 400 else 2, s.log_lines, s.log_queries)

    def peers() -> Result:
        from bench import peers

        return peers.run(s.peer_reps, s.peer_tasks, s.peer_calls)

    return {
        "tokens": tokens,
        "instance": instance,
        "cold_start": cold_start,
        "invoke": invoke,
        "dispatch": dispatch,
        "provision": provision,
        "control": control,
        "logs": logs,
        "peers": peers,
    }


def ordered(rows: list[Row]) -> list[Row]:
    """Issue 18's targets first, then pyfc's other figures, then the peers."""

    def key(row: Row) -> int:
        if row.target is not None and row.target.source == "18":
            return 0
        return 1 if row.subject == "pyfc" else 2

    return sorted(rows, key=key)  # stable: run order within each group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few iterations of everything")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {BENCHES}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown too")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHES if not args.only or b in args.only.split(",")]
    if unknown := set(filter(None, args.only.split(","))) - set(BENCHES):
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {BENCHES}")
    sizes = SMOKE if args.smoke else FULL
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta: dict[str, object] = {
        "started": stamp,
        "commit": commit(),
        "mode": "smoke" if args.smoke else "full",
        "sizes": sizes.__dict__,
        "cpus": os.cpu_count(),
        "load_at_start": load(),
    }
    benches: dict[str, dict[str, object]] = {}
    meta["benches"] = benches
    result = Result()
    failed: list[str] = []
    with contextlib.ExitStack() as cleanup:
        shared: list[tuple[Stack, int]] = []

        def stack() -> tuple[Stack, int]:
            """One stack for the benchmarks that need one, started when first needed."""
            if not shared:
                from bench.provision import start_stack

                tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pyfc-bench-"))
                port = free_port()
                started_stack = start_stack(Path(tmp), port, worker_slots=16)
                cleanup.callback(started_stack.stop)
                shared.append((started_stack, port))
            return shared[0]

        calls = steps(sizes, stack)
        for name in chosen:
            if name == "peers" and shared:  # the peers run without pyfc's stack beside them
                cleanup.close()
                shared.clear()
            began, load_before = time.monotonic(), load()
            print(f"[bench] {name} (load {load_before}) ...", file=sys.stderr, flush=True)
            try:
                got = calls[name]()
            except Exception:
                failed.append(name)
                traceback.print_exc()
                got = Result(rows=[Row(f"{name} FAILED (see the log)", None, "", bench=name)])
            result.merge(got)
            seconds = time.monotonic() - began
            benches[name] = {
                "seconds": round(seconds, 1),
                "load_before": load_before,
                "load_after": load(),
            }
            print(f"[bench] {name} took {seconds:.1f} s", file=sys.stderr, flush=True)
    result.rows = ordered(result.rows)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_at_end"] = load()
    meta["failed"] = failed

    print(table(result.rows))
    if args.markdown:
        print(f"\n{markdown(result.rows)}\n")
    for what, cpu in result.extra.get("cpu_ms_per_call", {}).items():
        print(f"CPU ms per call, {what}: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    for name, info in benches.items():
        print(
            f"{name}: {info['seconds']} s, load {info['load_before']} -> {info['load_after']}",
        )
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stamp}.json"
    write_json(json_path, result, meta)
    png_path = args.out / f"{stamp}.png"
    title = f"pyfc {meta['commit']} {stamp} ({meta['mode']}; load {meta['load_at_start']})"
    drew = write_png(png_path, result.samples, title)
    print(f"total {meta['seconds']} s; load at start {meta['load_at_start']}, at end {load()}")
    print(f"wrote {json_path}" + (f" and {png_path}" if drew else " (no PNG: no matplotlib)"))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
