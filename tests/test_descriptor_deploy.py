"""`pyfc deploy` of a pyfc.yaml into a live stack: plan, dry run, apply, a redeploy that
changes nothing, an edit that deploys only the difference, and --prune."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.stack import Stack, free_port

APP = """\
services:
  {svc}:
    description: descriptor test
    publish: true
    aliases:
      prod: {{version: latest}}
    functions:
      echo:
        code: ./echo
        timeout: {timeout}
        environmentVariables: {{GREETING: {greeting}, PORT: 8080}}
        asyncConfig: {{maxAsyncRetryAttempts: 1}}
{triggers}{hello}"""

TRIGGERS = """\
        triggers:
          nightly:
            type: timer
            qualifier: prod
            config: {cronExpression: "0 0 3 * * *", payload: report}
"""

HELLO = """\
      hello:
        code: ./hello
        handler: main.handler
"""


def _write(
    root: Path, svc: str, *, timeout: int = 5, greeting: str = "hi", hello: bool = True
) -> None:
    text = APP.format(
        svc=svc,
        timeout=timeout,
        greeting=greeting,
        triggers=TRIGGERS if hello else "",
        hello=HELLO if hello else "",
    )
    (root / "pyfc.yaml").write_text(text)


def _deploy(
    stack: Stack, root: Path, key: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pyfc", "deploy", "--endpoint", stack.url, "--api-key", key, *args],
        env=stack.env, cwd=root, capture_output=True, timeout=120, check=check,
    )  # fmt: skip


def test_deploy_plan_apply_redeploy_edit_and_prune(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    svc = f"app{free_port()}"
    (tmp_path / "echo").mkdir()
    (tmp_path / "echo" / "index.py").write_text(
        "import os\n"
        "def handler(event, context):\n"
        "    secret = 'leaked' if os.path.exists('secret.txt') else 'clean'\n"
        "    return f\"{os.environ['GREETING']}:{secret}:{os.environ['PORT']}:\".encode() + event\n"
    )
    (tmp_path / "echo" / "secret.txt").write_text("do not ship")
    (tmp_path / "echo" / ".fcignore").write_text("# local only\nsecret.txt\n")
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "main.py").write_text(
        "def handler(event, context):\n    return 'hello'\n"
    )
    _write(tmp_path, svc)

    # A dry run shows the plan and changes nothing.
    out = _deploy(stack, tmp_path, key, "--dry-run", "--json")
    planned = json.loads(out.stdout)
    kinds = [(c["action"], c["kind"], c["target"]) for c in planned["changes"]]
    assert kinds == [
        ("create", "service", svc),
        ("create", "function", f"{svc}/echo"),
        ("create", "async config", f"{svc}/echo"),
        ("create", "function", f"{svc}/hello"),
        ("publish", "version", svc),
        ("create", "alias", f"{svc}:prod"),
        ("create", "trigger", f"{svc}/echo/nightly"),
    ], kinds
    assert stack.cli("versions", svc, *base, check=False).returncode == 4  # nothing made

    out = _deploy(stack, tmp_path, key)
    text = out.stdout.decode()
    assert re.search(rf"\+ function +{svc}/echo  code [0-9a-f]{{12}} \(\d+ bytes\)", text), text
    assert "6 to create, 0 to change, 0 to delete, a version to publish" in text, text
    assert "deployed pyfc.yaml: 6 created, 0 changed, 0 deleted" in text, text
    assert b"published version " in out.stderr and b"(version 1)" in out.stderr, out.stderr
    assert stack.cli("invoke", f"{svc}/echo", "--data", "x", *base).stdout == b"hi:clean:8080:x"
    assert stack.cli("invoke", f"{svc}.prod/hello", *base).stdout == b"hello"
    trig = json.loads(stack.cli("trigger", "get", f"{svc}/echo", "nightly", "--json", *base).stdout)
    assert trig["qualifier"] == "prod" and trig["triggerConfig"]["payload"] == "report"

    # Again, unchanged: nothing to do, nothing done (no new version either).
    out = _deploy(stack, tmp_path, key)
    assert out.stdout.decode().startswith("pyfc.yaml: nothing to change;"), out.stdout
    assert json.loads(_deploy(stack, tmp_path, key, "--json").stdout)["changes"] == []
    versions = json.loads(stack.cli("versions", svc, "--json", *base).stdout)["versions"]
    assert [v["versionId"] for v in versions] == ["1"]

    # An edit deploys only the difference: the function, a version, the alias moves.
    _write(tmp_path, svc, timeout=9, greeting="hey")
    out = _deploy(stack, tmp_path, key, "--json")
    changes = json.loads(out.stdout)["changes"]
    assert [(c["action"], c["kind"], c["target"]) for c in changes] == [
        ("update", "function", f"{svc}/echo"),
        ("publish", "version", svc),
        ("update", "alias", f"{svc}:prod"),
    ], changes
    assert changes[0]["details"] == [
        "timeout: 5 -> 9",
        "environmentVariables: {'GREETING': 'hi', 'PORT': '8080'} -> "
        "{'GREETING': 'hey', 'PORT': '8080'}",
    ]
    assert (
        stack.cli("invoke", f"{svc}.prod/echo", "--data", "y", *base).stdout == b"hey:clean:8080:y"
    )
    assert stack.cli("invoke", f"{svc}.1/echo", "--data", "y", *base).stdout == b"hi:clean:8080:y"

    # What the file no longer names stays unless --prune.
    _write(tmp_path, svc, timeout=9, greeting="hey", hello=False)  # no trigger, no hello
    out = _deploy(stack, tmp_path, key, "--dry-run")
    text = out.stdout.decode()
    assert f"kept (--prune deletes them): trigger {svc}/echo/nightly, function {svc}/hello" in text
    out = _deploy(stack, tmp_path, key, "--prune", "--json")
    changes = json.loads(out.stdout)["changes"]
    deleted = [(c["kind"], c["target"]) for c in changes if c["action"] == "delete"]
    assert deleted == [("trigger", f"{svc}/echo/nightly"), ("function", f"{svc}/hello")]
    assert stack.cli("invoke", f"{svc}/hello", *base, check=False).returncode == 4
    assert json.loads(_deploy(stack, tmp_path, key, "--json").stdout)["changes"] == []


BROKEN = [
    ("services: [a, b]\n", 1, "services: expected `object`, got `array`"),
    ("servics: {}\n", 1, "servics: unknown field (known here: services, name, edition)"),
    (
        "services:\n  demo:\n    functions:\n      f:\n        handler: x.y\n",
        4,
        "services.demo.functions.f.code: required field `code` is missing",
    ),
    (
        "services:\n  demo:\n    functions:\n      f:\n        code: ./fn\n        timeout: 0\n",
        6,
        "services.demo.functions.f.timeout: expected `float` > 0.0",
    ),
    (
        "services:\n  demo:\n    functions:\n      f:\n        code: ./fn\n"
        "        runtime: nodejs18\n",
        6,
        "services.demo.functions.f.runtime: unknown runtime 'nodejs18'",
    ),
    (
        "services:\n  demo:\n    functions:\n      f:\n        code: ./nope\n",
        5,
        "services.demo.functions.f.code: './nope' is not a folder",
    ),
    (
        "services:\n  demo:\n    functions:\n      f:\n        code: ./fn\n"
        "        handler: other.handler\n",
        5,
        "services.demo.functions.f.code: ",
    ),
    (
        "services:\n  demo:\n    functions:\n      f:\n        code: ./fn\n        triggers:\n"
        "          t:\n            type: timer\n            config:\n"
        "              cronExpression: '@every 1h'\n              missedRuns: sometimes\n",
        11,
        "services.demo.functions.f.triggers.t.config.missedRuns: Invalid enum value 'sometimes'",
    ),
    (
        "services:\n  demo:\n    functions:\n      f:\n        code: ./fn\n        triggers:\n"
        "          t: {type: timer, qualifier: prod, config: {cronExpression: '@every 1h'}}\n",
        7,
        "services.demo.functions.f.triggers.t.qualifier: 'prod' is neither LATEST",
    ),
    (
        "services:\n  demo:\n    aliases:\n      prod: {version: newest}\n",
        4,
        "services.demo.aliases.prod.version: a version id (1, 2, ...) or 'latest'",
    ),
    ("services:\n  Bad Name:\n    functions: {}\n", 2, "services['Bad Name']: service name"),
    ("services:\n  demo: {}\n  demo: {}\n", 3, "not valid YAML: duplicate key 'demo'"),
    ("services:\n  demo: {functions: [}\n", 2, "not valid YAML"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BROKEN)
def test_broken_descriptor_names_line_path_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "index.py").write_text("def handler(event, context):\n    return 1\n")
    (tmp_path / "pyfc.yaml").write_text(text)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_DATA_DIR": str(tmp_path / "data"),
        "PYFC_CONFIG": str(tmp_path / "config.toml"),
        # Nothing listens here: a usage error (2), not "not reachable" (3), shows the file
        # was refused before any request.
        "PYFC_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "PYFC_API_KEY": "pyfc_unused",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pyfc", "deploy"], env=env, cwd=tmp_path, capture_output=True,
        timeout=60,
    )  # fmt: skip
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert "nothing was changed" in err and "Traceback" not in err
    assert f"pyfc.yaml:{line}: {reason}" in err, err


def test_every_problem_of_a_file_at_once(tmp_path: Path) -> None:
    (tmp_path / "pyfc.yaml").write_text(
        textwrap.dedent(
            """\
            services:
              demo:
                functions:
                  f:
                    code: ./missing
                    timeout: ten
                    colour: blue
                    triggers:
                      t: {type: kafka}
            """
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_DATA_DIR": str(tmp_path / "data"),
        "PYFC_API_KEY": "pyfc_unused",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pyfc", "deploy", "-f", str(tmp_path / "pyfc.yaml")],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    err = out.stderr.decode()
    assert out.returncode == 2 and "has 4 problems" in err, err
    for line, where in ((5, "f.code"), (6, "f.timeout"), (7, "f.colour"), (9, "f.triggers.t.type")):
        assert f"pyfc.yaml:{line}: services.demo.functions.{where}" in err, err
