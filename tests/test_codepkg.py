"""Code package validation and unpacking, as tables of zips built in memory."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from pathlib import Path

import pytest

from shared.codepkg import (
    PackageInfo,
    inspect_package,
    unpack,
    validate_runtime,
)
from shared.errors import BadRequest, InvalidCode

Member = tuple[str, bytes] | tuple[str, bytes, int]  # name, content[, unix mode]


def make_zip(*members: Member) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in members:
            name, content = member[0], member[1]
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if len(member) == 3:
                info.external_attr = member[2] << 16
            zf.writestr(info, content)
    return buf.getvalue()


def corrupt(data: bytes, marker: bytes) -> bytes:
    """Flip bytes of a stored (uncompressed) member so its CRC no longer matches."""
    at = data.index(marker)
    return data[:at] + bytes(b ^ 0xFF for b in marker) + data[at + len(marker) :]


def stored_zip(name: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(name, content)
    return buf.getvalue()


HANDLER = b"def handler(event, context):\n    return event\n"

GOOD = [
    ("plain", make_zip(("index.py", HANDLER)), "index.handler", None),
    ("async def", make_zip(("index.py", b"async def handler(e, c): ...\n")), "index.handler", None),
    ("assigned", make_zip(("app.py", b"main = lambda e, c: e\n")), "app.main", None),
    ("imported as", make_zip(("app.py", b"from json import dumps as main\n")), "app.main", None),
    ("tuple assign", make_zip(("app.py", b"a, main = 1, print\n")), "app.main", None),
    ("class", make_zip(("app.py", b"class main: pass\n")), "app.main", None),
    (
        "inside try",
        make_zip(("app.py", b"try:\n    import x\nexcept ImportError:\n    def main(e, c): ...\n")),
        "app.main",
        None,
    ),
    ("star import", make_zip(("app.py", b"from impl import *\n")), "app.main", None),
    (
        "dotted module",
        make_zip(("pkg/__init__.py", b""), ("pkg/mod.py", HANDLER)),
        "pkg.mod.handler",
        None,
    ),
    ("package module", make_zip(("svc/__init__.py", HANDLER)), "svc.handler", None),
    (
        "with initializer",
        make_zip(("index.py", HANDLER + b"def init(context): ...\n")),
        "index.handler",
        "index.init",
    ),
    (
        "with dirs and data",
        make_zip(("lib/", b""), ("lib/data.bin", os.urandom(500)), ("index.py", HANDLER)),
        "index.handler",
        None,
    ),
]


@pytest.mark.parametrize(("case", "data", "handler", "initializer"), GOOD, ids=[g[0] for g in GOOD])
def test_good_packages(case: str, data: bytes, handler: str, initializer: str | None) -> None:
    info = inspect_package(data, runtime="python3.11", handler=handler, initializer=initializer)
    assert isinstance(info, PackageInfo)
    assert info.digest == hashlib.sha256(data).hexdigest()
    assert info.size == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert info.file_count == sum(not i.is_dir() for i in zf.infolist())


BAD = [
    ("not a zip", b"hello world", "index.handler", None, "not a valid zip"),
    ("empty", b"", "index.handler", None, "not a valid zip"),
    ("truncated", make_zip(("index.py", HANDLER))[:40], "index.handler", None, "not a valid zip"),
    (
        "crc error",
        corrupt(stored_zip("index.py", HANDLER), b"return event"),
        "index.handler",
        None,
        "corrupt",
    ),
    ("absolute path", make_zip(("/etc/x.py", b"")), "x.handler", None, "outside"),
    ("dot dot", make_zip(("a/../../x.py", b"")), "x.handler", None, "outside"),
    ("backslash dot dot", make_zip(("..\\x.py", b"")), "x.handler", None, "outside"),
    (
        "escaping symlink",
        make_zip(("index.py", HANDLER), ("link", b"../../etc/passwd", stat.S_IFLNK | 0o777)),
        "index.handler",
        None,
        "symlink",
    ),
    ("no module", make_zip(("main.py", HANDLER)), "index.handler", None, "root holds: main.py"),
    (
        "nested folder",
        make_zip(("proj/index.py", HANDLER)),
        "index.handler",
        None,
        "zip the contents of 'proj/'",
    ),
    ("no function", make_zip(("index.py", b"def other(): ...\n")), "index.handler", None, "define"),
    (
        "only nested def",
        make_zip(("index.py", b"def outer():\n    def handler(): ...\n")),
        "index.handler",
        None,
        "define",
    ),
    (
        "syntax error",
        make_zip(("index.py", b"def handler(e, c):\n    return (\n")),
        "index.handler",
        None,
        "index.py line",
    ),
    ("bad handler form", make_zip(("index.py", HANDLER)), "handler", None, "module.function"),
    ("bad handler chars", make_zip(("index.py", HANDLER)), "index.han-dler", None, "module."),
    (
        "initializer missing",
        make_zip(("index.py", HANDLER)),
        "index.handler",
        "index.init",
        "initializer 'index.init'",
    ),
    (
        "initializer module missing",
        make_zip(("index.py", HANDLER)),
        "index.handler",
        "boot.init",
        "boot.py",
    ),
]


@pytest.mark.parametrize(
    ("case", "data", "handler", "initializer", "message"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_packages(
    case: str, data: bytes, handler: str, initializer: str | None, message: str
) -> None:
    with pytest.raises(InvalidCode, match=re.escape(message)):
        inspect_package(data, runtime="python3.11", handler=handler, initializer=initializer)


def test_limits() -> None:
    many = make_zip(("index.py", HANDLER), *((f"f{i}", b"x") for i in range(10)))
    with pytest.raises(InvalidCode, match="11 files"):
        inspect_package(
            many, runtime="python3", handler="index.handler", initializer=None, max_files=10
        )
    big = make_zip(("index.py", HANDLER), ("zeros", b"\0" * 1_000_000))
    with pytest.raises(InvalidCode, match="unpacks to"):
        inspect_package(
            big,
            runtime="python3",
            handler="index.handler",
            initializer=None,
            max_unpacked_bytes=999_999,
        )


@pytest.mark.parametrize(
    "data",
    [
        make_zip(("bootstrap", b"#!/bin/sh\nexec node server.js\n", 0o100755)),
        make_zip(("bootstrap", b"bin/server", 0o120777), ("bin/server", b"\x7fELF", 0o100755)),
    ],
    ids=["executable", "symlink"],
)
def test_custom_runtime_accepts_an_executable_bootstrap(data: bytes) -> None:
    # The handler means nothing to a custom runtime (FC passes it along as a header).
    info = inspect_package(data, runtime="custom", handler="whatever", initializer="x")
    assert info.file_count >= 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (make_zip(("index.py", HANDLER)), "runtime custom: expected bootstrap at the zip root"),
        (
            make_zip(("app/bootstrap", b"#!/bin/sh\n", 0o100755)),
            "found app/bootstrap: zip the contents of 'app/'",
        ),
        (make_zip(("bootstrap", b"#!/bin/sh\n", 0o100644)), "bootstrap is not executable"),
        (make_zip(("bootstrap", b"#!/bin/sh\n")), "bootstrap is not executable"),  # no mode
    ],
)
def test_custom_runtime_needs_an_executable_bootstrap(data: bytes, message: str) -> None:
    with pytest.raises(InvalidCode, match=re.escape(message)):
        inspect_package(data, runtime="custom", handler="index.handler", initializer=None)


# The runtimes the README promises, written out here rather than read from shared.codepkg,
# so a runtime dropped from (or slipped into) the implementation fails these tests.
DOCUMENTED_RUNTIMES = ["python3", "python3.9", "python3.10", "python3.11", "python3.12", "custom"]
REFUSED_RUNTIMES = ["nodejs14", "java8", "python2.7", "python3.8", "Python3", "custom.debian10", ""]
PYTHON_PACKAGE = make_zip(("index.py", HANDLER))
CUSTOM_PACKAGE = make_zip(("bootstrap", b"#!/bin/sh\n", 0o100755))


@pytest.mark.parametrize("runtime", DOCUMENTED_RUNTIMES)
def test_documented_runtimes_accept_their_packages(runtime: str) -> None:
    validate_runtime(runtime)
    package = CUSTOM_PACKAGE if runtime == "custom" else PYTHON_PACKAGE
    info = inspect_package(package, runtime=runtime, handler="index.handler", initializer=None)
    assert info.digest == hashlib.sha256(package).hexdigest()
    # A package of the other kind is refused: the runtime decides what is looked for.
    other = PYTHON_PACKAGE if runtime == "custom" else CUSTOM_PACKAGE
    with pytest.raises(InvalidCode):
        inspect_package(other, runtime=runtime, handler="index.handler", initializer=None)


@pytest.mark.parametrize("runtime", REFUSED_RUNTIMES)
def test_other_runtimes_are_refused_naming_the_documented_ones(runtime: str) -> None:
    supported = "supported: " + ", ".join(DOCUMENTED_RUNTIMES)
    with pytest.raises(BadRequest, match=re.escape(f"unknown runtime {runtime}; {supported}")):
        validate_runtime(runtime)
    with pytest.raises(BadRequest, match="unknown runtime"):
        inspect_package(PYTHON_PACKAGE, runtime=runtime, handler="index.handler", initializer=None)


def test_unknown_runtime() -> None:
    with pytest.raises(BadRequest, match="unknown runtime nodejs14; supported: python3"):
        validate_runtime("nodejs14")
    with pytest.raises(BadRequest):
        inspect_package(
            make_zip(("index.py", HANDLER)),
            runtime="java8",
            handler="index.handler",
            initializer=None,
        )


def test_unpack_keeps_modes_and_links(tmp_path: Path) -> None:
    data = make_zip(
        ("index.py", HANDLER, stat.S_IFREG | 0o644),
        ("bin/tool", b"#!/bin/sh\necho hi\n", stat.S_IFREG | 0o755),
        ("bin/", b""),
        ("alias.py", b"index.py", stat.S_IFLNK | 0o777),
    )
    dest = tmp_path / "cache" / "abc"
    unpack(data, dest)
    assert (dest / "index.py").read_bytes() == HANDLER
    assert os.access(dest / "bin" / "tool", os.X_OK)
    assert not os.access(dest / "index.py", os.X_OK)
    assert (dest / "alias.py").is_symlink() and (dest / "alias.py").read_bytes() == HANDLER
    assert sorted(p.name for p in dest.parent.iterdir()) == ["abc"]  # no staging dirs left


def test_unpack_leaves_existing_dest(tmp_path: Path) -> None:
    dest = tmp_path / "digest"
    unpack(make_zip(("index.py", b"first = 1\n")), dest)
    unpack(make_zip(("index.py", b"second = 2\n")), dest)  # lost the race: keep the winner
    assert (dest / "index.py").read_bytes() == b"first = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["digest"]


@pytest.mark.parametrize(
    "members",
    [
        [("../evil.py", b"x")],
        [("/abs.py", b"x")],
        [("link", b"/etc", stat.S_IFLNK | 0o777)],
        [("d/link", b"../../..", stat.S_IFLNK | 0o777)],
    ],
)
def test_unpack_refuses_escapes(tmp_path: Path, members: list[Member]) -> None:
    dest = tmp_path / "out" / "pkg"
    with pytest.raises(InvalidCode):
        unpack(make_zip(*members), dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # staging removed
    assert not (tmp_path / "evil.py").exists()


def test_unpack_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(InvalidCode):
        unpack(b"not a zip", tmp_path / "x")
    assert not (tmp_path / "x").exists()
