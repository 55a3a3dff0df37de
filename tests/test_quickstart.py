"""The README's quickstart, followed literally on a fresh clone: `make up` (which makes the
virtualenv), then the first command block of "Try it" and the descriptor deploy block, as
a person would paste them. Only the stack's namespace, port and uid range are the test's
own (other stacks run on this host at the same time)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import open_dir
from tests.stack import delete_namespace, free_port, instance_uids, remove_network_policy

ROOT = Path(__file__).resolve().parent.parent


def _blocks(readme: str, after: str) -> list[str]:
    """The lines of the first ```sh block after the text `after`."""
    start = readme.index(after)
    block = readme[readme.index("```sh\n", start) + 6 :]
    block = block[: block.index("```")]
    lines, joined = [], ""
    for line in block.splitlines():
        joined += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(joined.strip())
            joined = ""
    return [line for line in lines if line]


@pytest.mark.timeout(900)
def test_readme_quickstart_on_a_fresh_clone(tmp_path: Path) -> None:
    # Where a person's clone would be: a directory function instance uids may search
    # (pytest's tmp_path is under a 0700 one; `make up` would say so and refuse).
    clone = open_dir("quickstart") / "pyfc"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    readme = (clone / "README.md").read_text()
    assert readme.startswith("# pyfc\n\n```sh\nmake up ")  # the two set-up commands first
    port = free_port()
    namespace = f"qs{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFC_")},
        "PYFC_NAMESPACE": namespace,
        "PYFC_HTTP_PORT": str(port),
        **instance_uids(),
    }
    log = tmp_path / "make-up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            ["make", "up"], cwd=clone, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 600  # the first `make up` installs the virtualenv
        while "pyfc: up: gateway" not in log.read_text(errors="replace"):
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        outputs: list[str] = []

        def sh(line: str) -> subprocess.CompletedProcess[str]:
            if "<request-id>" in line:
                line = line.replace("<request-id>", request_id)
            out = subprocess.run(
                ["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
            outputs.append(f"$ {line}\n{out.stdout}{out.stderr}")
            return out

        request_id = ""
        for line in _blocks(readme, "## Try it"):
            out = sh(line)
            if "dlq redrive" in line:
                # The README's example id is an async call that succeeded: not a dead letter.
                assert out.returncode == 4 and "not found" in out.stderr.lower(), outputs
                continue
            assert out.returncode == 0, "\n".join(outputs)
            if "--data hello " in line:
                assert out.stdout == "hello", outputs
            if "--async" in line:
                request_id = out.stdout.strip()
                assert re.fullmatch(r"[0-9a-f-]{16,64}", request_id), outputs
            if line.startswith(".venv/bin/pyfc result"):
                assert out.stdout.startswith(f"Succeeded  request {request_id}"), outputs
        deploys = _blocks(readme, "A whole application deploys from one file")
        assert len(deploys) >= 4
        for line in deploys:
            out = sh(line)
            assert out.returncode == 0, "\n".join(outputs)
        assert "deployed pyfc.yaml: " in outputs[-4], outputs  # the first real deploy applied
        assert "Orders of the day" in outputs[-3], outputs
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        asyncio.run(delete_namespace(namespace))
        remove_network_policy(env)
        subprocess.run(["rabbitmqctl", "-q", "delete_user", f"pyfc-{namespace}"], check=False)
