"""The daemon's side of keeping the kernel true: what it hears -> which NIC to look at.

Two event sources, as udev is one for NICs coming and going: the kernel watch's rtnetlink
notifications (kernelwatch.py) and the network manager's bus name (system/busname.py). A
notification names a link or a table; the NIC that owns it is looked at once its burst is
over (a burst of deletions is one look, one heal); a route in table local, which every link
shares, concerns a NIC by its link only. A manager that comes back is followed by a look at
every NIC. What a look finds, and what is done about it, is the reconciler's and its
keeper's business (reconciler.py, keeper.py); nothing here decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog

from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.render.addressing import LOCAL_TABLE
from nicreconciled.system import kernelstate, rtnl

log = structlog.get_logger(__name__)

#: Kernel notifications about one NIC are gathered this long before its state is read (a
#: burst of deletions is one look, one heal), and never held longer than DEBOUNCE_MAX.
DEBOUNCE = 0.05
DEBOUNCE_MAX = 0.25
#: The D-Bus name of the network manager each backend's files are loaded by.
MANAGER_BUS_NAMES = {
    "networkd": "org.freedesktop.network1",
    "NetworkManager": "org.freedesktop.NetworkManager",
}


class KernelSide:
    """Looks at the daemon's RECONCILERS (by MAC; the daemon's own dict) when the kernel or
    the manager says something changed; none once STOPPED() is true."""

    def __init__(self, reconcilers: Mapping[str, Reconciler], stopped: Callable[[], bool]) -> None:
        self.reconcilers = reconcilers
        self._stopped = stopped
        #: Per MAC: the pending kernel look (timer), when it is due and when its gathering
        #: started.
        self._rechecks: dict[str, tuple[asyncio.TimerHandle, float, float]] = {}
        self._verifies: set[asyncio.Task[None]] = set()

    def recheck(self, mac: str, delay: float) -> None:
        """Look at MAC's kernel state in DELAY s; 0: once its burst of notifications is over
        (DEBOUNCE after the latest, DEBOUNCE_MAX after the first). One look pending per NIC:
        the earlier wins (a look that finds the NIC pending schedules the next itself)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self._rechecks.get(mac)
        if delay > 0:
            at = first = now + delay
            if pending is not None and pending[1] <= at:
                return
        else:
            gathering = pending is not None and pending[2] <= now
            first = pending[2] if pending is not None and gathering else now
            at = min(now + DEBOUNCE, first + DEBOUNCE_MAX)
        if pending is not None:
            pending[0].cancel()
        self._rechecks[mac] = (loop.call_at(at, self._due, mac), at, first)

    def recheck_all(self) -> None:
        for mac in self.reconcilers:
            self.recheck(mac, 0.0)

    def _due(self, mac: str) -> None:
        self._rechecks.pop(mac, None)
        rec = self.reconcilers.get(mac)
        if rec is None or self._stopped():
            return
        task = asyncio.create_task(rec.verify_kernel(), name=f"verify-{mac}")
        self._verifies.add(task)
        task.add_done_callback(self._verified)

    def _verified(self, task: asyncio.Task[None]) -> None:
        self._verifies.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("verify_crashed", error=repr(task.exception()))

    def on_events(self, events: list[rtnl.Event]) -> None:
        """Notifications -> the NICs they concern (by link or by table), each looked at."""
        by_index: dict[int, str] = {}
        by_table: dict[int, str] = {}
        for mac, rec in self.reconcilers.items():
            promised = rec.keeper.promise
            if promised is None:
                continue
            if rec.ifindex is not None:
                by_index[rec.ifindex] = mac
            # Table local is every link's (the kernel adds and removes routes there with every
            # address anywhere): a change there concerns a NIC by its link alone.
            for table in promised.tables - {LOCAL_TABLE}:
                by_table[table] = mac
        if not by_index:
            return
        touched: set[str] = set()
        for event in events:
            if event.kind == "link" and event.deleted:
                continue  # a detach: udev's remove event handles it
            found = by_index.get(event.ifindex) if event.ifindex is not None else None
            if found is None and event.table is not None:
                found = by_table.get(event.table)
            if found is None:
                continue
            touched.add(found)
            keeper = self.reconcilers[found].keeper
            if not event.deleted and not keeper.held:
                # Pending after an apply: what arrives counts as seen (keeper.py).
                for item in kernelstate.describe_event_items(event):
                    keeper.saw(item)
        for mac in touched:
            self.recheck(mac, 0.0)

    def on_manager(self, name: str, owned: bool, ctx: Context) -> None:
        """The network manager's bus name went away or came back (a restart)."""
        ctx.manager_away = not owned
        if not owned:
            log.warning("network_manager_gone", bus_name=name)
            return
        log.info("network_manager_back", bus_name=name, nics=len(self.reconcilers))
        for rec in self.reconcilers.values():
            rec.manager_restarted()

    async def shutdown(self) -> None:
        for handle, _at, _first in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()
        for task in list(self._verifies):
            task.cancel()
        await asyncio.gather(*self._verifies, return_exceptions=True)
