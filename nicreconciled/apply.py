"""Load a changed file into the network stack, for one NIC only; never a global apply."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog

from nicreconciled.errors import ApplyError
from nicreconciled.system import proc

log = structlog.get_logger(__name__)

TIMEOUT = 30.0


class Applier(Protocol):
    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        """Load PATH, just written (or removed) for MAC; IFNAME None = the NIC is gone."""
        ...


class NetplanNetworkdApplier:
    """netplan on systemd-networkd.

    ``netplan apply`` would restart the backend and re-plug every interface; instead generate
    the backend files, have networkd reload them and reconfigure just this NIC.
    """

    def __init__(self, runner: proc.Runner = proc.run) -> None:
        self._run = runner

    async def _step(self, *argv: str) -> None:
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        await self._step("netplan", "generate")
        await self._step("networkctl", "reload")
        if ifname is not None:
            await self._step("networkctl", "reconfigure", ifname)
