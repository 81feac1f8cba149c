"""pyudev netlink monitor for the ``net`` subsystem, adapted to the asyncio loop (no threads)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pyudev
import structlog

log = structlog.get_logger(__name__)

Action = Literal["add", "remove", "move", "change"]


@dataclass(frozen=True)
class NicEvent:
    action: Action
    ifname: str
    ifindex: int | None
    #: For "move" (rename): the previous name, when the event carries it.
    old_ifname: str | None = None


def to_event(device: Any) -> NicEvent | None:
    """Translate a pyudev Device; None for actions we do not care about (bind, ...)."""
    action = device.action
    if action not in ("add", "remove", "move", "change"):
        return None
    ifname = device.get("INTERFACE") or device.sys_name
    if not ifname:
        return None
    try:
        ifindex: int | None = int(device.get("IFINDEX", ""))
    except ValueError:
        ifindex = None
    old = device.get("DEVPATH_OLD")
    old_name = old.rsplit("/", 1)[-1] if old else None
    return NicEvent(action, ifname, ifindex, old_name)


class UdevWatcher:
    """Start it before scanning present NICs: an attach between the two is then not lost."""

    def __init__(self, source: Literal["udev", "kernel"]) -> None:
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._monitor.filter_by("net")
        # Large bursts (dozens of NICs at once) must not overflow the socket buffer.
        self._monitor.set_receive_buffer_size(8 * 1024 * 1024)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, callback: Callable[[NicEvent], None]) -> None:
        loop = asyncio.get_running_loop()
        self._monitor.start()
        self._loop = loop

        def readable() -> None:
            # Drain everything queued; poll(timeout=0) never blocks the loop.
            while True:
                try:
                    device = self._monitor.poll(timeout=0)
                except OSError as exc:
                    log.warning("udev_read_failed", error=str(exc))
                    return
                if device is None:
                    return
                event = to_event(device)
                if event is not None:
                    callback(event)

        loop.add_reader(self._monitor.fileno(), readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._loop = None
