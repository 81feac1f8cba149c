"""Which NICs are ours: eligible links (Ethernet, no master's port, not ignored, virtual only
if asked), and
among them those neither excluded by the operator nor given to another manager by udev.

Shared by the daemon and ``render``; reads only sysfs and the udev database (under the
injectable roots), never the metadata.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nicreconciled import udev
from nicreconciled.config import Config
from nicreconciled.status import Managed
from nicreconciled.system import sysfs

#: Why a NIC is not ours: (Managed.EXCLUDED or Managed.FOREIGN, the reason for people).
NotOurs = tuple[Managed, str]
#: udev runs but has not processed the NIC yet: its event (after the rules) will bring it.
NOT_READY: Final = "not processed by udev yet"


def our_managers(config: Config) -> frozenset[str]:
    """The ID_NET_MANAGED_BY value of the daemon our files are loaded by: a NIC udev gives
    to it is still ours to configure (networkd and NetworkManager honour the property)."""
    nm = config.renderer == "networkmanager" or config.netplan.backend == "NetworkManager"
    return frozenset({udev.NETWORKMANAGER if nm else udev.NETWORKD})


class Ownership:
    def __init__(self, config: Config, run_root: Path = Path("/run")) -> None:
        self.config = config
        #: Where the udev database is read (run_root/udev/data), with udev.source = "udev".
        self.run_root = run_root
        self._ours = our_managers(config)

    def eligible(self, link: sysfs.Link) -> bool:
        if not link.ethernet or link.enslaved:
            # A port of another device is configured through its master, never by itself.
            return False
        if link.virtual and not self.config.interfaces.virtual:
            return False
        return not any(fnmatch.fnmatchcase(link.name, p) for p in self.config.interfaces.ignore)

    def not_ours(
        self, link: sysfs.Link, properties: Mapping[str, str] | None = None
    ) -> NotOurs | str | None:
        """Why the eligible LINK is not ours (NotOurs), NOT_READY, or None: ours.

        PROPERTIES: the udev event's; None: read the udev database. With udev.source =
        "kernel" udev is not consulted at all: raw kernel events come before udev's rules
        have run, and there may be no udevd; interfaces.exclude_macs still applies.
        """
        if self.config.interfaces.excludes_mac(link.mac):
            return Managed.EXCLUDED, "exclude_macs"
        if self.config.udev.source != "udev":
            return None
        if properties is None:
            properties = sysfs.udev_properties(link.ifindex, self.run_root)
            if properties is None:
                return NOT_READY if sysfs.udev_running(self.run_root) else None
        owner = udev.foreign_owner(properties, self._ours)
        return None if owner is None else (Managed.FOREIGN, owner)
