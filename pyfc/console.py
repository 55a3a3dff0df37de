"""What every `pyfc` command shares: the settings, the connection options, the Api.

A command module defines click commands and registers them in `pyfc.cli`; a command that
talks to the gateway takes `@api_command` and receives the `Api` as its first argument.
Commands return their exit code.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from pyfc.client import Api, api_key
from shared.settings import Settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """The root group's options; the settings are built on first use (once)."""

    def __init__(self, data_dir: str | None) -> None:
        self.data_dir = data_dir
        self._settings: Settings | None = None

    def settings(self, **overrides: object) -> Settings:
        if self._settings is None or overrides:
            self._settings = Settings.from_env(None, data_dir=self.data_dir, **overrides)
        return self._settings


pass_context = click.make_pass_decorator(Context, ensure=False)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine to its end."""
    return asyncio.run(coro)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(f)


def api_command(f: Callable[..., int]) -> Callable[..., int]:
    """`--endpoint` and `--api-key` on a command; it gets the `Api` as first argument."""

    @click.option("--endpoint", help="gateway URL (PYFC_ENDPOINT)")
    @click.option("--api-key", help="API key (PYFC_API_KEY)")
    @functools.wraps(f)
    def wrapper(*args: Any, endpoint: str | None, api_key: str | None, **kwargs: Any) -> int:
        return f(make_api(endpoint, api_key), *args, **kwargs)

    return wrapper


def make_api(endpoint: str | None, key: str | None) -> Api:
    ctx = click.get_current_context().find_object(Context)
    settings = (ctx or Context(None)).settings()
    url = (
        endpoint
        or os.environ.get("PYFC_ENDPOINT")
        or f"http://{settings.http_host}:{settings.http_port}"
    )
    return Api(url, api_key(key, Path(settings.data_dir)))
