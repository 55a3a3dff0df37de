"""What every benchmark returns, and the one table, JSON and PNG made of it.

A benchmark's `run(...)` returns a `Result`: `Row`s (one figure each, with the baseline it
is measured against in the same run, the ratio, and the target it is held to, if any) and
the latency samples behind them (for the PNG of distributions).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


def percentile(samples: list[float], q: float) -> float:
    """The `q` quantile (0..1) by the nearest rank below, as the benches have always used."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))]


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def p99(samples: list[float]) -> float:
    return percentile(samples, 0.99)


@dataclass(frozen=True)
class Target:
    """`of` (the row's value or its ratio) `op` `threshold`, e.g. ratio <= 2.0."""

    of: Literal["value", "ratio"]
    op: Literal["<=", ">="]
    threshold: float
    source: str = ""  # the issue that set it

    def met(self, row: Row) -> bool | None:
        got = row.value if self.of == "value" else row.ratio
        if got is None or math.isnan(got):
            return None
        return got <= self.threshold if self.op == "<=" else got >= self.threshold

    def text(self, unit: str) -> str:
        if self.of == "ratio":
            return f"{self.op} {self.threshold:g}x"
        return f"{self.op} {self.threshold:g} {unit}".rstrip()


@dataclass
class Row:
    """One figure. `value` is pyfc's, or the peer's named by `subject`.

    `ratio` reads as the target reads it: value/baseline by default (latency: lower is
    better; throughput: higher is better); `baseline/value` where the row says how many
    times faster pyfc is (cold start against `python -c`).
    """

    metric: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio_kind: Literal["value/baseline", "baseline/value"] = "value/baseline"
    target: Target | None = None
    subject: str = "pyfc"
    bench: str = ""
    spread: tuple[float, float] | None = None  # min-max of the value over repetitions
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.value or not self.baseline or math.isnan(self.value + self.baseline):
            return None
        if self.ratio_kind == "value/baseline":
            return self.value / self.baseline
        return self.baseline / self.value

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["met"] = self.met
        out["target"] = (
            None if self.target is None else {**asdict(self.target), "text": self.target_text}
        )
        return out

    @property
    def target_text(self) -> str:
        return "" if self.target is None else self.target.text(self.unit)


@dataclass
class Result:
    """What one benchmark measured: rows, latency samples (ms) by name, anything else."""

    rows: list[Row] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: Result) -> None:
        self.rows.extend(other.rows)
        self.samples.update(other.samples)
        self.extra.update(other.extra)


def spread_of(values: list[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if len(values) > 1 else None


def fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".rstrip()
    if abs(value) >= 10:
        return f"{value:.1f} {unit}".rstrip()
    return f"{value:.2f} {unit}".rstrip()


HEADER = ("metric", "pyfc / peer", "baseline (same run)", "ratio", "target", "met?")


def cells(row: Row) -> tuple[str, ...]:
    value = fmt(row.value, row.unit)
    if row.spread is not None:
        lo, hi = row.spread
        value += f" [{fmt(lo, '')}-{fmt(hi, '')}]"
    baseline = fmt(row.baseline, row.unit) if row.baseline is not None else "-"
    if row.baseline_name and row.baseline is not None:
        baseline += f" {row.baseline_name}"
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    met = "n/a" if row.value is None else {None: "-", True: "yes", False: "NO"}[row.met]
    metric = row.metric if row.subject == "pyfc" else f"{row.subject}: {row.metric}"
    return (metric, value, baseline, ratio, row.target_text or "-", met)


def table(rows: list[Row]) -> str:
    """The one table: metric, pyfc (or the peer named), baseline of the same run, ratio,
    target, met? Values over repetitions are medians, [min-max] beside them."""
    lines = [cells(row) for row in rows]
    widths = [max(len(r[i]) for r in [HEADER, *lines]) for i in range(len(HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(HEADER), "-+-".join("-" * w for w in widths)]
    out += [line(c) for c in lines]
    notes = [f"  {cells(r)[0]}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    """The same table in Markdown (for docs/benchmarks.md)."""
    out = ["| " + " | ".join(HEADER) + " |", "|---" * len(HEADER) + "|"]
    out += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(out)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50": p50(samples),
        "p90": percentile(samples, 0.90),
        "p99": p99(samples),
        "max": max(samples),
    }


def write_json(path: Path, result: Result, meta: dict[str, Any]) -> None:
    doc = {
        **meta,
        "rows": [row.as_json() for row in result.rows],
        "latency_ms": {
            name: {**summary(s), "samples": [round(x, 4) for x in s]}
            for name, s in result.samples.items()
            if s
        },
        "extra": result.extra,
    }
    path.write_text(json.dumps(doc, indent=1, default=str))


def write_png(path: Path, samples: dict[str, list[float]], title: str) -> bool:
    """Latency distributions as CDFs on a log axis, one panel per group of names (the
    text before the first ':' of a name); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups: dict[str, dict[str, list[float]]] = {}
    for name, values in samples.items():
        if values:
            group, _, label = name.partition(":")
            groups.setdefault(group, {})[label.strip() or group] = values
    if not groups:
        return False
    first = ("round trip", "cold start")  # the targets' panels on top
    groups = dict(sorted(groups.items(), key=lambda g: first.index(g[0]) if g[0] in first else 9))
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 3.2 * len(groups)), squeeze=False)
    for ax, (group, series) in zip(axes[:, 0], groups.items(), strict=True):
        for label, values in series.items():
            ordered = sorted(values)
            ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, ys, where="post", label=f"{label} (p50 {p50(values):.2f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of calls <= x")
        ax.set_title(group)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
