"""CLI profiles: a named endpoint and API key, so `pyfc` works against a remote deployment.

They live in one TOML file, `$PYFC_CONFIG` or `$XDG_CONFIG_HOME/pyfc/config.toml`
(`~/.config/pyfc/config.toml`), readable by its owner only (0600) since it holds keys:

    [profiles.default]
    endpoint = "https://fc.example.com"
    api_key = "pyfc_..."
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pyfc.client import EXIT_USAGE, CliError

DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class Profile:
    name: str
    endpoint: str
    api_key: str


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("PYFC_CONFIG"):
        return Path(env["PYFC_CONFIG"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "pyfc" / "config.toml"


def load(path: Path) -> dict[str, Profile]:
    """Every profile in the file; none when there is no file; one clear line for a bad one."""
    if not path.exists():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"cannot read the profiles in {path}: {e}", EXIT_USAGE) from None
    out: dict[str, Profile] = {}
    for name, fields in doc.get("profiles", {}).items():
        if not isinstance(fields, dict):
            raise CliError(f"{path}: [profiles.{name}] is not a table", EXIT_USAGE)
        endpoint, key = fields.get("endpoint", ""), fields.get("api_key", "")
        if not isinstance(endpoint, str) or not isinstance(key, str):
            raise CliError(f"{path}: profiles.{name}: endpoint and api_key are strings", EXIT_USAGE)
        out[name] = Profile(name, endpoint, key)
    return out


def select(path: Path, name: str | None) -> Profile | None:
    """The profile named (it must exist), else `default` if the file has one."""
    profiles = load(path)
    if name is None:
        return profiles.get(DEFAULT_PROFILE)
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise CliError(
            f"no profile {name!r} in {path} (profiles: {known}); save one with "
            f"`pyfc login --endpoint URL --api-key KEY --profile {name}`",
            EXIT_USAGE,
        )
    return profiles[name]


def save(path: Path, profile: Profile) -> None:
    """Add or replace one profile; the file is created 0600 and kept so."""
    profiles = load(path)
    profiles[profile.name] = profile
    lines: list[str] = []
    for p in sorted(profiles.values(), key=lambda p: p.name):
        # A JSON string is a valid TOML basic string (same escapes).
        lines += [
            f"[profiles.{json.dumps(p.name)}]",
            f"endpoint = {json.dumps(p.endpoint)}",
            f"api_key = {json.dumps(p.api_key)}",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
