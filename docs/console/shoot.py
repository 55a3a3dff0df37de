"""Regenerates the web console's screenshots in docs/console/ (see docs/console.md).

    .venv/bin/python -m docs.console.shoot      (from the repository root; `make screenshots`)

Starts a private stack (tests/stack.py: RabbitMQ and a SQLite catalog, as the tests do),
deploys a small service by API, runs some invocations (one ends as a dead letter), then
drives the console in headless Chromium and saves each main page as a PNG.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

from tests.stack import Stack, code_body

OUT = Path(__file__).parent
HELLO = (
    "import json\n"
    "def handler(event, context):\n"
    "    print('hello from', context.request_id)\n"
    "    return json.dumps({'greeting': 'hello', 'got': event.decode()})\n"
)
BOOM = "def handler(event, context):\n    raise RuntimeError('the disk is full')\n"


def call(base: str, key: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k.replace("_", "-"), v)
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
        return json.loads(raw) if raw.startswith(b"{") else raw


def seed(base: str, key: str) -> None:
    svc = "/v1/services/shop"
    call(base, key, "POST", "/v1/services", {"serviceName": "shop", "description": "orders"})
    call(base, key, "POST", "/v1/services", {"serviceName": "reports"})
    for name, code in (("hello", HELLO), ("checkout", HELLO), ("import-orders", BOOM)):
        body = {"functionName": name, "code": code_body({"index.py": code})}
        call(base, key, "POST", f"{svc}/functions", body)
    call(base, key, "POST", f"{svc}/versions", {"description": "first"})
    call(base, key, "PUT", f"{svc}/functions/hello", {"description": "says hello"})
    call(base, key, "POST", f"{svc}/versions", {"description": "second"})
    alias = {"aliasName": "live", "versionId": "1", "additionalVersionWeight": {"2": 0.2}}
    call(base, key, "POST", f"{svc}/aliases", alias)
    timer = {
        "triggerName": "every-minute",
        "triggerType": "timer",
        "enabled": False,
        "triggerConfig": {"cronExpression": "@every 1m", "payload": "tick"},
    }
    call(base, key, "POST", f"{svc}/functions/hello/triggers", timer)
    retries = {"maxAsyncRetryAttempts": 0}
    call(base, key, "PUT", f"{svc}/functions/import-orders/async-config", retries)
    for i in range(12):
        call(base, key, "POST", f"{svc}/functions/hello/invocations", f"order-{i}".encode())
    call(
        base,
        key,
        "POST",
        f"{svc}/functions/import-orders/invocations",
        b"{}",
        X_Fc_Invocation_Type="Async",
    )
    deadline = time.monotonic() + 60
    while not call(base, key, "GET", "/v1/dlq")["deadLetters"]:
        if time.monotonic() > deadline:
            raise SystemExit("no dead letter came")
        time.sleep(0.2)


def shoot(page: Page, base: str, route: str, name: str, wait: str) -> None:
    page.goto(f"{base}/console/#{route}")
    page.wait_for_selector(wait)
    page.wait_for_timeout(500)  # the panels' requests settle
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
    print("wrote", OUT / f"{name}.png")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="pyfc-shots-"))
    stack = Stack(root)
    try:
        stack.start()
        _, key = stack.create_tenant("demo")
        seed(stack.url, key)
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            for width, height, suffix in ((1280, 900, ""), (390, 844, "-phone")):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"{stack.url}/console/")
                page.fill("#apikey", key)
                page.click("#signin")
                page.wait_for_selector("text=shop")
                fn = "/services/shop/functions/hello"
                if suffix:
                    shoot(page, stack.url, fn, f"function{suffix}", "#stats-chart canvas")
                    continue
                shoot(page, stack.url, "/", "services", "text=reports")
                shoot(page, stack.url, "/services/shop", "functions", "text=import-orders")
                page.goto(f"{stack.url}/console/#{fn}")
                page.fill("#payload", '{"order": 42}')
                page.click("#invoke")
                page.wait_for_selector("#invoke-result pre.result")
                page.click("#log-search")
                page.wait_for_selector("#logs > *")
                page.wait_for_selector("#stats-chart canvas")
                page.wait_for_timeout(500)
                page.screenshot(path=str(OUT / "function.png"), full_page=True)
                print("wrote", OUT / "function.png")
                shoot(page, stack.url, "/dlq", "dead-letters", "text=the disk is full")
            browser.close()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{e.code}: {e.read()!r}") from e
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
