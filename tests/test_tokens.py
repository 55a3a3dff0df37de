"""Invoke tokens: what verifies, and every way a token must not."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from shared import tokens
from shared.errors import BadRequest, Unauthorized
from shared.settings import Settings
from shared.tokens import InvokeGrant

SECRET = b"s" * 32
NOW = 1_700_000_000.0


def mint(secret: bytes = SECRET, **fields: object) -> str:
    base: dict[str, object] = {
        "tenant": "acme",
        "trace_id": "3f2a9c1e-7b6d-4e1f-9a2b-1234567890ab",
        "hops": 3,
        "origin": "function:svc/fn",
        "expires_at": NOW + 30.2,
    }
    return tokens.mint(secret, **(base | fields))  # type: ignore[arg-type]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_round_trip() -> None:
    token = mint()
    assert token.startswith("pyfc1.") and len(token) < 250
    assert all(c.isalnum() or c in "-_." for c in token)  # URL- and header-safe as is
    grant = tokens.verify(SECRET, token, NOW)
    assert grant == InvokeGrant(
        "acme", "3f2a9c1e-7b6d-4e1f-9a2b-1234567890ab", 3, "function:svc/fn", int(NOW) + 31
    )
    assert tokens.looks_like_token(token)
    assert not tokens.looks_like_token("pyfc_" + "k" * 40)  # an API key


@pytest.mark.parametrize(
    ("offset", "valid"), [(-100.0, True), (30.9, True), (31.0, False), (3600.0, False)]
)
def test_expiry(offset: float, valid: bool) -> None:
    token = mint()  # expires at ceil(NOW + 30.2) = NOW + 31
    if valid:
        assert tokens.verify(SECRET, token, NOW + offset).tenant == "acme"
    else:
        with pytest.raises(Unauthorized, match="expired"):
            tokens.verify(SECRET, token, NOW + offset)


def test_wrong_secret() -> None:
    with pytest.raises(Unauthorized, match="signature"):
        tokens.verify(b"t" * 32, mint(), NOW)


def _tampered_payloads() -> list[str]:
    """Tokens whose payload was changed after signing (the MAC kept)."""
    token = mint()
    _, payload, mac = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    out = []
    for index, value in [(0, "other"), (2, 0), (3, "http"), (4, fields[4] + 3600)]:
        changed = list(fields)
        changed[index] = value
        out.append(f"pyfc1.{b64(json.dumps(changed).encode())}.{mac}")
    # One flipped character of the payload, and one of the MAC.
    out.append(f"pyfc1.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{mac}")
    out.append(f"pyfc1.{payload}.{mac[:-2]}{'A' if mac[-2] != 'A' else 'B'}{mac[-1]}")
    return out


@pytest.mark.parametrize("token", _tampered_payloads())
def test_tampering_is_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        tokens.verify(SECRET, token, NOW)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "pyfc1.",
        "pyfc1..",
        "pyfc1.abc",
        "pyfc_notatoken",
        "Bearer pyfc1.x.y",
        "pyfc1.e30." + "A" * 43,
        "pyfc1.\u00e9\u00e9." + "A" * 43,  # not ASCII: compare_digest would raise TypeError
        "pyfc1." + "A" * 5000 + "." + "A" * 43,
        "pyfc1.x.y.z",
    ],
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(Unauthorized):
        tokens.verify(SECRET, garbage, NOW)


def test_signed_but_undecodable_payload_is_refused() -> None:
    # Only the holder of the secret can make one; still a clean 401, not a 500.
    signed = "pyfc1." + b64(b'{"not": "an array"}')
    token = f"{signed}.{tokens._mac(SECRET, signed.encode())}"
    with pytest.raises(Unauthorized, match="undecodable"):
        tokens.verify(SECRET, token, NOW)


# --- the secret --------------------------------------------------------------------------


def test_secret_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"PYFC_DATA_DIR": str(tmp_path), "PYFC_SECRET": "x" * 32})
    assert settings.token_secret() == b"x" * 32
    assert not (tmp_path / "secret").exists()


def test_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="PYFC_SECRET"):
        Settings.from_env({"PYFC_DATA_DIR": str(tmp_path), "PYFC_SECRET": "short"})


def test_secret_file_is_created_once_private_and_shared(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings.from_env({"PYFC_DATA_DIR": str(data)})
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(settings.token_secret())) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results[0]) >= 32
    path = data / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data.iterdir()] == ["secret"]  # no temporary files left behind
    again = Settings.from_env({"PYFC_DATA_DIR": str(data)}).token_secret()
    assert again == results[0]


def test_roles_started_by_pyfc_up_share_the_secret(tmp_path: Path) -> None:
    from_env = Settings.from_env({"PYFC_DATA_DIR": str(tmp_path), "PYFC_SECRET": "y" * 40})
    child = Settings.from_env(from_env.child_environ())
    assert child.token_secret() == from_env.token_secret()
    from_file = Settings.from_env({"PYFC_DATA_DIR": str(tmp_path)})
    assert "PYFC_SECRET" not in {k for k, v in from_file.child_environ().items() if v}
    assert Settings.from_env(from_file.child_environ()).token_secret() == from_file.token_secret()


def test_damaged_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("short\n")
    os.chmod(tmp_path / "secret", 0o600)
    with pytest.raises(BadRequest, match="secret"):
        Settings.from_env({"PYFC_DATA_DIR": str(tmp_path)}).token_secret()


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:9000"),
        ({"PYFC_HTTP_PORT": "9100"}, "http://127.0.0.1:9100"),
        ({"PYFC_HTTP_HOST": "0.0.0.0", "PYFC_HTTP_PORT": "80"}, "http://127.0.0.1:80"),
        ({"PYFC_HTTP_HOST": "::"}, "http://[::1]:9000"),
        ({"PYFC_HTTP_HOST": "fc.internal"}, "http://fc.internal:9000"),
        ({"PYFC_GATEWAY_URL": "https://fc.example/"}, "https://fc.example"),
    ],
)
def test_gateway_url(tmp_path: Path, env: dict[str, str], url: str) -> None:
    settings = Settings.from_env({"PYFC_DATA_DIR": str(tmp_path), **env})
    assert settings.effective_gateway_url == url


def test_lineage_mark_round_trip_and_is_no_credential() -> None:
    token = mint(hops=5)
    mark = tokens.mark_of(token)
    assert mark.startswith("pyfcm1.") and len(mark) < 250
    grant = tokens.read_mark(SECRET, mark)
    assert (grant.tenant, grant.hops, grant.origin) == ("acme", 5, "function:svc/fn")
    # Long after the token expired, the mark still reads (an event may come late).
    assert tokens.read_mark(SECRET, tokens.mark_of(mint(expires_at=NOW - 3600))).hops == 3
    # A mark is not an invoke token, and does not become one.
    with pytest.raises(Unauthorized):
        tokens.verify(SECRET, mark, NOW)
    with pytest.raises(Unauthorized):
        tokens.verify(SECRET, "pyfc1." + mark.removeprefix("pyfcm1."), NOW)


def test_forged_or_foreign_marks_are_refused() -> None:
    mark = tokens.mark_of(mint())
    payload, hashed = mark.removeprefix("pyfcm1.").rsplit(".", 1)
    lower = b64(json.dumps(["acme", "t", 0, "function:svc/fn", 0]).encode())
    for forged in [
        f"pyfcm1.{lower}.{hashed}",  # a shorter chain claimed with another mark's hash
        f"pyfcm1.{payload}.{hashed[:-1]}A"
        if hashed[-1] != "A"
        else f"pyfcm1.{payload}.{hashed[:-1]}B",
        tokens.mark_of(mint(secret=b"o" * 32)),  # another deployment's
        "pyfcm1..",
        "x" * 100,
        "pyfcm1.é.x",
    ]:
        with pytest.raises(Unauthorized):
            tokens.read_mark(SECRET, forged)
