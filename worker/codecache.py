"""Code packages unpacked once per digest on this host and reused by every instance.

The cache root is mode 0711, so instances (other uids) reach their own package by its
digest but cannot list the others'; the packages in it are world-readable (0755 / 0644).
It lives outside the data dir, which is private (0700) to the platform.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from shared.blobs import BlobStore
from shared.codepkg import unpack
from worker.spares import check_private_root


def prepare_root(root: Path) -> Path:
    """Create the cache root (0711), or check that the one there is ours and closed to
    others' writes (anyone may create names in <tmp>); raises OSError otherwise."""
    try:
        root.mkdir(mode=0o711, parents=True)
    except FileExistsError:
        check_private_root(root)
    if root.stat().st_mode & 0o777 != 0o711:
        os.chmod(root, 0o711)
    return root


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
                self._root.mkdir(mode=0o711, parents=True, exist_ok=True)
                # unpack() is atomic (temp dir + rename), so workers sharing the
                # directory never see half a package.
                await asyncio.to_thread(unpack, data, dest)
        return dest
