"""One logger naming rule (shared/logs.py): every module logs to `pyfc.<its module path>`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "gateway", "dispatcher", "worker", "triggers", "pyfc")
# Not a module's logger: what functions write (worker/output.py, worker/instance.py).
FUNCTION_LOGGER = "pyfc.function"


def logger_names(path: Path) -> list[tuple[int, str]]:
    """(line, name as written) of every logging.getLogger(<name>) call in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "getLogger"
            and node.args
        ):
            found.append((node.lineno, ast.unparse(node.args[0])))
    return found


def test_every_module_logs_under_pyfc_by_its_module_path() -> None:
    allowed = {"f'pyfc.{__name__}'", repr(FUNCTION_LOGGER)}
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: getLogger({name})"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in logger_names(path)
        if name not in allowed and path.name != "logs.py"  # logs.py quiets libraries' loggers
    ]
    assert not wrong, "use logging.getLogger(f'pyfc.{__name__}'):\n" + "\n".join(wrong)
    module_loggers = sum(
        name == "f'pyfc.{__name__}'"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for _, name in logger_names(path)
    )
    assert module_loggers > 20  # the walk found the code
