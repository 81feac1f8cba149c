"""pyudev netlink monitor for the ``net`` subsystem, adapted to the asyncio loop (no threads)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pyudev
import structlog

log = structlog.get_logger(__name__)

Action = Literal["add", "remove", "move", "change"]

#: udev properties that give a NIC to another manager. ID_NET_MANAGED_BY (systemd 255) names
#: the one daemon that may manage the link (networkd: io.systemd.Network, NetworkManager:
#: org.freedesktop.NetworkManager); NM_UNMANAGED=1 is what azure-vm-utils sets on accelerated
#: networking VFs and CNIs on the interfaces they attach. NM_UNMANAGED speaks to
#: NetworkManager only: netplan's own udev rules (90-netplan.rules, 0.106 and 1.1) set it on
#: every definition netplan renders for networkd, ours included, so that NetworkManager keeps
#: off them; on networkd it says nothing about who else manages the NIC.
OWNERSHIP_KEYS = ("ID_NET_MANAGED_BY", "NM_UNMANAGED")
#: The ID_NET_MANAGED_BY value of each backend our files are loaded by.
NETWORKD = "io.systemd.Network"
NETWORKMANAGER = "org.freedesktop.NetworkManager"


@dataclass(frozen=True)
class NicEvent:
    action: Action
    ifname: str
    ifindex: int | None
    #: For "move" (rename): the previous name, when the event carries it.
    old_ifname: str | None = None
    #: The event's OWNERSHIP_KEYS properties (set by udev rules: only with source "udev").
    properties: tuple[tuple[str, str], ...] = ()


def _printable(value: str, limit: int = 80) -> str:
    text = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return text + ("..." if len(value) > limit else "")


def foreign_owner(properties: Mapping[str, str], ours: Collection[str]) -> str | None:
    """Why udev gives the NIC to another manager ("ID_NET_MANAGED_BY=..."), or None.

    OURS: the ID_NET_MANAGED_BY values of the daemon our files are for; a NIC given to it
    is still ours to configure. NM_UNMANAGED counts only when that daemon is NetworkManager
    (see OWNERSHIP_KEYS), and is read the way NetworkManager reads it.
    """
    managed_by = properties.get("ID_NET_MANAGED_BY", "")
    if managed_by and managed_by not in ours:
        return f"ID_NET_MANAGED_BY={_printable(managed_by)}"
    if NETWORKMANAGER not in ours:
        return None
    unmanaged = properties.get("NM_UNMANAGED", "")
    if unmanaged == "1" or unmanaged.lower() == "true":
        return f"NM_UNMANAGED={_printable(unmanaged)}"
    return None


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
    found = ((key, device.get(key)) for key in OWNERSHIP_KEYS)
    properties = tuple((key, value) for key, value in found if isinstance(value, str))
    return NicEvent(action, ifname, ifindex, old_name, properties)


#: Asked for: dozens of NICs at once (each brings several uevents) must not overflow it.
BUFFER_SIZE = 8 * 1024 * 1024


class UdevWatcher:
    """Start it before scanning present NICs: an attach between the two is then not lost."""

    def __init__(self, source: Literal["udev", "kernel"], buffer_size: int = BUFFER_SIZE) -> None:
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._monitor.filter_by("net")
        self.buffer_size = _set_buffer(self._monitor, buffer_size)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self, callback: Callable[[NicEvent], None], on_lost: Callable[[], None] = lambda: None
    ) -> None:
        """CALLBACK per event; ON_LOST when the kernel dropped events (rescan then)."""
        loop = asyncio.get_running_loop()
        self._monitor.start()
        self._loop = loop

        def readable() -> None:
            # Drain everything queued. The socket is non-blocking: a receive on an empty
            # queue is None. Not Monitor.poll(): its own poll() turns the POLLERR of an
            # overflowed socket into an IOError without errno, and the error is only
            # cleared by the receive it then never makes (the loop would spin on it).
            while True:
                try:
                    device = self._monitor._receive_device()
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        # The socket overflowed: some attach or detach is unknown.
                        log.warning("udev_events_lost", buffer=self.buffer_size)
                        on_lost()
                        continue
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


def _set_buffer(monitor: Any, size: int) -> int:
    """Ask for SIZE bytes of receive buffer; the size obtained.

    libudev forces the size with SO_RCVBUFFORCE, which needs CAP_NET_ADMIN: the service
    runs without any capability, so there the plain SO_RCVBUF is used, which the kernel caps
    at net.core.rmem_max (said once in the log; overflows are caught and rescanned anyway).
    """
    try:
        monitor.set_receive_buffer_size(size)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
        with socket.socket(fileno=os.dup(monitor.fileno())) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        log.info(
            "udev_buffer_limited",
            requested=size,
            obtained=got,
            reason="no CAP_NET_ADMIN for SO_RCVBUFFORCE; raise net.core.rmem_max for more",
        )
        return got
    return size
