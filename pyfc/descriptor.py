"""pyfc.yaml: one file that describes an application (services, functions, triggers, async
and provision configs, versions, aliases), validated whole before anything is deployed.

    services:
      demo:                              # service name
        description: the demo
        publish: true                    # publish a version when LATEST changed
        aliases:
          prod: {version: latest}        # the newest version; or a version id
        functions:
          echo:
            code: ./echo                 # a folder, zipped (.fcignore honoured)
            handler: index.handler
            runtime: python3.12
            timeout: 10
            asyncConfig: {maxAsyncRetryAttempts: 1}
            provisionConfig: {target: 1}
            triggers:
              tick:
                type: timer
                qualifier: prod
                config: {cronExpression: "@every 1m", payload: hi}

Field names are the HTTP API's (camelCase). `validate` turns a loaded document into an
`App`, every problem reported with its path and line; nothing here talks to a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.bodies import (
    AsyncConfigUpdate,
    Description,
    EnvVars,
    Handler,
    InstanceConcurrency,
    MemorySize,
    ReservedConcurrency,
    Timeout,
)
from pyfc.code import CodeFolder
from pyfc.yamldoc import Document, PathKey, Problems
from shared import trigger_types
from shared.codepkg import SUPPORTED_RUNTIMES
from shared.errors import BadRequest
from shared.protocol import LATEST
from shared.release import AutoRollback

# The newest published version, as an alias's `version`.
NEWEST = "latest"
DEFAULT_MAX_CODE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 6 * 1024 * 1024


class _Spec(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class TriggerSpec(_Spec):
    type: str
    config: dict[str, Any] = {}
    qualifier: str = LATEST
    enabled: bool = True
    description: Description = ""


class AliasSpec(_Spec):
    version: str
    additional_version_weight: dict[str, float] = {}
    description: Description = ""
    auto_rollback: AutoRollback | None = None


class FunctionSpec(_Spec):
    code: str
    runtime: str = "python3.11"
    handler: Handler = "index.handler"
    description: Description = ""
    timeout: Timeout = 3.0
    memory_size: MemorySize = 128
    initializer: Handler | None = None
    initialization_timeout: Timeout = 3.0
    instance_concurrency: InstanceConcurrency = 1
    environment_variables: EnvVars = {}
    reserved_concurrency: ReservedConcurrency | None = None
    async_config: dict[str, Any] | None = None
    provision_config: dict[str, Any] | None = None
    triggers: dict[str, Any] = {}


class ServiceSpec(_Spec):
    description: Description = ""
    environment_variables: EnvVars = {}
    publish: bool = False
    version_description: Description = ""
    functions: dict[str, Any] = {}
    aliases: dict[str, Any] = {}


class RootSpec(_Spec):
    services: dict[str, Any]
    # Accepted and reported, for files that carry a name or an edition of their own.
    name: str = ""
    edition: str = ""


# --- what validation produces -------------------------------------------------------------


@dataclass
class TriggerDesired:
    name: str
    type: str  # pyfc's own name (FC's `oss` is stored as `s3`)
    config: dict[str, Any]  # as the gateway stores it: defaults filled in
    qualifier: str = LATEST
    enabled: bool = True
    description: str = ""

    def body(self) -> dict[str, Any]:
        return {
            "triggerType": self.type,
            "triggerConfig": self.config,
            "qualifier": self.qualifier,
            "enabled": self.enabled,
            "description": self.description,
        }


@dataclass
class FunctionDesired:
    name: str
    code: CodeFolder
    # Every field of the function as the API names them, defaults filled in, no code.
    fields: dict[str, Any]
    async_config: dict[str, Any] | None = None
    provision_target: int | None = None
    triggers: dict[str, TriggerDesired] = field(default_factory=dict)


@dataclass
class ServiceDesired:
    name: str
    fields: dict[str, Any]
    functions: dict[str, FunctionDesired] = field(default_factory=dict)
    publish: bool = False
    version_description: str = ""
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class App:
    """A validated descriptor: what should exist, and what of the file pyfc ignores."""

    source: Path
    services: dict[str, ServiceDesired] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --- validation ---------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z_][-A-Za-z0-9_]{0,127}$")
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")


def convert(value: Any, kind: type[msgspec.Struct], at: PathKey, problems: Problems) -> Any | None:
    """`value` as `kind`, or None with its problems recorded at their precise paths."""
    spec, clean = convert_all(value, kind, at, problems)
    return spec if clean else None


def convert_all(
    value: Any, kind: type[msgspec.Struct], at: PathKey, problems: Problems
) -> tuple[Any | None, bool]:
    """Every problem of `value` as `kind`, not just msgspec's first: a field found wrong is
    recorded and left out, and the rest converted again. Returns what converts without the
    wrong fields (to check what is nested in it), and whether nothing was wrong."""
    clean = True
    dropped: set[str] = set()
    for _ in range(64):  # bounded: each round drops one field
        try:
            return msgspec.convert(value, kind), clean
        except msgspec.ValidationError as e:
            path, reason = _locate(str(e), at, kind)
            if not (isinstance(value, dict) and len(path) > len(at)):
                problems.add(path, reason)
                return None, False
            key = path[len(at)]
            if reason.startswith("required field") and str(path[-1]) in dropped:
                return None, False  # we dropped it: already reported
            problems.add(path, reason)
            clean = False
            if key not in value:
                return None, False
            value = {k: v for k, v in value.items() if k != key}
            dropped.add(str(key))
    return None, False


def _locate(message: str, at: PathKey, kind: type[msgspec.Struct]) -> tuple[PathKey, str]:
    """msgspec's `... - at `$.a[0].b`` as (at + path, a reason a person reads)."""
    m = _AT.match(message)
    assert m is not None  # the pattern matches any string
    reason, tail = m["reason"], m["path"] or ""
    path = list(at)
    for name, index in _PART.findall(tail):
        path.append(int(index) if index else name)
    unknown = re.match(r"Object contains unknown field `(.+)`", reason)
    if unknown:
        path.append(unknown[1])
        known = ", ".join(f.encode_name for f in msgspec.structs.fields(kind))
        reason = f"unknown field (known here: {known})" if len(path) == len(at) + 1 else reason
        if len(path) != len(at) + 1:
            reason = "unknown field"
    missing = re.match(r"Object missing required field `(.+)`", reason)
    if missing:
        path.append(missing[1])
        reason = f"required field `{missing[1]}` is missing"
    reason = reason.replace("Expected `", "expected `")
    return tuple(path), reason


def _strings(env: Any) -> Any:
    """YAML reads `PORT: 8080` as a number; an environment variable is a string."""
    if isinstance(env, dict):
        return {
            k: str(v).lower()
            if isinstance(v, bool)
            else str(v)
            if isinstance(v, int | float)
            else v
            for k, v in env.items()
        }
    return env


def _name(name: Any, at: PathKey, what: str, problems: Problems) -> bool:
    if not isinstance(name, str) or not _NAME.match(name):
        problems.add(at, f"{what} name {name!r}: letters, digits, - and _, a letter or _ first")
        return False
    return True


def validate(doc: Document, max_code_bytes: int = DEFAULT_MAX_CODE_BYTES) -> App:
    """The App the document describes; InvalidDocument listing every problem otherwise."""
    problems = Problems(doc)
    app = App(doc.path)
    data = doc.data
    if not isinstance(data, dict):
        problems.add((), "expected a mapping with `services:` at the top")
        problems.raise_if_any()
    root = convert(data, RootSpec, (), problems)
    if root is None:
        problems.raise_if_any()
        raise AssertionError("a failed conversion records a problem")
    base = doc.path.parent
    for svc_name, raw_svc in root.services.items():
        at: PathKey = ("services", svc_name)
        if not _name(svc_name, at, "service", problems):
            continue
        if isinstance(raw_svc, dict) and "environmentVariables" in raw_svc:
            raw_svc = {**raw_svc, "environmentVariables": _strings(raw_svc["environmentVariables"])}
        svc, _ = convert_all(raw_svc or {}, ServiceSpec, at, problems)
        if svc is None:
            continue
        desired = ServiceDesired(
            svc_name,
            {"description": svc.description, "environmentVariables": svc.environment_variables},
            publish=svc.publish,
            version_description=svc.version_description,
        )
        app.services[svc_name] = desired
        for fn_name, raw_fn in svc.functions.items():
            fn = _function(base, (*at, "functions", fn_name), fn_name, raw_fn, problems)
            if fn is not None:
                desired.functions[fn_name] = fn
        for alias_name, raw_alias in svc.aliases.items():
            alias = _alias((*at, "aliases", alias_name), alias_name, raw_alias, problems)
            if alias is not None:
                desired.aliases[alias_name] = alias
        for fn in desired.functions.values():
            for trig in fn.triggers.values():
                q = trig.qualifier
                if q != LATEST and not q.isdigit() and q not in desired.aliases:
                    problems.add(
                        (*at, "functions", fn.name, "triggers", trig.name, "qualifier"),
                        f"{q!r} is neither LATEST, a version id nor an alias of this service "
                        f"in the file (aliases: {', '.join(desired.aliases) or 'none'})",
                    )
    problems.raise_if_any()
    for svc in app.services.values():  # after the schema: zipping is the slow part
        for fn in svc.functions.values():
            where: PathKey = ("services", svc.name, "functions", fn.name, "code")
            f = fn.fields
            reason = fn.code.problem(f["runtime"], f["handler"], f["initializer"], max_code_bytes)
            if reason:
                problems.add(where, reason)
    problems.raise_if_any()
    return app


def _function(
    base: Path, at: PathKey, name: Any, raw: Any, problems: Problems
) -> FunctionDesired | None:
    if not _name(name, at, "function", problems):
        return None
    if isinstance(raw, dict) and "environmentVariables" in raw:
        raw = {**raw, "environmentVariables": _strings(raw["environmentVariables"])}
    spec, ok = convert_all(raw, FunctionSpec, at, problems)
    if spec is None:
        return None
    if spec.runtime not in SUPPORTED_RUNTIMES:
        problems.add(
            (*at, "runtime"),
            f"unknown runtime {spec.runtime!r}; supported: {', '.join(SUPPORTED_RUNTIMES)}",
        )
        ok = False
    folder = (base / spec.code).resolve()
    if not folder.is_dir():
        problems.add((*at, "code"), f"{spec.code!r} is not a folder (looked in {folder})")
        ok = False
    async_config = None
    if spec.async_config is not None:
        async_config = dict(spec.async_config)
        qualifier = async_config.pop("qualifier", LATEST)
        if qualifier != LATEST:
            problems.add((*at, "asyncConfig", "qualifier"), "only LATEST is deployed from a file")
            ok = False
        ok = (
            convert(async_config, AsyncConfigUpdate, (*at, "asyncConfig"), problems) is not None
            and ok
        )
    provision = None
    if spec.provision_config is not None:
        target = spec.provision_config.get("target")
        extra = set(spec.provision_config) - {"target"}
        if extra:
            problems.add(
                (*at, "provisionConfig", sorted(extra)[0]), "unknown field (known: target)"
            )
            ok = False
        elif not isinstance(target, int) or isinstance(target, bool) or not 0 <= target <= 100:
            problems.add((*at, "provisionConfig", "target"), "expected an integer from 0 to 100")
            ok = False
        else:
            provision = target
    triggers: dict[str, TriggerDesired] = {}
    for trig_name, raw_trig in spec.triggers.items():
        trig = _trigger((*at, "triggers", trig_name), trig_name, raw_trig, problems)
        if trig is None:
            ok = False
        else:
            triggers[trig_name] = trig
    if not ok:
        return None
    fields = msgspec.to_builtins(spec)
    for key in ("code", "asyncConfig", "provisionConfig", "triggers"):
        fields.pop(key, None)
    fields.setdefault("initializer", None)
    fields.setdefault("reservedConcurrency", None)
    return FunctionDesired(name, CodeFolder(folder), fields, async_config, provision, triggers)


def _trigger(at: PathKey, name: Any, raw: Any, problems: Problems) -> TriggerDesired | None:
    if not _name(name, at, "trigger", problems):
        return None
    spec = convert(raw, TriggerSpec, at, problems)
    if spec is None:
        return None
    try:
        kind = trigger_types.trigger_type(spec.type)
    except BadRequest as e:
        problems.add((*at, "type"), e.message.removeprefix("triggerType: "))
        return None
    limits = trigger_types.Limits(max_event_bytes=DEFAULT_MAX_EVENT_BYTES)
    try:
        config = trigger_types.validate(kind.name, spec.config, limits)
    except BadRequest as e:
        field_at, reason = _trigger_reason(e.message)
        named = re.match(r"([A-Za-z]\w*): ", reason)
        if not field_at and named and named[1] in spec.config:
            field_at, reason = (named[1],), reason[len(named[0]) :]
        problems.add((*at, "config", *field_at), reason)
        return None
    return TriggerDesired(name, kind.name, config, spec.qualifier, spec.enabled, spec.description)


def _trigger_reason(message: str) -> tuple[PathKey, str]:
    """`triggerConfig: ... - at `triggerConfig.a.b`` -> (("a", "b"), reason)."""
    m = re.search(r" - at `triggerConfig((?:\.[\w-]+|\[\d+\])*)`", message)
    reason = message.removeprefix("triggerConfig: ")
    if not m:
        field = re.match(r"triggerConfig\.([\w]+)", reason)
        return ((field[1],) if field else ()), reason
    reason = reason.replace(m[0], "")
    path: list[str | int] = [int(index) if index else name for name, index in _PART.findall(m[1])]
    return tuple(path), reason


def _alias(at: PathKey, name: Any, raw: Any, problems: Problems) -> dict[str, Any] | None:
    if not _name(name, at, "alias", problems):
        return None
    if isinstance(raw, dict) and isinstance(raw.get("version"), int):
        raw = {**raw, "version": str(raw["version"])}
    if isinstance(raw, dict) and isinstance(raw.get("additionalVersionWeight"), dict):
        weights = raw["additionalVersionWeight"]
        raw = {**raw, "additionalVersionWeight": {str(k): v for k, v in weights.items()}}
    spec = convert(raw, AliasSpec, at, problems)
    if spec is None:
        return None
    if spec.version != NEWEST and not spec.version.isdigit():
        problems.add((*at, "version"), f"a version id (1, 2, ...) or {NEWEST!r}")
        return None
    if len(spec.additional_version_weight) > 1:
        problems.add((*at, "additionalVersionWeight"), "at most one other version")
        return None
    for version, weight in spec.additional_version_weight.items():
        if not 0 <= weight <= 1:
            problems.add((*at, "additionalVersionWeight", version), "a share from 0 to 1")
            return None
    return {
        "versionId": spec.version,
        "additionalVersionWeight": spec.additional_version_weight,
        "description": spec.description,
        "autoRollback": msgspec.to_builtins(spec.auto_rollback),
    }
