"""Serverless Devs files (s.yaml) read as pyfc.yaml, as FC's published examples write them.

Edition 1.0.0, component `fc` (FC 2.0): `services: <key>: {component: fc, props: {service,
function, triggers}}`; the props' `service.name` is the pyfc service (several keys naming
one service share it), `function.codeUri` its code folder.

Edition 3.0.0, component `fc3` (FC 3.0): `resources: <key>: {component: fc3, props:
{functionName, runtime, code, handler, triggers: [{triggerName, triggerType,
triggerConfig}]}}`. FC 3.0 has no services: every function of the file goes into one pyfc
service named after the file's `name` (letters, digits, - and _ kept, others made -).

Variables: `${vars.a.b}` (the file's `vars`), `${env(NAME)}` and `${env.NAME}` (the
environment), `{{ name }}` (template parameters, from `pyfc deploy --var name=value`).
Only the values pyfc uses are resolved, so `access: "{{ access }}"` needs no value; one
that is needed and missing is an error naming it.

Trigger types: `timer` (its `enable` is the trigger's enabled), `oss` (pyfc's `s3` with
FC's event format; the bucket from `bucketName` or the `sourceArn`), and any type pyfc
has under FC's name or ours (`rabbitmq` -> `mq`); config fields pyfc's type does not know
are left out with a warning. Everything else pyfc does not use (region, access, role,
vpcConfig, actions such as `s build` hooks, other components...) is a warning, never
silently dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from pyfc.yamldoc import Document, PathKey, Problems
from shared.trigger_types import TRIGGER_TYPES, TYPE_ALIASES

EDITIONS = ("1.0.0", "3.0.0")
# FC's trigger type -> pyfc's names to try, first found wins.
TYPE_MAP = {
    "timer": ("timer",),
    "oss": ("s3",),
    "http": ("http",),
    "log": ("log", "sls"),
    "rabbitmq": ("mq", "rabbitmq"),
    "mns_topic": ("mq",),
    "eventbridge": ("mq", "eventbridge"),
}
_EXPR = re.compile(r"\$\{\s*([^}]+?)\s*\}")
_PARAM = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*(?:\|[^}]*)?\}\}")

# FC 2.0 function props pyfc deploys as they are (pyfc's names are FC's).
FUNCTION_FIELDS = (
    "description",
    "runtime",
    "handler",
    "timeout",
    "memorySize",
    "initializer",
    "initializationTimeout",
    "instanceConcurrency",
    "environmentVariables",
)


def is_sdevs(data: Any) -> bool:
    """A Serverless Devs file rather than pyfc's own."""
    if not isinstance(data, dict):
        return False
    if str(data.get("edition", "")) in EDITIONS or "resources" in data:
        return True
    services = data.get("services")
    return isinstance(services, dict) and any(
        isinstance(s, dict) and "component" in s for s in services.values()
    )


def _component(value: Any) -> str:
    """`devsapp/fc@0.1.2` -> `fc`."""
    name = str(value or "").rsplit("/", 1)[-1]
    return name.split("@", 1)[0]


def _service_name(name: str) -> str:
    cleaned = re.sub(r"[^-A-Za-z0-9_]", "-", name) or "app"
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"app-{cleaned}"


class Translation:
    """One file's translation: the pyfc-shaped data, where each part came from, warnings."""

    def __init__(
        self, doc: Document, variables: Mapping[str, str], environ: Mapping[str, str]
    ) -> None:
        self.doc = doc
        self.variables = variables
        self.environ = environ
        self.problems = Problems(doc)
        self.warnings: list[str] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.origin: dict[PathKey, PathKey] = {}
        self.missing: dict[str, PathKey] = {}

    # --- variables ---------------------------------------------------------------------

    def raw(self, path: PathKey) -> Any:
        """The unresolved node at `path`, None if it is not there."""
        node: Any = self.doc.data
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                return None
        return node

    def node(self, path: PathKey) -> tuple[Any, PathKey]:
        """The unresolved node at `path` and where it really is: a `${vars.x}` standing for
        a whole mapping or list is followed, its parts left unresolved (only what pyfc
        uses is resolved, so an ignored field's `{{ access }}` needs no value)."""
        node = self.raw(path)
        for _ in range(10):
            m = _EXPR.fullmatch(node.strip()) if isinstance(node, str) else None
            if not (m and m[1].startswith("vars.")):
                break
            target: PathKey = ("vars", *m[1].split(".")[1:])
            if self.raw(target) is None:
                break  # resolve() reports it
            node, path = self.raw(target), target
        return node, path

    def value(self, path: PathKey, default: Any = None) -> Any:
        """The resolved value at `path` of the file, `default` if it is not there."""
        node, real = self.node(path)
        return default if node is None else self.resolve(node, real)

    def resolve(self, value: Any, at: PathKey, depth: int = 0) -> Any:
        if depth > 10:
            self.problems.add(at, "variables refer to each other in a loop")
            return None
        if isinstance(value, dict):
            return {k: self.resolve(v, (*at, k), depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, (*at, i), depth) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        whole = _EXPR.fullmatch(value.strip())
        if whole:  # `service: ${vars.service}` keeps the value's type (a mapping here)
            found, where = self._expression(whole[1], at)
            return self.resolve(found, where, depth + 1)

        def one(m: re.Match[str]) -> str:
            found, where = self._expression(m[1], at)
            return str(self.resolve(found, where, depth + 1))

        return _PARAM.sub(lambda m: self._param(m[1], at), _EXPR.sub(one, value))

    def _expression(self, expr: str, at: PathKey) -> tuple[Any, PathKey]:
        env = re.fullmatch(r"env\(\s*['\"]?([A-Za-z_]\w*)['\"]?\s*\)|env\.([A-Za-z_]\w*)", expr)
        if env:
            name = env[1] or env[2]
            if name not in self.environ:
                self.problems.add(at, f"${{{expr}}}: the environment has no {name}")
                return "", at
            return self.environ[name], at
        if expr.startswith("vars."):
            target: PathKey = ("vars", *expr.split(".")[1:])
            found = self.raw(target)
            if found is None:
                self.problems.add(at, f"${{{expr}}}: no such entry in the file's `vars`")
                return "", at
            return found, target
        self.problems.add(
            at, f"${{{expr}}}: pyfc resolves ${{vars.NAME}}, ${{env(NAME)}} and ${{env.NAME}}"
        )
        return "", at

    def _param(self, name: str, at: PathKey) -> str:
        if name in self.variables:
            return self.variables[name]
        self.missing.setdefault(name, at)
        return ""

    def _required(self, path: PathKey, what: str) -> None:
        """`what` is required at `path`, unless it is there and its variables were reported."""
        if not self.raw(path):
            self.problems.add(path, f"{what} is required")

    def ignored(self, path: PathKey, what: str = "") -> None:
        """A warning for a field of the file that pyfc does not use, if it is there."""
        if self.raw(path) is not None:
            where = ".".join(str(p) for p in path)
            line = self.doc.line(path)
            self.warnings.append(
                f"{self.doc.path.name}:{line}: {where} is ignored{': ' + what if what else ''}"
            )

    # --- the two editions --------------------------------------------------------------

    def translate(self) -> Document:
        data = self.doc.data
        edition = str(data.get("edition", "3.0.0" if "resources" in data else "1.0.0"))
        if edition not in EDITIONS:
            self.problems.add(
                ("edition",), f"edition {edition!r}: pyfc reads {' and '.join(EDITIONS)}"
            )
        for top in ("access", "flow", "template", "extend"):
            self.ignored((top,))
        if edition == "3.0.0":
            self._edition3()
        else:
            self._edition1()
        for name, at in self.missing.items():
            self.problems.add(at, f"{{{{ {name} }}}} has no value: pass --var {name}=VALUE")
        self.problems.raise_if_any()
        self.warnings.sort(key=lambda w: int(w.split(":", 2)[1]) if w.count(":") > 1 else 0)
        return Document(self.doc.path, {"services": self.services}, self.doc.lines, self.origin)

    def _edition1(self) -> None:
        services = self.raw(("services",))
        if not isinstance(services, dict) or not services:
            self.problems.add(("services",), "expected a mapping of components")
            return
        for key, entry in services.items():
            at: PathKey = ("services", key)
            if not isinstance(entry, dict):
                self.problems.add(at, "expected a mapping with `component` and `props`")
                continue
            component = _component(entry.get("component"))
            if component != "fc":
                self.warnings.append(
                    f"{self.doc.path.name}:{self.doc.line(at)}: services.{key}: component "
                    f"{entry.get('component')!r} is not deployed (pyfc deploys `fc`)"
                )
                continue
            self.ignored((*at, "actions"), "pyfc runs no hooks (s build, pre-deploy...)")
            props_raw, props = self.node((*at, "props"))
            if not isinstance(props_raw, dict):
                self.problems.add((*at, "props"), "expected a mapping")
                continue
            for field in sorted(set(props_raw) - {"service", "function", "triggers"}):
                self.ignored((*props, field))
            service_raw, service_at = self.node((*props, "service"))
            svc_name = self.value((*service_at, "name")) if isinstance(service_raw, dict) else None
            if not svc_name:
                self._required((*service_at, "name"), "the service's name")
                continue
            svc_at: PathKey = ("services", str(svc_name))
            svc = self.services.setdefault(str(svc_name), {"functions": {}})
            self.origin.setdefault(svc_at, service_at)
            if "description" in service_raw:
                svc["description"] = self.value((*service_at, "description"))
            for field in sorted(set(service_raw) - {"name", "description"}):
                self.ignored((*service_at, field))
            fn_raw, fn_path = self.node((*props, "function"))
            fn_name = self.value((*fn_path, "name")) if isinstance(fn_raw, dict) else None
            if not fn_name:
                self._required((*fn_path, "name"), "the function's name")
                continue
            fn_at: PathKey = (*svc_at, "functions", str(fn_name))
            self.origin[fn_at] = fn_path
            fn = self._function(fn_raw, fn_path, fn_at, "codeUri")
            fn["triggers"] = self._triggers((*props, "triggers"), fn_at, edition=1)
            svc["functions"][str(fn_name)] = fn

    def _edition3(self) -> None:
        resources = self.raw(("resources",))
        if not isinstance(resources, dict) or not resources:
            self.problems.add(("resources",), "expected a mapping of components")
            return
        name = self.value(("name",)) or self.doc.path.parent.name
        svc_name = _service_name(str(name))
        svc_at: PathKey = ("services", svc_name)
        self.origin[svc_at] = ("name",)
        svc = self.services.setdefault(svc_name, {"functions": {}})
        for key, entry in resources.items():
            at: PathKey = ("resources", key)
            if not isinstance(entry, dict):
                self.problems.add(at, "expected a mapping with `component` and `props`")
                continue
            component = _component(entry.get("component"))
            if component != "fc3":
                self.warnings.append(
                    f"{self.doc.path.name}:{self.doc.line(at)}: resources.{key}: component "
                    f"{entry.get('component')!r} is not deployed (pyfc deploys `fc3`)"
                )
                continue
            self.ignored((*at, "actions"), "pyfc runs no hooks (s build, pre-deploy...)")
            props_raw, props = self.node((*at, "props"))
            fn_name = self.value((*props, "functionName")) if isinstance(props_raw, dict) else None
            if not fn_name:
                self._required((*props, "functionName"), "the function's name")
                continue
            fn_at: PathKey = (*svc_at, "functions", str(fn_name))
            self.origin[fn_at] = props
            fn = self._function(props_raw, props, fn_at, "code")
            fn["triggers"] = self._triggers((*props, "triggers"), fn_at, edition=3)
            reserved = self.value((*props, "concurrencyConfig", "reservedConcurrency"))
            if reserved is not None:
                fn["reservedConcurrency"] = reserved
                self.origin[(*fn_at, "reservedConcurrency")] = (
                    *props, "concurrencyConfig", "reservedConcurrency",
                )  # fmt: skip
            provision = self.value((*props, "provisionConfig"))
            if isinstance(provision, dict):
                target = provision.get("defaultTarget", provision.get("target"))
                if target is not None:
                    fn["provisionConfig"] = {"target": target}
                    self.origin[(*fn_at, "provisionConfig")] = (*props, "provisionConfig")
            svc["functions"][str(fn_name)] = fn
            handled = {
                *FUNCTION_FIELDS, "functionName", "code", "triggers", "asyncInvokeConfig",
                "concurrencyConfig", "provisionConfig", "instanceLifecycleConfig",
            }  # fmt: skip
            for field in sorted(set(props_raw) - handled):
                self.ignored((*props, field))

    def _function(
        self, raw: dict[str, Any], at: PathKey, fn_at: PathKey, code_field: str
    ) -> dict[str, Any]:
        fn: dict[str, Any] = {k: self.value((*at, k)) for k in FUNCTION_FIELDS if k in raw}
        runtime = str(fn.get("runtime", ""))
        if runtime.startswith("custom.") or runtime == "custom-runtime":
            fn["runtime"] = "custom"
            self.warnings.append(
                f"{self.doc.path.name}:{self.doc.line((*at, 'runtime'))}: runtime {runtime!r} "
                "runs as pyfc's `custom` (a bootstrap at the code root)"
            )
        code = self.value((*at, code_field))
        self.origin[(*fn_at, "code")] = (*at, code_field)
        if isinstance(code, dict):  # {src: ./code}; OSS code pyfc cannot fetch
            self.origin[(*fn_at, "code")] = (*at, code_field, "src")
            code = code.get("src")
        if isinstance(code, str):
            fn["code"] = code
        initializer = self.value((*at, "instanceLifecycleConfig", "initializer", "handler"))
        if initializer:
            fn["initializer"] = initializer
        for name in ("asyncConfiguration", "asyncInvokeConfig"):
            config = self.value((*at, name))
            if isinstance(config, dict):
                fn["asyncConfig"] = self._async(config, (*at, name), fn_at)
        if code_field == "codeUri":
            handled = {*FUNCTION_FIELDS, "name", "codeUri", "asyncConfiguration"}
            for field in sorted(set(raw) - handled):
                self.ignored((*at, field))
        return fn

    def _async(self, config: dict[str, Any], at: PathKey, fn_at: PathKey) -> dict[str, Any]:
        self.origin[(*fn_at, "asyncConfig")] = at
        retries = ("maxAsyncRetryAttempts", "maxAsyncEventAgeInSeconds")
        out = {k: config[k] for k in retries if k in config}
        destinations = config.get("destinationConfig", config.get("destination"))
        if isinstance(destinations, dict):
            mapped: dict[str, Any] = {}
            for when in ("onSuccess", "onFailure"):
                target = destinations.get(when)
                if isinstance(target, dict):
                    target = target.get("destination")
                if target:
                    mapped[when] = {"destination": self._destination(str(target), fn_at)}
            if mapped:
                out["destinationConfig"] = mapped
        for field in sorted(set(config) - {*retries, "destinationConfig", "destination"}):
            self.ignored((*at, field))
        return out

    def _destination(self, arn: str, fn_at: PathKey) -> str:
        """`acs:fc:{region}:{uid}:services/{s}.{q}/functions/{f}` (2.0) or
        `...:functions/{f}` (3.0) as pyfc's `function:...`; other targets as given."""
        m = re.search(r":services/([^/]+)/functions/([^/]+)$", arn)
        if m:
            return f"function:{m[1]}/{m[2]}"
        m = re.search(r":functions/([^/:]+)(?::([^/]+))?$", arn)
        if m:
            service = str(fn_at[1])
            return f"function:{service}{'.' + m[2] if m[2] else ''}/{m[1]}"
        return arn

    def _triggers(self, at: PathKey, fn_at: PathKey, edition: int) -> dict[str, Any]:
        raw, at = self.node(at)
        if raw is None:
            return {}
        if not isinstance(raw, list):
            self.problems.add(at, "expected a list of triggers")
            return {}
        name_key, type_key, config_key = (
            ("name", "type", "config") if edition == 1 else
            ("triggerName", "triggerType", "triggerConfig")
        )  # fmt: skip
        known_keys = {name_key, type_key, config_key, "qualifier", "description", "sourceArn",
                      "bucketName"}  # fmt: skip
        out: dict[str, Any] = {}
        for i in range(len(raw)):
            trig_raw, t_at = self.node((*at, i))
            if not isinstance(trig_raw, dict):
                self.problems.add(t_at, "expected a mapping")
                continue
            name = self.value((*t_at, name_key))
            fc_type = str(self.value((*t_at, type_key), ""))
            if not name:
                self.problems.add((*t_at, name_key), "the trigger's name is required")
                continue
            kind = next((k for k in TYPE_MAP.get(fc_type, (fc_type,)) if k in TRIGGER_TYPES), None)
            if kind is None:
                self.warnings.append(
                    f"{self.doc.path.name}:{self.doc.line((*t_at, type_key))}: trigger {name} "
                    f"({fc_type}) is not deployed: pyfc has no such trigger type "
                    f"(it has {', '.join(sorted(TRIGGER_TYPES))})"
                )
                continue
            trig_at: PathKey = (*fn_at, "triggers", str(name))
            self.origin[trig_at] = t_at
            self.origin[(*trig_at, "config")] = (*t_at, config_key)
            self.origin[(*trig_at, "type")] = (*t_at, type_key)
            spec: dict[str, Any] = {"type": kind}
            for key in ("qualifier", "description"):
                if trig_raw.get(key):
                    spec[key] = str(self.value((*t_at, key)))
            config = self.value((*t_at, config_key), {})
            if not isinstance(config, dict):
                self.problems.add((*t_at, config_key), "expected a mapping")
                continue
            config = dict(config)
            if "enable" in config:
                spec["enabled"] = bool(config.pop("enable"))
            if kind == "http" and edition == 3:
                # FC 3.0's HTTP functions take its HTTP event; FC 2.0's are WSGI apps.
                config.setdefault("requestFormat", "event")
            if kind == "s3":
                bucket = self.value((*t_at, "bucketName")) or config.pop("bucketName", None)
                arn = str(self.value((*t_at, "sourceArn"), ""))
                config = _oss(config, bucket or arn.rsplit(":", 1)[-1] if arn else bucket)
            spec["config"] = self._known_fields(kind, config, (*t_at, config_key))
            for field in sorted(set(trig_raw) - known_keys):
                self.ignored((*t_at, field))
            out[str(name)] = spec
        return out

    def _known_fields(self, kind: str, config: dict[str, Any], at: PathKey) -> dict[str, Any]:
        struct = TRIGGER_TYPES[TYPE_ALIASES.get(kind, kind)].config
        known = {f.encode_name for f in msgspec.structs.fields(struct)}
        for field in sorted(set(config) - known):
            self.ignored((*at, field), f"not a field of pyfc's {kind} trigger")
        return {k: v for k, v in config.items() if k in known}


def _oss(config: dict[str, Any], bucket: str | None) -> dict[str, Any]:
    """FC's oss trigger config as pyfc's s3 one (FC's event format)."""
    out = {"bucket": bucket or "", "events": config.pop("events", []), "eventFormat": "oss"}
    if "filter" in config:
        out["filter"] = config.pop("filter")
    return {**out, **config}


def translate(
    doc: Document, variables: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> tuple[Document, list[str]]:
    """`doc` (an s.yaml) as a pyfc.yaml document, and the warnings of what pyfc ignores."""
    t = Translation(doc, variables, os.environ if environ is None else environ)
    return t.translate(), t.warnings
