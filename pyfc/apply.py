"""`pyfc deploy`'s I/O: read what the gateway has of the file's services, then apply a plan
in order, code uploads with progress. A failure midway says what was applied."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from pyfc.client import EXIT_USAGE, Api, CliError, _fail
from pyfc.descriptor import NEWEST, App
from pyfc.plan import Change, FunctionState, ServiceState, State

UPLOAD_CHUNK = 64 * 1024
# (bytes sent, bytes in all) for one upload.
Progress = Callable[[int, int], None]


async def _get(api: Api, s: aiohttp.ClientSession, path: str) -> dict[str, Any] | None:
    """The JSON at `path`, None for a 404."""
    status, _, raw = await api.request(s, "GET", path)
    if status == 404:
        return None
    if status != 200:
        _fail(status, raw)
    result: dict[str, Any] = json.loads(raw)
    return result


async def _list(api: Api, s: aiohttp.ClientSession, path: str, key: str) -> list[dict[str, Any]]:
    """Every item of a paged list (`nextToken` -> `startKey`)."""
    items: list[dict[str, Any]] = []
    start = ""
    while True:
        query = urlencode({"limit": "100", **({"startKey": start} if start else {})})
        page = await _get(api, s, f"{path}?{query}")
        if page is None:
            return items
        items += page[key]
        start = page.get("nextToken") or ""
        if not start:
            return items


async def fetch_state(api: Api, s: aiohttp.ClientSession, app: App) -> State:
    state = State()
    for name in app.services:
        base = f"/v1/services/{quote(name)}"
        fields = await _get(api, s, base)
        if fields is None:
            continue
        svc = ServiceState(fields)
        for fn in await _list(api, s, f"{base}/functions", "functions"):
            fn_base = f"{base}/functions/{quote(fn['functionName'])}"
            provision = await _get(api, s, f"{fn_base}/provision-config")
            triggers = await _list(api, s, f"{fn_base}/triggers", "triggers")
            svc.functions[fn["functionName"]] = FunctionState(
                fn,
                await _get(api, s, f"{fn_base}/async-config"),
                int(provision["target"]) if provision else None,
                {t["triggerName"]: t for t in triggers},
            )
        aliases = await _list(api, s, f"{base}/aliases", "aliases")
        svc.aliases = {a["aliasName"]: a for a in aliases}
        versions = await _list(api, s, f"{base}/versions", "versions")
        if versions:
            svc.newest_version = str(max(int(v["versionId"]) for v in versions))
        state.services[name] = svc
    return state


class DeployFailed(CliError):
    def __init__(self, change: Change, error: CliError, applied: list[Change]) -> None:
        done = ", ".join(f"{c.action} {c.kind} {c.target}" for c in applied) or "nothing"
        super().__init__(
            f"{change.action} {change.kind} {change.target} failed: {error.message}. "
            f"Applied before it: {done}. Fix the cause and run `pyfc deploy` again: "
            "it continues from what is there",
            error.exit_code,
        )
        self.applied = applied


async def apply(
    api: Api,
    s: aiohttp.ClientSession,
    changes: list[Change],
    state: State,
    upload_progress: Callable[[Change], Progress] | None = None,
    done: Callable[[Change, str], None] | None = None,
) -> list[Change]:
    """Apply `changes` in order; `done(change, note)` after each one."""
    newest = {name: svc.newest_version for name, svc in state.services.items()}
    applied: list[Change] = []
    for change in changes:
        try:
            note = await _apply_one(api, s, change, newest, upload_progress)
        except CliError as e:
            raise DeployFailed(change, e, applied) from e
        applied.append(change)
        if done:
            done(change, note)
    return applied


async def _apply_one(
    api: Api,
    s: aiohttp.ClientSession,
    change: Change,
    newest: dict[str, str | None],
    upload_progress: Callable[[Change], Progress] | None,
) -> str:
    body = dict(change.body) if change.body is not None else None
    if body is not None and body.get("versionId") == NEWEST:
        version = newest.get(change.service)
        if version is None:
            raise CliError(
                f"alias {change.target} names the newest version, but {change.service} has "
                "none: set `publish: true` on the service, or name a version id",
                EXIT_USAGE,
            )
        body["versionId"] = version
    if change.code is not None and body is not None:
        body["code"] = {"zipFile": base64.b64encode(change.code.zip_bytes).decode()}
        payload = json.dumps(body).encode()
        progress = upload_progress(change) if upload_progress else None
        status, _, raw = await api.request(
            s,
            change.method,
            change.path,
            data=_chunks(payload, progress),
            headers={"Content-Type": "application/json"},
        )
    else:
        status, _, raw = await api.request(s, change.method, change.path, json=body)
    if change.kind == "version":
        if status == 400 and b"VersionExists" in raw:
            return f"LATEST equals version {newest.get(change.service)}: nothing published"
        if status == 201:
            newest[change.service] = json.loads(raw)["versionId"]
            return f"version {newest[change.service]}"
    if change.action == "create" and change.kind == "alias" and status == 409:
        # Made since the plan was read (another deploy): update it instead.
        status, _, raw = await api.request(
            s, "PUT", f"{change.path}/{quote(str(body and body.pop('aliasName')))}", json=body
        )
    if status >= 300:
        _fail(status, raw)
    return ""


async def _chunks(payload: bytes, progress: Progress | None) -> AsyncIterator[bytes]:
    total = len(payload)
    for start in range(0, total, UPLOAD_CHUNK):
        chunk = payload[start : start + UPLOAD_CHUNK]
        yield chunk
        if progress:
            progress(min(start + UPLOAD_CHUNK, total), total)
