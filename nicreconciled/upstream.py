"""A source's long poll as an event source: every NIC re-checks when the metadata changed.

Some metadata services hold a request open until their answer changes (GCE's
``wait_for_change``). A source that can do this has ``LONG_POLL = True`` and
``wait_for_change(timeout)``: True when the document changed (the next fetch reads the new
one without another request), False when TIMEOUT passed without a change, FetchError or
MetadataError when the service gave no usable answer.

While the long poll answers, it is the steady state: a change reaches every NIC about as fast
as the service tells it, with one open request for the whole instance, and the reconcilers'
periodic re-checks stretch to ``STRETCH`` times ``resync_interval`` (a safety net, not the
way changes arrive). When it fails, the periodic re-checks are back at once (``healthy`` is
False) and the long poll retries with jittered backoff, capped at ``resync_interval``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol

import structlog

from nicreconciled.errors import FetchError, MetadataError

log = structlog.get_logger(__name__)

#: The reconcilers' idle re-check interval while the long poll is healthy, in resync_intervals.
STRETCH = 10
#: How long one long-poll request may stay open, at most (the service answers the unchanged
#: document when it passes; a quiet long poll costs one request per this many seconds).
MAX_WAIT = 60.0
#: First retry delay after a failed long poll.
FIRST_RETRY = 1.0


class LongPolling(Protocol):
    async def wait_for_change(self, timeout: float) -> bool: ...


def long_polls(source: object) -> bool:
    """True when SOURCE can hold a request open until its metadata changes."""
    return bool(getattr(source, "LONG_POLL", False)) and hasattr(source, "wait_for_change")


class ChangeWatch:
    """Runs SOURCE's long poll; ON_CHANGE() when the metadata changed."""

    def __init__(
        self,
        source: LongPolling,
        on_change: Callable[[], None],
        *,
        resync_interval: float,
        rng: random.Random | None = None,
    ) -> None:
        self._source = source
        self._on_change = on_change
        self._interval = resync_interval
        self._rng = rng if rng is not None else random.Random()
        #: The last long poll answered (changed or not): the periodic re-checks may stretch.
        self.healthy = False
        self.changes = 0

    @property
    def wait(self) -> float:
        return min(MAX_WAIT, self._interval)

    async def run(self) -> None:
        delay = FIRST_RETRY
        failing = False
        started = False
        while True:
            try:
                changed = await self._source.wait_for_change(self.wait)
            except Exception as exc:
                # FetchError and MetadataError are the service's; anything else is ours, and
                # must not end the watch while the periodic re-checks stay stretched.
                self.healthy = False
                if not failing:
                    expected = isinstance(exc, (FetchError, MetadataError))
                    (log.warning if expected else log.exception)(
                        "long_poll_failed", error=str(exc), retry_in=round(delay, 1)
                    )
                failing = True
                await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
                delay = min(delay * 2, self._interval)
                continue
            if failing:
                log.info("long_poll_back")
                failing = False
                # Changes made while it failed are seen now: look once.
                changed = True
            delay = FIRST_RETRY
            self.healthy = True
            if not started:
                # A change between the NICs' first fetches and the first long poll is in
                # no ETag we know of: look once.
                started = True
                log.debug("long_poll_started", wait=self.wait)
                self._on_change()
            elif changed:
                self.changes += 1
                log.info("metadata_changed", via="long_poll")
                self._on_change()
