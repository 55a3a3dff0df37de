"""Function credentials without a stack: the lineage a gateway gives a call made with an
invoke token, and what a Python or custom instance receives with each invocation."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.http import request_lineage
from shared import tokens
from shared.errors import BadRequest
from shared.protocol import Lineage
from shared.tokens import InvokeGrant
from tests import bootstraps
from tests.instances import make_inv, make_spec, write_code
from worker.credentials import TOKEN_GRACE_SECONDS, TokenIssuer
from worker.custom_protocol import credential_headers
from worker.pool import InstancePool

SECRET = b"k" * 32
GRANT = InvokeGrant("t1", "trace-a", 3, "function:svc/fn", 2_000_000_000)


@pytest.mark.parametrize(
    ("header", "grant", "expected"),
    [
        # An API key: the header as today (hops + 1), or a new chain.
        (None, None, Lineage(trace_id="rid", hops=0, origin="http")),
        ("trace-x/4/s3:bucket", None, Lineage(trace_id="trace-x", hops=5, origin="s3:bucket")),
        # An invoke token: its chain, one hop further, attributed to its holder.
        (None, GRANT, Lineage(trace_id="trace-a", hops=4, origin="function:svc/fn")),
        (
            "trace-a/3/function:svc/fn",
            GRANT,
            Lineage(trace_id="trace-a", hops=4, origin=GRANT.origin),
        ),
        # A header may not launder the depth (lower hops, another trace) ...
        ("other/0/http", GRANT, Lineage(trace_id="trace-a", hops=4, origin=GRANT.origin)),
        # ... but may make the chain deeper.
        ("trace-a/10/x", GRANT, Lineage(trace_id="trace-a", hops=11, origin=GRANT.origin)),
    ],
)
def test_request_lineage(header: str | None, grant: InvokeGrant | None, expected: Lineage) -> None:
    assert request_lineage(header, "rid", grant) == expected


def test_bad_header_beside_a_token_is_still_bad_input() -> None:
    with pytest.raises(BadRequest):
        request_lineage("no hops here", "rid", GRANT)


def test_issuer_never_shows_its_secret() -> None:
    issuer = TokenIssuer(SECRET, "http://gw")
    assert SECRET.decode() not in repr(issuer) and "http://gw" in repr(issuer)


def test_custom_runtime_headers() -> None:
    spec = make_spec(service="s1", function="f1")
    headers = credential_headers(spec, Lineage(trace_id="tr", hops=2, origin="http"), "tok")
    assert headers == {
        "x-fc-access-key-id": "t1",
        "x-fc-access-key-secret": "",
        "x-fc-security-token": "tok",
        "x-fc-lineage": "tr/2/function:s1/f1",
    }


CONTEXT = """
import json

def init(context):
    global at_init
    try:
        context.invoke("svc", "other")
    except context.InvokeError as e:
        at_init = [e.error_code, context.credentials.security_token, context.lineage_headers()]

def handler(event, context):
    c = context
    return {
        "lineage": [c.lineage.trace_id, c.lineage.hops, c.lineage.origin],
        "credentials": [c.credentials.access_key_id, c.credentials.access_key_secret,
                        c.credentials.security_token],
        "headers": c.lineage_headers(),
        "gateway": c.gateway_url,
        "at_init": at_init,
    }
"""


@pytest.fixture
async def pool() -> AsyncIterator[InstancePool]:
    p = InstancePool(max_instances=2, stop_grace=1.0, issuer=TokenIssuer(SECRET, "http://gw:1"))
    yield p
    await p.close()


def answer(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


async def test_python_context_has_lineage_and_a_token(tmp_path: Path, pool: InstancePool) -> None:
    spec = make_spec(service="s1", function="f1", timeout=7.0, initializer="index.init")
    inv = make_inv(deadline=time.time() + 5)
    inv.lineage = Lineage(trace_id="trace-9", hops=2, origin="cron")
    outcome = await pool.invoke(spec, write_code(tmp_path, CONTEXT), inv)
    assert outcome.status == "succeeded", outcome
    seen = answer(outcome.body)
    assert seen["lineage"] == ["trace-9", 2, "cron"]
    tenant, key_secret, token = seen["credentials"]
    assert (tenant, key_secret) == ("t1", "")
    grant = tokens.verify(SECRET, token, time.time())
    assert (grant.tenant, grant.trace_id, grant.hops, grant.origin) == (
        "t1",
        "trace-9",
        2,
        "function:s1/f1",
    )
    # Valid until the invocation's deadline (the caller's, here shorter than the timeout).
    assert inv.deadline + TOKEN_GRACE_SECONDS <= grant.expires_at <= inv.deadline + 31
    assert seen["headers"] == {
        "X-Fc-Lineage": "trace-9/2/function:s1/f1",
        "Authorization": f"Bearer {token}",
    }
    assert seen["gateway"] == "http://gw:1"
    # The initializer runs outside any request: no token, and invoke says so.
    assert seen["at_init"] == ["NoCredentials", "", {}]


async def test_no_issuer_no_credentials(tmp_path: Path) -> None:
    plain = InstancePool(max_instances=1, stop_grace=1.0)
    try:
        code = write_code(tmp_path, CONTEXT)
        outcome = await plain.invoke(make_spec(initializer="index.init"), code, make_inv())
    finally:
        await plain.close()
    seen = answer(outcome.body)
    assert seen["credentials"] == ["", "", ""] and seen["gateway"] == ""
    assert seen["headers"] == {"X-Fc-Lineage": "trace-1/0/function:svc/fn"}


async def test_custom_runtime_gets_token_lineage_and_gateway(
    tmp_path: Path, pool: InstancePool
) -> None:
    code = bootstraps.unpacked(tmp_path, bootstraps.members(bootstraps.ENV))
    inv = make_inv()
    inv.lineage = Lineage(trace_id="trace-c", hops=1, origin="http")
    outcome = await pool.invoke(make_spec(runtime="custom"), code, inv)
    assert outcome.status == "succeeded", outcome
    seen = answer(outcome.body)
    assert seen["gateway"] == "http://gw:1"
    headers = seen["headers"]
    assert headers["x-fc-lineage"] == "trace-c/1/function:svc/fn"
    assert headers["x-fc-access-key-id"] == "t1"
    grant = tokens.verify(SECRET, headers["x-fc-security-token"], time.time())
    assert (grant.trace_id, grant.hops, grant.origin) == ("trace-c", 1, "function:svc/fn")
