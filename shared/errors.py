"""One exception root; each subclass maps to one HTTP status and one error code.

The gateway turns any `PyfcError` into `{"errorCode", "errorMessage"}` with `status`.
Other roles carry `code` across the broker so the caller sees the same error.
"""

from __future__ import annotations


class PyfcError(Exception):
    """Root of every error pyfc raises on purpose."""

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PyfcError):
    status = 400
    code = "InvalidArgument"


class InvalidCode(BadRequest):
    """The code package is not a usable zip, or the handler is not in it."""

    code = "InvalidCodePackage"


class Unauthorized(PyfcError):
    status = 401
    code = "Unauthorized"


class Forbidden(PyfcError):
    status = 403
    code = "AccessDenied"


class NotFound(PyfcError):
    status = 404
    code = "NotFound"


class ServiceNotFound(NotFound):
    code = "ServiceNotFound"


class FunctionNotFound(NotFound):
    code = "FunctionNotFound"


class InvocationNotFound(NotFound):
    code = "InvocationNotFound"


class AsyncConfigNotFound(NotFound):
    code = "AsyncConfigNotFound"


class ProvisionConfigNotFound(NotFound):
    code = "ProvisionConfigNotFound"


class DeadLetterNotFound(NotFound):
    code = "DeadLetterNotFound"


class VersionNotFound(NotFound):
    code = "VersionNotFound"


class AliasNotFound(NotFound):
    code = "AliasNotFound"


class TriggerNotFound(NotFound):
    code = "TriggerNotFound"


class Conflict(PyfcError):
    status = 409
    code = "Conflict"


class AlreadyExists(Conflict):
    code = "AlreadyExists"


class NotEmpty(Conflict):
    code = "NotEmpty"


class VersionInUse(Conflict):
    """An alias still points at the version (as its versionId or its weighted one)."""

    code = "VersionInUse"


class NoChanges(BadRequest):
    """Publishing LATEST when it equals the newest version (FC answers VersionExists)."""

    code = "VersionExists"


class ReservationExceeded(Conflict):
    """Reserved concurrency would add up to more than the tenant's concurrency cap."""

    code = "ReservedConcurrencyExceeded"


class PayloadTooLarge(PyfcError):
    status = 413
    code = "PayloadTooLarge"


class Throttled(PyfcError):
    status = 429
    code = "ThrottlingException"


class Unavailable(PyfcError):
    """A dependency (broker, database, blob store) cannot be reached."""

    status = 503
    code = "ServiceUnavailable"


class DeadlineExceeded(PyfcError):
    """The platform could not produce an answer before the caller's deadline."""

    status = 504
    code = "DeadlineExceeded"


_BY_CODE: dict[str, type[PyfcError]] = {}


def _index(cls: type[PyfcError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(PyfcError)


def from_code(code: str, message: str) -> PyfcError:
    """Rebuild an error that crossed the broker as (code, message)."""
    cls = _BY_CODE.get(code, PyfcError)
    err = cls(message)
    if cls is PyfcError:
        err.code = code
    return err
