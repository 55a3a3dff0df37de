"""Output capture inside a function instance: stdout, stderr and `logging` per request.

`install()` replaces `sys.stdout` / `sys.stderr` once with routers that write to the
capture of the request running in the current context (a `ContextVar`: each request
thread, and each asyncio task, sees its own), so concurrent requests never mix their logs.
Output from outside any request (threads the function started itself) goes to the
`shared` capture while a lone request runs, else to the real stream (the worker log).

Imported by the instance child process: stdlib only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

from worker.child.frames import LOG_KEEP_CHARS, LOG_TAIL_BYTES, MAX_LINE_CHARS


class LogCapture:
    """A text stream standing in for stdout/stderr during one request; keeps the tail."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, limit: int = LOG_TAIL_BYTES, keep: int = LOG_KEEP_CHARS) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._chars = 0
        self.buffer = _BytesSink(self)
        # Whole lines for the log store, (epoch seconds, text), up to `keep` chars; the
        # rest is counted in `dropped` (a chatty request costs the worker a bounded amount).
        self.lines: list[tuple[float, str]] = []
        self.dropped = 0
        self._keep = keep
        self._partial = ""
        self._skipping = False

    def write(self, text: str) -> int:
        """Append text; old output beyond what the tail needs is dropped as we go."""
        self._lines(text)
        self._parts.append(text)
        self._chars += len(text)
        if self._chars > 16 * self._limit:
            # Every char is at least one byte, so `limit` chars always cover `limit` bytes.
            kept = "".join(self._parts)[-self._limit :]
            self._parts, self._chars = [kept], len(kept)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def _lines(self, text: str) -> None:
        if self._skipping:  # the rest of a line already cut and kept
            if "\n" not in text:
                return
            text = text.split("\n", 1)[1]
            self._skipping = False
        if "\n" not in text:
            self._partial += text
            if len(self._partial) > MAX_LINE_CHARS:
                self._line(self._partial)
                self._partial = ""
                self._skipping = True
            return
        first, *rest = text.split("\n")
        self._line(self._partial + first)
        for line in rest[:-1]:
            self._line(line)
        self._partial = rest[-1]
        if len(self._partial) > MAX_LINE_CHARS:
            self._line(self._partial)
            self._partial = ""
            self._skipping = True

    def _line(self, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" ...[truncated {len(line) - MAX_LINE_CHARS} chars]"
        if self._keep < len(line):
            self.dropped += 1
            return
        self._keep -= len(line)
        self.lines.append((time.time(), line))

    def finish(self) -> list[tuple[float, str]]:
        """The request's lines, a last unterminated one included, and a note of those dropped."""
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        if self.dropped:
            self.lines.append(
                (
                    time.time(),
                    f"[pyfc] {self.dropped} more lines were not kept: a request keeps"
                    f" at most {LOG_KEEP_CHARS} characters of log",
                )
            )
            self.dropped = 0
        return self.lines

    def tail(self) -> bytes:
        """The last `limit` bytes written, UTF-8 encoded."""
        return "".join(self._parts).encode("utf-8", "replace")[-self._limit :]


class _Scope:
    __slots__ = ("capture", "request_id")

    def __init__(self, request_id: str, capture: LogCapture) -> None:
        self.request_id, self.capture = request_id, capture


_current: ContextVar[_Scope | None] = ContextVar("pyfc_request_capture", default=None)
# The capture of the only request running, for output of threads outside its context.
_shared: _Scope | None = None


def current_request_id() -> str:
    """Id of the request (or instance, during start) whose output is being captured here."""
    scope = _current.get() or _shared
    return scope.request_id if scope is not None else ""


@contextlib.contextmanager
def capturing(request_id: str, *, shared: bool = False) -> Iterator[LogCapture]:
    """Capture this context's output for one request; `shared`: also stray threads' output."""
    global _shared
    scope = _Scope(request_id, LogCapture())
    token = _current.set(scope)
    if shared:
        _shared = scope
    try:
        yield scope.capture
    finally:
        _current.reset(token)
        if shared:
            _shared = None


class _Router:
    """`sys.stdout` / `sys.stderr` while serving: writes go to the current request's capture."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def _target(self) -> Any:
        scope = _current.get() or _shared
        return scope.capture if scope is not None else self._real

    def write(self, text: str) -> int:
        return int(self._target().write(text))

    def writelines(self, lines: list[str]) -> None:
        self._target().writelines(lines)

    def flush(self) -> None:
        self._target().flush()

    @property
    def buffer(self) -> Any:
        return self._target().buffer

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self._target(), name)


def install() -> None:
    """Route `sys.stdout` / `sys.stderr` through the per-request captures (once, at start)."""
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _Router(sys.stdout)
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _Router(sys.stderr)


class _BytesSink:
    """`sys.stdout.buffer` for code that writes bytes."""

    def __init__(self, capture: LogCapture) -> None:
        self._capture = capture

    def write(self, data: bytes) -> int:
        self._capture.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        pass


class _FCFormatter(logging.Formatter):
    """`2024-01-02T03:04:05.678Z <request id> [INFO] message`, as FC's Python runtime."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {current_request_id()} [{record.levelname}] " + (
            super().format(record)
        )


class _CurrentStderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is now, so request logs land in the capture."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def setup_logging() -> None:
    """Route the root logger to the current stderr with FC's line format, at INFO."""
    handler = _CurrentStderrHandler()
    handler.setFormatter(_FCFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
