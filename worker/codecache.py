"""Code packages unpacked once per digest on this host and reused by every instance."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.blobs import BlobStore
from shared.codepkg import unpack


class CodeCache:
    def __init__(self, blobs: BlobStore, root: Path) -> None:
        self._blobs = blobs
        self._root = root
        self._locks: dict[str, asyncio.Lock] = {}

    async def path_for(self, digest: str) -> Path:
        """The directory holding the unpacked package `digest` (fetched on first use)."""
        dest = self._root / digest
        if dest.is_dir():
            return dest
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if not dest.is_dir():
                data = await self._blobs.get(digest)
                self._root.mkdir(parents=True, exist_ok=True)
                # unpack() is atomic (temp dir + rename), so workers sharing the
                # directory never see half a package.
                await asyncio.to_thread(unpack, data, dest)
        return dest
