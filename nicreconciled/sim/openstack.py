"""An OpenStack metadata service (network_data.json) with scripted ports and faults.

It serves ``/openstack/`` (the version listing), ``/openstack/<version>/network_data.json``
and a minimal ``meta_data.json``, built from port specs in the shape nova writes
(openstack/nova nova/virt/netutils.py ``get_network_metadata``: ``links`` with ``id``,
``vif_id``, ``type``, ``mtu``, ``ethernet_mac_address``; ``networks`` with ``id``
"network<N>", ``link``, ``type``, ``ip_address``, ``netmask``, ``routes``, ``network_id``;
``services``). Ports are listed in the order they were added (nova appends an attached
port); a port added with ``primary: true`` goes first. ``PUT /raw {path, text}`` serves any
text at a path (garbage tests). Faults: 5xx, hang, reset, slow, oversize.

In-process: ``OpenStackSim``. Out of process: ``python -m nicreconciled.sim --cloud
openstack`` (control: GET/POST /nics, PATCH/DELETE /nics/{mac}, PUT /raw).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from ipaddress import ip_network
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nicreconciled.model import Mac, normalize_mac
from nicreconciled.sim import control
from nicreconciled.sim.server import FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize")
VERSIONS = ("2015-10-15", "2016-06-30", "2017-02-22", "2018-08-27", "latest")


class RouteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: str
    netmask: str
    gateway: str


class NetworkSpec(BaseModel):
    """One entry of ``networks`` (values served as given, garbage included)."""

    model_config = ConfigDict(extra="forbid")

    type: str = "ipv4"
    ip_address: str | None = None
    netmask: str | None = None
    routes: list[RouteSpec] = Field(default_factory=list)
    network_id: str = "8e1f5a0c-1d4b-4b8e-9d4e-0c6f3b2a1d10"


class PortSpec(BaseModel):
    """One port: its link and its networks (``PATCH`` replaces the fields given)."""

    model_config = ConfigDict(extra="forbid")

    mac: Mac
    link_id: str | None = None
    type: str = "ovs"
    mtu: int | None = 1450
    networks: list[NetworkSpec] = Field(default_factory=list)
    primary: bool = False

    def link(self) -> dict[str, Any]:
        port_id = str(uuid.uuid5(uuid.NAMESPACE_URL, self.mac))
        return {
            "id": self.link_id or f"tap{port_id[:11]}",  # nova's devname: "tap" + port id prefix
            "vif_id": port_id,
            "type": self.type,
            "mtu": self.mtu,
            "ethernet_mac_address": self.mac,
        }


def _mask(cidr: str) -> str:
    return str(ip_network(cidr, strict=False).netmask)


class OpenStackSim(FaultyServer):
    MODES = MODES
    READY_KEY = "openstack"
    #: Secondary IPv4s a lab port may carry: each fixed IP is its own ``ipv4`` network.
    LAB_SECONDARIES = 2

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, slow_seconds: float = 5.0
    ) -> None:
        self._ports: dict[str, PortSpec] = {}
        self._raw: dict[str, str] = {}
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    # --- state --------------------------------------------------------------------------

    def nics(self) -> list[PortSpec]:
        first = [p for p in self._ports.values() if p.primary]
        return first + [p for p in self._ports.values() if not p.primary]

    def add_nic(self, spec: PortSpec | Mapping[str, Any]) -> PortSpec:
        spec = spec if isinstance(spec, PortSpec) else PortSpec.model_validate(spec)
        if spec.mac in self._ports:
            raise ValueError(f"port {spec.mac} exists")
        self._ports[spec.mac] = spec
        return spec

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> PortSpec:
        old = self._ports[normalize_mac(mac)]
        if "mac" in changes and normalize_mac(str(changes["mac"])) != old.mac:
            raise ValueError("the MAC of a port cannot change")
        spec = PortSpec.model_validate({**old.model_dump(), **changes})
        self._ports[old.mac] = spec
        return spec

    def remove_nic(self, mac: str) -> None:
        del self._ports[normalize_mac(mac)]

    def set_raw(self, path: str, text: str | None) -> None:
        path = "/" + path.lstrip("/")
        if text is None:
            self._raw.pop(path, None)
        else:
            self._raw[path] = text

    def document(self) -> dict[str, Any]:
        """network_data.json as nova writes it for the current ports."""
        links: list[dict[str, Any]] = []
        networks: list[dict[str, Any]] = []
        services: list[dict[str, Any]] = []
        for port in self.nics():
            link = port.link()
            links.append(link)
            for net in port.networks:
                entry: dict[str, Any] = {"id": f"network{len(networks)}", "link": link["id"]}
                entry.update(net.model_dump(exclude_none=True))
                if net.type.endswith("_dhcp"):
                    entry = {k: entry[k] for k in ("id", "type", "link", "network_id")}
                networks.append(entry)
        if networks:
            services.append({"type": "dns", "address": "203.0.113.53"})
        return {"links": links, "networks": networks, "services": services}

    @staticmethod
    def lab_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
        """A cloud-neutral lab plan -> the POST /nics body: one ``ipv4`` network per fixed
        IPv4 (the first is the port's primary), one ``ipv6`` network per IPv6 address;
        ``routes4``, [CIDR, router] pairs, are host routes on every ``ipv4`` network. With
        ``"dhcp4": true`` one ``ipv4_dhcp`` network instead of the IPv4 ones (nova on a subnet
        with DHCP enabled): the address then comes from the lab's DHCP server."""
        nets: list[dict[str, Any]] = []
        if plan.get("dhcp4"):
            nets.append({"type": "ipv4_dhcp"})
        hosts = [
            {"network": str(ip_network(to).network_address), "netmask": _mask(to), "gateway": via}
            for to, via in plan.get("routes4", [])
        ]  # Neutron's host_routes: [destination CIDR, router] pairs
        for address in [] if plan.get("dhcp4") else plan.get("ipv4s", []):
            route = {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": plan["gateway4"]}
            routes = ([route] if plan.get("gateway4") else []) + hosts
            nets.append(
                {"ip_address": address, "netmask": _mask(plan["subnet4"]), "routes": routes}
            )
        for address in plan.get("ipv6s", []) if plan.get("subnet6") else []:
            gateway6 = plan.get("gateway6")
            routes = [{"network": "::", "netmask": "::", "gateway": gateway6}] if gateway6 else []
            nets.append(
                {
                    "type": "ipv6",
                    "ip_address": address,
                    "netmask": _mask(plan["subnet6"]),  # nova: "ffff:ffff:ffff:ffff::"
                    "routes": routes,
                }
            )
        return {"mac": plan["mac"], "networks": nets, "primary": bool(plan.get("primary"))}

    def add_control_routes(self, app: web.Application) -> None:
        """Its own control calls (control.control_app adds /ready, faults, stats)."""
        control.add_nic_routes(app, self)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"nics": [spec, ...], "raw": {path: text}, "fault": {mode, duration}}"""
        for spec in data.get("nics", []):
            self.add_nic(spec)
        for path, text in dict(data.get("raw", {})).items():
            self.set_raw(path, text)
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    # --- serving ------------------------------------------------------------------------

    def lookup(self, path: str) -> str | None:
        if path in self._raw:
            return self._raw[path]
        if path in ("/openstack", "/openstack/"):
            return "\n".join(VERSIONS)
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "openstack" or parts[1] not in VERSIONS:
            return None
        if parts[2] == "network_data.json":
            return json.dumps(self.document())
        if parts[2] == "meta_data.json":
            return json.dumps({"uuid": "5d8c3f4e-0b7a-4c8e-9a55-2f1d0e6c7b10", "name": "vm1"})
        return None

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
        kind = "application/json" if request.path.endswith(".json") else "text/plain"
        return web.Response(text=body, content_type=kind)
