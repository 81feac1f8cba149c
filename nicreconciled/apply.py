"""Load a changed file into the network stack, for one NIC only; never a global apply.

Every applier runs its commands through the injected runner (``system.proc.run`` by
default) and stops at the first failing step with ``ApplyError``: the reconciler logs it and
retries later, and a half-applied sequence is simply run again from the start.

NetworkManager facts the two NetworkManager appliers rely on:

* "NetworkManager does not monitor changes to connection files by default" (nmcli(1)):
  a written file is picked up by ``nmcli connection load FILE`` (D-Bus
  ``Settings.LoadConnections``), and loading does not activate it.
* ``load`` of a path that no longer exists makes NetworkManager forget the profile it had
  loaded from that path. nmcli(1) only says "load/reload one or more connection files";
  the behaviour is in the daemon: since the settings rework of NetworkManager 1.20 the
  keyfile plugin's ``load_connections()`` treats ENOENT as "unload the file that was
  previously loaded" (``nms-keyfile-plugin.c``). So a removal is one ``load`` of the
  deleted path, never ``nmcli connection reload``, which re-reads every profile on the host.
* ``nmcli connection up`` is given the profile, not the interface name: our profile is
  bound to the NIC's MAC, so NetworkManager finds the one device it can run on, and a
  rename between our sysfs read and nmcli's run (hot-plugged NICs are renamed by udev)
  cannot make the call fail or pick a stale name. ``--wait 0`` returns as soon as
  NetworkManager accepted the activation: errors such as "no suitable device" still fail
  the call (nmcli reports the ActivateConnection error before honouring --wait), but a
  slow DHCP server cannot hold the daemon for nmcli's default 90 s, and a retry after our
  own timeout cannot restart an activation that was merely in progress. DHCP retries are
  NetworkManager's job (our profiles set ``autoconnect-retries=0``).
* ``nmcli device reapply`` (no re-activation) is not used: it acts on whatever profile is
  active on the device, possibly another tool's, and it needs the unstable interface name.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final, Protocol

import structlog

from nicreconciled.errors import ApplyError
from nicreconciled.model import mac_to_key
from nicreconciled.render.networkmanager import connection_uuid
from nicreconciled.system import proc

log = structlog.get_logger(__name__)

TIMEOUT = 30.0

#: Where ``netplan generate`` writes the keyfiles of NetworkManager-backend definitions.
NETPLAN_NM_DIR: Final = Path("/run/NetworkManager/system-connections")


class Applier(Protocol):
    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        """Load PATH, just written (or removed) for MAC; IFNAME None = the NIC is gone."""
        ...


class _CommandApplier:
    """Runs one command per step; the first failure raises ApplyError and ends the apply."""

    def __init__(self, runner: proc.Runner = proc.run) -> None:
        self._run = runner

    async def _step(self, *argv: str) -> None:
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())


class NetplanNetworkdApplier(_CommandApplier):
    """netplan on systemd-networkd.

    ``netplan apply`` would restart the backend and re-plug every interface; instead generate
    the backend files, have networkd reload them and reconfigure just this NIC.
    """

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        await self._step("netplan", "generate")
        await self._step("networkctl", "reload")
        if ifname is not None:
            await self._step("networkctl", "reconfigure", ifname)


class NetworkManagerApplier(_CommandApplier):
    """Our own keyfiles (``NetworkManagerRenderer``), loaded one file at a time."""

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        # Decided before loading: a removal must never be followed by an activation.
        written = await asyncio.to_thread(path.exists)
        await self._step("nmcli", "connection", "load", str(path))
        if written and ifname is not None:
            await self._step(*_up("uuid", connection_uuid(mac)))


def netplan_nm_connection_id(mac: str) -> str:
    """The profile id netplan gives our definition ``nicr-<key>`` on the NetworkManager backend."""
    return f"netplan-nicr-{mac_to_key(mac)}"


class NetplanNetworkManagerApplier(_CommandApplier):
    """netplan YAML whose definition uses ``renderer: NetworkManager``.

    ``netplan generate`` rewrites (or, for a removed YAML file, deletes)
    ``netplan-<definition id>.nmconnection`` in ``/run/NetworkManager/system-connections``;
    checked with netplan 0.106's ``generate --root-dir`` in the integration tests. We then
    load only that file. netplan 0.106 writes no ``uuid=`` (NetworkManager derives one from
    the path), so activation names the profile by its id, which netplan takes from our
    definition id and is therefore ours alone.
    """

    def __init__(
        self, runner: proc.Runner = proc.run, connections_dir: Path = NETPLAN_NM_DIR
    ) -> None:
        super().__init__(runner)
        self._dir = connections_dir

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        await self._step("netplan", "generate")
        connection_id = netplan_nm_connection_id(mac)
        keyfile = self._dir / f"{connection_id}.nmconnection"
        await self._step("nmcli", "connection", "load", str(keyfile))
        if ifname is not None and await asyncio.to_thread(keyfile.exists):
            await self._step(*_up("id", connection_id))


def _up(selector: str, value: str) -> tuple[str, ...]:
    return ("nmcli", "--wait", "0", "connection", "up", selector, value)
