"""Role logging: one line per event, always with the role and, where known, the request id.

Every module logs to `pyfc.<its module path>`: `log = logging.getLogger(f"pyfc.{__name__}")`
(so `pyfc` is the one logger above all of ours, apart from the libraries'); what functions
write goes to `pyfc.function`. `tests/test_logging.py` holds the code to it.
"""

from __future__ import annotations

import contextvars
import logging
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup(role: str, level: str = "INFO") -> None:
    """Configure the root logger of a role process (called once from its `main`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s {role:<10} %(levelname)-5s [%(request_id)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika/aiormq are chatty at INFO about reconnects; keep their warnings only.
    for noisy in ("aiormq", "aio_pika", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
