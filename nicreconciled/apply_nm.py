"""NetworkManager activation: our keyfiles (NetworkManagerApplier), and netplan's profiles
(apply_netplan.NetplanNetworkManagerApplier), loaded and brought up only where needed.

NetworkManager facts the NetworkManager appliers rely on:

* "NetworkManager does not monitor changes to connection files by default" (nmcli(1)):
  a written file is picked up by ``nmcli connection load FILE...`` (D-Bus
  ``Settings.LoadConnections``), and loading does not activate it.
* ``load`` of a path that no longer exists makes NetworkManager forget the profile it had
  loaded from that path (keyfile plugin, NetworkManager >= 1.20: ENOENT means "unload").
  So a removal is one ``load`` of the deleted path, never ``nmcli connection reload``,
  which re-reads every profile on the host.
* ``nmcli connection up`` is given the profile, not the interface name: our profile is
  bound to the NIC's MAC, so a rename between our sysfs read and nmcli's run cannot make
  the call fail or pick a stale name. ``--wait 0`` returns as soon as NetworkManager
  accepted the activation ("no suitable device" still fails the call), so a slow DHCP
  server cannot hold the applier for nmcli's default 90 s.
* ``nmcli device reapply`` is not used to apply a change: it acts on whatever profile is
  active on the device, possibly another tool's, and it needs the unstable interface name.
  It is what a heal uses, once the device is seen running our profile (below).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from nicreconciled.apply import TIMEOUT, BatchApplier, Change, Outcome
from nicreconciled.errors import ApplyError
from nicreconciled.render.networkmanager import connection_uuid


class NmActivation(BatchApplier):
    """``nmcli connection up`` only where NetworkManager will not activate on its own.

    Measured in the lab: ``load`` of a new profile (``autoconnect=true``) makes
    NetworkManager auto-activate it at once; an ``up`` right after replaces that activation
    ("new-activation"), which deletes the NIC's addresses and restarts its DHCP. So a profile
    that was not active before the load is left to autoconnect (given AUTOCONNECT_WAIT to
    start); one that was active is re-activated, since NetworkManager keeps running the old
    settings of an active profile until then.
    """

    #: nmcli's field for the selector (``UUID`` or ``NAME``) and the selector word.
    field: str
    selector: str

    async def _active(self) -> set[str]:
        argv = ("nmcli", "-g", self.field, "connection", "show", "--active")
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())
        return {line.strip() for line in done.stdout.splitlines() if line.strip()}

    async def _activate(self, changes: Sequence[Change], before: set[str]) -> Outcome:
        outcome: Outcome = dict.fromkeys((c.mac for c in changes), None)
        if not changes:
            return outcome
        fresh = [c for c in changes if self._selector(c)[0] not in before]
        waited = 0.0
        while fresh and waited < AUTOCONNECT_WAIT:
            await asyncio.sleep(AUTOCONNECT_POLL)
            waited += AUTOCONNECT_POLL
            active = await self._active()
            fresh = [c for c in fresh if self._selector(c)[0] not in active]
        stale = [c for c in changes if self._selector(c)[0] in before]
        up = [c for c in changes if c in stale or c in fresh]
        await self._each(up, outcome, "nmcli", "--wait", "0", "connection", "up", self.selector)
        return outcome

    async def _heal(self, mac: str, ifname: str) -> None:
        """``device reapply`` when our profile is the one active on IFNAME, else ``up``."""
        change = Change(mac, Path(), ifname)
        argv = ("nmcli", "-g", f"{self.field},DEVICE", "connection", "show", "--active")
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())
        ours = self._selector(change)[0]
        # -g escapes ":" inside values as "\:"; neither a UUID, our ids nor a name has one.
        active = {tuple(line.split(":", 1)) for line in done.stdout.splitlines() if ":" in line}
        if (ours, ifname) in active:
            await self._step("nmcli", "device", "reapply", ifname)
        else:
            await self._step("nmcli", "--wait", "0", "connection", "up", self.selector, ours)


#: How long a newly loaded profile is given to be auto-activated before ``up`` is asked.
AUTOCONNECT_WAIT = 1.0
AUTOCONNECT_POLL = 0.05


class NetworkManagerApplier(NmActivation):
    """Our own keyfiles (``NetworkManagerRenderer``): one ``load`` for all, then activation."""

    field, selector = "UUID", "uuid"

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        # Decided before loading: a removal must never be followed by an activation.
        up = [c for c in changes if c.ifname is not None and c.written]
        before = await self._active() if up else set()
        await self._step("nmcli", "connection", "load", *(str(c.path) for c in changes))
        outcome: Outcome = dict.fromkeys((c.mac for c in changes), None)
        outcome.update(await self._activate(up, before))
        return outcome

    def _selector(self, change: Change) -> tuple[str, ...]:
        return (connection_uuid(change.mac),)
