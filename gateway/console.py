"""The web console: a no-build single-page app (gateway/console/) served at `/console/`.

Static files only; the page speaks the public /v1 API with the key the user enters (kept
in the tab's sessionStorage, never in a URL). Every answer carries a strict
Content-Security-Policy: scripts, styles and API calls from this origin only, no inline
script, no framing.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).parent / "console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Path:
    """A file of the console by its relative name; 404 for anything outside or missing."""
    path = (ROOT / name).resolve()
    if not path.is_relative_to(ROOT.resolve()) or not path.is_file():
        raise web.HTTPNotFound(reason=f"no console file {name!r}")
    return path


async def index_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    path = _file(name)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        content_type = "text/javascript"
    return web.Response(
        body=path.read_bytes(), content_type=content_type, charset="utf-8", headers=HEADERS
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console", index_redirect)
    router.add_get("/console/", static_file)
    router.add_get("/console/{name:.+}", static_file)
