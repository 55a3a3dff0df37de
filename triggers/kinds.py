"""The trigger kinds this role runs, each a factory of its source (one process per kind)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.settings import Settings
from shared.store import Store
from triggers.adapter import Emitter, Source
from triggers.log import LogSource
from triggers.metrics import TriggerMetrics
from triggers.mq import MqSource
from triggers.s3 import ObjectSource
from triggers.timer import TimerSource

SourceFactory = Callable[[Settings, Store, Emitter, TriggerMetrics], Awaitable[Source]]


async def _timer(
    settings: Settings, store: Store, emitter: Emitter, metrics: TriggerMetrics
) -> Source:
    return await TimerSource.open(
        store,
        emitter,
        metrics,
        catch_up_window=settings.timer_catch_up_seconds,
        catch_up_limit=settings.timer_catch_up_limit,
    )


async def _s3(
    settings: Settings, store: Store, emitter: Emitter, metrics: TriggerMetrics
) -> Source:
    return await ObjectSource.open(settings, emitter, metrics)


async def _mq(
    settings: Settings, store: Store, emitter: Emitter, metrics: TriggerMetrics
) -> Source:
    return MqSource(settings, store, emitter, metrics)


async def _log(
    settings: Settings, store: Store, emitter: Emitter, metrics: TriggerMetrics
) -> Source:
    return await LogSource.open(settings, emitter, metrics)


# `pyfc up` runs one process of each; `pyfc trigger <kind>` runs one.
KINDS: dict[str, SourceFactory] = {"timer": _timer, "s3": _s3, "mq": _mq, "log": _log}
