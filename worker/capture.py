"""Output capture inside a function instance: stdout, stderr and `logging` per request.

Imported by the instance child process: stdlib only.
"""

from __future__ import annotations

import logging
import sys
import time

from worker.frames import LOG_TAIL_BYTES


class RequestTag:
    """The request being served, stamped on log lines (one request at a time for now)."""

    request_id = ""


class LogCapture:
    """A text stream standing in for stdout/stderr during one request; keeps the tail."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, limit: int = LOG_TAIL_BYTES) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._chars = 0
        self.buffer = _BytesSink(self)

    def write(self, text: str) -> int:
        """Append text; old output beyond what the tail needs is dropped as we go."""
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

    def tail(self) -> bytes:
        """The last `limit` bytes written, UTF-8 encoded."""
        return "".join(self._parts).encode("utf-8", "replace")[-self._limit :]


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
        return f"{stamp}.{int(record.msecs):03d}Z {RequestTag.request_id} [{record.levelname}] " + (
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
