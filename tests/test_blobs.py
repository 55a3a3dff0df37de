"""Blob stores: local directory, and S3 against a real moto server process."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.blobs import BlobStore, LocalBlobStore, S3BlobStore, open_blob_store
from shared.errors import BadRequest, NotFound, Unavailable

MOTO = Path(sys.executable).with_name("moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server of our own on a free port, up until the module's tests end."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded poll: ready once the port accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)  # not a test sleep: pacing the readiness poll
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _s3_url(endpoint: str, prefix: str = "code") -> str:
    bucket = f"pyfc-t-{uuid.uuid4().hex[:20]}"
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region=us-east-1&access_key=test&secret_key=test"


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        url = f"file://{tmp_path / 'blobs'}"
    else:
        url = _s3_url(request.getfixturevalue("moto_endpoint"))
    store = open_blob_store(url)
    yield store
    await store.close()


async def test_put_get_exists(blobs: BlobStore) -> None:
    data = os.urandom(100_000)
    digest = await blobs.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert await blobs.put(data) == digest  # idempotent
    assert await blobs.exists(digest)
    assert await blobs.get(digest) == data
    empty = await blobs.put(b"")
    assert await blobs.get(empty) == b""


async def test_missing_blob(blobs: BlobStore) -> None:
    absent = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    assert not await blobs.exists(absent)
    with pytest.raises(NotFound):
        await blobs.get(absent)


@pytest.mark.parametrize("digest", ["", "abc", "G" * 64, "A" * 64, "../" + "a" * 61, "a" * 65])
async def test_malformed_digest(blobs: BlobStore, digest: str) -> None:
    with pytest.raises(BadRequest):
        await blobs.get(digest)
    with pytest.raises(BadRequest):
        await blobs.exists(digest)


async def test_local_layout_and_corruption(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path}")
    assert isinstance(store, LocalBlobStore)
    digest = await store.put(b"hello")
    path = tmp_path / digest[:2] / digest
    assert path.read_bytes() == b"hello"
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temp files left behind
    path.write_bytes(b"tampered")
    with pytest.raises(Unavailable, match="corrupt"):
        await store.get(digest)


async def test_s3_bucket_created_and_shared(moto_endpoint: str) -> None:
    url = _s3_url(moto_endpoint, prefix="a/b")
    first, second = open_blob_store(url), open_blob_store(url)
    assert isinstance(first, S3BlobStore)
    try:
        digest = await first.put(b"shared code")
        # A second process' store sees the same bucket and object.
        assert await second.get(digest) == b"shared code"
    finally:
        await first.close()
        await second.close()


async def test_s3_unreachable_is_unavailable() -> None:
    url = (
        f"s3://pyfc-nowhere/x?endpoint_url=http://127.0.0.1:{_free_port()}"
        "&access_key=a&secret_key=b"
    )
    store = open_blob_store(url)
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            await store.put(b"data")
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/x",
        "file://relative/dir",
        "file:relative",
        "s3:///no-bucket",
        "s3://bucket?endpoint=http://x",
    ],
)
def test_bad_blob_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        open_blob_store(url)
