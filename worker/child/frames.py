"""Frames between the worker and one function instance (**contract** inside the worker).

Each frame is a 4-byte big-endian length followed by a msgpack-encoded tagged Struct, sent
over a `socket.socketpair()`. The child (`worker.child.bootstrap`) uses the blocking helpers; the
parent (`worker.instance`) uses the asyncio ones. Requests carry `request_id` so several
invocations can later share one instance (instanceConcurrency > 1).

This module is imported by the instance child process: stdlib + msgspec only, and no
asyncio at run time (it costs start-up time the child does not need).
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import asyncio

# Far above any payload limit we accept at the edge; only a guard against a corrupt stream.
MAX_FRAME_BYTES = 256 * 1024 * 1024
LOG_TAIL_BYTES = 4096
# What one request keeps of its output for the log store (characters), and one line's
# most (shared.logstore.MAX_LINE_CHARS: this module imports nothing of shared).
LOG_KEEP_CHARS = 1024 * 1024
MAX_LINE_CHARS = 16 * 1024

_HEADER = struct.Struct(">I")


class Init(msgspec.Struct, tag=True, kw_only=True):
    """Parent → child, once: what to import and the metadata the `context` exposes."""

    handler: str
    initializer: str | None = None
    initialization_timeout: float = 3.0
    function: str
    service: str
    qualifier: str = "LATEST"
    version: str = "LATEST"
    memory: int = 128
    timeout: float = 3.0
    tenant: str
    instance_id: str
    code_dir: str
    log_store: str = ""
    # Requests the instance runs at once (threads for sync handlers, one event loop for async).
    instance_concurrency: int = 1
    # RLIMIT_AS in bytes, set before user code is imported; 0 when a cgroup limits memory.
    address_space_limit: int = 0
    # Where `context.invoke` sends its requests; "" when this worker issues no credentials.
    gateway_url: str = ""


class InitDone(msgspec.Struct, tag=True, kw_only=True):
    """Child → parent, once: the module imported and the initializer ran (or why not)."""

    ok: bool
    error_type: str = ""
    error_message: str = ""
    stack_trace: list[str] = []
    duration_ms: float = 0.0
    # Output of the import and the initializer, so a failed start can be explained.
    log: bytes = b""


class Invoke(msgspec.Struct, tag=True, kw_only=True):
    """Parent → child: run the handler once on `payload`."""

    request_id: str
    payload: bytes
    # Epoch seconds after which the parent kills the instance.
    deadline: float
    attempt: int = 1
    traceparent: str = ""
    # The invocation's lineage, as `context.lineage`.
    trace_id: str = ""
    hops: int = 0
    origin: str = ""
    # Invoke token (shared/tokens.py) for `context.credentials.security_token`.
    security_token: str = ""
    # An HTTP trigger's request (`worker/child/web.py`): how the handler takes it (wsgi,
    # event, asgi); "" = a plain event.
    http: str = ""


class Result(msgspec.Struct, tag=True, kw_only=True):
    """Child → parent: what one `Invoke` produced."""

    request_id: str
    ok: bool
    body: bytes = b""
    error_type: str = ""
    error_message: str = ""
    stack_trace: list[str] = []
    # Last LOG_TAIL_BYTES of what the handler printed or logged.
    log: bytes = b""
    duration_ms: float = 0.0
    # Every line it printed or logged, (epoch seconds, text), for the log store.
    lines: list[tuple[float, str]] = []
    # The instance process's peak resident memory so far (KB), for the report line.
    max_rss_kb: int = 0


class Shutdown(msgspec.Struct, tag=True, kw_only=True):
    """Parent → child: run `pre_stop(context)` if defined, then exit 0."""


Frame = Init | InitDone | Invoke | Result | Shutdown

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


class FrameError(Exception):
    """The byte stream does not hold a valid frame; the connection cannot be trusted."""


def encode_frame(frame: Frame) -> bytearray:
    """Length prefix + msgpack body in one buffer, so each frame is a single write."""
    buf = bytearray(_HEADER.size)
    _encoder.encode_into(frame, buf, _HEADER.size)
    _HEADER.pack_into(buf, 0, len(buf) - _HEADER.size)
    return buf


def decode_frame(body: bytes) -> Frame:
    """Decode one frame body (without its length prefix)."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as e:
        raise FrameError(f"undecodable frame: {e}") from e


def _body_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return int(length)


class FrameSocket:
    """Blocking frame reader/writer over a connected stream socket (the child's side)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # Buffered: a length prefix and a small body usually arrive in one recv.
        self._rfile = sock.makefile("rb")

    def read(self) -> Frame | None:
        """Next frame, or None when the peer closed the connection."""
        header = self._rfile.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None
        length = _body_length(header)
        body = self._rfile.read(length)
        if len(body) < length:
            return None
        return decode_frame(body)

    def write(self, frame: Frame) -> None:
        """Send one frame (blocks until the kernel took all of it)."""
        self._sock.sendall(encode_frame(frame))


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Next frame from the stream; raises `asyncio.IncompleteReadError` at EOF."""
    length = _body_length(await reader.readexactly(_HEADER.size))
    return decode_frame(await reader.readexactly(length))


async def write_frame(writer: asyncio.StreamWriter, frame: Frame) -> None:
    """Send one frame, waiting only if the socket buffer is full (large payloads)."""
    writer.write(encode_frame(frame))
    await writer.drain()
