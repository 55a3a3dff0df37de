"""Pure rules of the function config API: destination grammar, async config partial update."""

from __future__ import annotations

import pytest

from gateway.bodies import AsyncConfigUpdate, parse
from gateway.function_config_api import check_destination, merge_async_config
from shared.errors import BadRequest
from shared.models import AsyncConfig, DestinationConfig, DestinationTarget


@pytest.mark.parametrize(
    ("destination", "ok"),
    [
        ("function:svc/fn", True),
        ("function:svc.LATEST/fn", True),
        ("function:svc.3/fn", True),
        ("function:svc.prod/fn-2", True),
        ("mq:events", True),
        ("mq:my.events/orders.failed", True),
        ("mq:ex/", True),
        ("function:svc.0/fn", False),
        ("function:svc.a.b/fn", False),
        ("mq:amq.fanout", False),
        ("mq:pyfc.work", False),
        ("mq:pyfc", False),
        ("mq:pyfcx.events", True),
        ("mq:ex/a b", False),
        ("mqs:ex", False),
    ],
)
def test_destination_grammar(destination: str, ok: bool) -> None:
    if ok:
        check_destination(destination, "pyfc")
    else:
        with pytest.raises(BadRequest):
            check_destination(destination, "pyfc")


SUCCESS = DestinationTarget(destination="function:s/f")
FAILURE = DestinationTarget(destination="mq:x")
BOTH = AsyncConfig(
    max_async_retry_attempts=1,
    destination_config=DestinationConfig(on_success=SUCCESS, on_failure=FAILURE),
)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b"{}", BOTH),
        (b'{"maxAsyncRetryAttempts": 0}', AsyncConfig(
            max_async_retry_attempts=0, destination_config=BOTH.destination_config)),
        (b'{"destinationConfig": {}}', BOTH),
        (b'{"destinationConfig": {"onSuccess": null}}', AsyncConfig(
            max_async_retry_attempts=1, destination_config=DestinationConfig(on_failure=FAILURE))),
        (b'{"destinationConfig": {"onFailure": {"destination": "mq:y"}}}', AsyncConfig(
            max_async_retry_attempts=1, destination_config=DestinationConfig(
                on_success=SUCCESS, on_failure=DestinationTarget(destination="mq:y")))),
        (b'{"maxAsyncEventAgeInSeconds": 5}', AsyncConfig(
            max_async_retry_attempts=1, max_async_event_age_in_seconds=5,
            destination_config=BOTH.destination_config)),
    ],
)  # fmt: skip
def test_async_config_put_changes_only_what_is_given(body: bytes, want: AsyncConfig) -> None:
    assert merge_async_config(BOTH, parse(body, AsyncConfigUpdate)) == want
