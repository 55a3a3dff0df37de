"""Pure helpers of the metadata store: records <-> table rows, input checks, query shapes.

No I/O here; `shared.store` runs the statements. Kept apart so the rules (what a partial
update may change, which outcome wins, how names look) are small and testable alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from sqlalchemy import ColumnElement, Select, Table, and_, or_, select

from shared.errors import BadRequest
from shared.models import Function, InvocationStatus, Service
from shared.schema import invocations

_Record = TypeVar("_Record", bound=msgspec.Struct)

_TENANT_NAME = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
# Function Compute's rule for service and function names.
_RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
TERMINAL: tuple[InvocationStatus, ...] = ("Succeeded", "Failed")
STATUSES: frozenset[str] = frozenset(("Enqueued", "Running", *TERMINAL))
MAX_LIST = 1000
# Fields a partial update may change; the rest are identity or maintained by the store.
SERVICE_MUTABLE = frozenset(("description", "role", "log_config", "environment_variables"))
FUNCTION_MUTABLE = frozenset(f.name for f in msgspec.structs.fields(Function)) - {
    "function_name",
    "service_name",
    "function_id",
    "revision",
    "created_time",
    "last_modified_time",
}
_JSON_COLUMNS = frozenset(("log_config", "environment_variables", "destination_config"))


def now_iso() -> str:
    """Current UTC time as ISO-8601 with milliseconds and a `Z` suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_millis(ts: float) -> str:
    """An epoch time as `now_iso` writes times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hash_api_key(key: str) -> str:
    """What the store keeps of an API key: sha256 hex of its text."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant_name(name: str) -> None:
    """BadRequest unless `name` is a valid tenant name (DNS-label-like, lower case)."""
    if not _TENANT_NAME.fullmatch(name):
        raise BadRequest(f"invalid tenant name {name!r}: want ^[a-z][a-z0-9-]{{1,62}}$")


def check_resource_name(kind: str, name: str) -> None:
    """BadRequest unless `name` is a valid service or function name (FC's rule)."""
    if not _RESOURCE_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid {kind} name {name!r}: 1-128 letters, digits, '_' or '-', "
            "not starting with a digit or '-'"
        )


def page(
    table: Table, name: ColumnElement[str], prefix: str, limit: int, start_key: str
) -> Select[Any]:
    """SELECT of one page ordered by `name`, starting at `start_key` (inclusive, as FC)."""
    if not 1 <= limit <= MAX_LIST:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST}, got {limit}")
    query = select(table).order_by(name).limit(limit)
    if prefix:
        query = query.where(name.startswith(prefix, autoescape=True))
    if start_key:
        query = query.where(name >= start_key)
    return query


def outcome_applies(status: InvocationStatus, attempt: int) -> ColumnElement[bool]:
    """Whether an outcome may overwrite the stored invocation row.

    Delivery is at-least-once, so outcomes arrive twice or late: a row only moves to a
    newer attempt, and a terminal status is never replaced by a non-terminal one of the
    same attempt (a late "Running" must not hide a result).
    """
    return outcome_applies_to(status in TERMINAL, attempt)


def outcome_applies_to(terminal: bool, attempt: Any) -> ColumnElement[bool]:
    """`outcome_applies` for an attempt given as a value or a bound parameter."""
    newer = invocations.c.attempt < attempt
    same = invocations.c.attempt == attempt
    if terminal:
        return or_(newer, same)
    return or_(newer, and_(same, invocations.c.status.not_in(TERMINAL)))


def to_row(tenant: str, record: msgspec.Struct) -> dict[str, object]:
    """Column values of a Service or Function row (JSON-ish fields as JSON text)."""
    row: dict[str, object] = {"tenant": tenant, **msgspec.structs.asdict(record)}
    for column in _JSON_COLUMNS & row.keys():
        row[column] = msgspec.json.encode(row[column]).decode()
    return row


def from_row(cls: type[_Record], row: Mapping[Any, Any]) -> _Record:
    """The record of type `cls` held in a row (extra columns such as tenant are ignored)."""
    kwargs: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        value = row[field.name]
        if field.name in _JSON_COLUMNS:
            value = msgspec.json.decode(value, type=field.type)
        elif field.type is float and isinstance(value, int):
            # SQLite may hand back a whole REAL as int (seen with UPDATE ... RETURNING).
            value = float(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def changes_to_values(
    cls: type[Service] | type[Function], changes: Mapping[str, object]
) -> dict[str, object]:
    """Validate a partial update against the record's field types; return column values."""
    mutable = SERVICE_MUTABLE if cls is Service else FUNCTION_MUTABLE
    unknown = sorted(set(changes) - mutable)
    if unknown:
        raise BadRequest(f"cannot change {', '.join(unknown)} of a {cls.__name__.lower()}")
    types = {f.name: f.type for f in msgspec.structs.fields(cls)}
    values: dict[str, object] = {}
    for name, raw in changes.items():
        try:
            value = msgspec.convert(raw, types[name])
        except msgspec.ValidationError as e:
            raise BadRequest(f"invalid {name}: {e}") from e
        values[name] = msgspec.json.encode(value).decode() if name in _JSON_COLUMNS else value
    return values
