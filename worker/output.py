"""What a process writes to its stdout/stderr pipe: forwarded line by line to the worker
log, and kept (the last few KB) so each request can report what was written during it.

Reads are non-blocking and synchronous (`read`), so a caller that just got an answer from
the process can first take everything the process wrote before answering.
"""

from __future__ import annotations

import asyncio
import logging
import os

function_log = logging.getLogger("pyfc.function")

LOG_TAIL_BYTES = 4096
_KEPT = 64 * 1024  # recent output, from which each request's tail is cut
_MAX_LINE = 64 * 1024
_READ_BUDGET = 1024 * 1024  # per wake-up, so a process spamming output cannot hog the loop


class ProcessOutput:
    """Owns the read end `fd` of a process's output pipe; `close` once the process exited."""

    def __init__(self, fd: int, label: str) -> None:
        self._fd = fd
        self._label = label
        self._kept = bytearray()
        self._partial = b""
        # Bytes read so far: a request notes it at its start and cuts its tail from there.
        self.offset = 0
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self.read)

    def read(self, limit: int | None = _READ_BUDGET) -> None:
        """Take what the process wrote so far, without blocking (all of it if no limit)."""
        taken = 0
        while self._fd >= 0 and (limit is None or taken < limit):
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # every writer is gone
                self.close()
                return
            taken += len(chunk)
            self._record(chunk)

    def tail(self, since: int) -> bytes:
        """The last LOG_TAIL_BYTES written after `offset` was `since`.

        With several requests in flight this includes what the others wrote: the output of
        one process cannot be told apart by request.
        """
        size = min(self.offset - since, len(self._kept), LOG_TAIL_BYTES)
        return bytes(self._kept[len(self._kept) - size :]) if size > 0 else b""

    def close(self) -> None:
        """Read what is left, stop watching the pipe and close it (idempotent)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        asyncio.get_running_loop().remove_reader(fd)
        try:
            while chunk := os.read(fd, 65536):  # non-blocking: stops at EAGAIN below
                self._record(chunk)
        except OSError:  # BlockingIOError: a grandchild still holds the pipe; no matter
            pass
        os.close(fd)
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _record(self, chunk: bytes) -> None:
        self.offset += len(chunk)
        self._kept += chunk
        del self._kept[:-_KEPT]
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > _MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        function_log.info("%s %s", self._label, line.decode("utf-8", "replace"))
