"""docs/api.md, generated from the gateway's OpenAPI document (`/v1/openapi.json`), so the
reference cannot drift from the API: `python -m pyfc.apidoc > docs/api.md`
(tests/test_apidoc.py fails when the file is stale)."""

from __future__ import annotations

import sys
from typing import Any

from gateway.openapi import build

METHODS = ("get", "post", "put", "delete", "patch")


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_type(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"map of {_type(extra) if isinstance(extra, dict) else 'any'}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return str(kind)


def _cell(text: str) -> str:
    """`text` fit for one table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _schema_of(content: dict[str, Any] | None) -> str:
    for media, body in (content or {}).items():
        schema = body.get("schema", {})
        return f"{_type(schema)} ({media})"
    return ""


def render(doc: dict[str, Any]) -> str:
    info = doc.get("info", {})
    out = [
        f"# {info.get('title', 'API')} reference",
        "",
        "Generated from the gateway's OpenAPI document (`GET /v1/openapi.json`) by",
        "`python -m pyfc.apidoc`; do not edit by hand. Every route takes",
        "`Authorization: Bearer <API key>` unless it says otherwise; errors are",
        '`{"errorCode", "errorMessage"}` with the status listed.',
        "",
        "## Routes",
        "",
    ]
    for path, ops in doc["paths"].items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            out.append(f"### `{method.upper()} {path}`")
            out.append("")
            out.append(op.get("summary", "").strip() or "(no summary)")
            if op.get("description"):
                out += ["", op["description"].strip()]
            out.append("")
            params = [*ops.get("parameters", []), *op.get("parameters", [])]
            if params:
                out.append("| parameter | in | type | required | meaning |")
                out.append("|---|---|---|---|---|")
                for p in params:
                    meaning = _cell(p.get("description", ""))
                    out.append(
                        f"| `{p['name']}` | {p.get('in', '')} | {_type(p.get('schema', {}))} "
                        f"| {'yes' if p.get('required') else 'no'} "
                        f"| {meaning} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                out.append(f"Body: {_schema_of(body.get('content'))}")
                out.append("")
            out.append("| status | meaning | body |")
            out.append("|---|---|---|")
            for status, resp in op.get("responses", {}).items():
                desc = _cell(resp.get("description", ""))
                out.append(f"| {status} | {desc} | {_schema_of(resp.get('content'))} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out.append(f"### {name}")
        out.append("")
        if schema.get("description"):
            out += [schema["description"].strip(), ""]
        props = schema.get("properties")
        if props:
            required = set(schema.get("required", []))
            out.append("| field | type | required |")
            out.append("|---|---|---|")
            for field, sub in props.items():
                out.append(f"| `{field}` | {_type(sub)} | {'yes' if field in required else 'no'} |")
        else:
            out.append(f"{_type(schema)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    sys.stdout.write(render(build()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
