"""The web console in a real browser (Debian's headless Chromium through Playwright) on a
live stack: a function deployed by API is invoked from the console, its result and log
lines shown, a `<script>` result kept as text; a timer trigger created and disabled, an
alias weight moved, a dead letter redriven, the stats chart drawn with data.

One stack and one browser for the module (the machine is shared): each test opens its own
page with a fresh sessionStorage."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.stack import Stack, code_body

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
XSS = "<script>alert(1)</script>"
FN = (
    "def handler(event, context):\n"
    "    print('console-log-line', event.decode())\n"
    f"    return {XSS!r}\n"
)
BOOM = "def handler(event, context):\n    raise RuntimeError('boom')\n"
TIMEOUT_MS = 60_000


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        req.add_header("Content-Type", "application/json")
        for k, v in headers.items():
            req.add_header(k.replace("_", "-"), v)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw.startswith(b"{") else raw
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def ok(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        status, answer = self.call(method, path, body, **headers)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Api]]:
    stack = Stack(tmp_path_factory.mktemp("console"))
    try:
        stack.start()
        _, key = stack.create_tenant()
        api = Api(stack.url, key)
        api.ok("POST", "/v1/services", {"serviceName": "web"})
        for name, code in (("hello", FN), ("boom", BOOM)):
            body = {"functionName": name, "code": code_body({"index.py": code})}
            api.ok("POST", "/v1/services/web/functions", body)
        yield stack, api
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser(live: tuple[Stack, Api]) -> Iterator[Any]:
    # After the stack (so closed before it: the stack's stop runs an event loop of its own).
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, live: tuple[Stack, Api]) -> Iterator[Any]:
    stack, api = live
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.accept()))  # type: ignore[attr-defined]
    pg.goto(f"{stack.url}/console/")
    pg.fill("#apikey", api.key)
    pg.click("#signin")
    pg.wait_for_selector("text=Services")
    yield pg
    context.close()


def test_invoke_from_the_console_shows_the_result_as_text_and_its_logs(
    page: Any, live: tuple[Stack, Api]
) -> None:
    _, api = live
    page.click("a:text('web')")
    page.fill("#search", "hel")
    page.wait_for_selector("a:text('hello')")
    assert page.locator("a:text('boom')").count() == 0  # the search filtered it out
    page.click("a:text('hello')")
    assert page.url.endswith("#/services/web/functions/hello")  # a shareable URL
    page.fill("#payload", "from-the-browser")
    page.click("#invoke")
    page.wait_for_selector("#invoke-result > *")
    result = page.query_selector("#invoke-result pre.result")
    assert result is not None, page.text_content("#invoke-result")
    assert result.text_content() == XSS  # shown as text, not run
    assert page.locator("#invoke-result script").count() == 0
    info = page.text_content("#invoke-result dl")
    assert "200" in info and " ms" in info
    request_id = page.locator("#invoke-result dd").nth(2).text_content()
    assert request_id and len(request_id) >= 8
    tail = page.text_content("#invoke-result pre.log-tail")
    assert "console-log-line from-the-browser" in tail
    # The log store has them too: search by the request id.
    page.fill("#log-request-id", request_id)
    deadline = time.monotonic() + 30
    while True:
        page.click("#log-search")
        page.wait_for_selector("#logs > *")
        if "console-log-line from-the-browser" in (page.text_content("#logs") or ""):
            break
        assert time.monotonic() < deadline, page.text_content("#logs")
        page.wait_for_timeout(500)
    # Follow live: a line logged after the follow began arrives.
    page.click("#log-follow")
    page.wait_for_selector("#logs pre.following")
    deadline = time.monotonic() + 30
    while "followed-line" not in (page.text_content("#logs") or ""):
        api.ok("POST", "/v1/services/web/functions/hello/invocations", "followed-line")
        assert time.monotonic() < deadline, page.text_content("#logs")
        page.wait_for_timeout(1000)
    page.click("#log-follow")
    # Async: the panel follows the invocation to its result.
    page.select_option("#invocation-type", "Async")
    page.click("#invoke")
    result = page.wait_for_selector("#invoke-result pre.result")
    assert result.text_content() == XSS
    assert "Succeeded" in (page.text_content("#invoke-result dl") or "")
    assert page.dialogs == []  # type: ignore[attr-defined]
    # The key stays in the tab's sessionStorage, never in the URL.
    assert page.evaluate("sessionStorage.getItem('pyfc.apiKey')") == api.key
    assert api.key not in page.url


def open_function(page: Any, stack: Stack, function: str) -> None:
    page.goto(f"{stack.url}/console/#/services/web/functions/{function}")
    page.wait_for_selector("h2:text('Triggers')")


def test_a_timer_trigger_is_created_and_disabled_and_a_bad_one_shows_the_apis_error(
    page: Any, live: tuple[Stack, Api]
) -> None:
    stack, api = live
    open_function(page, stack, "hello")
    page.wait_for_selector("#trigger-name")
    # A bad cron expression: the API's own error, as it wrote it.
    bad = {"cronExpression": "every now and then"}
    status, answer = api.call(
        "POST",
        "/v1/services/web/functions/hello/triggers",
        {"triggerName": "probe", "triggerType": "timer", "triggerConfig": bad},
    )
    assert status == 400, answer
    # Each type has its own fields.
    page.select_option("#trigger-type", "mq")
    page.wait_for_selector("#tf-exchange")
    assert page.locator("#tf-cronExpression").count() == 0
    page.select_option("#trigger-type", "timer")
    page.fill("#trigger-name", "tick")
    page.fill("#tf-cronExpression", bad["cronExpression"])
    page.click("button:text('Create trigger')")
    error = page.wait_for_selector("#trigger-error .error")
    assert error.text_content() == f"{answer['errorCode']}: {answer['errorMessage']}"
    page.fill("#tf-cronExpression", "@every 1h")
    page.click("button:text('Create trigger')")
    row = page.locator("tr", has_text="tick")
    row.locator("button:text('Disable')").click()
    row.locator("button:text('Enable')").wait_for()
    trigger = api.ok("GET", "/v1/services/web/functions/hello/triggers/tick")
    assert trigger["triggerType"] == "timer" and trigger["enabled"] is False


def test_an_alias_weight_is_moved(page: Any, live: tuple[Stack, Api]) -> None:
    stack, api = live
    api.ok("POST", "/v1/services/web/versions", {"description": "one"})
    api.ok("PUT", "/v1/services/web/functions/hello", {"description": "changed"})
    two = api.ok("POST", "/v1/services/web/versions", {"description": "two"})["versionId"]
    api.ok("POST", "/v1/services/web/aliases", {"aliasName": "live", "versionId": two})
    open_function(page, stack, "hello")
    page.fill("[aria-label='live gray version']", "1")
    page.fill("[aria-label='live weight']", "0.3")
    row = page.locator("tr", has_text="live")
    row.locator("button:text('Save')").click()
    wait_alias(api, lambda a: a.get("additionalVersionWeight") == {"1": 0.3})
    # Rollback in one click: the previous version, no gray release.
    row.locator("button:text('Roll back to 1')").click()
    wait_alias(api, lambda a: a["versionId"] == "1" and not a.get("additionalVersionWeight"))


def wait_alias(api: Api, done: Any) -> None:
    deadline = time.monotonic() + 30
    while not done(alias := api.ok("GET", "/v1/services/web/aliases/live")):
        assert time.monotonic() < deadline, alias
        time.sleep(0.2)


def test_a_dead_letter_is_redriven(page: Any, live: tuple[Stack, Api]) -> None:
    stack, api = live
    body = {"functionName": "flaky", "code": code_body({"index.py": BOOM})}
    api.ok("POST", "/v1/services/web/functions", body)
    # The async config from the console's form (a bad destination: the API's error).
    open_function(page, stack, "flaky")
    page.fill("#async-retries", "0")
    page.fill("#async-on-failure", "nowhere")
    page.click("#async-save")
    assert "InvalidArgument" in page.wait_for_selector("#async-error .error").text_content()
    page.fill("#async-on-failure", "")
    page.click("#async-save")
    deadline = time.monotonic() + 30
    while api.call("GET", "/v1/services/web/functions/flaky/async-config")[0] != 200:
        assert time.monotonic() < deadline, "the async config was not saved"
        time.sleep(0.2)
    config = api.ok("GET", "/v1/services/web/functions/flaky/async-config")
    assert config["maxAsyncRetryAttempts"] == 0, config
    req = urllib.request.Request(
        f"{stack.url}/v1/services/web/functions/flaky/invocations",
        data=b"x",
        method="POST",
        headers={"Authorization": f"Bearer {api.key}", "X-Fc-Invocation-Type": "Async"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        request_id = resp.headers["X-Fc-Request-Id"]
    deadline = time.monotonic() + 60
    while api.call("GET", f"/v1/dlq/{request_id}")[0] != 200:
        assert time.monotonic() < deadline, "no dead letter"
        time.sleep(0.2)
    # Fixed, then redriven from the console: the new code runs it.
    fixed = "def handler(event, context):\n    return 'fixed'\n"
    api.ok("PUT", "/v1/services/web/functions/flaky", {"code": code_body({"index.py": fixed})})
    page.goto(f"{stack.url}/console/#/dlq")
    row = page.locator("tr", has_text=request_id)
    row.locator("button:text('Inspect')").click()
    page.wait_for_selector(f"pre:has-text('{request_id}')")
    row.locator("button:text('Redrive')").click()
    page.wait_for_selector(f"tr:has-text('{request_id}')", state="detached")
    path = f"/v1/services/web/functions/flaky/invocations/{request_id}"
    deadline = time.monotonic() + 60
    while (record := api.ok("GET", path))["status"] != "Succeeded":
        assert time.monotonic() < deadline, record
        time.sleep(0.2)
    # The function page looks the async invocation up by its request id.
    open_function(page, stack, "flaky")
    page.fill("#invocation-id", request_id)
    page.click("button:text('Look up')")
    assert page.wait_for_selector("#invocation pre.result").text_content() == "fixed"
    assert "Succeeded" in (page.text_content("#invocation dl") or "")


def test_the_stats_chart_renders_with_data(
    page: Any, live: tuple[Stack, Api], tmp_path: Path
) -> None:
    stack, api = live
    for i in range(3):
        api.ok("POST", "/v1/services/web/functions/hello/invocations", {"n": i})
    deadline = time.monotonic() + 60
    while api.ok("GET", "/v1/services/web/functions/hello/stats?window=15m")["invocations"] < 3:
        assert time.monotonic() < deadline, "stats never counted the invocations"
        time.sleep(0.5)
    open_function(page, stack, "hello")
    chart = page.wait_for_selector("#stats-chart canvas")
    assert "invocations" in (page.text_content("#stats-chart") or "")
    # Drawn, not blank: the plotted series put coloured pixels on the canvas.
    coloured = chart.evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 0; i < d.length; i += 4)
                    if (d[i + 3] > 0 && !(d[i] === d[i + 1] && d[i + 1] === d[i + 2])) n++;
                  return n; }"""
    )
    assert coloured > 50, coloured
    shot = tmp_path / "stats.png"
    page.locator("#stats-chart").screenshot(path=str(shot))
    with Image.open(shot) as image:  # the screenshot is not blank: many colours, lines drawn
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 20, len(colours)
    # The tenant's overview on the first page: the function's row and a chart too.
    page.goto(f"{stack.url}/console/#/")
    page.wait_for_selector("#stats-chart canvas")
    page.wait_for_selector("#stats-chart a:text('web/hello')")
