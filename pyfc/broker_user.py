"""`pyfc up`'s broker user: not RabbitMQ's `guest`, but a user of its own with a random
password kept in the data dir (0600), made on the local node with `rabbitmqctl`.

Only when PYFC_AMQP_URL is the default (guest on 127.0.0.1:5672): a URL of the operator's
is used as it is. The user is `pyfc` (`pyfc-<namespace>` for another namespace, so stacks
of several namespaces on one broker do not change each other's password). The password
goes to rabbitmqctl on its standard input, never on a command line (which every local
user may read in /proc).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import aio_pika
from yarl import URL

from shared.broker import CONNECT_TIMEOUT
from shared.errors import Unavailable
from shared.settings import DEFAULT_AMQP_URL

PASSWORD_FILE = "broker-password"
CTL_TIMEOUT = 60.0
USER_EXISTS = 70  # rabbitmqctl's exit status when add_user finds the user


def user_name(namespace: str) -> str:
    return "pyfc" if namespace == "pyfc" else f"pyfc-{namespace}"


def broker_url(user: str, password: str) -> str:
    quoted = urllib.parse.quote(password, safe="")
    return f"amqp://{urllib.parse.quote(user, safe='')}:{quoted}@127.0.0.1:5672/"


def kept_password(data_dir: Path) -> str:
    """The password in `{data_dir}/broker-password`, made (0600, atomically) if missing."""
    path = data_dir / PASSWORD_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".broker-", dir=data_dir)  # 0600
        try:
            os.write(fd, (secrets.token_urlsafe(24) + "\n").encode())
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another `pyfc up` made it first: use theirs
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


def _ctl(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise Unavailable(
            "pyfc up makes a broker user of its own on the local RabbitMQ with rabbitmqctl, "
            "which is not installed here; set PYFC_AMQP_URL to a broker user's URL instead"
        )
    try:
        return subprocess.run(
            [ctl, "-q", *args],
            input=None if password is None else password + "\n",
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"rabbitmqctl {args[0]} failed: {e}") from e


def ensure_user(user: str, password: str) -> None:
    """Make `user` with `password` (or set it, if the user exists) with every right on
    the vhost `/`. Slow (rabbitmqctl: seconds a call); run only when logging in failed."""
    added = _ctl("add_user", user, password=password)
    if added.returncode == USER_EXISTS:
        added = _ctl("change_password", user, password=password)
    if added.returncode == 0:
        added = _ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    if added.returncode != 0:
        why = (added.stderr or added.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(
            f"cannot make the broker user {user!r} with rabbitmqctl ({why[0]}); run pyfc up "
            "as root (or the rabbitmq user), or set PYFC_AMQP_URL to a broker user's URL"
        )


async def _logs_in(url: str) -> bool:
    """Whether `url`'s user logs in; Unavailable if the broker does not answer at all."""
    # Closed whatever happens: a connection that failed to open holds a close to await.
    connection = aio_pika.Connection(URL(url))
    try:
        await connection.connect(timeout=CONNECT_TIMEOUT)
    except aio_pika.exceptions.ProbableAuthenticationError:
        return False
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
        raise Unavailable(
            f"cannot reach RabbitMQ at 127.0.0.1:5672 ({type(e).__name__}: {e}); is it "
            "running? start it with `rabbitmq-server -detached` or set PYFC_AMQP_URL"
        ) from e
    finally:
        await connection.close()
    return True


async def local_broker_url(amqp_url: str, data_dir: Path, namespace: str) -> tuple[str, bool]:
    """The URL `pyfc up`'s roles use, and whether the user was made (or its password set)
    now. `amqp_url` other than the default is returned as it is."""
    if amqp_url != DEFAULT_AMQP_URL:
        return amqp_url, False
    user = user_name(namespace)
    password = kept_password(data_dir)
    url = broker_url(user, password)
    if await _logs_in(url):
        return url, False
    await asyncio.to_thread(ensure_user, user, password)
    return url, True
