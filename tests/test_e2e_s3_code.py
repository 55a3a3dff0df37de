"""Code packages on the S3 endpoint (a moto server of the test's own) through a running stack:
the gateway stores each package in the bucket, workers fetch it from there, and nothing of
it lands in the data dir's local blob store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
from pathlib import Path

import aiohttp

from shared.blobs import open_blob_store
from tests.conftest import Client
from tests.helpers import deploy, invoke, open_dir
from tests.stack import Stack, make_zip
from tests.test_blobs import _s3_url, moto_endpoint  # noqa: F401 (a fixture)

VERSION = "def handler(event, context):\n    return {version!r}\n"


def package(version: str) -> tuple[dict[str, str], str]:
    """The API's code body for a function answering `version`, and its digest."""
    data = make_zip({"index.py": VERSION.format(version=version)})
    return {"zipFile": base64.b64encode(data).decode()}, hashlib.sha256(data).hexdigest()


async def test_code_blobs_go_through_the_s3_endpoint(
    moto_endpoint: str,  # noqa: F811
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    url = _s3_url(moto_endpoint)
    stack = Stack(tmp_path / "stack")
    stack.env["PYFC_BLOB_URL"] = url
    blobs = open_blob_store(url)
    try:
        await asyncio.to_thread(stack.start)
        _, key = stack.create_tenant()
        client = Client(session, stack.url, key)
        code, first = package("v1")
        service, function = await deploy(client, code=code)
        status, _, body = await invoke(client, service, function)
        assert (status, body) == (200, b"v1"), body
        assert await blobs.exists(first)
        # An update: the new package goes to the bucket too, and the worker runs it.
        code, second = package("v2")
        path = f"/v1/services/{service}/functions/{function}"
        status, _, body = await client.call("PUT", path, json={"code": code})
        assert status == 200, body
        assert await blobs.exists(second)
        assert (await invoke(client, service, function))[2] == b"v2"
        # A new worker with a code cache of its own, empty, fetches it from the bucket.
        (old,) = (name for name in stack.procs if name.startswith("worker"))
        # A clean stop: the dispatcher stops routing to it at once.
        await asyncio.to_thread(stack.kill, old, signal.SIGTERM)
        # (under an open dir: a root worker's instances read code as their tenant's uid)
        cache = str(open_dir("s3-code") / "cache")
        await asyncio.to_thread(stack.start_worker, {"PYFC_CODE_CACHE_DIR": cache})
        assert (await invoke(client, service, function))[2] == b"v2"
        local = stack.root / "data" / "blobs"
        assert not any(p.name in (first, second) for p in local.rglob("*")), "stored locally"
    finally:
        await asyncio.to_thread(stack.stop)
        await blobs.close()
