"""`pyfc deploy` of Serverless Devs files as FC's published examples write them (edition
1.0.0 with the `fc` component, 3.0.0 with `fc3`): they deploy, their timers fire, what pyfc
ignores is warned about, variables resolve or fail naming what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import StartStack
from tests.helpers import open_dir
from tests.stack import Stack, free_port, wait_until

# FC's start-fc-timer-python example (s.yaml, edition 1.0.0), its function recording runs.
EDITION_1 = """\
edition: 1.0.0
name: timer-app
access: "{{ access }}"

vars:
  region: "{{ region }}"
  service:
    name: "timer-service"
    description: 'timer trigger by serverless devs'
    role: "{{ roleArn }}"

services:
  timer:
    component: fc
    actions:
      pre-deploy:
        - run: pip3 install -r requirements.txt -t .
          path: ./code
    props:
      region: ${vars.region}
      service: ${vars.service}
      function:
        name: "timer-py"
        description: 'timer by serverless devs'
        runtime: python3.9
        codeUri: ./code
        handler: index.handler
        memorySize: 128
        timeout: 60
        environmentVariables:
          RUNS: ${env(RUNS_FILE)}
      triggers:
        - name: timerTrigger
          type: timer
          config:
            cronExpression: '@every 1s'
            enable: true
            payload: 'awesome-fc'
"""

# FC's start-fc3-python hello world (edition 3.0.0), with a disabled timer.
EDITION_3 = """\
edition: 3.0.0
name: hello-world-app
access: "{{ access }}"

vars:
  region: "{{ region }}"
  functionName: "{{ functionName }}"

resources:
  hello_world:
    component: fc3
    actions:
      pre-deploy:
        - run: pip3 install -r requirements.txt -t .
          path: ./code
    props:
      region: ${vars.region}
      functionName: ${vars.functionName}
      description: 'hello world by serverless devs'
      runtime: python3.10
      code: ./code
      handler: index.handler
      memorySize: 128
      timeout: 30
      internetAccess: true
      logConfig: auto
      triggers:
        - triggerName: timerTrigger
          triggerType: timer
          qualifier: LATEST
          triggerConfig:
            cronExpression: "0 0 8 * * *"
            enable: false
            payload: "TestPayload"
"""

RECORD = (
    "import json, os\n"
    "def handler(event, context):\n"
    "    if event:\n"
    "        with open(os.environ['RUNS'], 'a') as f:\n"
    "            f.write(event.decode() + '\\n')\n"
    "    return 'hello world'\n"
)


def _deploy(
    stack: Stack, root: Path, key: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pyfc", "deploy", "--endpoint", stack.url, "--api-key", key, *args],
        env={**stack.env, **(env or {})}, cwd=root, capture_output=True, timeout=120,
    )  # fmt: skip


def _app(root: Path, text: str) -> Path:
    (root / "code").mkdir(parents=True)
    (root / "code" / "index.py").write_text(RECORD)
    (root / "s.yaml").write_text(text)
    return root


def test_edition_1_timer_function_deploys_and_fires(
    fresh_stack: StartStack, tmp_path: Path
) -> None:
    stack = fresh_stack(workers=1)
    stack.start_timers()
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    root = _app(tmp_path / "v1", EDITION_1)
    runs = open_dir("sdevs") / "runs.jsonl"
    missing = _deploy(stack, root, key)
    assert missing.returncode == 2, missing.stderr
    assert b"s.yaml:31: services.timer.props.function.environmentVariables.RUNS: " \
           b"${env(RUNS_FILE)}: the environment has no RUNS_FILE" in missing.stderr  # fmt: skip
    out = _deploy(stack, root, key, env={"RUNS_FILE": str(runs)})
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    for warning in (
        "s.yaml:3: access is ignored",
        "s.yaml:10: vars.service.role is ignored",
        "s.yaml:15: services.timer.actions is ignored: pyfc runs no hooks",
        "s.yaml:20: services.timer.props.region is ignored",
    ):
        assert f"warning: {warning}" in err, err
    assert stack.cli("invoke", "timer-service/timer-py", *base).stdout == b"hello world"
    wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 2, 30, "2 fires")
    event = json.loads(runs.read_text().splitlines()[0])
    assert event["triggerName"] == "timerTrigger" and event["payload"] == "awesome-fc"
    again = _deploy(stack, root, key, env={"RUNS_FILE": str(runs)})
    assert again.stdout.startswith(b"s.yaml: nothing to change"), again.stdout


def test_edition_3_hello_world_with_template_parameters(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    root = _app(tmp_path / "v3", EDITION_3)
    missing = _deploy(stack, root, key)
    assert missing.returncode == 2
    assert b"s.yaml:7: vars.functionName: {{ functionName }} has no value: " \
           b"pass --var functionName=VALUE" in missing.stderr, missing.stderr  # fmt: skip
    assert b"region" not in missing.stderr.split(b"warning")[0]  # ignored: needs no value
    name = f"hello{free_port()}"
    out = _deploy(stack, root, key, "--var", f"functionName={name}", "--json")
    assert out.returncode == 0, out.stderr
    planned = json.loads(out.stdout)
    assert [(c["action"], c["kind"], c["target"]) for c in planned["changes"]] == [
        ("create", "service", "hello-world-app"),
        ("create", "function", f"hello-world-app/{name}"),
        ("create", "trigger", f"hello-world-app/{name}/timerTrigger"),
    ]
    assert any("props.logConfig is ignored" in w for w in planned["warnings"])
    assert stack.cli("invoke", f"hello-world-app/{name}", *base).stdout == b"hello world"
    trig = json.loads(
        stack.cli(
            "trigger", "get", f"hello-world-app/{name}", "timerTrigger", "--json", *base
        ).stdout
    )
    assert trig["enabled"] is False and trig["triggerConfig"]["payload"] == "TestPayload"
    again = _deploy(stack, root, key, "--var", f"functionName={name}", "--json")
    assert json.loads(again.stdout)["changes"] == []


def test_unknown_expression_and_edition_are_errors_naming_the_line(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _app(root, EDITION_3.replace("${vars.region}", "${this.props.x}").replace(
        "runtime: python3.10", "runtime: ${vars.runtime}"))  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_DATA_DIR": str(tmp_path / "data"),
        "PYFC_API_KEY": "pyfc_unused",
        "PYFC_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pyfc", "deploy", "--var", "functionName=f"],
        env=env, cwd=root, capture_output=True, timeout=60,
    )  # fmt: skip
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert "s.yaml:20: resources.hello_world.props.runtime: ${vars.runtime}: no such entry" in err
    assert "this.props" not in err  # region is ignored: its expression is never resolved


# FC's start-fc-http-python (2.0: a WSGI handler) and the fc3 HTTP example (3.0: the event).
HTTP_1 = """\
edition: 1.0.0
name: web-app
services:
  web:
    component: devsapp/fc
    props:
      service: {name: web-service}
      function: {name: wsgi, runtime: python3, codeUri: ./code, handler: index.handler}
      triggers:
        - name: httpTrigger
          type: http
          config: {authType: anonymous, methods: [GET, POST]}
"""

HTTP_3 = """\
edition: 3.0.0
name: web3
resources:
  web:
    component: fc3
    props:
      functionName: event
      runtime: python3.12
      code: ./code
      handler: index.on_event
      triggers:
        - triggerName: httpTrigger
          triggerType: http
          triggerConfig: {authType: function, disableURLInternet: false, methods: [GET]}
"""

WEB = (
    "import json\n"
    "def handler(environ, start_response):\n"
    "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
    "    return [('wsgi ' + environ['PATH_INFO']).encode()]\n"
    "def on_event(event, context):\n"
    "    e = json.loads(event)\n"
    "    return {'statusCode': 200, 'body': 'event ' + e['rawPath']}\n"
)


def test_http_trigger_functions_of_both_editions(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    auth = {"Authorization": f"Bearer {key}"}
    for name, text, url, want in (
        ("v1", HTTP_1, "/v1/proxy/web-service/wsgi/hello", b"wsgi /hello"),
        ("v3", HTTP_3, "/v1/proxy/web3/event/hi", b"event /hi"),
    ):
        root = tmp_path / name
        (root / "code").mkdir(parents=True)
        (root / "code" / "index.py").write_text(WEB)
        (root / "s.yaml").write_text(text)
        out = _deploy(stack, root, key)
        assert out.returncode == 0, out.stderr
        if name == "v3":
            assert b"disableURLInternet is ignored" in out.stderr, out.stderr
        req = urllib.request.Request(stack.url + url, headers=auth)
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.read() == want
