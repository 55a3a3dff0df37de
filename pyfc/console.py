"""What every `pyfc` command shares: the settings, the connection options, the Api.

A command module defines click commands and registers them in `pyfc.cli`; a command that
talks to the gateway takes `@api_command` and receives the `Api` as its first argument.
Commands return their exit code; errors are raised as `CliError` (one line, an exit code)
and printed by `pyfc.cli.main`.

Where the gateway and the key come from, first found wins: `--endpoint`/`--api-key`,
`PYFC_ENDPOINT`/`PYFC_API_KEY`, the profile (`--profile`, `PYFC_PROFILE`, else `default`
if saved), then the local stack (`PYFC_HTTP_HOST`/`PYFC_HTTP_PORT` and the key `pyfc up`
saved in the data directory).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from pyfc import profiles
from pyfc.client import Api, api_key
from shared.settings import Settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """The root group's options; the settings are built on first use (once)."""

    def __init__(
        self, data_dir: str | None, profile: str | None = None, debug: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.profile = profile
        self.debug = debug
        self._settings: Settings | None = None

    def settings(self, **overrides: object) -> Settings:
        if self._settings is None or overrides:
            self._settings = Settings.from_env(None, data_dir=self.data_dir, **overrides)
        return self._settings


pass_context = click.make_pass_decorator(Context, ensure=False)


def current() -> Context:
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(Context) if ctx else None
    return found or Context(None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine to its end."""
    return asyncio.run(coro)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(f)


def api_command(f: Callable[..., int]) -> Callable[..., int]:
    """`--endpoint` and `--api-key` on a command; it gets the `Api` as first argument."""

    @click.option("--endpoint", help="gateway URL (PYFC_ENDPOINT, or the profile's)")
    @click.option("--api-key", help="API key (PYFC_API_KEY, or the profile's)")
    @functools.wraps(f)
    def wrapper(*args: Any, endpoint: str | None, api_key: str | None, **kwargs: Any) -> int:
        return f(make_api(endpoint, api_key), *args, **kwargs)

    return wrapper


def make_api(endpoint: str | None, key: str | None) -> Api:
    ctx = current()
    name = ctx.profile or os.environ.get("PYFC_PROFILE") or None
    profile = profiles.select(profiles.config_path(), name)
    settings = ctx.settings()
    if endpoint:
        url, source = endpoint, "from --endpoint"
    elif os.environ.get("PYFC_ENDPOINT"):
        url, source = os.environ["PYFC_ENDPOINT"], "from PYFC_ENDPOINT"
    elif profile and profile.endpoint:
        url, source = profile.endpoint, f"from profile {profile.name!r}"
    else:
        url = f"http://{settings.http_host}:{settings.http_port}"
        source = "the local stack's address: PYFC_HTTP_HOST/PYFC_HTTP_PORT"
    key = key or os.environ.get("PYFC_API_KEY") or (profile.api_key if profile else None)
    return Api(url, api_key(key, Path(settings.data_dir)), source)
