"""The CLI as a person and a script meet it: one-line errors with documented exit codes,
`--json` that parses, profiles, completion."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.stack import Stack, free_port


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pyfc", *args], env=env, capture_output=True, timeout=60
    )


def _bare_env(tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_DATA_DIR": str(tmp_path / "data"),
        "PYFC_CONFIG": str(tmp_path / "config.toml"),
    }


def test_gateway_down_is_one_line_naming_where_and_what_to_run(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {**_bare_env(tmp_path), "PYFC_HTTP_PORT": str(port), "PYFC_API_KEY": "pyfc_x"}
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "index.py").write_text("def handler(event, context):\n    return event\n")
    for args in (
        ("invoke", "demo/echo", "--data", "x"),
        ("invoke", "demo/echo", "--async"),
        ("versions", "demo", "--json"),
        ("trigger", "list", "demo/echo"),
        ("dlq", "list"),
        ("alias", "list", "--service", "demo"),
        ("deploy", str(folder), "--service", "demo", "--function", "echo"),
    ):
        out = _cli(env, *args)
        err = out.stderr.decode()
        assert out.returncode == 3, (args, err)
        assert out.stdout == b"", args
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"cannot reach the gateway at http://127.0.0.1:{port}" in err, err
        assert "connection refused" in err and "pyfc up" in err, err
    out = _cli(env, "invoke", "demo/echo", "--endpoint", f"http://127.0.0.1:{port}/")
    assert out.returncode == 3 and b"(from --endpoint)" in out.stderr
    # --debug adds the traceback before the same line.
    out = _cli(env, "--debug", "invoke", "demo/echo")
    assert out.returncode == 3 and out.stderr.startswith(b"Traceback")
    assert out.stderr.decode().splitlines()[-1].startswith("pyfc: cannot reach the gateway")


def test_no_api_key_says_how_to_get_one(tmp_path: Path) -> None:
    out = _cli(_bare_env(tmp_path), "versions", "demo")
    assert out.returncode == 6
    assert out.stderr.decode().startswith("pyfc: no API key: pass --api-key")
    assert b"pyfc login" in out.stderr and b"Traceback" not in out.stderr


def test_exit_codes_and_json_output(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "index.py").write_text(
        "def handler(event, context):\n"
        "    if event == b'boom':\n"
        "        raise ValueError('boom')\n"
        "    return b'ok:' + event\n"
    )
    out = stack.cli("deploy", str(folder), "--service", "ux", "--function", "f", "--json", *base)
    fn = json.loads(out.stdout)
    assert fn["functionName"] == "f" and fn["handler"] == "index.handler"
    out = stack.cli("invoke", "ux/f", "--data", "a", "--json", *base)
    done = json.loads(out.stdout)
    assert done["result"] == "ok:a" and done["functionError"] is None and done["requestId"]
    failed = stack.cli("invoke", "ux/f", "--data", "boom", *base, check=False)
    assert failed.returncode == 1 and b"function error" in failed.stderr  # 1: function error
    failed = stack.cli("invoke", "ux/f", "--data", "boom", "--json", *base, check=False)
    assert failed.returncode == 1 and json.loads(failed.stdout)["functionError"]
    out = stack.cli("invoke", "ux/f", "--async", "--json", *base)
    assert set(json.loads(out.stdout)) == {"requestId"}
    for args, code in (
        (("invoke", "ux/nosuch"), 4),
        (("invoke", "nosuch/f"), 4),
        (("trigger", "get", "ux/f", "nosuch"), 4),
        (("invoke", "ux"), 2),  # usage: no function
        (("invoke", "ux/f", "--file", str(tmp_path / "missing.json")), 2),
        (("publish", "ux", "--json", "--no-such-flag"), 2),
    ):
        out = stack.cli(*args, *base, check=False)
        assert out.returncode == code, (args, out)
        assert out.stderr.count(b"\n") <= 4 and b"Traceback" not in out.stderr, out.stderr
    wrong_key = stack.cli("versions", "ux", "--endpoint", stack.url, "--api-key", "pyfc_bad",
                          check=False)  # fmt: skip
    assert wrong_key.returncode == 6 and b"error 401" in wrong_key.stderr
    assert stack.cli("publish", "ux", "--json", *base).returncode == 0
    assert json.loads(stack.cli("versions", "ux", "--json", *base).stdout)["versions"]
    assert stack.cli("publish", "ux", *base, check=False).returncode == 2  # nothing changed


def test_login_saves_a_private_profile_the_commands_use(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    config = Path(stack.env["PYFC_CONFIG"])
    config.unlink(missing_ok=True)
    bad = stack.cli("login", "--endpoint", stack.url, "--api-key", "pyfc_bad", check=False)
    assert bad.returncode == 6 and not config.exists()  # a wrong key is not saved
    out = stack.cli("login", "--endpoint", stack.url, "--api-key", key, "--profile", "staging")
    assert b"profile 'staging' saved" in out.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "index.py").write_text("def handler(event, context):\n    return 'p'\n")
    # No --endpoint, no --api-key: the profile's, named by flag or by PYFC_PROFILE.
    stack.cli("--profile", "staging", "deploy", str(folder), "--service", "p", "--function", "f")
    assert stack.cli("--profile", "staging", "invoke", "p/f").stdout == b"p"
    env = {**stack.env, "PYFC_PROFILE": "staging", "PYFC_HTTP_PORT": str(free_port())}
    assert _cli(env, "invoke", "p/f").stdout == b"p"
    missing = stack.cli("--profile", "prod", "invoke", "p/f", check=False)
    assert missing.returncode == 2 and b"no profile 'prod'" in missing.stderr
    assert b"staging" in missing.stderr
    # `default` is used when no profile is named.
    stack.cli("login", "--endpoint", stack.url, "--api-key", key, "--json")
    env = {**stack.env, "PYFC_HTTP_PORT": str(free_port())}
    assert _cli(env, "invoke", "p/f").stdout == b"p"


def test_completion_scripts(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        out = _cli(_bare_env(tmp_path), "completion", shell)
        assert out.returncode == 0 and b"_PYFC_COMPLETE" in out.stdout
    env = {**_bare_env(tmp_path), "_PYFC_COMPLETE": "bash_complete", "COMP_WORDS": "pyfc tri",
           "COMP_CWORD": "1"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from pyfc.cli import main; sys.exit(main())"],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert b"trigger" in out.stdout, out


def test_service_function_and_tenant_commands(stack: Stack, tmp_path: Path) -> None:
    tenant, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "index.py").write_text("def handler(event, context):\n    return 'r'\n")
    assert b"no services" in stack.cli("service", "list", *base).stdout
    stack.cli("deploy", str(folder), "--service", "res", "--function", "f", *base)
    listed = json.loads(stack.cli("service", "list", "--json", *base).stdout)["services"]
    assert [s["serviceName"] for s in listed] == ["res"]
    assert stack.cli("service", "get", "res", *base).stdout.startswith(b"serviceName:")
    out = stack.cli("function", "list", "res", *base).stdout.decode()
    assert out.startswith("f  python3.11  index.handler  128 MB  3 s  code "), out
    fn = json.loads(stack.cli("function", "get", "res/f", "--json", *base).stdout)
    assert fn["functionName"] == "f"
    busy = stack.cli("service", "delete", "res", *base, check=False)
    assert busy.returncode in (2, 5), busy.stderr  # a service with functions stays
    assert b"deleted function res/f" in stack.cli("function", "delete", "res/f", *base).stdout
    assert stack.cli("function", "get", "res/f", *base, check=False).returncode == 4
    assert b"deleted service res" in stack.cli("service", "delete", "res", *base).stdout
    shown = json.loads(stack.cli("tenant", "show", "--json", *base).stdout)
    assert shown["name"] == tenant and shown["concurrency"] > 0
