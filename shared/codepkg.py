"""Code packages (**contract**): validate an uploaded zip, and unpack one safely.

`inspect_package` runs at upload time so that a broken package is a 400 for the caller,
not a cold-start failure later on a worker. `unpack` runs on workers; it trusts nothing
either (no path escapes, no symlink escapes) and is atomic, so several workers sharing a
cache directory never see half a package.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import posixpath
import re
import shutil
import stat
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import msgspec

from shared.errors import BadRequest, InvalidCode

PYTHON_RUNTIMES = ("python3", "python3.9", "python3.10", "python3.11", "python3.12")
# Any executable `bootstrap` at the zip root serving FC's HTTP invoke protocol.
CUSTOM_RUNTIME = "custom"
SUPPORTED_RUNTIMES = (*PYTHON_RUNTIMES, CUSTOM_RUNTIME)
BOOTSTRAP = "bootstrap"
_ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$", re.ASCII)
# What zipfile raises for damaged or unsupported archives (OSError: bad seeks in BytesIO).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)
# The same while extracting, minus OSError: there it means our disk, not their zip.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


class PackageInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What the platform records of a valid package."""

    digest: str  # sha256 hex of the zip bytes: the blob store key
    size: int  # bytes of the zip itself
    file_count: int
    unpacked_size: int


def validate_runtime(runtime: str) -> None:
    """BadRequest unless pyfc can run `runtime`."""
    if runtime not in SUPPORTED_RUNTIMES:
        raise BadRequest(f"unknown runtime {runtime}; supported: {', '.join(SUPPORTED_RUNTIMES)}")


def inspect_package(
    data: bytes,
    *,
    runtime: str,
    handler: str,
    initializer: str | None,
    max_unpacked_bytes: int = 512 * 1024 * 1024,
    max_files: int = 20_000,
) -> PackageInfo:
    """Check that `data` is a sound zip holding the handler; InvalidCode says what is wrong."""
    validate_runtime(runtime)
    with _open_zip(data) as zf:
        infos = zf.infolist()
        files = [i for i in infos if not i.is_dir()]
        if len(files) > max_files:
            raise InvalidCode(f"code package has {len(files)} files; the limit is {max_files}")
        unpacked = sum(i.file_size for i in files)
        if unpacked > max_unpacked_bytes:
            raise InvalidCode(
                f"code package unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes}"
            )
        for info in infos:
            _safe_name(info.filename)
            if info.flag_bits & 0x1:
                raise InvalidCode(f"code package member {info.filename!r} is encrypted")
        # Reading every member checks its CRC; the declared sizes above bound the work,
        # since zipfile never returns more than a member's declared size.
        for info in files:
            _test_read(zf, info)
            if _is_symlink(info):
                _safe_link(info.filename, zf.read(info).decode("utf-8", "replace"))
        if runtime in PYTHON_RUNTIMES:
            names = {i.filename for i in files}
            _check_entry_point(zf, names, runtime, "handler", handler)
            if initializer:
                _check_entry_point(zf, names, runtime, "initializer", initializer)
        elif runtime == CUSTOM_RUNTIME:
            _check_bootstrap(files)
    return PackageInfo(
        digest=hashlib.sha256(data).hexdigest(),
        size=len(data),
        file_count=len(files),
        unpacked_size=unpacked,
    )


def unpack(data: bytes, dest: Path) -> None:
    """Extract the zip into `dest` atomically; if `dest` already exists, leave it be.

    Directories 0755 and files 0644 (0755 if executable in the zip) whatever the umask:
    instances of other uids read them.
    """
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unpack-"))
    try:
        with _open_zip(data) as zf:
            _extract_all(zf, staging)
        for directory, _, _ in os.walk(staging):
            os.chmod(directory, 0o755)
        try:
            os.rename(staging, dest)
        except OSError:
            if not dest.exists():
                raise
            # Another process unpacked the same digest first; its copy is as good as ours.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract_all(zf: zipfile.ZipFile, root: Path) -> None:
    links: list[tuple[str, str]] = []
    for info in zf.infolist():
        name = _safe_name(info.filename)
        target = root / name
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if _is_symlink(info):
            links.append((name, zf.read(info).decode("utf-8", "surrogateescape")))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
        except _READ_ERRORS as e:
            raise InvalidCode(f"cannot read {info.filename!r} from the code package: {e}") from e
        executable = (info.external_attr >> 16) & 0o111
        target.chmod(0o755 if executable else 0o644)
    # Links last, so no file above was written through one.
    for name, link in links:
        _safe_link(name, link)
        os.symlink(link, root / name)


def _open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as e:
        raise InvalidCode(f"code package is not a valid zip file: {e}") from e


def _test_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    try:
        with zf.open(info) as member:
            while member.read(1024 * 1024):
                pass
    except _ZIP_ERRORS as e:
        raise InvalidCode(f"code package is corrupt: member {info.filename!r}: {e}") from e


def _safe_name(name: str) -> str:
    """The member's relative path; InvalidCode if it could land outside the target dir."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise InvalidCode(f"code package member {name!r} points outside the package")
    return name


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_link(name: str, link: str) -> None:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise InvalidCode(f"code package symlink {name!r} -> {link!r} points outside the package")


def _check_entry_point(
    zf: zipfile.ZipFile, names: set[str], runtime: str, what: str, entry: str
) -> None:
    """`module.func`: the module is at the zip root, parses, and defines `func`."""
    if not _ENTRY_POINT.fullmatch(entry):
        raise InvalidCode(f"{what} {entry!r} must look like module.function (e.g. index.handler)")
    module, func = entry.rsplit(".", 1)
    base = module.replace(".", "/")
    candidates = (f"{base}.py", f"{base}/__init__.py")
    path = next((c for c in candidates if c in names), None)
    if path is None:
        raise InvalidCode(f"{what} {entry!r}: {_where_is(names, candidates)}")
    try:
        tree = ast.parse(zf.read(path), filename=path, feature_version=_feature_version(runtime))
    except SyntaxError as e:
        if _newer_than_us(runtime):
            return  # the runtime's grammar may be newer than ours: let the worker judge
        raise InvalidCode(
            f"{what} {entry!r}: syntax error in {path} line {e.lineno}: {e.msg}"
        ) from e
    except ValueError as e:  # e.g. NUL bytes in the source
        raise InvalidCode(f"{what} {entry!r}: cannot parse {path}: {e}") from e
    if not _defines(tree.body, func):
        raise InvalidCode(f"{what} {entry!r}: {path} does not define {func!r} at top level")


def _check_bootstrap(files: list[zipfile.ZipInfo]) -> None:
    """Runtime custom: the zip root holds `bootstrap`, kept executable (unpack keeps modes)."""
    info = next((i for i in files if i.filename == BOOTSTRAP), None)
    if info is None:
        names = {i.filename for i in files}
        raise InvalidCode(f"runtime custom: {_where_is(names, (BOOTSTRAP,))}")
    if not _is_symlink(info) and not (info.external_attr >> 16) & 0o111:
        # Without the mode bits the worker could not exec it: refuse now, not at cold start.
        raise InvalidCode(
            "runtime custom: bootstrap is not executable in the zip; "
            "`chmod +x bootstrap` before zipping (and zip with a tool that keeps modes)"
        )


def _where_is(names: set[str], candidates: tuple[str, ...]) -> str:
    expected = " or ".join(candidates)
    tops = sorted({n.split("/", 1)[0] + ("/" if "/" in n else "") for n in names})
    if len(tops) == 1 and tops[0].endswith("/"):
        nested = [tops[0] + c for c in candidates if tops[0] + c in names]
        if nested:
            return (
                f"expected {expected} at the zip root, found {nested[0]}: zip the contents "
                f"of {tops[0]!r}, not the folder itself"
            )
    shown = ", ".join(tops[:10]) + (", ..." if len(tops) > 10 else "") or "nothing"
    return f"expected {expected} at the zip root; the root holds: {shown}"


def _runtime_version(runtime: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"python3\.(\d+)", runtime)
    return (3, int(match.group(1))) if match else None


def _newer_than_us(runtime: str) -> bool:
    version = _runtime_version(runtime)
    return version is not None and version > sys.version_info[:2]


def _feature_version(runtime: str) -> tuple[int, int] | None:
    version = _runtime_version(runtime)
    return version if version is not None and version <= sys.version_info[:2] else None


def _defines(body: list[ast.stmt], name: str) -> bool:
    """Whether module-level code binds `name` (also inside if/try/with at module level)."""
    for node in body:
        match node:
            case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
                if node.name == name:
                    return True
            case ast.Assign(targets=targets):
                if any(_binds(t, name) for t in targets):
                    return True
            case ast.AnnAssign(target=target) if node.value is not None:
                if _binds(target, name):
                    return True
            case ast.Import(names=aliases) | ast.ImportFrom(names=aliases):
                for alias in aliases:
                    if alias.name == "*":
                        return True  # cannot know what a star import brings; give it the benefit
                    if (alias.asname or alias.name.split(".")[0]) == name:
                        return True
            case ast.If() | ast.Try() | ast.TryStar() | ast.With() | ast.AsyncWith():
                blocks = [getattr(node, f, []) for f in ("body", "orelse", "finalbody")]
                blocks += [h.body for h in getattr(node, "handlers", [])]
                if any(_defines(block, name) for block in blocks):
                    return True
    return False


def _binds(target: ast.expr, name: str) -> bool:
    match target:
        case ast.Name(id=bound):
            return bound == name
        case ast.Tuple(elts=elts) | ast.List(elts=elts):
            return any(_binds(e, name) for e in elts)
        case ast.Starred(value=value):
            return _binds(value, name)
    return False
