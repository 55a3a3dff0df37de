"""`pyfc up`'s broker user (pyfc/broker_user.py): its own random password, not guest."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import aio_pika
import pytest

from pyfc.broker_user import broker_url, kept_password, local_broker_url, user_name
from shared.settings import DEFAULT_AMQP_URL


def test_names_and_urls() -> None:
    assert user_name("pyfc") == "pyfc"
    assert user_name("t1") == "pyfc-t1"
    assert broker_url("pyfc", "a/b:c@d") == "amqp://pyfc:a%2Fb%3Ac%40d@127.0.0.1:5672/"


def test_the_password_is_kept_private_and_stable(tmp_path: Path) -> None:
    first = kept_password(tmp_path)
    assert len(first) >= 32 and kept_password(tmp_path) == first
    assert (tmp_path / "broker-password").stat().st_mode & 0o777 == 0o600


async def test_an_operators_url_is_used_as_it_is(tmp_path: Path) -> None:
    url = "amqp://someone:pw@192.0.2.1:5672/"
    assert await local_broker_url(url, tmp_path, "x") == (url, False)
    assert not (tmp_path / "broker-password").exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl as root"
)
async def test_the_user_is_made_once_and_remade_when_its_password_no_longer_works(
    tmp_path: Path,
) -> None:
    namespace = f"bu{uuid.uuid4().hex[:8]}"
    user = user_name(namespace)
    try:
        url, made = await local_broker_url(DEFAULT_AMQP_URL, tmp_path, namespace)
        assert made and f"//{user}:" in url and "guest" not in url
        await (await aio_pika.connect(url, timeout=10)).close()
        assert await local_broker_url(DEFAULT_AMQP_URL, tmp_path, namespace) == (url, False)
        # Someone changed it on the broker: the kept password is set again.
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "change_password", user],
            input="other\n",
            text=True,
            check=True,
            capture_output=True,
        )
        assert await local_broker_url(DEFAULT_AMQP_URL, tmp_path, namespace) == (url, True)
        await (await aio_pika.connect(url, timeout=10)).close()
    finally:
        await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-q", "delete_user", user], capture_output=True
        )
