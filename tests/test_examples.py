"""Every example in docs/examples deploys with one command into a live stack and works;
a second deploy changes nothing; the canary example's release steps do what it says."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika

from tests.conftest import StartStack
from tests.helpers import open_dir
from tests.stack import AMQP_URL, Stack, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _deploy(stack: Stack, root: Path, key: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run(
        [sys.executable, "-m", "pyfc", "deploy", "--endpoint", stack.url, "--api-key", key, *args],
        env=stack.env, cwd=root, capture_output=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    return out


def _example(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root)
    return root


def test_every_descriptor_example_is_tested_here() -> None:
    with_descriptor = {
        p.parent.name for p in [*EXAMPLES.glob("*/pyfc.yaml"), *EXAMPLES.glob("*/s.yaml")]
    }
    assert with_descriptor == {
        "nightly-report",
        "canary",
        "fc3-hello",
        "order-consumer",
        "flask-app",
    }


def test_nightly_report(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    root = _example("nightly-report", tmp_path)
    out = _deploy(stack, root, key, "--dry-run")
    assert b"dry run: nothing changed" in out.stdout
    _deploy(stack, root, key)
    report = json.loads(stack.cli("invoke", "reports.prod/nightly", *base).stdout)
    assert report == {"title": "Orders of the day", "day": "today", "scheduledFor": None}
    trig = json.loads(
        stack.cli("trigger", "get", "reports/nightly", "at-night", "--json", *base).stdout
    )
    assert trig["qualifier"] == "prod" and trig["triggerConfig"]["timezone"] == "Asia/Shanghai"
    code = stack.cli("invoke", "reports/nightly", *base)  # notes.md is not in the zip
    assert code.returncode == 0
    assert b"nothing to change" in _deploy(stack, root, key).stdout


def test_canary_release_steps(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    root = _example("canary", tmp_path)
    _deploy(stack, root, key)
    assert stack.cli("invoke", "shop.prod/api", "--data", "x", *base).stdout == b"release one: x"
    # Step 2: a new release, 10% of prod's calls to it.
    text = (root / "pyfc.yaml").read_text()
    text = text.replace("RELEASE: one", "RELEASE: two").replace(
        "version: latest", 'version: 1\n        additionalVersionWeight: {"2": 0.1}'
    )
    (root / "pyfc.yaml").write_text(text)
    _deploy(stack, root, key)
    alias = json.loads(
        stack.cli("alias", "get", "prod", "--service", "shop", "--json", *base).stdout
    )
    assert alias["versionId"] == "1" and alias["additionalVersionWeight"] == {"2": 0.1}
    assert alias["autoRollback"]["maxErrorRate"] == 0.2
    seen = {stack.cli("invoke", "shop.prod/api", *base).stdout for _ in range(40)}
    assert b"release one: hello" in seen  # 90% stay on version 1
    assert stack.cli("invoke", "shop.2/api", *base).stdout == b"release two: hello"
    # Step 3: all of prod to version 2.
    (root / "pyfc.yaml").write_text(
        text.replace('version: 1\n        additionalVersionWeight: {"2": 0.1}', "version: 2")
    )
    _deploy(stack, root, key)
    assert stack.cli("invoke", "shop.prod/api", *base).stdout == b"release two: hello"
    assert b"nothing to change" in _deploy(stack, root, key).stdout


def test_fc3_hello(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    root = _example("fc3-hello", tmp_path)
    out = _deploy(stack, root, key, "--var", "functionName=hello")
    assert b"warning: s.yaml:7: access is ignored" in out.stderr, out.stderr
    assert stack.cli("invoke", "hello-world-app/hello", *base).stdout == b"hello world"
    again = _deploy(stack, root, key, "--var", "functionName=hello")
    assert b"nothing to change" in again.stdout


def test_order_consumer_in_batches(fresh_stack: StartStack, tmp_path: Path) -> None:
    stack = fresh_stack(workers=1)
    stack.spawn("triggers", "mq-1", args=["mq"])
    stack.wait_log("mq-1", "mq triggers ready")
    _, key = stack.create_tenant()
    root = _example("order-consumer", tmp_path)
    exchange = f"orders-{uuid.uuid4().hex[:8]}"
    out_file = open_dir("orders") / "batches.jsonl"
    text = (root / "pyfc.yaml").read_text()
    (root / "pyfc.yaml").write_text(
        text.replace("exchange: orders", f"exchange: {exchange}").replace(
            'ORDERS_OUT: ""', f'ORDERS_OUT: "{out_file}"'
        )
    )

    async def publish(count: int) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            target = await channel.declare_exchange(
                exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            if count == 0:
                return
            for i in range(count):
                body = json.dumps({"id": i, "total": 1.5}).encode()
                await target.publish(aio_pika.Message(body), routing_key="order.created")
            await target.publish(aio_pika.Message(b"{}"), routing_key="invoice.created")

    try:
        asyncio.run(publish(0))  # the exchange exists before the trigger binds to it
        _deploy(stack, root, key)
        # The queue is bound once the trigger process says it consumes it.
        wait_until(lambda: ": consuming " in stack.logs("mq-1"), 30, "the trigger consuming")
        asyncio.run(publish(25))

        def batches() -> list[dict[str, object]]:
            if not out_file.exists():
                return []
            return [json.loads(line) for line in out_file.read_text().splitlines()]

        wait_until(lambda: sum(int(b["orders"]) for b in batches()) >= 25, 60, "25 orders")
        got = batches()
        assert sorted(i for b in got for i in b["ids"]) == list(range(25))  # type: ignore[attr-defined]
        assert all(1 <= int(b["orders"]) <= 10 for b in got) and len(got) >= 3, got
        assert b"nothing to change" in _deploy(stack, root, key).stdout
    finally:

        async def drop() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                await (await connection.channel()).exchange_delete(exchange)

        asyncio.run(drop())


def _vendor(code: Path, *packages: str) -> None:
    """What `pip install -r requirements.txt -t app/` does, from this environment (offline)."""
    import importlib.util

    for name in packages:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        if spec.submodule_search_locations:
            shutil.copytree(
                spec.submodule_search_locations[0],
                code / name,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy(spec.origin, code / Path(spec.origin).name)


def test_flask_app(stack: Stack, tmp_path: Path) -> None:
    import urllib.parse
    import urllib.request
    from http.cookiejar import CookieJar

    _, key = stack.create_tenant()
    root = _example("flask-app", tmp_path)
    _vendor(root / "app", "flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous",
            "click", "blinker")  # fmt: skip
    _deploy(stack, root, key)
    base = ["--endpoint", stack.url, "--api-key", key]
    trig = json.loads(stack.cli("trigger", "get", "notes/web", "site", "--json", *base).stdout)
    site = stack.url + trig["urlPath"]
    # A browser: no key (authType anonymous), cookies kept, redirects followed.
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    with browser.open(site, timeout=30) as r:
        assert r.status == 200 and b"visit 1" in r.read()
    form = urllib.parse.urlencode({"note": "<b>milk</b>"}).encode()
    with browser.open(site + "notes", data=form, timeout=30) as r:  # POST, then the redirect
        page = r.read()
    assert r.url == site and b"visit 2" in page  # the session cookie came back
    assert b"<li>&lt;b&gt;milk&lt;/b&gt;</li>" in page  # escaped, as a template would
    assert b"nothing to change" in _deploy(stack, root, key).stdout
