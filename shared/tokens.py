"""Invoke tokens (**contract**): short-lived credentials a running function uses to invoke.

A worker mints one per invocation and hands it to the function (`context.credentials.
security_token`); the gateway accepts it as `Authorization: Bearer <token>` for invoking
and reading invocations of that tenant only, and takes the caller's lineage from it, so
a function cannot make its chain look shorter than it is.

Format: `pyfc1.<payload>.<mac>`, both parts unpadded base64url. The payload is the JSON
array `[tenant, trace_id, hops, origin, expires_at]` (epoch seconds); the MAC is
HMAC-SHA256 over `pyfc1.<payload>` with the deployment's secret (`Settings.token_secret`).
The version prefix is inside the MAC, so a later format cannot be confused with this one.
Tokens are bearer credentials: whoever holds one may use it until it expires.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math

import msgspec

from shared.errors import Unauthorized

PREFIX = "pyfc1."
# Far above a real token (~150 characters): garbage is refused before any work on it.
MAX_TOKEN_CHARS = 2048
_MAC_CHARS = 43  # 32 bytes, unpadded base64url


class InvokeGrant(msgspec.Struct, array_like=True, frozen=True):
    """What a valid token allows: invoking as `tenant`, one hop below (`trace_id`, `hops`).

    `origin` is what the invocations made with it are attributed to (the calling function,
    `function:<service>/<function>`); `expires_at` is in epoch seconds.
    """

    tenant: str
    trace_id: str
    hops: int
    origin: str
    expires_at: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(InvokeGrant).decode


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    # Keying an HMAC costs more than the MAC of a short token: done once per secret.
    return hmac.new(secret, digestmod=hashlib.sha256)


def _mac(secret: bytes, signed: bytes) -> str:
    mac = _keyed(secret).copy()
    mac.update(signed)
    return _b64(mac.digest())


def mint(
    secret: bytes, *, tenant: str, trace_id: str, hops: int, origin: str, expires_at: float
) -> str:
    """A token for `tenant` carrying this lineage, valid until `expires_at` (epoch seconds)."""
    grant = InvokeGrant(tenant, trace_id, hops, origin, math.ceil(expires_at))
    signed = PREFIX + _b64(_encode(grant))
    return f"{signed}.{_mac(secret, signed.encode('ascii'))}"


def looks_like_token(credential: str) -> bool:
    """Whether a bearer credential is an invoke token (and not an API key)."""
    return credential.startswith(PREFIX)


def verify(secret: bytes, token: str, now: float) -> InvokeGrant:
    """The grant of a genuine, unexpired `token`; `Unauthorized` for anything else."""
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
        raise Unauthorized("not a pyfc invoke token")
    signed, _, mac = token.rpartition(".")
    # ASCII only: compare_digest refuses other text, and no genuine token holds any.
    if len(mac) != _MAC_CHARS or len(signed) <= len(PREFIX) or not token.isascii():
        raise Unauthorized("malformed invoke token")
    if not hmac.compare_digest(mac, _mac(secret, signed.encode("ascii"))):
        raise Unauthorized("invoke token signature does not match")
    payload = signed[len(PREFIX) :]
    try:
        grant = _decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        # Signed by us, so this is a bug or a changed format, not an attack; still refused.
        raise Unauthorized("undecodable invoke token") from None
    if now >= grant.expires_at:
        raise Unauthorized("invoke token expired")
    return grant


# Lineage marks: what a function's writes to object storage carry (user metadata
# `pyfc-lineage`), so the object event they cause continues the writer's chain.
MARK_PREFIX = "pyfcm1."


def mark_of(token: str) -> str:
    """The lineage mark of an invoke token: `pyfcm1.<payload>.<sha256 of the token's MAC>`.

    Made by whoever holds the token (a function, from `context.credentials`, with the
    standard library only); not a credential itself: the MAC cannot be recovered from its
    hash, so a mark stored in an object's metadata cannot be used to invoke anything."""
    signed, _, mac = token.rpartition(".")
    payload = signed.removeprefix(PREFIX)
    digest = hashlib.sha256(base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))).digest()
    return f"{MARK_PREFIX}{payload}.{_b64(digest)}"


def read_mark(secret: bytes, mark: str) -> InvokeGrant:
    """The lineage of a genuine mark (expiry ignored: an event may come late);
    `Unauthorized` for anything else (the write then starts a new chain)."""
    if len(mark) > MAX_TOKEN_CHARS or not mark.startswith(MARK_PREFIX) or not mark.isascii():
        raise Unauthorized("not a pyfc lineage mark")
    signed, _, hashed = mark.rpartition(".")
    payload = signed[len(MARK_PREFIX) :]
    if not payload or len(hashed) != _MAC_CHARS:
        raise Unauthorized("malformed lineage mark")
    mac = _mac(secret, (PREFIX + payload).encode("ascii"))
    expected = _b64(hashlib.sha256(base64.urlsafe_b64decode(mac + "=")).digest())
    if not hmac.compare_digest(hashed, expected):
        raise Unauthorized("lineage mark does not match")
    try:
        return _decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise Unauthorized("undecodable lineage mark") from None
