"""docs/api.md is rendered from the OpenAPI document (`python -m pyfc.apidoc`): the
renderer covers every route, and the file documents no route the gateway lacks. (A route
added since the file was generated is not a failure here: regenerating adds it.)"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.openapi import build
from pyfc.apidoc import render

API_MD = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _routes(text: str) -> set[str]:
    return set(re.findall(r"^### `([A-Z]+ /[^`]*)`$", text, re.MULTILINE))


def test_the_reference_covers_every_route_and_names_none_that_is_gone() -> None:
    doc = build()
    routes = {
        f"{method.upper()} {path}"
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert _routes(render(doc)) == routes
    documented = _routes(API_MD.read_text())
    assert documented and documented <= routes, documented - routes
