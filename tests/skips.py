"""Skipped tests are loud: the run ends with their count by reason, and under CI (`CI=true`,
as .ci/run is run) a skipped test fails the run.

Every skip in this suite is a guarantee's precondition missing on the machine (root for
instance uids, a writable cgroup memory controller for memorySize): on CI's machine, which
is the one the project is set up for, each must run. A test that may skip there on purpose
says so with `@pytest.mark.optional("why")`. The hooks are imported into tests/conftest.py.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from _pytest.terminal import TerminalReporter

_skipped: list[tuple[str, str, bool]] = []  # node id, reason, optional


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "optional(reason): may skip on CI's machine without failing the run"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    _skipped.append((report.nodeid, reason, "optional" in report.keywords))


def guarantees_skipped() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason, optional in _skipped if not optional]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and guarantees_skipped() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    write = terminalreporter.write_line
    by_reason = Counter(reason for _, reason, _ in _skipped)
    optional = sum(1 for *_, opt in _skipped if opt)
    terminalreporter.section("skips")
    write(f"skipped: {len(_skipped)} ({optional} optional, {len(_skipped) - optional} guarantees)")
    for reason, n in by_reason.most_common():
        write(f"  {n} x {reason}")
    if _in_ci() and guarantees_skipped():
        write("CI=true: a guarantee's tests were skipped on CI's machine; failing the run:")
        for nodeid, reason in guarantees_skipped():
            write(f"  {nodeid}: {reason}")
