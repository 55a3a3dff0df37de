"""Who may read a role's Prometheus metrics: their labels name tenants."""

from __future__ import annotations

import hmac

LOOPBACK = ("127.", "::1")


def may_scrape(peer: str | None, authorization: str | None, token: str) -> bool:
    """With a token set, only its holders; without one, only loopback peers."""
    if token:
        return hmac.compare_digest(authorization or "", f"Bearer {token}")
    return peer is not None and peer.startswith(LOOPBACK)
