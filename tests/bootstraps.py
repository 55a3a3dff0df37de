"""Custom-runtime packages for tests that need nothing the project does not install.

A custom runtime's `bootstrap` may be any executable; these are a shell script that starts
a Python HTTP server (stdlib only) on `$FC_SERVER_HOST:$FC_SERVER_PORT`, so the tests run
wherever pyfc runs (no Node.js). The interpreter is named by its real path: an instance gets
the worker's PATH, whose entries (a pyenv shim, a virtualenv) may mean nothing to an
instance's uid, and `-I` keeps the server clear of the instance's PYTHON* variables.
"""

from __future__ import annotations

import base64
import io
import os
import shlex
import sys
import uuid
import zipfile
from pathlib import Path

from shared.codepkg import unpack

Member = tuple[str, bytes, int]  # name, content, unix mode

PYTHON = os.path.realpath(sys.executable)
BOOTSTRAP = f"#!/bin/sh\nexec {shlex.quote(PYTHON)} -I -u server.py\n".encode()

# The skeleton every server below shares: `handle(method, path, headers, body)` answers
# (status, content type, bytes); one thread per request, so instanceConcurrency shows.
SERVE = rb"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self):
        size = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(size) if size else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, ctype, out = handle(self.command, self.path, headers, body)
        self.send_response(status)
        if ctype:
            self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, *args):
        pass


def reply(value, status=200):
    return status, "application/json", json.dumps(value).encode()


def serve():
    address = (os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"]))
    server = ThreadingHTTPServer(address, _Handler)
    server.daemon_threads = True
    server.serve_forever()
"""

# FC's custom-runtime protocol with something to test in each event.
ECHO = rb"""
import threading
import time

lock = threading.Lock()
counts = {"initialized": 0, "calls": 0, "active": 0, "peak": 0}


def handle(method, path, headers, body):
    event = body.decode("utf-8", "replace")
    rid = headers.get("x-fc-request-id")
    if method != "POST":
        return reply({"errorType": "BadMethod"}, 405)
    if path == "/initialize":
        counts["initialized"] += 1
        print(f"initialize {rid}")
        if os.environ.get("FAIL_INIT"):
            return reply({"errorType": "ConfigError", "errorMessage": "no config"}, 500)
        return 200, "", b"ok"
    if path != "/invoke":
        return reply({"errorType": "NotFound"}, 404)
    counts["calls"] += 1
    print(f"invoke {rid} {event[:20]}")
    if event == "env":
        return reply({"env": dict(os.environ), "headers": headers, "cwd": os.getcwd()})
    if event == "state":
        return reply({"initialized": counts["initialized"], "calls": counts["calls"],
                      "pid": os.getpid()})
    if event.startswith("sleep "):
        with lock:
            counts["active"] += 1
            counts["peak"] = max(counts["peak"], counts["active"])
        time.sleep(float(event[6:]))
        with lock:
            counts["active"] -= 1
        return 200, "", str(counts["peak"]).encode()
    if event == "fail":
        print("about to fail", file=sys.stderr)
        return reply({"errorType": "TypeError", "errorMessage": "bad input",
                      "stackTrace": ["at handler (server.py:1)"]}, 500)
    if event == "teapot":
        return 418, "", b"short and stout"
    if event.startswith("hog "):
        hog = b"\x01" * (int(event[4:]) * 1024 * 1024)  # written, so resident
        return 200, "", str(len(hog)).encode()
    if event == "exit":
        print("bye")
        os._exit(3)
    return 200, "", body
"""

# Calls the function named in the event through the gateway with the instance's credentials.
CALLER = rb"""
import urllib.error
import urllib.request


def handle(method, path, headers, body):
    target = json.loads(body)
    url = (f"{os.environ['FC_GATEWAY_URL']}/v1/services/{target['service']}"
           f"/functions/{target['function']}/invocations")
    request = urllib.request.Request(url, data=b"from python", method="POST", headers={
        "Authorization": f"Bearer {headers['x-fc-security-token']}",
        "X-Fc-Lineage": headers["x-fc-lineage"],
    })
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            status, answer = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    return reply({"status": status, "lineage": headers["x-fc-lineage"],
                  "callee": answer.decode()})
"""

# What the runtime was handed: its headers and the gateway's URL.
ENV = rb"""
def handle(method, path, headers, body):
    return reply({"headers": headers, "gateway": os.environ.get("FC_GATEWAY_URL")})
"""

# Who the instance runs as and what of the worker and the data dir it reaches; errors by
# errno name (EACCES), as a runtime in any language sees them.
PROBE = rb"""
import errno


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as e:
        return {"ok": False, "error": errno.errorcode.get(e.errno, type(e).__name__)}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _home_write():
    with open(os.path.join(os.environ["HOME"], "probe.txt"), "w") as f:
        f.write("mine")
    return _read(os.path.join(os.environ["HOME"], "probe.txt")).decode()


def handle(method, path, headers, body):
    if path != "/invoke":
        return 200, "", b"ok"
    ev = json.loads(body or b"{}")
    out = {
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "home": os.environ.get("HOME"),
        "home_write": attempt(_home_write),
        "worker_environ": attempt(
            lambda: _read(f"/proc/{ev.get('worker_pid', 1)}/environ").decode("latin-1")
        ),
        "db": attempt(lambda: len(_read(os.path.join(ev.get("data_dir", "/"), "pyfc.db")))),
        "data_dir_list": attempt(lambda: os.listdir(ev.get("data_dir", "/"))),
    }
    return reply(out)
"""

# Ids, groups and no_new_privs of the instance; "hog" allocates 400 MiB.
WHOAMI = rb"""
def handle(method, path, headers, body):
    if body == b"hog":
        hog = b"\x01" * (400 * 1024 * 1024)
        return 200, "", str(len(hog)).encode()
    home = os.environ["HOME"]
    with open(os.path.join(home, "probe"), "w") as f:
        f.write("mine")
    with open("/proc/self/status") as f:
        status = f.read()
    return reply({
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
        "groups": os.getgroups(), "home": home, "status": status, "argv": sys.argv,
    })
"""


def server(handler: bytes) -> bytes:
    """A server script: the skeleton, one `handle`, and the call that serves it."""
    return SERVE + handler + b"\nserve()\n"


def members(handler: bytes = ECHO) -> list[Member]:
    """A custom-runtime package's files: the shell `bootstrap` and its Python server."""
    return [("bootstrap", BOOTSTRAP, 0o755), ("server.py", server(handler), 0o644)]


def zip_with_modes(files: list[Member]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content, mode in files:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | mode) << 16
            zf.writestr(info, content)
    return buf.getvalue()


def zip_code(files: list[Member]) -> dict[str, str]:
    """The API's `code` body for a package of `files`."""
    return {"zipFile": base64.b64encode(zip_with_modes(files)).decode()}


def unpacked(root: Path, files: list[Member] | None = None) -> Path:
    """The package unpacked as workers do (modes come from the zip)."""
    code = root / f"code-{uuid.uuid4().hex[:8]}"
    unpack(zip_with_modes(members() if files is None else files), code)
    return code
