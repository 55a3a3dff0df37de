from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.skips import (  # noqa: F401 (hooks: skips counted, and loud on CI)
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from tests.stack import Stack


@pytest.fixture(scope="session", autouse=True)
def _open_dirs() -> Iterator[None]:
    """Removes what `tests.helpers.open_dir` made, once the session is over."""
    yield
    from tests.helpers import remove_open_dirs  # helpers imports this module

    remove_open_dirs()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A running stack (gateway, dispatcher, one worker) shared by a module's tests."""
    s = Stack(tmp_path_factory.mktemp(f"stack-{request.param}"), database=request.param)
    try:
        s.start()
        yield s
    finally:
        s.stop()


StartStack = Callable[..., Stack]

# A fault test (a role killed, connections cut, a takeover) run on SQLite and on PostgreSQL,
# the multi-node store: a marked subset, one or two per kind of fault, so the suite keeps
# within its time (`pytest -m postgres_faults` runs just them).
on_both_databases = pytest.mark.parametrize(
    "fresh_stack",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres_faults)],
    indirect=True,
)


@pytest.fixture
def fresh_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartStack]:
    """Start a private stack for a test that kills, reconnects or reconfigures roles: SQLite,
    or the database a test's `on_both_databases` parameter names.

    `fresh_stack(workers=1, worker_slots=4, env={...})`; stopped and cleaned up after the test.
    """
    started: list[Stack] = []
    database = getattr(request, "param", "sqlite")

    def start(workers: int = 1, worker_slots: int = 4, env: dict[str, str] | None = None) -> Stack:
        stack = Stack(
            tmp_path / f"stack-{len(started)}", worker_slots=worker_slots, database=database
        )
        stack.env.update(env or {})
        started.append(stack)  # before start(): a half-started stack is stopped too
        return stack.start(workers=workers)

    yield start
    for stack in started:
        stack.stop()


class Client:
    """A tenant's view of the HTTP API."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, key: str, tenant: str = ""
    ) -> None:
        self.session, self.base, self.key, self.tenant = session, base, key, tenant

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, str], bytes]:
        h = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        async with self.session.request(method, self.base + path, headers=h, **kw) as r:
            return r.status, dict(r.headers), await r.read()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
def tenant(stack: Stack) -> tuple[str, str]:
    return stack.create_tenant()


@pytest.fixture
def client(session: aiohttp.ClientSession, stack: Stack, tenant: tuple[str, str]) -> Client:
    return Client(session, stack.url, tenant[1], tenant[0])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
