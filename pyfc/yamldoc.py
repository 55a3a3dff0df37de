"""A YAML document with the line of every value, so an error can say where it is.

`load` gives plain Python data (dicts, lists, scalars as YAML's safe loader makes them) and
the line of each path in it; `Problems` collects every error of a file with its path and
line, so one run reports them all before anything is changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyfc.client import EXIT_USAGE, CliError

PathKey = tuple[str | int, ...]
_PLAIN = re.compile(r"^[\w-]+$")


def render(path: PathKey) -> str:
    """`("services", "demo", "triggers", 0)` -> `services.demo.triggers[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}" if _PLAIN.match(part) else f"[{part!r}]"
        else:
            out = part
    return out or "(the document)"


@dataclass
class Document:
    """A loaded file: its data and the line (1-based) of each path."""

    path: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    # A translated document (s.yaml read as pyfc.yaml): where each translated path came
    # from in the file, so errors name the file's own path and line.
    origin: dict[PathKey, PathKey] = field(default_factory=dict)

    def original(self, path: PathKey) -> PathKey:
        """`path` as the file spells it (itself, for a document not translated)."""
        if not self.origin:
            return path
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.origin:
                return self.origin[path[:cut]] + path[cut:]
        return path

    def line(self, path: PathKey) -> int:
        """The line of `path`, else of its nearest ancestor that has one."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


@dataclass(frozen=True)
class Problem:
    path: PathKey
    line: int
    reason: str

    def text(self, file: Path) -> str:
        where = f"{render(self.path)}: " if self.path else ""
        return f"{file}:{self.line}: {where}{self.reason}"


class Problems:
    """Every error found in one document, in file order."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.found: list[Problem] = []

    def add(self, path: PathKey, reason: str) -> None:
        path = self.doc.original(path)
        self.found.append(Problem(path, self.doc.line(path), reason))

    def __iter__(self) -> Iterator[Problem]:
        return iter(sorted(self.found, key=lambda p: p.line))

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidDocument(self.doc.path, list(self))


class InvalidDocument(CliError):
    """A file that cannot be deployed: each problem on its own line, nothing changed."""

    def __init__(self, file: Path, problems: list[Problem]) -> None:
        lines = [p.text(file) for p in problems]
        count = f"{len(lines)} problems" if len(lines) > 1 else "1 problem"
        super().__init__(
            f"{file} has {count}; nothing was changed:\n  " + "\n  ".join(lines), EXIT_USAGE
        )
        self.problems = problems


def load(file: Path) -> Document:
    """Parse `file`; a missing file or bad YAML is an error naming the line."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{file}: no such file", EXIT_USAGE) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{file}: cannot read it: {e}", EXIT_USAGE) from None
    return loads(text, file)


def loads(text: str, file: Path) -> Document:
    doc = Document(file, None)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _build(loader, node, (), doc)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise InvalidDocument(
            file, [Problem((), line, f"not valid YAML: {e.problem or e.context}")]
        ) from None
    except yaml.YAMLError as e:
        raise InvalidDocument(file, [Problem((), 1, f"not valid YAML: {e}")]) from None
    finally:
        loader.dispose()
    return doc


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, doc: Document) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # `<<: *anchor` merges
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value", key_node.start_mark
                )
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            doc.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, (*path, key), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
