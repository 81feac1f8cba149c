"""A CloudStack virtual router's metadata service, with injectable faults.

It serves what the daemon relies on: ``/latest/meta-data/`` (the listing; the trailing slash
is required, as on a real VR), one text file per key, ``/latest/user-data`` (404 = none),
404 for anything unknown. A key set to ``LISTED_404`` stays in the listing but answers 404
and an empty value is served as an empty body, so a half-populated VR can be scripted.
Faults are the IMDS simulator's where they make sense for a plain HTTP server: 5xx, hang,
reset, slow, oversize. A real VR answers for the VM by the request's source address; this
one serves a single VM to every client, which is what a test on 127.0.0.1 needs.

In-process: ``VrSim`` (``start()``/``stop()``, ``set_vm()``, ``set_fault()``). Out of
process: ``python -m nicreconciled.sim --cloud cloudstack``, driven by ``SimClient``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from nicreconciled.sim import control
from nicreconciled.sim.imds import LISTED_404
from nicreconciled.sim.server import FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize")
META = "/latest/meta-data/"
USER_DATA = "user-data"
_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: What a freshly deployed VM's VR serves (values as CloudStack spells them).
DEFAULT_VM: dict[str, str] = {
    "availability-zone": "zone1",
    "cloud-identifier": "CloudStack-{7c3b0a52-5c44-4d9e-9c55-0f2d4a6e1b2c}",
    "hypervisor-host-name": "kvm-host-1",
    "instance-id": "0d4d6ae8-1b6c-4a3e-9a51-6f4f2b7c9e01",
    "local-hostname": "vm-1",
    "local-ipv4": "10.1.1.23",
    "public-hostname": "203.0.113.10",
    "public-ipv4": "203.0.113.10",
    "service-offering": "Small Instance",
    "vm-id": "0d4d6ae8-1b6c-4a3e-9a51-6f4f2b7c9e01",
}


class VrSim(FaultyServer):
    """Simulator state plus its aiohttp application; drive it in-process or over control."""

    MODES = MODES
    #: Names the metadata URL in the ready line of ``python -m nicreconciled.sim``.
    READY_KEY = "vr"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        slow_seconds: float = 5.0,
        vm: Mapping[str, str] | None = None,
    ) -> None:
        self._vm: dict[str, str] = dict(DEFAULT_VM if vm is None else vm)
        self._user_data: str | None = None
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    # --- state --------------------------------------------------------------------------

    def vm(self) -> dict[str, str | None]:
        """Every key served (``user-data`` included when set)."""
        out: dict[str, str | None] = dict(sorted(self._vm.items()))
        if self._user_data is not None:
            out[USER_DATA] = self._user_data
        return out

    def set_vm(self, changes: Mapping[str, Any]) -> dict[str, str | None]:
        """Set keys to text, or remove them with None; ``user-data`` sets the user data.

        Validates everything before changing anything: ValueError names the bad key.
        """
        for key, value in changes.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise ValueError(f"not a metadata key: {str(key)[:64]!r}")
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key}: value must be a string or null")
        for key, value in changes.items():
            if key == USER_DATA:
                self._user_data = value
            elif value is None:
                self._vm.pop(key, None)
            else:
                self._vm[key] = value
        return self.vm()

    def add_control_routes(self, app: web.Application) -> None:
        """Its own control calls (control.control_app adds /ready, faults, stats)."""
        sim = self

        async def get_vm(_request: web.Request) -> web.Response:
            return web.json_response(sim.vm())

        async def put_vm(request: web.Request) -> web.Response:
            return web.json_response(sim.set_vm(await control.body(request)))

        app.router.add_get("/vm", get_vm)
        app.router.add_put("/vm", put_vm)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"vm": {key: text|null}, "fault": {"mode": ..., "duration": ...}}"""
        self.set_vm(dict(data.get("vm", {})))
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    def lookup(self, path: str) -> str | None:
        """The body served at PATH (absolute, e.g. /latest/meta-data/local-ipv4); None = 404."""
        if path == "/latest/user-data":
            return self._user_data
        if path == META:
            return "\n".join(sorted(self._vm))
        key = path.removeprefix(META)
        if key == path or key not in self._vm:
            return None
        value = self._vm[key]
        return None if value == LISTED_404 else value

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        fault = self.active_fault()
        handled, response = await self._connection_fault(request, fault)
        if handled:
            return response
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="Method Not Allowed")
        body = self.lookup(request.path)
        if body is None:
            return web.Response(status=404, text="Not Found")
        if fault == "slow":
            return await self._trickle(request, body)
        return web.Response(text=body, content_type="text/plain")
