"""Who may read a role's Prometheus metrics (their labels name tenants), and serving them."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(f"pyfc.{__name__}")

LOOPBACK = ("127.", "::1")


def may_scrape(peer: str | None, authorization: str | None, token: str) -> bool:
    """With a token set, only its holders; without one, only loopback peers."""
    if token:
        return hmac.compare_digest(authorization or "", f"Bearer {token}")
    return peer is not None and peer.startswith(LOOPBACK)


async def serve_metrics(
    registry: CollectorRegistry, role: str, host: str, port: int, token: str
) -> web.AppRunner:
    """A `/metrics` endpoint of its own for a role without an HTTP server."""

    async def handle(request: web.Request) -> web.Response:
        if not may_scrape(request.remote, request.headers.get("Authorization"), token):
            return web.Response(status=403, text="metrics: loopback or PYFC_METRICS_TOKEN")
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("%s metrics on http://%s:%d/metrics", role, host, port)
    return runner
