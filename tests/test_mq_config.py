"""The `mq` trigger's config rules as pure functions: exchange names and who may use them,
topic patterns, batch bounds, and an `amqpUrl` password never shown, kept on a PUT."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import BadRequest, Forbidden
from shared.trigger_types import (
    SECRET_MASK,
    Limits,
    check_exchange,
    public_config,
    restore_secrets,
    validate,
)

LIMITS = Limits(max_event_bytes=6 << 20, namespace="pyfc", tenant="acme")


def mq(**config: Any) -> dict[str, Any]:
    return {"exchange": "orders", **config}


@pytest.mark.parametrize(
    ("exchange", "patterns", "error"),
    [
        ("orders", (), None),
        ("acme.orders", ("{tenant}.*",), None),
        ("shared.events", ("{tenant}.*", "shared.events"), None),
        ("other.orders", ("{tenant}.*",), Forbidden),
        ("orders", ("{tenant}.*",), Forbidden),
        ("pyfc.invoke", (), Forbidden),
        ("pyfc.control", ("*",), Forbidden),
        ("amq.topic", (), Forbidden),
        ("pyfcish", (), None),  # only the namespace's own prefix `pyfc.` is the platform's
        ("", (), BadRequest),
        ("has space", (), BadRequest),
        ("x" * 256, (), BadRequest),
        ("ünï", (), BadRequest),
    ],
)
def test_who_may_use_an_exchange(
    exchange: str, patterns: tuple[str, ...], error: type[Exception] | None
) -> None:
    limits = Limits(max_event_bytes=1, namespace="pyfc", mq_exchanges=patterns, tenant="acme")
    if error is None:
        check_exchange(exchange, limits)
    else:
        with pytest.raises(error, match="exchange"):
            check_exchange(exchange, limits)


@pytest.mark.parametrize(
    ("config", "error", "names"),
    [
        (mq(routingKey="a.*.c"), None, ""),
        (mq(routingKey="#"), None, ""),
        (mq(routingKey="order.#.eu"), None, ""),
        (mq(routingKey=""), None, ""),  # the empty key (direct-style) is a valid binding
        (mq(routingKey="a..b"), BadRequest, "routingKey"),
        (mq(routingKey="a.b*"), BadRequest, "routingKey"),
        (mq(routingKey="#x"), BadRequest, "routingKey"),
        (mq(routingKey="k" * 256), BadRequest, "routingKey"),
        (mq(batchSize=0), BadRequest, "batchSize"),
        (mq(batchSize=101), BadRequest, "batchSize"),
        (mq(batchSize="2"), BadRequest, "batchSize"),
        (mq(batchWindowSeconds=-1), BadRequest, "batchWindowSeconds"),
        (mq(batchWindowSeconds=61), BadRequest, "batchWindowSeconds"),
        (mq(amqpUrl="http://h/"), BadRequest, "amqpUrl"),
        (mq(amqpUrl="amqp://"), BadRequest, "amqpUrl"),
        (mq(exchange="pyfc.invoke"), Forbidden, "triggerConfig.exchange"),
        # On the tenant's own broker the platform's names mean nothing.
        (mq(exchange="pyfc.invoke", amqpUrl="amqp://u:p@mq.example:5672/"), None, ""),
        (mq(exchange="bad name", amqpUrl="amqp://mq.example/"), BadRequest, "exchange"),
        ({"routingKey": "#"}, BadRequest, "exchange"),
        (mq(queue="x"), BadRequest, "queue"),
    ],
)
def test_mq_config_rules(config: dict[str, Any], error: type[Exception] | None, names: str) -> None:
    if error is None:
        stored = validate("mq", config, LIMITS)
        assert stored["exchange"] == config["exchange"]
        assert {"routingKey", "batchSize", "batchWindowSeconds", "amqpUrl"} <= set(stored)
    else:
        with pytest.raises(error, match=names):
            validate("mq", config, LIMITS)


def test_defaults_filled_in() -> None:
    assert validate("mq", mq(), LIMITS) == {
        "exchange": "orders",
        "routingKey": "#",
        "batchSize": 1,
        "batchWindowSeconds": 0.0,
        "amqpUrl": "",
    }


def test_amqp_password_never_shown_and_kept_on_put() -> None:
    stored = validate("mq", mq(amqpUrl="amqp://bob:s3cret@mq.example:5671/vh"), LIMITS)
    shown = public_config(stored)
    assert "s3cret" not in str(shown)
    assert shown["amqpUrl"] == f"amqp://bob:{SECRET_MASK}@mq.example:5671/vh"
    # GET's config sent back (another field changed) keeps the stored password...
    back = restore_secrets({**shown, "batchSize": 5}, stored)
    assert back["amqpUrl"] == stored["amqpUrl"] and back["batchSize"] == 5
    # ...but not for another host or user, and a new password replaces it.
    other = f"amqp://bob:{SECRET_MASK}@evil.example:5671/vh"
    assert restore_secrets({**shown, "amqpUrl": other}, stored)["amqpUrl"] == other
    new = "amqp://bob:n3w@mq.example:5671/vh"
    assert restore_secrets({**shown, "amqpUrl": new}, stored)["amqpUrl"] == new
    # No password, nothing to hide; other types pass through.
    plain = validate("mq", mq(amqpUrl="amqp://mq.example/"), LIMITS)
    assert public_config(plain) == plain
    assert public_config({"cronExpression": "@every 1m"}) == {"cronExpression": "@every 1m"}
