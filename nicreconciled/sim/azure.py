"""Azure's Instance Metadata Service (IMDS), with its header check, its rate limit and faults.

It serves what the daemon reads in the real shape (see ``sources/azure.py`` and
``sources/azure_parse.py`` for where each fact comes from): ``GET
/metadata/instance/network?api-version=V`` answers ``{"interface": [...]}``, every primitive
a string, MACs upper case without separators, the primary NIC first (the first added, or
one added or set ``primary``). ``/metadata/instance`` answers ``{"compute": {...}, "network":
{...}}``, ``/metadata/versions`` the API versions. As the real service:

* a request without ``Metadata: true``, or with ``X-Forwarded-For``, is refused with 400
  ``{"error": "Bad request. Required metadata header not specified"}``;
* a request without a known ``api-version`` is refused with 400 and the newest versions;
* more than ``rate_limit`` requests (default 5) in one second are refused with 429
  "Too many requests" (counted over a sliding second, refused ones included);
* only GET is allowed (405).

Faults (``set_fault``): 5xx, hang, reset, slow, oversize (as every simulator), and the
service's own answers: "400" (the header refused whatever was sent), "410" (IMDS updating),
"429" (throttled whatever the rate). An interface field can be scheduled to change some
seconds after the interface was added or PATCHed (``schedule``); ``PUT /raw`` serves any text
in place of the network document.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nicreconciled.model import Mac, normalize_mac
from nicreconciled.sim import control
from nicreconciled.sim.server import FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize", "400", "410", "429")
NETWORK_PATH = "metadata/instance/network"
VERSIONS = ("2025-04-07", "2024-07-17", "2024-03-15", "2023-07-01", "2021-12-13", "2021-02-01")
#: Requests per second IMDS allows a VM ("5 requests per second (on a per VM basis)").
RATE_LIMIT = 5
HEADER_REFUSED = {"error": "Bad request. Required metadata header not specified"}
THROTTLED = "Too many requests"
GONE = {"error": "IMDS is updating. Retry after some time for a max of 70 seconds."}

#: InterfaceSpec fields a schedule may change.
SCHEDULABLE = ("private_ipv4s", "public_ipv4s", "subnets4", "private_ipv6s", "subnets6")


class InterfaceSpec(BaseModel):
    """One scripted NIC; values are served as given (garbage included), None = the key (or
    its list) is left out.

    ``private_ipv4s``: the IP configurations' private IPv4s, the primary one first
    (``public_ipv4s`` pairs with it by position, "" where there is none); ``subnets4`` /
    ``subnets6``: CIDR texts served as ``{"address", "prefix"}``; ``private_ipv6s``.
    ``schedule`` maps a field above to ``[[t, value], ...]``: from ``t`` seconds after the NIC
    was added (or PATCHed) the field is ``value``. ``primary``: serve this NIC first.
    """

    model_config = ConfigDict(extra="forbid")

    mac: Mac
    primary: bool = False
    private_ipv4s: list[str] | None = None
    public_ipv4s: list[str] | None = None
    subnets4: list[str] | None = None
    private_ipv6s: list[str] | None = None
    subnets6: list[str] | None = None
    schedule: dict[str, list[tuple[float, Any]]] = Field(default_factory=dict)


def _subnet(cidr: str) -> dict[str, str]:
    address, _, prefix = cidr.partition("/")
    return {"address": address, "prefix": prefix}


def interface_entry(values: Mapping[str, Any], mac: str) -> dict[str, Any]:
    """The ``interface[]`` entry of a NIC with these InterfaceSpec VALUES."""
    publics = list(values.get("public_ipv4s") or [])
    ipv4: dict[str, Any] = {}
    if values.get("private_ipv4s") is not None:
        ipv4["ipAddress"] = [
            {"privateIpAddress": ip, "publicIpAddress": publics[n] if n < len(publics) else ""}
            for n, ip in enumerate(values["private_ipv4s"])
        ]
    if values.get("subnets4") is not None:
        ipv4["subnet"] = [_subnet(cidr) for cidr in values["subnets4"]]
    ipv6: dict[str, Any] = {"ipAddress": []}
    if values.get("private_ipv6s") is not None:
        ipv6["ipAddress"] = [{"privateIpAddress": ip} for ip in values["private_ipv6s"]]
    if values.get("subnets6") is not None:
        ipv6["subnet"] = [_subnet(cidr) for cidr in values["subnets6"]]
    return {"ipv4": ipv4, "ipv6": ipv6, "macAddress": mac.replace(":", "").upper()}


@dataclass
class _Interface:
    spec: InterfaceSpec
    #: field -> [(absolute monotonic time, value)], sorted by time.
    schedule: dict[str, list[tuple[float, Any]]] = field(default_factory=dict)

    def entry(self, now: float) -> dict[str, Any]:
        values = self.spec.model_dump()
        for key, entries in self.schedule.items():
            for when, value in entries:
                if when <= now:
                    values[key] = value
        return interface_entry(values, self.spec.mac)


class AzureSim(FaultyServer):
    """Simulator state plus its aiohttp application; drive it in-process or over control."""

    MODES = MODES
    #: Names the metadata URL in the ready line of ``python -m nicreconciled.sim``.
    READY_KEY = "azure"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        slow_seconds: float = 5.0,
        rate_limit: int | None = RATE_LIMIT,
    ) -> None:
        #: In served order: the primary first.
        self._interfaces: list[_Interface] = []
        self._raw: str | None = None
        #: Requests a second before 429 (None: no limit).
        self.rate_limit = rate_limit
        self._recent: deque[float] = deque()
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    # --- state --------------------------------------------------------------------------

    def nics(self) -> list[InterfaceSpec]:
        return [i.spec for i in self._interfaces]

    def _find(self, mac: str) -> _Interface:
        mac = normalize_mac(mac)
        for interface in self._interfaces:
            if interface.spec.mac == mac:
                return interface
        raise KeyError(mac)

    def add_nic(self, spec: InterfaceSpec | Mapping[str, Any]) -> InterfaceSpec:
        """Add a NIC (its schedule counts from now); served last unless ``primary``."""
        spec = spec if isinstance(spec, InterfaceSpec) else InterfaceSpec.model_validate(spec)
        if any(i.spec.mac == spec.mac for i in self._interfaces):
            raise ValueError(f"NIC {spec.mac} exists")
        _check_schedule(spec.schedule)
        interface = _Interface(spec)
        self._schedule(interface, spec.schedule)
        if spec.primary:
            self._interfaces.insert(0, interface)
        else:
            self._interfaces.append(interface)
        return spec

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> InterfaceSpec:
        """Change fields (validated before anything changes); a changed field's pending
        schedule is dropped, a new schedule counts from now. A secondary IP configuration
        added to a running VM is ``{"private_ipv4s": [..., new]}``."""
        interface = self._find(mac)
        if "mac" in changes and normalize_mac(str(changes["mac"])) != interface.spec.mac:
            raise ValueError("the MAC of a NIC cannot change")
        patch = InterfaceSpec.model_validate({"mac": interface.spec.mac, **changes})
        _check_schedule(patch.schedule)
        merged = {**interface.spec.model_dump(), **changes}
        merged["schedule"] = {**interface.spec.schedule, **patch.schedule}
        spec = InterfaceSpec.model_validate(merged)
        for name in SCHEDULABLE:
            if name in changes:
                interface.schedule.pop(name, None)
        interface.spec = spec
        self._schedule(interface, patch.schedule)
        if changes.get("primary"):
            self.set_primary(spec.mac)
        return spec

    def _schedule(self, interface: _Interface, schedule: Mapping[str, Any]) -> None:
        now = self.clock()
        for key, entries in schedule.items():
            timed = sorted(((now + t, v) for t, v in entries), key=lambda e: e[0])
            interface.schedule[key] = timed

    def remove_nic(self, mac: str) -> None:
        self._interfaces.remove(self._find(mac))

    def set_primary(self, mac: str) -> None:
        """Serve MAC's NIC first."""
        interface = self._find(mac)
        self._interfaces.remove(interface)
        self._interfaces.insert(0, interface)

    def set_raw(self, path: str, text: str | None) -> None:
        """Serve TEXT in place of the network document (None: the NICs again)."""
        if path.strip("/").partition("?")[0] != NETWORK_PATH:
            raise ValueError(f"only {NETWORK_PATH} can be replaced")
        self._raw = text

    def network(self) -> dict[str, Any]:
        now = self.clock()
        return {"interface": [i.entry(now) for i in self._interfaces]}

    def document(self) -> str:
        """The body served at /metadata/instance/network now."""
        if self._raw is not None:
            return self._raw
        return json.dumps(self.network(), indent=2)

    # --- control ------------------------------------------------------------------------

    def add_control_routes(self, app: web.Application) -> None:
        """Its own control calls (control.control_app adds /ready, faults, stats)."""
        control.add_nic_routes(app, self)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"nics": [spec, ...], "raw": text, "fault": {...}, "rate_limit": n or null}"""
        for spec in data.get("nics", []):
            self.add_nic(spec)
        if data.get("raw") is not None:
            self.set_raw(NETWORK_PATH, str(data["raw"]))
        if "rate_limit" in data:
            self.rate_limit = data["rate_limit"]
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    @staticmethod
    def lab_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
        """The InterfaceSpec of a lab plan: every planned IPv4 an IP configuration (the
        first the primary one), the plan's IPv4 subnet, its IPv6 addresses and subnet. The
        gateway is implicit (subnet + 1), as the lab's router has it."""
        spec: dict[str, Any] = {
            "mac": plan["mac"],
            "primary": bool(plan.get("primary", False)),
            "private_ipv4s": list(plan.get("ipv4s", [])),
            "subnets4": [plan["subnet4"]] if plan.get("subnet4") else [],
        }
        if plan.get("subnet6") is not None:
            spec["private_ipv6s"] = list(plan.get("ipv6s", []))
            spec["subnets6"] = [plan["subnet6"]]
        return spec

    # --- serving ------------------------------------------------------------------------

    def _throttled(self) -> bool:
        """Counts this request; True when it is over the limit of the last second."""
        now = self.clock()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        self._recent.append(now)
        return self.rate_limit is not None and len(self._recent) > self.rate_limit

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        throttled = self._throttled()
        fault = self.active_fault()
        handled, response = await self._connection_fault(request, fault)
        if handled:
            return response
        if throttled or fault == "429":
            return web.Response(status=429, text=THROTTLED, content_type="text/plain")
        status, body = self._route(request, fault)
        if fault == "slow" and status == 200:
            return await self._trickle(request, body)
        return web.Response(status=status, text=body, content_type="application/json")

    def _route(self, request: web.Request, fault: str) -> tuple[int, str]:
        path = request.path.strip("/")
        if not path.startswith("metadata"):
            return 404, json.dumps({"error": "Not found"})
        if (
            request.headers.get("Metadata", "").lower() != "true"
            or "X-Forwarded-For" in request.headers
            or fault == "400"
        ):
            return 400, json.dumps(HEADER_REFUSED)
        if request.method != "GET":
            return 405, json.dumps({"error": "Method not allowed"})
        if path == "metadata/versions":
            return 200, json.dumps({"apiVersions": sorted(VERSIONS)})
        if request.query.get("api-version") not in VERSIONS:
            return 400, json.dumps(
                {
                    "error": "Bad request. api-version is invalid or was not specified in"
                    " the request. For more information refer to aka.ms/azureimds",
                    "newest-versions": list(VERSIONS[:3]),
                }
            )
        if fault == "410":
            return 410, json.dumps(GONE)
        if path == NETWORK_PATH:
            return 200, self.document()
        if path == "metadata/instance":
            compute = {"azEnvironment": "AzurePublicCloud", "name": "lab-vm", "osType": "Linux"}
            return 200, json.dumps({"compute": compute, "network": self.network()})
        return 404, json.dumps({"error": "Not found"})


def _check_schedule(schedule: Mapping[str, Any]) -> None:
    for key in schedule:
        if key not in SCHEDULABLE:
            raise ValueError(f"schedule: {key!r} is not one of {', '.join(SCHEDULABLE)}")
