"""The web console's files as the gateway serves them: a strict CSP, no auth needed for
the static files, nothing outside gateway/console/, and no HTML parsing of API strings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import console


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    console.add_routes(app.router)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_the_console_is_served_with_a_strict_content_security_policy(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/console", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/console/"
    resp = await client.get("/console/")
    assert resp.status == 200 and resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    html = await resp.text()
    assert "<script>" not in html  # no inline script: the CSP would refuse it
    for src in re.findall(r'(?:src|href)="(/console/[^"]+)"', html):
        asset = await client.get(src)
        assert asset.status == 200, src
        assert asset.headers["Content-Security-Policy"] == csp
    js = await client.get("/console/app.js")
    assert js.content_type == "text/javascript"


@pytest.mark.parametrize(
    "path",
    ["/console/../app.py", "/console/%2e%2e/app.py", "/console/nothing.js", "/console/vendor"],
)
async def test_nothing_outside_the_console_directory_is_served(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 404, (path, await resp.text())


def test_the_app_never_parses_strings_as_html() -> None:
    source = (console.ROOT / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink
    # The key lives in sessionStorage, never localStorage nor a URL.
    assert "localStorage" not in source
    assert not re.search(r"[?&](key|apiKey|token)=", source)
