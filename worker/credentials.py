"""The credentials a function gets with each invocation: an invoke token and where to use it.

One token per invocation (shared/tokens.py): the tenant's, carrying the invocation's trace
and hop count, valid until the invocation's own deadline plus a grace period. With it the
function may invoke functions of its tenant through the gateway, one hop further down the
chain, and nothing else. The secret that signs tokens stays in the worker.
"""

from __future__ import annotations

from shared import tokens
from shared.protocol import FunctionSpec, Lineage

# A request sent just before the deadline must still get through; and clocks of the
# worker's and the gateway's hosts may differ by a few seconds.
TOKEN_GRACE_SECONDS = 30.0


def caller_origin(spec: FunctionSpec) -> str:
    """The lineage origin of invocations a function makes (as destinations use theirs)."""
    return f"function:{spec.service}/{spec.function}"


class TokenIssuer:
    """Mints invoke tokens on a worker; see the module docstring."""

    __slots__ = ("_secret", "gateway_url")

    def __init__(self, secret: bytes, gateway_url: str) -> None:
        self._secret = secret
        self.gateway_url = gateway_url

    def __repr__(self) -> str:  # never the secret, in a log line or a traceback
        return f"TokenIssuer(gateway_url={self.gateway_url!r})"

    def token(self, spec: FunctionSpec, lineage: Lineage, deadline: float) -> str:
        """The token for one invocation of `spec` that the platform ends at `deadline`."""
        return tokens.mint(
            self._secret,
            tenant=spec.tenant,
            trace_id=lineage.trace_id,
            hops=lineage.hops,
            origin=caller_origin(spec),
            expires_at=deadline + TOKEN_GRACE_SECONDS,
        )
