"""`/metrics`: Prometheus text with request and invocation counts; tenants stay private."""

from __future__ import annotations

import pytest

from shared.scrape import may_scrape
from tests.conftest import Client
from tests.helpers import deploy, invoke
from tests.stack import Stack


@pytest.mark.parametrize(
    ("peer", "auth", "token", "allowed"),
    [
        ("127.0.0.1", None, "", True),
        ("::1", None, "", True),
        ("10.0.0.7", None, "", False),
        (None, None, "", False),
        ("10.0.0.7", "Bearer s3cret", "s3cret", True),
        ("127.0.0.1", None, "s3cret", False),
        ("10.0.0.7", "Bearer wrong", "s3cret", False),
    ],
)
def test_who_may_scrape(peer: str | None, auth: str | None, token: str, allowed: bool) -> None:
    assert may_scrape(peer, auth, token) is allowed


async def test_metrics_count_invocations(client: Client, stack: Stack) -> None:
    service, function = await deploy(client)
    for _ in range(3):
        assert (await invoke(client, service, function, b"m"))[0] == 200
    assert (await invoke(client, service, function, b"a", X_Fc_Invocation_Type="Async"))[0] == 202
    async with client.session.get(stack.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    tenant = f'tenant="{client.tenant}"'
    assert f'pyfc_invocations_total{{kind="sync",outcome="succeeded",{tenant}}} 3.0' in text
    assert f'pyfc_invocations_total{{kind="async",outcome="accepted",{tenant}}} 1.0' in text
    assert "pyfc_sync_invoke_seconds_bucket" in text
    assert 'route="/v1/services/{service}/functions/{function}/invocations"' in text
