"""What `pyfc deploy` will change: the desired App against what the gateway has, as an
ordered list of Changes. Pure: no I/O here (`pyfc.apply` fetches and applies).

Order: services, functions (code), async and provision configs, a published version,
aliases, triggers; then, with prune, what the file no longer names, triggers first (a
function or alias with triggers cannot go first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from pyfc.code import CodeFolder
from pyfc.descriptor import NEWEST, App, FunctionDesired, ServiceDesired, TriggerDesired
from shared.protocol import LATEST
from shared.trigger_types import public_config

Action = Literal["create", "update", "delete", "publish"]


@dataclass
class FunctionState:
    fields: dict[str, Any]  # the API's view of the function
    async_config: dict[str, Any] | None = None  # LATEST's
    provision_target: int | None = None  # LATEST's
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ServiceState:
    fields: dict[str, Any]
    functions: dict[str, FunctionState] = field(default_factory=dict)
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    newest_version: str | None = None


@dataclass
class State:
    """What the gateway has of the services the file names (absent ones are missing)."""

    services: dict[str, ServiceState] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str  # service, function, async config, provision config, version, alias, trigger
    target: str  # demo, demo/echo, demo/echo/tick, demo:prod
    details: tuple[str, ...]  # what differs, for people: "timeout: 3 -> 10"
    method: str
    path: str
    body: dict[str, Any] | None = None
    code: CodeFolder | None = None  # uploaded as body["code"]["zipFile"]
    service: str = ""  # for a version / an alias naming the newest version

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "target": self.target,
            "details": list(self.details),
        }


def _svc(name: str) -> str:
    return f"/v1/services/{quote(name)}"


def _fn(service: str, function: str) -> str:
    return f"{_svc(service)}/functions/{quote(function)}"


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return repr(value) if value else "''"
    return str(value)


def _diff(
    desired: dict[str, Any], current: dict[str, Any], exact: bool = True
) -> dict[str, tuple[Any, Any]]:
    """The fields of `desired` whose value differs in `current` (other fields of `current`
    are not compared; with `exact`, nested objects must match whole)."""
    return {
        k: (current.get(k), v) for k, v in desired.items() if not _same(v, current.get(k), exact)
    }


def _same(desired: Any, current: Any, exact: bool = True) -> bool:
    """Equal, numbers by value, and an absent/None/empty current equal to an empty desired."""
    if isinstance(desired, dict):
        current = current or {}
        if not isinstance(current, dict):
            return False
        return all(_same(v, current.get(k), exact) for k, v in desired.items()) and (
            not exact or all(k in desired or _empty(v) for k, v in current.items())
        )
    if desired is None or desired == {} or desired == "":
        return _empty(current) or desired == current
    if isinstance(desired, bool) or isinstance(current, bool):
        return desired is current
    if isinstance(desired, int | float) and isinstance(current, int | float):
        return float(desired) == float(current)
    return bool(desired == current)


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == "" or value == []


def _details(changed: dict[str, tuple[Any, Any]]) -> tuple[str, ...]:
    return tuple(f"{k}: {_show(old)} -> {_show(new)}" for k, (old, new) in changed.items())


def plan(app: App, state: State, prune: bool = False) -> list[Change]:
    """The changes that make the gateway match `app`; deletions only with `prune`."""
    changes: list[Change] = []
    deletions: list[Change] = []
    for svc in app.services.values():
        current = state.services.get(svc.name)
        svc_changes = _service(svc, current)
        changes += svc_changes
        if svc.publish and (svc_changes or current is None or current.newest_version is None):
            changes.append(
                Change(
                    "publish",
                    "version",
                    svc.name,
                    ("a new version of LATEST (if it differs from the newest)",),
                    "POST",
                    f"{_svc(svc.name)}/versions",
                    {"description": svc.version_description},
                    service=svc.name,
                )
            )
        publishing = any(c.kind == "version" for c in changes if c.service == svc.name)
        changes += _aliases(svc, current, publishing)
        for fn in svc.functions.values():
            fn_state = current.functions.get(fn.name) if current else None
            changes += _triggers(svc.name, fn, fn_state)
        if prune and current is not None:
            deletions += _prune(svc, current)
    return changes + sorted(deletions, key=_deletion_order)


def _deletion_order(change: Change) -> int:
    return ("trigger", "alias", "async config", "provision config", "function").index(change.kind)


def _service(svc: ServiceDesired, current: ServiceState | None) -> list[Change]:
    """The service's own change and its functions' (with their configs)."""
    out: list[Change] = []
    if current is None:
        body = {"serviceName": svc.name, **svc.fields}
        out.append(Change("create", "service", svc.name, (), "POST", "/v1/services", body))
    else:
        changed = _diff(svc.fields, current.fields)
        if changed:
            body = {k: new for k, (_, new) in changed.items()}
            out.append(
                Change(
                    "update", "service", svc.name, _details(changed), "PUT", _svc(svc.name), body
                )
            )
    for fn in svc.functions.values():
        fn_state = current.functions.get(fn.name) if current else None
        out += _function(svc.name, fn, fn_state)
    return out


def _function(service: str, fn: FunctionDesired, current: FunctionState | None) -> list[Change]:
    out: list[Change] = []
    target = f"{service}/{fn.name}"
    size = f"{len(fn.code.zip_bytes)} bytes"
    body: dict[str, Any]
    details: tuple[str, ...]
    if current is None:
        body = {"functionName": fn.name, **fn.fields}
        details = (f"code {fn.code.checksum[:12]} ({size})",)
        path = f"{_svc(service)}/functions"
        out.append(Change("create", "function", target, details, "POST", path, body, fn.code))
    else:
        changed = _diff(fn.fields, current.fields)
        old_sum = str(current.fields.get("codeChecksum", ""))
        code_changed = old_sum != fn.code.checksum
        if changed or code_changed:
            body = {k: new for k, (_, new) in changed.items()}
            details = _details(changed)
            if code_changed:
                details += (f"code: {old_sum[:12]} -> {fn.code.checksum[:12]} ({size})",)
            code = fn.code if code_changed else None
            path = _fn(service, fn.name)
            out.append(Change("update", "function", target, details, "PUT", path, body, code))
    if fn.async_config is not None:
        have = current.async_config if current else None
        # PUT changes only what is given, so only that is compared.
        changed = _diff(fn.async_config, have, exact=False) if have is not None else {}
        if have is None or changed:
            action: Action = "create" if have is None else "update"
            out.append(
                Change(
                    action,
                    "async config",
                    target,
                    _details(changed),
                    "PUT",
                    _fn(service, fn.name) + "/async-config",
                    fn.async_config,
                )
            )
    if fn.provision_target is not None:
        have_target = current.provision_target if current else None
        if have_target != fn.provision_target:
            out.append(
                Change(
                    "create" if have_target is None else "update",
                    "provision config",
                    target,
                    (f"target: {have_target or 0} -> {fn.provision_target}",),
                    "PUT",
                    _fn(service, fn.name) + "/provision-config",
                    {"target": fn.provision_target},
                )
            )
    return out


def _aliases(svc: ServiceDesired, current: ServiceState | None, publishing: bool) -> list[Change]:
    out: list[Change] = []
    newest = None if publishing or current is None else current.newest_version
    for name, desired in svc.aliases.items():
        have = current.aliases.get(name) if current else None
        target = f"{svc.name}:{name}"
        compare = dict(desired)
        if compare["versionId"] == NEWEST:
            compare["versionId"] = newest or "(the new version)"
        base = f"{_svc(svc.name)}/aliases"
        if have is None:
            body = {"aliasName": name, **desired}
            details = (f"version {compare['versionId']}",)
            out.append(
                Change("create", "alias", target, details, "POST", base, body, service=svc.name)
            )
            continue
        changed = _diff(compare, have)
        if changed:
            out.append(
                Change(
                    "update",
                    "alias",
                    target,
                    _details(changed),
                    "PUT",
                    f"{base}/{quote(name)}",
                    dict(desired),
                    service=svc.name,
                )
            )
    return out


def shown_config(trigger: TriggerDesired) -> dict[str, Any]:
    """The config as the gateway shows it back (secrets blanked), to compare with GET."""
    return public_config(trigger.config)


def has_secrets(config: dict[str, Any]) -> bool:
    """Whether the gateway hides part of `config` (secret fields, URL passwords)."""
    return public_config(config) != config


def _triggers(service: str, fn: FunctionDesired, current: FunctionState | None) -> list[Change]:
    out: list[Change] = []
    base = _fn(service, fn.name) + "/triggers"
    details: tuple[str, ...]
    for name, trig in fn.triggers.items():
        have = current.triggers.get(name) if current else None
        target = f"{service}/{fn.name}/{name}"
        if have is not None and have.get("triggerType") != trig.type:
            out.append(
                Change(
                    "delete",
                    "trigger",
                    target,
                    (f"type {have.get('triggerType')} -> {trig.type}: deleted, then created",),
                    "DELETE",
                    f"{base}/{quote(name)}",
                )
            )
            have = None
        if have is None:
            body = {"triggerName": name, **trig.body()}
            details = (f"{trig.type} on {trig.qualifier}",)
            out.append(Change("create", "trigger", target, details, "POST", base, body))
            continue
        # Secrets are never shown back: the blanked form is compared (a changed secret
        # alone needs `pyfc trigger update`, or `pyfc deploy --resend-secrets`).
        desired = {
            "triggerConfig": shown_config(trig),
            "qualifier": trig.qualifier,
            "enabled": trig.enabled,
            "description": trig.description,
        }
        changed = _diff(desired, have)
        if changed:
            body = {k: v for k, v in trig.body().items() if k != "triggerType"}
            details = _details(changed)
            out.append(
                Change("update", "trigger", target, details, "PUT", f"{base}/{quote(name)}", body)
            )
    return out


def resend_secrets(app: App, state: State) -> list[Change]:
    """Updates for the unchanged triggers whose configs hold secrets (`--resend-secrets`)."""
    out: list[Change] = []
    for svc in app.services.values():
        current = state.services.get(svc.name)
        for fn in svc.functions.values():
            fn_state = current.functions.get(fn.name) if current else None
            for name, trig in fn.triggers.items():
                have = fn_state.triggers.get(name) if fn_state else None
                if have is None or have.get("triggerType") != trig.type:
                    continue
                if has_secrets(trig.config):
                    body = {k: v for k, v in trig.body().items() if k != "triggerType"}
                    path = f"{_fn(svc.name, fn.name)}/triggers/{quote(name)}"
                    target = f"{svc.name}/{fn.name}/{name}"
                    out.append(Change("update", "trigger", target, ("secrets",), "PUT", path, body))
    return out


def _prune(svc: ServiceDesired, current: ServiceState) -> list[Change]:
    out: list[Change] = []
    for fn_name, fn_state in current.functions.items():
        desired = svc.functions.get(fn_name)
        target = f"{svc.name}/{fn_name}"
        for trig_name in fn_state.triggers:
            if desired is None or trig_name not in desired.triggers:
                out.append(
                    Change(
                        "delete",
                        "trigger",
                        f"{target}/{trig_name}",
                        (),
                        "DELETE",
                        f"{_fn(svc.name, fn_name)}/triggers/{quote(trig_name)}",
                    )
                )
        if desired is None:
            out.append(Change("delete", "function", target, (), "DELETE", _fn(svc.name, fn_name)))
            continue
        if desired.async_config is None and fn_state.async_config is not None:
            path = _fn(svc.name, fn_name) + "/async-config"
            out.append(Change("delete", "async config", target, (), "DELETE", path))
        if desired.provision_target is None and fn_state.provision_target:
            path = _fn(svc.name, fn_name) + "/provision-config"
            out.append(Change("delete", "provision config", target, (), "DELETE", path))
    for alias in current.aliases:
        if alias not in svc.aliases:
            path = f"{_svc(svc.name)}/aliases/{quote(alias)}"
            out.append(Change("delete", "alias", f"{svc.name}:{alias}", (), "DELETE", path))
    return out


__all__ = ["LATEST", "Change", "FunctionState", "ServiceState", "State", "plan"]
