"""The `pyfc` command: tenant creation, deploy from a folder, invoke, and `pyfc up`."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from shared.trigger_types import PROCESS_KINDS
from tests.stack import (
    AMQP_URL,
    Stack,
    free_port,
    instance_uids,
    remove_network_policy,
    wait_until,
)


def test_tenant_create_json_and_duplicate(stack: Stack) -> None:
    name = f"cli-{os.getpid()}-{free_port()}"
    out = json.loads(stack.cli("tenant", "create", name, "--concurrency", "7", "--json").stdout)
    assert out["tenant"] == name and out["apiKey"].startswith("pyfc_")
    dup = stack.cli("tenant", "create", name, "--json", check=False)
    assert dup.returncode == 5 and b"AlreadyExists" in dup.stderr  # 5: conflict
    bad = stack.cli("tenant", "create", "Bad Name!", check=False)
    assert bad.returncode == 2 and b"InvalidArgument" in bad.stderr


def test_deploy_folder_and_invoke(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "index.py").write_text("def handler(event, context):\n    return b'cli:' + event\n")
    base = ["--endpoint", stack.url, "--api-key", key]
    out = stack.cli("deploy", str(folder), "--service", "clisvc", "--function", "echo", *base)
    assert b"deployed clisvc/echo" in out.stdout
    out = stack.cli("invoke", "clisvc/echo", "--data", "hi", *base)
    assert out.stdout == b"cli:hi"
    # Redeploy updates in place (revision 2).
    out = stack.cli("deploy", str(folder), "--service", "clisvc", "--function", "echo", *base)
    assert b"revision 2" in out.stdout
    out = stack.cli("invoke", "clisvc/echo", "--async", *base)
    request_id = out.stdout.decode().removesuffix("\n")  # the id alone, for $(...)
    assert re.fullmatch(r"[0-9a-f-]{16,64}", request_id), out.stdout
    out = stack.cli("result", "clisvc/echo", request_id, "--wait", "30", "--json", *base)
    assert json.loads(out.stdout)["result"] == "cli:"
    out = stack.cli("result", "clisvc/echo", request_id, *base)
    assert out.stdout.decode().startswith(f"Succeeded  request {request_id}\n")


def test_trigger_commands(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "index.py").write_text("def handler(event, context):\n    return event\n")
    base = ["--endpoint", stack.url, "--api-key", key]
    stack.cli("deploy", str(folder), "--service", "trsvc", "--function", "echo", *base)
    out = stack.cli(
        "trigger", "create", "trsvc/echo", "tick", "--cron", "@every 5s", "--payload", "ping",
        "--missed-runs", "once", "--json", *base,
    )  # fmt: skip
    created = json.loads(out.stdout)
    assert created["triggerConfig"]["cronExpression"] == "@every 5s"
    assert created["triggerConfig"]["missedRuns"] == "once" and created["enabled"] is True
    out = stack.cli("trigger", "list", "trsvc/echo", *base)
    assert out.stdout.decode().startswith("tick  timer  LATEST  enabled")
    out = stack.cli("trigger", "update", "trsvc/echo", "tick", "--disable", "--json", *base)
    assert json.loads(out.stdout)["enabled"] is False
    out = stack.cli("trigger", "get", "trsvc/echo", "tick", "--json", *base)
    assert json.loads(out.stdout)["triggerConfig"]["payload"] == "ping"
    bad = stack.cli("trigger", "create", "trsvc/echo", "t2", "--cron", "nope", *base, check=False)
    assert bad.returncode == 2 and b"cronExpression" in bad.stderr  # 400: invalid input
    out = stack.cli("trigger", "delete", "trsvc/echo", "tick", *base)
    assert b"deleted trigger tick" in out.stdout
    assert stack.cli("trigger", "list", "trsvc/echo", *base).stdout == b""


def test_up_runs_all_roles_and_ctrl_c_leaves_no_orphans(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_DATA_DIR": str(tmp_path / "data"),
        "PYFC_NAMESPACE": f"up{port}",
        "PYFC_HTTP_PORT": str(port),
        "PYFC_AMQP_URL": AMQP_URL,
        **instance_uids(),
    }
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyfc", "up"], env=env, stderr=out, stdout=out
        )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(healthy, 60, "pyfc up to serve")
        children = [
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        # gateway, dispatcher, worker, one trigger process per kind
        assert len(children) == 3 + len(PROCESS_KINDS)
        assert (tmp_path / "data" / "credentials").read_text().startswith("pyfc_")
        # Not guest: a broker user of its own, its random password kept in the data dir.
        kept = tmp_path / "data" / "broker-password"
        assert kept.stat().st_mode & 0o777 == 0o600 and len(kept.read_text().strip()) >= 32
        for child in children:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            (url,) = [v for v in environ if v.startswith(b"PYFC_AMQP_URL=")]
            user = f"pyfc-up{port}:{kept.read_text().strip()}@"
            assert user.encode() in url and b"guest" not in url, url
        # A role that dies is restarted (README: "restarted with backoff").
        (gateway,) = [c for c in children if b"gateway" in Path(f"/proc/{c}/cmdline").read_bytes()]
        os.kill(gateway, signal.SIGKILL)
        wait_until(
            lambda: "gateway exited with code -9; restarting in 1s" in log.read_text(),
            10,
            "the restart announced",
        )
        wait_until(healthy, 30, "the restarted gateway to serve")
        now = [
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        assert len(now) == len(children) and gateway not in now
        children = now
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.returncode == 0, log.read_text()
        assert "pyfc: up: gateway" in log.read_text()
        wait_until(
            lambda: not any(Path(f"/proc/{c}").exists() for c in children), 10, "children to exit"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        import asyncio

        from tests.stack import delete_namespace

        asyncio.run(delete_namespace(f"up{port}"))
        remove_network_policy(env)
        subprocess.run(["rabbitmqctl", "-q", "delete_user", f"pyfc-up{port}"], check=False)


def test_up_says_clearly_when_rabbitmq_is_unreachable(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_DATA_DIR": str(tmp_path / "data"),
        "PYFC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pyfc", "up"], env=env, capture_output=True, timeout=60
    )
    assert out.returncode == 2
    assert b"cannot reach RabbitMQ" in out.stderr
    assert b"guest:guest" not in out.stderr  # the password is never printed


def test_publish_versions_aliases_and_invoking_an_alias(stack: Stack, tmp_path: Path) -> None:
    _, key = stack.create_tenant()
    folder = tmp_path / "fn"
    folder.mkdir()
    base = ["--endpoint", stack.url, "--api-key", key]
    for tag in ("one", "two"):
        (folder / "index.py").write_text(f"def handler(event, context):\n    return '{tag}'\n")
        stack.cli("deploy", str(folder), "--service", "relsvc", "--function", "f", *base)
        out = stack.cli("publish", "relsvc", "--description", tag, *base)
        assert out.stdout.decode().startswith("published relsvc version "), out
    again = stack.cli("publish", "relsvc", *base, check=False)
    assert again.returncode == 2 and b"VersionExists" in again.stderr
    out = stack.cli("versions", "relsvc", "--json", *base)
    assert [v["versionId"] for v in json.loads(out.stdout)["versions"]] == ["2", "1"]
    out = stack.cli("versions", "relsvc", *base)
    assert b"     2  " in out.stdout and b"one" in out.stdout
    out = stack.cli("alias", "set", "prod", "--service", "relsvc", "--version", "1", *base)
    assert out.stdout.decode().strip() == "prod -> version 1"
    out = stack.cli(
        "alias", "set", "prod", "--service", "relsvc", "--version", "1", "--weight", "2=0.25",
        "--auto-rollback", "0.2", *base,
    )  # fmt: skip
    assert "prod -> version 1 (+ 2=0.25)  auto-rollback above 20% over 60s" in out.stdout.decode()
    out = stack.cli("alias", "list", "--service", "relsvc", "--json", *base)
    (alias,) = json.loads(out.stdout)["aliases"]
    assert alias["additionalVersionWeight"] == {"2": 0.25}
    bad = stack.cli(
        "alias", "set", "prod", "--service", "relsvc", "--version", "1", "--weight", "2=3",
        *base, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and b"0..1" in bad.stderr
    bad = stack.cli(
        "alias", "set", "prod", "--service", "relsvc", "--version", "1", "--weight", "2", *base,
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and b"VERSION=WEIGHT" in bad.stderr
    stack.cli("alias", "set", "prod", "--service", "relsvc", "--version", "2", *base)
    out = stack.cli("invoke", "relsvc.prod/f", *base)
    assert out.stdout == b"two" and b"version 2 ran" in out.stderr
    out = stack.cli("invoke", "relsvc.1/f", *base)
    assert out.stdout == b"one"
    missing = stack.cli("invoke", "relsvc.nope/f", *base, check=False)
    assert missing.returncode == 4 and b"AliasNotFound" in missing.stderr


def test_dlq_commands_and_usage_errors(stack: Stack) -> None:
    _, key = stack.create_tenant()
    base = ["--endpoint", stack.url, "--api-key", key]
    out = stack.cli("dlq", "list", "--service", "nosuch", "--json", *base)
    assert json.loads(out.stdout)["deadLetters"] == []
    assert stack.cli("dlq", "list", *base).stdout == b"no dead letters\n"
    out = stack.cli("dlq", "purge", "--service", "nosuch", "--json", *base)
    assert json.loads(out.stdout) == {"purged": 0}
    bad = stack.cli("dlq", "redrive", *base, check=False)
    assert bad.returncode == 2 and b"give one dead letter ID, or --all" in bad.stderr
    missing = stack.cli("dlq", "show", "nosuch", *base, check=False)
    assert missing.returncode == 4 and b"error 404" in missing.stderr
    usage = stack.cli("invoke", *base, check=False)
    assert usage.returncode == 2 and b"Missing argument 'TARGET'" in usage.stderr
    usage = stack.cli("trigger", "list", "nofunction", *base, check=False)
    assert usage.returncode == 2 and b"SERVICE/FUNCTION" in usage.stderr
    usage = stack.cli("deploy", ".", "--service", "s", "--function", "f", "--env", "X", *base,
                      check=False)  # fmt: skip
    assert usage.returncode == 2 and b"KEY=VALUE" in usage.stderr


def test_a_role_that_keeps_dying_is_restarted_with_doubling_backoff(tmp_path: Path) -> None:
    """pyfc up's supervisor (Role): each exit is followed by a restart after 1 s, 2 s, ...
    (timestamps of the starts, no sleeps); a stop ends the loop."""
    from pyfc.up import Role

    starts = tmp_path / "starts"
    (tmp_path / "dies.py").write_text(
        "import sys, time\n"
        f"with open({str(starts)!r}, 'a') as f:\n"
        "    f.write(f'{time.monotonic()}\\n')\n"
        "sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    async def supervise() -> list[float]:
        stopping = asyncio.Event()
        task = asyncio.create_task(Role("dies", "dies", env).run(stopping))
        while len(times := _lines(starts)) < 3:
            assert not task.done()
            await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.wait_for(task, 10)
        return times

    times = asyncio.run(supervise())
    gaps = [b - a for a, b in itertools.pairwise(times[:3])]
    # 1 s then 2 s after each exit, plus an interpreter's start (measured 1.1 and 2.1 s)
    assert 1.0 <= gaps[0] < 1.8 and 2.0 <= gaps[1] < 2.8, gaps
    assert len(_lines(starts)) == 3  # stopped: not started again


def _lines(path: Path) -> list[float]:
    try:
        return [float(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []
