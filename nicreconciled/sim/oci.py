"""OCI's instance metadata service v2 (``/opc/v2/vnics/``), with injectable faults.

It serves the one document the daemon reads, in the real shape (see ``sources/oci.py`` for
where each fact comes from): a JSON array of VNIC objects, the primary VNIC first, MACs in
upper case, ``"<null>"`` for an IPv6-only VNIC's IPv4 subnet. Every request must carry
``Authorization: Bearer Oracle``; the service is documented to reject one without it
(https://docs.oracle.com/iaas/Content/Compute/Tasks/gettingmetadata.htm) and this one answers
401. The v1 paths answer 404, as on an instance whose IMDSv1 is disabled (same page).

A VNIC field can be scheduled to change (or vanish) some seconds after the VNIC was added,
so late propagation can be scripted; ``PUT /raw`` serves any text in place of the document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nicreconciled.model import Mac, normalize_mac
from nicreconciled.sim import control
from nicreconciled.sim.server import FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize", "401")
VNICS_PATH = "opc/v2/vnics/"
AUTHORIZATION = "Bearer Oracle"
#: Tags the simulator gives a VNIC whose spec names none: the lowest free one from here.
FIRST_FREE_TAG = 1000

#: VnicSpec field -> the document's key.
FIELD_KEYS = {
    "vnic_id": "vnicId",
    "private_ip": "privateIp",
    "subnet_cidr": "subnetCidrBlock",
    "virtual_router_ip": "virtualRouterIp",
    "vlan_tag": "vlanTag",
    "nic_index": "nicIndex",
    "ipv6_addresses": "ipv6Addresses",
    "ipv6_subnet_cidr": "ipv6SubnetCidrBlock",
    "ipv6_virtual_router_ip": "ipv6VirtualRouterIp",
}


class VnicSpec(BaseModel):
    """One scripted VNIC; values are served as given (garbage included), None = key absent.

    ``schedule`` maps a document key (``ipv6Addresses``, ...) to ``[[t, value], ...]``: from
    ``t`` seconds after the VNIC was added (or PATCHed) the key serves ``value`` (null: the
    key is absent). ``primary``: serve this VNIC first (the first VNIC added is, until then).
    """

    model_config = ConfigDict(extra="forbid")

    mac: Mac
    primary: bool = False
    vnic_id: str | None = None
    private_ip: str | None = None
    subnet_cidr: str | None = None
    virtual_router_ip: str | None = None
    vlan_tag: int | None = None
    nic_index: int | None = None
    ipv6_addresses: list[str] | None = None
    ipv6_subnet_cidr: str | None = None
    ipv6_virtual_router_ip: str | None = None
    schedule: dict[str, list[tuple[float, Any]]] = Field(default_factory=dict)

    def base_values(self) -> dict[str, Any]:
        hexmac = self.mac.replace(":", "")
        values: dict[str, Any] = {
            "macAddr": self.mac.upper(),
            # Plausible where the script gives none, so the entry looks real.
            "vnicId": f"ocid1.vnic.oc1.phx.abyhqljt{hexmac}",
        }
        for name, key in FIELD_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                values[key] = value
        return values


@dataclass
class _Vnic:
    spec: VnicSpec
    tag: int
    #: key -> [(absolute monotonic time, value)], sorted by time.
    schedule: dict[str, list[tuple[float, Any]]] = field(default_factory=dict)

    def values(self, now: float) -> dict[str, Any]:
        values = self.spec.base_values()
        values.setdefault("vlanTag", self.tag)
        for key, entries in self.schedule.items():
            for when, value in entries:
                if when <= now:
                    values[key] = value
        return {k: v for k, v in values.items() if v is not None}


class OciSim(FaultyServer):
    """Simulator state plus its aiohttp application; drive it in-process or over control."""

    MODES = MODES
    #: Names the metadata URL in the ready line of ``python -m nicreconciled.sim``.
    READY_KEY = "oci"
    #: Secondary private IPv4s a lab VNIC may carry: none, the metadata lists one per VNIC.
    LAB_SECONDARIES = 0

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, slow_seconds: float = 5.0
    ) -> None:
        #: In served order: the primary first.
        self._vnics: list[_Vnic] = []
        self._raw: str | None = None
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    # --- state --------------------------------------------------------------------------

    def nics(self) -> list[VnicSpec]:
        return [vnic.spec for vnic in self._vnics]

    def _find(self, mac: str) -> _Vnic:
        mac = normalize_mac(mac)
        for vnic in self._vnics:
            if vnic.spec.mac == mac:
                return vnic
        raise KeyError(mac)

    def _free_tag(self) -> int:
        used = {v.spec.vlan_tag if v.spec.vlan_tag is not None else v.tag for v in self._vnics}
        tag = FIRST_FREE_TAG
        while tag in used:
            tag += 1
        return tag

    def add_nic(self, spec: VnicSpec | Mapping[str, Any]) -> VnicSpec:
        """Add a VNIC (its schedule counts from now); served last unless ``primary``."""
        spec = spec if isinstance(spec, VnicSpec) else VnicSpec.model_validate(spec)
        if any(v.spec.mac == spec.mac for v in self._vnics):
            raise ValueError(f"VNIC {spec.mac} exists")
        vnic = _Vnic(spec, self._free_tag())
        self._schedule(vnic, spec.schedule)
        if spec.primary:
            self._vnics.insert(0, vnic)
        else:
            self._vnics.append(vnic)
        return spec

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> VnicSpec:
        """Change fields (validated before anything changes); a changed key's pending
        schedule is dropped, a new schedule counts from now."""
        vnic = self._find(mac)
        if "mac" in changes and normalize_mac(str(changes["mac"])) != vnic.spec.mac:
            raise ValueError("the MAC of a VNIC cannot change")
        patch = VnicSpec.model_validate({"mac": vnic.spec.mac, **changes})
        merged = {**vnic.spec.model_dump(), **changes}
        merged["schedule"] = {**vnic.spec.schedule, **patch.schedule}
        spec = VnicSpec.model_validate(merged)
        for name, key in FIELD_KEYS.items():
            if name in changes:
                vnic.schedule.pop(key, None)
        vnic.spec = spec
        self._schedule(vnic, patch.schedule)
        if changes.get("primary"):
            self.set_primary(spec.mac)
        return spec

    def _schedule(self, vnic: _Vnic, schedule: Mapping[str, list[tuple[float, Any]]]) -> None:
        now = self.clock()
        for key, entries in schedule.items():
            vnic.schedule[key] = sorted(((now + t, v) for t, v in entries), key=lambda e: e[0])

    def remove_nic(self, mac: str) -> None:
        self._vnics.remove(self._find(mac))

    def set_primary(self, mac: str) -> None:
        """Serve MAC's VNIC first."""
        vnic = self._find(mac)
        self._vnics.remove(vnic)
        self._vnics.insert(0, vnic)

    def set_raw(self, path: str, text: str | None) -> None:
        """Serve TEXT in place of the document (None: the VNICs again)."""
        if path.strip("/") != VNICS_PATH.strip("/"):
            raise ValueError(f"only {VNICS_PATH} can be replaced")
        self._raw = text

    def document(self) -> str:
        """The body served at /opc/v2/vnics/ now."""
        if self._raw is not None:
            return self._raw
        now = self.clock()
        return json.dumps([vnic.values(now) for vnic in self._vnics], indent=2)

    # --- control ------------------------------------------------------------------------

    def add_control_routes(self, app: web.Application) -> None:
        """Its own control calls (control.control_app adds /ready, faults, stats)."""
        control.add_nic_routes(app, self)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"nics": [spec, ...], "raw": text, "fault": {"mode": ..., "duration": ...}}"""
        for spec in data.get("nics", []):
            self.add_nic(spec)
        if data.get("raw") is not None:
            self.set_raw(VNICS_PATH, str(data["raw"]))
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    @staticmethod
    def lab_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
        """The VnicSpec of a lab plan. The metadata has one private IPv4 per VNIC (no
        secondaries): ``ipv4s[0]``. Tag 100 + device number: table 10100 + device number."""
        spec: dict[str, Any] = {
            "mac": plan["mac"],
            "primary": bool(plan.get("primary", False)),
            "private_ip": plan["ipv4s"][0] if plan.get("ipv4s") else None,
            "subnet_cidr": plan.get("subnet4"),
            "virtual_router_ip": plan.get("gateway4"),
            "vlan_tag": 100 + int(plan.get("device_number", 0)),
        }
        if plan.get("subnet6") is not None:
            spec["ipv6_subnet_cidr"] = plan["subnet6"]
            spec["ipv6_addresses"] = list(plan.get("ipv6s", []))
            spec["ipv6_virtual_router_ip"] = plan.get("gateway6")
        return spec

    # --- serving ------------------------------------------------------------------------

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        fault = self.active_fault()
        handled, response = await self._connection_fault(request, fault)
        if handled:
            return response
        status, body = self._route(request, fault)
        if fault == "slow" and status == 200:
            return await self._trickle(request, body)
        kind = "application/json" if status == 200 else "text/plain"
        return web.Response(status=status, text=body, content_type=kind)

    def _route(self, request: web.Request, fault: str) -> tuple[int, str]:
        path = request.path.strip("/")
        if not path.startswith("opc/v2/"):
            return 404, "Not Found"  # v1 disabled: /opc/v1 and /openstack answer 404
        if request.headers.get("Authorization") != AUTHORIZATION or fault == "401":
            return 401, "Unauthorized"
        if request.method != "GET":
            return 405, "Method Not Allowed"
        if path != VNICS_PATH.strip("/"):
            return 404, "Not Found"
        return 200, self.document()
