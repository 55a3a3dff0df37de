"""Client commands over the HTTP API: deploy a folder, invoke, fetch an async result,
and look after dead letters."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import aiohttp

from pyfc.code import CodeFolder

# Exit codes (documented in the README's CLI section; scripts rely on them).
EXIT_OK = 0
EXIT_FUNCTION_ERROR = 1  # the function ran and failed (invoke, result)
EXIT_USAGE = 2  # bad command line, bad file, or input the gateway refused as invalid (400)
EXIT_UNREACHABLE = 3  # no gateway answered where we tried
EXIT_NOT_FOUND = 4  # 404: the service, function, trigger, version... does not exist
EXIT_CONFLICT = 5  # 409: it exists already, or is in use
EXIT_DENIED = 6  # 401/403: no key, a wrong key, or not this tenant's
EXIT_FAILED = 7  # anything else: the server failed (5xx), throttled (429), or an internal error


class CliError(Exception):
    """One line for the person at the terminal, and the exit code for the script."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiError(CliError):
    """The gateway answered with an error (`{"errorCode", "errorMessage"}`)."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(f"error {status}: {error_code}: {message}", exit_code_for(status))
        self.status, self.error_code = status, error_code


def exit_code_for(status: int) -> int:
    """The exit code for an HTTP error status."""
    if status in (400, 413, 422):
        return EXIT_USAGE
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if status in (401, 403):
        return EXIT_DENIED
    return EXIT_FAILED


# How long the CLI waits for the gateway to accept a connection; a sync invocation itself
# may run as long as the function's timeout.
CONNECT_TIMEOUT_SECONDS = 10.0


class Api:
    """The gateway's HTTP API at `endpoint`; `source` says where that URL came from."""

    def __init__(self, endpoint: str, api_key: str, source: str = "") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.source = source
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def request(
        self, session: aiohttp.ClientSession, method: str, path: str, **kw: Any
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.headers, **kw.pop("headers", {})}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS)
        try:
            async with session.request(
                method, self.endpoint + path, headers=headers, timeout=timeout, **kw
            ) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except (aiohttp.ClientConnectionError, TimeoutError, aiohttp.InvalidURL) as e:
            raise self.unreachable(e) from e

    def unreachable(self, error: BaseException) -> CliError:
        reason = _reason(error)
        where = f" ({self.source})" if self.source else ""
        return CliError(
            f"cannot reach the gateway at {self.endpoint}{where}: {reason}. "
            "Start a local stack with `pyfc up` (or `make up`), or point --endpoint, "
            "PYFC_ENDPOINT or a profile (`pyfc login`) at a running one",
            EXIT_UNREACHABLE,
        )


def _reason(error: BaseException) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        errno = error.os_error.errno
        if errno and errno > 0:
            return os.strerror(errno).lower()
        return error.os_error.strerror or str(error.os_error) or "connection failed"
    if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
        return "no answer in time"
    if isinstance(error, aiohttp.InvalidURL):
        return "not a URL"
    return str(error) or type(error).__name__


def _fail(status: int, body: bytes) -> NoReturn:
    """Raise the gateway's error as one line with the exit code for `status`."""
    try:
        err = json.loads(body)
        raise ApiError(status, str(err.get("errorCode")), str(err.get("errorMessage")))
    except (ValueError, AttributeError):
        raise ApiError(status, "HTTPError", repr(body[:500])) from None


async def deploy(
    api: Api,
    folder: Path,
    service: str,
    function: str,
    options: dict[str, Any],
    as_json: bool = False,
) -> int:
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder", EXIT_USAGE)
    code = CodeFolder(folder).zip_bytes
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
    if as_json:
        print(json.dumps(fn, indent=2))
        return 0
    print(
        f"deployed {service}/{function}: {fn['runtime']} {fn['handler']}, "
        f"code {fn['codeChecksum'][:12]} ({fn['codeSize']} bytes), revision {fn['revision']}"
    )
    return 0


def split_target(target: str) -> tuple[str, str]:
    """`SERVICE[.QUALIFIER]/FUNCTION` -> (service part, function)."""
    service, _, function = target.partition("/")
    if not service or not function or "/" in function:
        raise CliError(
            f"target {target!r} is not SERVICE[.QUALIFIER]/FUNCTION (e.g. demo/echo)",
            EXIT_USAGE,
        )
    return service, function


async def invoke(
    api: Api, target: str, data: bytes, is_async: bool, tail: bool, as_json: bool = False
) -> int:
    """Sync: the function's response on stdout (exit 1 when the function failed). Async: the
    request id alone on stdout, so `id=$(pyfc invoke --async ...)` works."""
    service, function = split_target(target)
    headers = {"X-Fc-Invocation-Type": "Async" if is_async else "Sync"}
    if tail:
        headers["X-Fc-Log-Type"] = "Tail"
    async with aiohttp.ClientSession() as s:
        status, resp_headers, raw = await api.request(
            s,
            "POST",
            f"/v1/services/{quote(service)}/functions/{quote(function)}/invocations",
            data=data,
            headers=headers,
        )
    if status not in (200, 202):
        return _fail(status, raw)
    request_id = resp_headers.get("X-Fc-Request-Id", "")
    version = resp_headers.get("X-Fc-Invocation-Service-Version", "")
    error_type = resp_headers.get("X-Fc-Error-Type")
    log = ""
    if "X-Fc-Log-Result" in resp_headers:
        log = base64.b64decode(resp_headers["X-Fc-Log-Result"]).decode("utf-8", "replace")
    if as_json:
        out: dict[str, Any] = {"requestId": request_id}
        if status == 200:
            out["version"] = version or None
            out["functionError"] = error_type
            out["result"] = raw.decode("utf-8", "replace")
            if tail:
                out["log"] = log
        print(json.dumps(out))
        return 1 if error_type else 0
    if "." in service and version:  # a qualifier was given: say which version ran
        print(f"version {version} ran {request_id}", file=sys.stderr)
    if log:
        sys.stderr.write(log)
    if status == 202:
        print(request_id)
        if sys.stderr.isatty():
            print(f"accepted; result: pyfc result {target} {request_id} --wait", file=sys.stderr)
        return 0
    if error_type:
        print(f"function error ({error_type}), request {request_id}:", file=sys.stderr)
        sys.stdout.buffer.write(raw + b"\n")
        return EXIT_FUNCTION_ERROR
    sys.stdout.buffer.write(raw)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


async def result(api: Api, target: str, request_id: str, wait: float, as_json: bool) -> int:
    service, function = split_target(target)
    path = (
        f"/v1/services/{quote(service)}/functions/{quote(function)}/invocations/{quote(request_id)}"
    )
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
    if as_json:
        print(json.dumps(rec, indent=2))
    else:
        print(_invocation_text(rec))
    if rec["status"] == "Failed":
        return EXIT_FUNCTION_ERROR
    return 0


def _invocation_text(rec: dict[str, Any]) -> str:
    lines = [f"{rec['status']}  request {rec.get('requestId', '')}"]
    for field in ("errorType", "errorMessage", "result"):
        if rec.get(field) not in (None, ""):
            lines.append(f"{field + ':':<14}{rec[field]}")
    return "\n".join(lines)


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
            raise CliError(usage, EXIT_USAGE)
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
        try:
            return Path(file).read_bytes()
        except OSError as e:
            raise CliError(f"--file {file}: {e.strerror or e}", EXIT_USAGE) from None
    return (data or "").encode()


def api_key(explicit: str | None, data_dir: Path) -> str:
    key = explicit or os.environ.get("PYFC_API_KEY")
    if key:
        return key
    creds = data_dir / "credentials"
    if creds.exists():
        return creds.read_text().strip()
    raise CliError(
        "no API key: pass --api-key, set PYFC_API_KEY, save one with `pyfc login`, or run "
        f"`pyfc up` once (it saves the default tenant's key in {creds})",
        EXIT_DENIED,
    )
