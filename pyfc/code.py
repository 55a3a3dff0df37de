"""A function's code folder as the zip pyfc uploads: FC's layout (files at the zip root),
`.fcignore` honoured (gitignore syntax, as Serverless Devs reads it), bytes reproducible so
the sha256 the gateway records tells whether the code changed."""

from __future__ import annotations

import hashlib
import io
import zipfile
from functools import cached_property
from pathlib import Path

import pathspec

from shared.codepkg import inspect_package
from shared.errors import BadRequest

FCIGNORE = ".fcignore"
# Never packaged, .fcignore or not.
SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules", ".pyfc-data"}


class CodeFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def files(self) -> list[Path]:
        """The files that go into the zip, sorted."""
        ignore = self._ignore()
        out: list[Path] = []
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder)
            if any(part in SKIP_DIRS for part in rel.parts) or not path.is_file():
                continue
            if rel.as_posix() == FCIGNORE or (ignore and ignore.match_file(rel.as_posix())):
                continue
            out.append(path)
        return out

    def _ignore(self) -> pathspec.GitIgnoreSpec | None:
        file = self.folder / FCIGNORE
        if not file.is_file():
            return None
        return pathspec.GitIgnoreSpec.from_lines(file.read_text().splitlines())

    @cached_property
    def zip_bytes(self) -> bytes:
        """Deterministic: fixed timestamps, sorted entries, executable bits kept."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in self.files():
                info = zipfile.ZipInfo(
                    path.relative_to(self.folder).as_posix(), date_time=(1980, 1, 1, 0, 0, 0)
                )
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        return buf.getvalue()

    @cached_property
    def checksum(self) -> str:
        """The sha256 hex the gateway records as codeChecksum."""
        return hashlib.sha256(self.zip_bytes).hexdigest()

    def problem(
        self, runtime: str, handler: str, initializer: str | None, max_bytes: int
    ) -> str | None:
        """Why this folder cannot be deployed with `handler`, or None."""
        if not self.folder.is_dir():
            return f"{self.folder} is not a folder"
        size = len(self.zip_bytes)
        if size > max_bytes:
            return f"the zipped code is {size} bytes; the limit is {max_bytes}"
        try:
            inspect_package(
                self.zip_bytes, runtime=runtime, handler=handler, initializer=initializer
            )
        except BadRequest as e:
            return f"{e.message} (in {self.folder})"
        return None
