"""The kernel watch: rtnetlink notifications as an event source, like udev's.

It turns notifications (links, addresses, rules, routes; both families) into "look at this
NIC's kernel state" triggers for the daemon, which debounces them per NIC; the reconciler
decides (keeper.py) and the applier acts. Nothing here judges: a notification is only a
reason to compare the kernel with the promise, which is how our own applies and the
managers' DHCP/RA churn end up as "still holds" instead of drift.

A notification concerns a NIC when it names the NIC's link (address, link, route by its
output interface) or one of the NIC's tables (rule, route); not table local, which every
link shares and the kernel changes with every address anywhere: a NIC's local routes
concern it by their output interface. On a busy host (a container
runtime changing 1,000 routes a second) nearly every notification concerns no NIC of ours:
``rtnl.parse_event`` reads only the header fields and the table, and the daemon drops them
with two dictionary look-ups.

Lost notifications (the socket overflowed: ENOBUFS) mean the stream can no longer be
trusted: every managed NIC is looked at again (``on_lost``), never a heal missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from nicreconciled.system import rtnl

log = structlog.get_logger(__name__)


class KernelWatch:
    def __init__(
        self, on_events: Callable[[list[rtnl.Event]], None], on_lost: Callable[[], None]
    ) -> None:
        self._on_events = on_events
        self._on_lost = on_lost
        self._monitor: rtnl.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.lost = 0  # overflows since start (a benchmark's and a test's figure)

    def start(self) -> bool:
        """Subscribe; False (logged once) when the kernel refuses: no drift is then seen
        until a SIGHUP, the periodic re-check or a metadata change."""
        try:
            self._monitor = rtnl.Monitor()
        except OSError as exc:
            log.warning("kernel_watch_unavailable", error=str(exc))
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._monitor.fileno(), self._readable)
        return True

    def _readable(self) -> None:
        assert self._monitor is not None
        try:
            events = self._monitor.read()
        except rtnl.EventsLost:
            self.lost += 1
            log.warning("kernel_events_lost", lost=self.lost)
            self._on_lost()
            return
        except OSError as exc:
            log.warning("kernel_watch_error", error=str(exc))
            return
        if events:
            self._on_events(events)

    def stop(self) -> None:
        if self._monitor is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None
