"""Versions and aliases (**contract** for the records): the pure decisions of the release model.

A version is an immutable snapshot of a service (its config and every function's config
and code digest); `LATEST` is the mutable head. An alias names a version and may send a
weighted share of its calls to one more (gray release). Nothing here does I/O: the store
keeps the records, `shared.catalog.FunctionCatalog.resolve` caches aliases and is the one
entry point every invocation source uses, the dispatcher watches canaries
(`dispatcher/rollback.py`) with the window and verdict defined here.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from typing import Annotated

import msgspec

from shared.errors import BadRequest
from shared.models import Function, Service
from shared.protocol import LATEST, OutcomeStatus

# Version ids are 1, 2, 3...; alias names cannot start with a digit, so a qualifier is
# LATEST, a version id or an alias name, never ambiguous.
_VERSION_ID = re.compile(r"^[1-9][0-9]{0,9}$")
_ALIAS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
# Fields of a function that do not make a new version: identity, bookkeeping, and the
# reservation (an admission setting of the function, not part of its code or config).
_FUNCTION_VOLATILE = frozenset(
    ("function_id", "revision", "created_time", "last_modified_time", "reserved_concurrency")
)
_SERVICE_VERSIONED = ("description", "role", "log_config", "environment_variables")


class AutoRollback(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """Opt-in alias config: take the weighted version's share away when it fails."""

    max_error_rate: Annotated[float, msgspec.Meta(ge=0, lt=1)]
    window_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 60
    min_invocations: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20


class RollbackRecord(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """Why and when an automatic rollback took a version's weight to 0 (shown on GET)."""

    version_id: str
    rolled_back_time: str
    reason: str
    error_rate: float
    errors: int
    invocations: int


class Version(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """A published version as the API shows it."""

    version_id: str
    description: str = ""
    created_time: str = ""
    last_modified_time: str = ""


class Alias(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """An alias as the API shows it; `additional_version_weight` has at most one entry."""

    alias_name: str
    version_id: str
    additional_version_weight: dict[str, float] = {}
    description: str = ""
    auto_rollback: AutoRollback | None = None
    last_rollback: RollbackRecord | None = None
    created_time: str = ""
    last_modified_time: str = ""

    @property
    def route(self) -> AliasRoute:
        extra, weight = next(iter(self.additional_version_weight.items()), ("", 0.0))
        return AliasRoute(
            version=self.version_id,
            extra=extra,
            weight=weight,
            auto_rollback=self.auto_rollback,
        )


class AliasRoute(msgspec.Struct, kw_only=True, frozen=True):
    """What resolution needs of an alias (cached by every gateway and dispatcher)."""

    version: str
    extra: str = ""  # the weighted (canary) version, "" when none
    weight: float = 0.0
    auto_rollback: AutoRollback | None = None

    @property
    def canary(self) -> str:
        """The version whose error rate auto-rollback watches ("" when nothing to watch)."""
        return self.extra if self.extra and self.weight > 0 and self.auto_rollback else ""


class Snapshot(msgspec.Struct, kw_only=True, frozen=True):
    """What a version keeps: the service's config and every function, as published."""

    service: Service
    functions: dict[str, Function]


# -- names and checks ------------------------------------------------------------------


def is_version_id(qualifier: str) -> bool:
    return bool(_VERSION_ID.fullmatch(qualifier))


def check_version_id(text: str) -> int:
    """A version id given in a URL or body, as its number; BadRequest naming it if malformed."""
    if not is_version_id(text):
        raise BadRequest(f"invalid version id {text!r}: a positive integer such as '1'")
    return int(text)


def check_alias_name(name: str) -> None:
    if not _ALIAS_NAME.fullmatch(name) or name == LATEST:
        raise BadRequest(
            f"invalid alias name {name!r}: 1-128 letters, digits, '_' or '-', starting with a "
            "letter or '_', and not LATEST"
        )


def check_weights(version_id: str, weights: dict[str, float]) -> tuple[int, float] | None:
    """The extra version and its weight of `additionalVersionWeight`, validated.

    At most one extra version, not the main one, weight within 0..1. None for none.
    Whether the versions exist is the store's check (in the writing transaction).
    """
    if not weights:
        return None
    if len(weights) > 1:
        raise BadRequest(
            f"additionalVersionWeight takes one version, got {len(weights)}: {sorted(weights)}"
        )
    extra, weight = next(iter(weights.items()))
    number = check_version_id(extra)
    if extra == version_id:
        raise BadRequest(
            f"additionalVersionWeight names version {extra}, the alias's own versionId"
        )
    if not 0.0 <= weight <= 1.0 or weight != weight:
        raise BadRequest(f"additionalVersionWeight of version {extra} must be within 0..1")
    return number, float(weight)


# -- snapshots -------------------------------------------------------------------------


def fingerprint(service: Service, functions: list[Function]) -> str:
    """A digest of everything a version keeps that a caller could observe: equal
    fingerprints mean publishing would change nothing."""
    canon = {
        "service": {name: getattr(service, name) for name in _SERVICE_VERSIONED},
        "functions": {
            fn.function_name: {
                k: v for k, v in msgspec.structs.asdict(fn).items() if k not in _FUNCTION_VOLATILE
            }
            for fn in functions
        },
    }
    return hashlib.sha256(msgspec.json.encode(canon, order="sorted")).hexdigest()


# -- resolution ------------------------------------------------------------------------


def share_of(request_id: str) -> float:
    """Where a request id falls in [0, 1): uniform over random ids, and the same for the
    same id wherever and however often it is resolved (a redelivered envelope that was
    never resolved picks what its first delivery picked, if the alias did not move)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def pick_version(route: AliasRoute, request_id: str) -> str:
    """The version an invocation through the alias runs (weighted, deterministic per id)."""
    if not route.extra or route.weight <= 0.0:
        return route.version
    return route.extra if share_of(request_id) < route.weight else route.version


# -- automatic rollback ----------------------------------------------------------------


def counts_as_error(status: OutcomeStatus) -> bool:
    """An outcome held against the version: its function failed (raised, timed out,
    crashed, ran out of memory, failed to initialise). The platform's own errors
    (throttled, no worker, shutting down) say nothing about the version."""
    return status == "function_error"


class ErrorWindow:
    """Outcomes of one version over the last `seconds`, in one-second buckets (bounded
    memory whatever the rate; one append or one increment per outcome)."""

    __slots__ = ("_buckets", "errors", "seconds", "total")

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self._buckets: deque[list[int]] = deque()  # [second, total, errors]
        self.total = 0
        self.errors = 0

    def add(self, now: float, error: bool) -> None:
        second = int(now)
        self.expire(now)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += int(error)
        self.total += 1
        self.errors += int(error)

    def expire(self, now: float) -> None:
        oldest = int(now) - self.seconds
        while self._buckets and self._buckets[0][0] <= oldest:
            _, total, errors = self._buckets.popleft()
            self.total -= total
            self.errors -= errors


def should_roll_back(errors: int, total: int, config: AutoRollback) -> bool:
    """Trip when enough calls were seen and the error rate is above the threshold."""
    return total >= config.min_invocations and errors > config.max_error_rate * total
