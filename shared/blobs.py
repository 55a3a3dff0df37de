"""Content-addressed blob store for code packages (**contract**): key = sha256 hex of bytes.

`open_blob_store(url)` picks the backend: `file:///abs/dir` (one node) or
`s3://bucket[/prefix]?endpoint_url=...&region=...` (S3 or MinIO, several nodes).
Blobs are immutable, so `put` of an existing digest is a cheap no-op and readers
never see a partial blob. `get` re-hashes what it read: a corrupt blob is reported,
never handed to a worker to unpack.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import BadRequest, NotFound, PyfcError, Unavailable

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_S3_OPTIONS = frozenset(("endpoint_url", "region", "access_key", "secret_key"))
_MISSING_CODES = frozenset(("404", "NoSuchKey", "NotFound", "NoSuchBucket"))


class BlobStore(Protocol):
    """Where code packages live, addressed by the sha256 hex of their bytes."""

    async def put(self, data: bytes) -> str:
        """Store `data` (idempotent); returns its sha256 hex digest."""
        ...

    async def get(self, digest: str) -> bytes:
        """The bytes stored under `digest`; NotFound if absent, BadRequest if malformed."""
        ...

    async def exists(self, digest: str) -> bool:
        """Whether a blob is stored under `digest`."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


def open_blob_store(url: str) -> BlobStore:
    """Build the blob store named by `url`; does no I/O (S3 connects on first use)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise BadRequest(f"blob URL {url!r}: want file:///absolute/path")
        return LocalBlobStore(Path(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BadRequest(f"blob URL {url!r}: want s3://bucket[/prefix]?endpoint_url=...")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(set(query) - _S3_OPTIONS)
        if unknown:
            raise BadRequest(
                f"blob URL: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_S3_OPTIONS))}"
            )
        return S3BlobStore(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region", "us-east-1"),
            access_key=query.get("access_key"),
            secret_key=query.get("secret_key"),
        )
    raise BadRequest(f"unsupported blob URL {url!r}; use file:///dir or s3://bucket/prefix")


def check_digest(digest: str) -> None:
    """BadRequest unless `digest` looks like a sha256 hex digest (64 lower-case hex)."""
    if not _DIGEST.fullmatch(digest):
        raise BadRequest(f"invalid code digest {digest!r}: want 64 lower-case hex characters")


def _verified(digest: str, data: bytes, where: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != digest:
        raise Unavailable(f"blob {digest} at {where} is corrupt (its sha256 differs)")
    return data


class LocalBlobStore:
    """Blobs as files `<root>/<first two hex>/<digest>`, written atomically."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, digest: str) -> Path:
        check_digest(digest)
        return self._root / digest[:2] / digest

    async def put(self, data: bytes) -> str:
        """Store `data` unless already there; returns its digest."""
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, self._path(digest), data)
        return digest

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same directory, then rename: readers see all of it or nothing.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def get(self, digest: str) -> bytes:
        """The blob's bytes; NotFound if absent."""
        path = self._path(digest)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as e:
            raise NotFound(f"code blob {digest} not found") from e
        return _verified(digest, data, str(path))

    async def exists(self, digest: str) -> bool:
        """Whether the blob's file is there."""
        return await asyncio.to_thread(self._path(digest).is_file)

    async def close(self) -> None:
        """Nothing to release."""


class S3BlobStore:
    """Blobs as objects `<prefix>/<digest>` in one bucket (created on first use if missing)."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self._bucket = bucket
        self._prefix = f"{prefix}/" if prefix else ""
        self._endpoint = endpoint_url or "AWS S3"
        self._region = region
        self._client_args: dict[str, Any] = {
            "region_name": region,
            "endpoint_url": endpoint_url,
            # None falls back to botocore's chain: AWS_ACCESS_KEY_ID etc., profiles, roles.
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "config": AioConfig(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                # MinIO and moto serve buckets by path, not by virtual host.
                s3={"addressing_style": "path"} if endpoint_url else None,
            ),
        }
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._ready = False

    def _key(self, digest: str) -> str:
        check_digest(digest)
        return self._prefix + digest

    async def put(self, data: bytes) -> str:
        """Upload `data` unless an object with its digest is already there."""
        digest = hashlib.sha256(data).hexdigest()
        if await self.exists(digest):
            return digest
        s3 = await self._s3()
        async with self._errors(f"put {digest}"):
            await s3.put_object(Bucket=self._bucket, Key=self._key(digest), Body=data)
        return digest

    async def get(self, digest: str) -> bytes:
        """Download the blob; NotFound if absent."""
        key = self._key(digest)
        s3 = await self._s3()
        try:
            async with self._errors(f"get {digest}"):
                response = await s3.get_object(Bucket=self._bucket, Key=key)
                async with response["Body"] as body:
                    data: bytes = await body.read()
        except _Missing as e:
            raise NotFound(f"code blob {digest} not found") from e
        return _verified(digest, data, f"s3://{self._bucket}/{key}")

    async def exists(self, digest: str) -> bool:
        """HEAD the object."""
        key = self._key(digest)
        s3 = await self._s3()
        try:
            async with self._errors(f"head {digest}"):
                await s3.head_object(Bucket=self._bucket, Key=key)
        except _Missing:
            return False
        return True

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._stack.aclose()
        self._client, self._ready = None, False

    async def _s3(self) -> Any:
        """The client, created once, after making sure the bucket exists."""
        if self._ready:
            return self._client
        async with self._lock:
            if self._client is None:
                session = get_session()
                self._client = await self._stack.enter_async_context(
                    session.create_client("s3", **self._client_args)
                )
            if not self._ready:
                await self._ensure_bucket()
                self._ready = True
        return self._client

    async def _ensure_bucket(self) -> None:
        try:
            async with self._errors(f"check bucket {self._bucket}"):
                await self._client.head_bucket(Bucket=self._bucket)
            return
        except _Missing:
            pass
        extra: dict[str, Any] = {}
        if self._region != "us-east-1":  # S3 rejects an explicit us-east-1 constraint
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            await self._client.create_bucket(Bucket=self._bucket, **extra)
        except ClientError as e:
            # Another process created it between our HEAD and CREATE: fine.
            if _code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise Unavailable(f"cannot create bucket {self._bucket}: {e}") from e
        except (BotoCoreError, OSError, TimeoutError) as e:
            raise Unavailable(f"cannot create bucket {self._bucket}: {e}") from e

    @contextlib.asynccontextmanager
    async def _errors(self, action: str) -> AsyncIterator[None]:
        """Missing object -> _Missing; anything else from S3 -> Unavailable."""
        try:
            yield
        except ClientError as e:
            if _code(e) in _MISSING_CODES:
                raise _Missing(action) from e
            raise Unavailable(f"blob store {self._endpoint}: {action} failed: {e}") from e
        except (BotoCoreError, OSError, TimeoutError) as e:
            raise Unavailable(
                f"blob store {self._endpoint} unreachable ({action}): {type(e).__name__}: {e}"
            ) from e


class _Missing(PyfcError):
    """Internal: S3 said 404; callers turn it into NotFound or False."""


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))
