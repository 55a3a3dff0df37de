"""Client commands over the HTTP API: deploy a folder, invoke, fetch an async result,
and look after dead letters."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}


def zip_folder(folder: Path) -> bytes:
    """The folder's files at the zip root (FC's layout), executable bits kept."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if any(part in SKIP_DIRS for part in rel.parts) or not path.is_file():
                continue
            info = zipfile.ZipInfo(str(rel), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


class Api:
    def __init__(self, endpoint: str, api_key: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def request(
        self, session: aiohttp.ClientSession, method: str, path: str, **kw: Any
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.headers, **kw.pop("headers", {})}
        async with session.request(method, self.endpoint + path, headers=headers, **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def _fail(status: int, body: bytes) -> int:
    try:
        err = json.loads(body)
        print(f"error {status}: {err.get('errorCode')}: {err.get('errorMessage')}", file=sys.stderr)
    except ValueError:
        print(f"error {status}: {body[:500]!r}", file=sys.stderr)
    return 1


async def deploy(
    api: Api, folder: Path, service: str, function: str, options: dict[str, Any]
) -> int:
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    code = zip_folder(folder)
    body = {"code": {"zipFile": base64.b64encode(code).decode()}, **options}
    async with aiohttp.ClientSession() as s:
        status, _, raw = await api.request(s, "GET", f"/v1/services/{service}")
        if status == 404:
            status, _, raw = await api.request(
                s, "POST", "/v1/services", json={"serviceName": service}
            )
            if status != 201:
                return _fail(status, raw)
        elif status != 200:
            return _fail(status, raw)
        status, _, raw = await api.request(
            s, "POST", f"/v1/services/{service}/functions", json={"functionName": function, **body}
        )
        if status == 409:
            status, _, raw = await api.request(
                s, "PUT", f"/v1/services/{service}/functions/{function}", json=body
            )
        if status not in (200, 201):
            return _fail(status, raw)
    fn = json.loads(raw)
    print(
        f"deployed {service}/{function}: {fn['runtime']} {fn['handler']}, "
        f"code {fn['codeChecksum'][:12]} ({fn['codeSize']} bytes), revision {fn['revision']}"
    )
    return 0


async def invoke(api: Api, target: str, data: bytes, is_async: bool, tail: bool) -> int:
    service, _, function = target.partition("/")
    if not function:
        print("error: target must be SERVICE[.QUALIFIER]/FUNCTION", file=sys.stderr)
        return 2
    headers = {"X-Fc-Invocation-Type": "Async" if is_async else "Sync"}
    if tail:
        headers["X-Fc-Log-Type"] = "Tail"
    async with aiohttp.ClientSession() as s:
        status, resp_headers, raw = await api.request(
            s,
            "POST",
            f"/v1/services/{service}/functions/{function}/invocations",
            data=data,
            headers=headers,
        )
    request_id = resp_headers.get("X-Fc-Request-Id", "?")
    version = resp_headers.get("X-Fc-Invocation-Service-Version", "")
    if "." in service and version:  # a qualifier was given: say which version ran
        print(f"version {version} ran {request_id}", file=sys.stderr)
    if tail and "X-Fc-Log-Result" in resp_headers:
        sys.stderr.write(
            base64.b64decode(resp_headers["X-Fc-Log-Result"]).decode("utf-8", "replace")
        )
    if status == 202:
        print(f"accepted: request id {request_id}")
        print(f"  result: pyfc result {target} {request_id} --wait")
        return 0
    if "X-Fc-Error-Type" in resp_headers:
        print(
            f"function error ({resp_headers['X-Fc-Error-Type']}), request {request_id}:",
            file=sys.stderr,
        )
        sys.stdout.buffer.write(raw + b"\n")
        return 1
    if status != 200:
        return _fail(status, raw)
    sys.stdout.buffer.write(raw)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


async def result(api: Api, target: str, request_id: str, wait: float) -> int:
    service, _, function = target.partition("/")
    path = f"/v1/services/{service}/functions/{function}/invocations/{request_id}"
    deadline = time.monotonic() + wait
    async with aiohttp.ClientSession() as s:
        while True:
            status, _, raw = await api.request(s, "GET", path)
            if status != 200:
                return _fail(status, raw)
            rec = json.loads(raw)
            if rec["status"] in ("Succeeded", "Failed") or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
    print(json.dumps(rec, indent=2))
    return 0 if rec["status"] == "Succeeded" else 1


async def dlq(
    api: Api,
    action: str,
    *,
    service: str = "",
    function: str = "",
    letter_id: str = "",
    redrive_all: bool = False,
    limit: int = 100,
    start_key: str = "",
    as_json: bool = False,
) -> int:
    """`pyfc dlq list|show|redrive|purge`: readable lines, or the API's JSON with --json."""
    filters = {k: v for k, v in (("serviceName", service), ("functionName", function)) if v}
    async with aiohttp.ClientSession() as s:
        if action == "list":
            query = {**filters, "limit": str(limit)}
            if start_key:
                query["startKey"] = start_key
            status, _, raw = await api.request(s, "GET", "/v1/dlq?" + urlencode(query))
            if status != 200:
                return _fail(status, raw)
            page = json.loads(raw)
            if as_json:
                print(json.dumps(page, indent=2))
            else:
                _print_dead_letters(page)
            return 0
        if action == "show":
            status, _, raw = await api.request(s, "GET", f"/v1/dlq/{letter_id}")
            if status != 200:
                return _fail(status, raw)
            letter = json.loads(raw)
            print(json.dumps(letter, indent=2) if as_json else _dead_letter_text(letter))
            return 0
        if action == "purge":
            status, _, raw = await api.request(s, "DELETE", "/v1/dlq?" + urlencode(filters))
            if status != 200:
                return _fail(status, raw)
            purged = json.loads(raw)["purged"]
            print(json.dumps({"purged": purged}) if as_json else f"purged {purged} dead letters")
            return 0
        if letter_id and not redrive_all:
            status, _, raw = await api.request(s, "POST", f"/v1/dlq/{letter_id}/redrive")
            if status != 202:
                return _fail(status, raw)
            if as_json:
                print(raw.decode())
            else:
                print(f"redriven: request id {letter_id}")
                print(f"  status: pyfc dlq list, or pyfc result SERVICE/FUNCTION {letter_id}")
            return 0
        if not redrive_all or letter_id:
            usage = "give one dead letter ID, or --all (with --service/--function)"
            print(f"error: {usage}", file=sys.stderr)
            return 2
        return await _redrive_all(api, s, filters, as_json)


async def _redrive_all(
    api: Api, s: aiohttp.ClientSession, filters: dict[str, str], as_json: bool
) -> int:
    redriven: list[str] = []
    failed: list[dict[str, str]] = []
    start = ""
    while True:  # one bounded batch per request, continued by nextToken
        query = {**filters, **({"startKey": start} if start else {})}
        status, _, raw = await api.request(s, "POST", "/v1/dlq/redrive?" + urlencode(query))
        if status != 200:
            return _fail(status, raw)
        batch = json.loads(raw)
        redriven += batch["redriven"]
        failed += batch.get("failed", [])
        start = batch.get("nextToken", "")
        if not start or not (batch["redriven"] or batch.get("failed")):
            break
    if as_json:
        print(json.dumps({"redriven": redriven, "failed": failed}))
    else:
        print(f"redriven {len(redriven)} dead letters")
        for f in failed:
            print(f"  not redriven {f['requestId']}: {f['errorCode']}: {f['errorMessage']}")
    return 1 if failed else 0


def _print_dead_letters(page: dict[str, Any]) -> None:
    letters = page["deadLetters"]
    if not letters:
        print("no dead letters")
        return
    for d in letters:
        error = f"{d['errorType']}: {d['errorMessage']}" if d["errorType"] else d["errorMessage"]
        print(
            f"{d['requestId']}  {d['serviceName']}.{d['qualifier']}/{d['functionName']}  "
            f"{d['reason']}  attempts {d['attempts']}  {d['createdTime']}  {error[:80]}"
        )
    if page.get("nextToken"):
        print(f"more: --start-key {page['nextToken']}")


def _dead_letter_text(d: dict[str, Any]) -> str:
    lines = [
        f"request id:  {d['requestId']}",
        f"function:    {d['serviceName']}.{d['qualifier']}/{d['functionName']}",
        f"reason:      {d['reason']} after {d['attempts']} attempts (hops {d['hops']})",
        f"error:       {d['errorType']}: {d['errorMessage']}",
        f"trace id:    {d['traceId']}",
        f"created:     {d['createdTime']}",
    ]
    for name in ("payload", "response"):
        text = d.get(f"{name}Text")
        shown = text if text is not None else f"(base64) {d[name]}"
        lines.append(f"{name + ':':<12} {shown}")
    return "\n".join(lines)


def read_data(data: str | None, file: str | None) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    if file:
        return Path(file).read_bytes()
    return (data or "").encode()


def api_key(explicit: str | None, data_dir: Path) -> str:
    key = explicit or os.environ.get("PYFC_API_KEY")
    if key:
        return key
    creds = data_dir / "credentials"
    if creds.exists():
        return creds.read_text().strip()
    raise SystemExit(
        "pyfc: no API key: pass --api-key, set PYFC_API_KEY, or run `pyfc up` once "
        f"(it saves the default tenant's key in {creds})"
    )
