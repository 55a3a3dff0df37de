"""Process plumbing every role `main` uses: uvloop, graceful signals, dying with the parent."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from shared.errors import Unavailable

log = logging.getLogger(f"pyfc.{__name__}")

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to signal us when the parent dies, so `pyfc up` leaves no orphans.

    `PYFC_PARENT_PID` (set by the supervisor) closes the race where the parent died before
    the prctl call: then we exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    expected = os.environ.get("PYFC_PARENT_PID")
    if expected and os.getppid() != int(expected):
        os._exit(1)


def run_role(serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run `serve(stop_event)` on uvloop until SIGINT/SIGTERM sets the event."""
    import uvloop

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    die_with_parent()
    try:
        uvloop.run(_main())
    except KeyboardInterrupt:
        pass
    except Unavailable as e:  # broker or database unreachable or unusable: one clear line
        print(f"pyfc: {e.message}", file=sys.stderr)
        return 1
    return 0
