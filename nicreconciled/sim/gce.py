"""GCE's metadata server (``/computeMetadata/v1/``) for NICs, long poll included, with faults.

It serves what the daemon reads in the real shape (``sources/gce_parse.py`` and
``sources/gce.py`` say where each fact comes from): ``instance/network-interfaces/`` as one
JSON array with ``recursive=true`` (keys sorted, compact, the NIC with index 0 first), as a
directory listing without it, and each entry and value below it by its kebab-case name
(``0/forwarded-ips/0``, as nm-cloud-setup reads them); ``instance/vlan-network-interfaces/``
(dynamic NICs, ``{}`` unless scripted); ``instance/id``. Every request needs
``Metadata-Flavor: Google`` and no ``X-Forwarded-For``; anything else is refused with 403.
Every answer carries ``Metadata-Flavor: Google`` and an ``ETag``: a hash of the body, so one
version of a document has one ETag.

The long poll: ``wait_for_change=true`` holds the request until the body's ETag differs from
``last_etag`` (or, without it, from the body's when the request came) or ``timeout_sec``
passes (then the unchanged body, same ETag). A NIC added, changed or removed, a scripted
change coming due (``schedule``) and ``PUT /raw`` all end a hold at once; so does a fault set
meanwhile (5xx, hang, reset, oversize, 403 then apply to the held request, as to a new one).

A NIC field can be scheduled to change (or vanish) some seconds after the NIC was added, so
late propagation can be scripted; ``PUT /raw`` serves any text in place of the NIC document
(or of the dynamic NICs' one).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from ipaddress import ip_network
from typing import Any

from aiohttp import web

from nicreconciled.model import normalize_mac
from nicreconciled.sim import control
from nicreconciled.sim.gce_doc import FIELD_KEYS, NicSpec, ScriptedNic, etag_of, listing, walk
from nicreconciled.sim.server import FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize", "403")
#: Faults that end a hold: the held request then meets them as a new one would.
_ABORTING = frozenset({"5xx", "hang", "reset", "oversize", "403"})
INSTANCE = "computeMetadata/v1/instance/"
NICS_PATH = INSTANCE + "network-interfaces/"
VLANS_PATH = INSTANCE + "vlan-network-interfaces/"
FLAVOR = "Google"
#: timeout_sec is capped here; without it a long poll holds this long at most.
MAX_HOLD = 3600
INSTANCE_ID = "4520031799277581759"


class GceSim(FaultyServer):
    """Simulator state plus its aiohttp application; drive it in-process or over control."""

    MODES = MODES
    #: Names the metadata URL in the ready line of ``python -m nicreconciled.sim``.
    READY_KEY = "gce"
    #: Secondary private IPv4s a lab NIC may carry: none (GCE's extra addresses are alias
    #: ranges, routed to the NIC, not assigned to it).
    LAB_SECONDARIES = 0
    #: The lab's IPv6 plan (an on-link /64) is not GCE's (a /128 behind a link-local router).
    LAB_IPV6 = False
    #: The plan key of ranges routed to a lab NIC (``lab_spec``: alias IP ranges).
    LAB_RANGES = "ip_aliases"

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, slow_seconds: float = 5.0
    ) -> None:
        self._nics: list[ScriptedNic] = []
        self._raw: dict[str, str] = {}
        self._vlans: dict[str, Any] = {}
        self._changed: asyncio.Event | None = None
        self._closing = False
        #: Long polls being held now; answered so far, and of those with a new ETag.
        self.holding = 0
        self.long_polls = 0
        self.long_polls_changed = 0
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        return {
            **super().stats(include_log),
            "long_polls": self.long_polls,
            "long_polls_changed": self.long_polls_changed,
        }

    # --- state --------------------------------------------------------------------------

    def nics(self) -> list[NicSpec]:
        return [nic.spec for nic in self._nics]

    def _find(self, mac: str) -> ScriptedNic:
        mac = normalize_mac(mac)
        for nic in self._nics:
            if nic.spec.mac == mac:
                return nic
        raise KeyError(mac)

    def add_nic(self, spec: NicSpec | Mapping[str, Any]) -> NicSpec:
        """Add a NIC at its index (the next free one when none is given); its schedule
        counts from now."""
        spec = spec if isinstance(spec, NicSpec) else NicSpec.model_validate(spec)
        if any(n.spec.mac == spec.mac for n in self._nics):
            raise ValueError(f"NIC {spec.mac} exists")
        taken = {n.index for n in self._nics}
        index = spec.index if spec.index is not None else max(taken, default=-1) + 1
        if index in taken:
            raise ValueError(f"index {index} is taken")
        spec = spec.model_copy(update={"index": index})
        nic = ScriptedNic(spec, index)
        self._schedule(nic, spec.schedule)
        self._nics = sorted([*self._nics, nic], key=lambda n: n.index)
        self._notify()
        return spec

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> NicSpec:
        """Change fields (validated before anything changes); a changed key's pending
        schedule is dropped, a new schedule counts from now. The index stays."""
        nic = self._find(mac)
        if "mac" in changes and normalize_mac(str(changes["mac"])) != nic.spec.mac:
            raise ValueError("the MAC of a NIC cannot change")
        if changes.get("index", nic.index) != nic.index:
            raise ValueError("the index of a NIC cannot change")
        patch = NicSpec.model_validate({"mac": nic.spec.mac, **changes})
        merged = {**nic.spec.model_dump(), **changes}
        merged["schedule"] = {**nic.spec.schedule, **patch.schedule}
        spec = NicSpec.model_validate(merged)
        for name, key in FIELD_KEYS.items():
            if name in changes:
                nic.schedule.pop(key, None)
        nic.spec = spec
        self._schedule(nic, patch.schedule)
        self._notify()
        return spec

    def _schedule(self, nic: ScriptedNic, schedule: Mapping[str, list[tuple[float, Any]]]) -> None:
        now = self.clock()
        for key, entries in schedule.items():
            nic.schedule[key] = sorted(((now + t, v) for t, v in entries), key=lambda e: e[0])

    def remove_nic(self, mac: str) -> None:
        """Gone from the array (the NICs after it move up: GCE itself never detaches one)."""
        self._nics.remove(self._find(mac))
        self._notify()

    def set_raw(self, path: str, text: str | None) -> None:
        """Serve TEXT in place of the NIC document or the dynamic NICs' (None: the real)."""
        key = path.strip("/") + "/"
        if key not in (NICS_PATH, VLANS_PATH):
            raise ValueError(f"only {NICS_PATH} or {VLANS_PATH} can be replaced")
        if text is None:
            self._raw.pop(key, None)
        else:
            self._raw[key] = text
        self._notify()

    def set_vlans(self, data: Mapping[str, Any]) -> None:
        """The dynamic NICs: parent index -> VLAN id -> {mac, ip, ...}."""
        self._vlans = json.loads(json.dumps(dict(data)))
        self._notify()

    def _document_value(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [nic.values(now) for nic in self._nics]

    def document(self) -> str:
        """The body served at network-interfaces/?recursive=true now."""
        if NICS_PATH in self._raw:
            return self._raw[NICS_PATH]
        return json.dumps(self._document_value(), sort_keys=True, separators=(",", ":"))

    def _next_due(self) -> float | None:
        now = self.clock()
        due = [w for n in self._nics for e in n.schedule.values() for w, _ in e if w > now]
        return min(due, default=None)

    # --- holds --------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def wake(self) -> None:
        super().wake()
        self._notify()

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing = True
        await super()._on_shutdown(app)

    async def _hold(self, path: str, recursive: bool, reference: str, seconds: int) -> None:
        """Until PATH's body has another ETag than REFERENCE, SECONDS pass, an aborting fault
        is set, or the server stops."""
        self.holding += 1
        try:
            await self._held(path, recursive, reference, seconds)
        finally:
            self.holding -= 1

    async def _held(self, path: str, recursive: bool, reference: str, seconds: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._closing:
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            status, body, _ = self._content(path, recursive)
            if status != 200 or etag_of(body) != reference:
                return
            if self.active_fault() in _ABORTING:
                return
            wait = deadline - loop.time()
            due = self._next_due()
            if due is not None:
                wait = min(wait, max(due - self.clock(), 0.0) + 0.001)
            if wait <= 0:
                return
            try:
                async with asyncio.timeout(wait):
                    await changed.wait()
            except TimeoutError:
                if loop.time() >= deadline:
                    return

    # --- control ------------------------------------------------------------------------

    def add_control_routes(self, app: web.Application) -> None:
        """Its own control calls (control.control_app adds /ready, faults, stats)."""
        control.add_nic_routes(app, self)

        async def vlans(request: web.Request) -> web.Response:
            self.set_vlans(await control.body(request))
            return web.json_response(self._vlans)

        app.router.add_put("/vlans", vlans)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"nics": [spec, ...], "vlans": {...}, "raw": text, "fault": {"mode", "duration"}}"""
        for spec in data.get("nics", []):
            self.add_nic(spec)
        if data.get("vlans"):
            self.set_vlans(data["vlans"])
        if data.get("raw") is not None:
            self.set_raw(NICS_PATH, str(data["raw"]))
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    @staticmethod
    def lab_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
        """The NicSpec of a lab plan: index = device number, ``ipv4s[0]`` its IP (no
        secondaries), the subnet's mask, its gateway, MTU 1460; GCE's own plan keys
        ``ip_aliases``, ``forwarded_ips``, ``mtu`` when given; IPv6 (a /128 behind the
        router) when the plan has it. Table 10000 + device number."""
        spec: dict[str, Any] = {
            "mac": plan["mac"],
            "index": int(plan.get("device_number", 0)),
            "ip": plan["ipv4s"][0] if plan.get("ipv4s") else None,
            "subnetmask": str(ip_network(plan["subnet4"]).netmask) if plan.get("subnet4") else None,
            "gateway": plan.get("gateway4"),
            "mtu": int(plan.get("mtu", 1460)),
            "ip_aliases": list(plan.get("ip_aliases", [])),
            "forwarded_ips": list(plan.get("forwarded_ips", [])),
        }
        if plan.get("ipv6s"):
            spec["ipv6s"] = list(plan["ipv6s"])
            spec["gateway_ipv6"] = plan.get("gateway6")
        return spec

    # --- serving ------------------------------------------------------------------------

    def _content(self, path: str, recursive: bool) -> tuple[int, str, str]:
        """(status, body, content type) of PATH (no leading slash) now."""
        if path == INSTANCE + "id":
            return 200, INSTANCE_ID, "application/text"
        for base in (NICS_PATH, VLANS_PATH):
            if path + "/" == base or path.startswith(base):
                break
        else:
            return 404, "Not Found", "text/html"
        rest = [p for p in path[len(base) :].split("/") if p]
        if base in self._raw:
            if rest:
                return 404, "Not Found", "text/html"
            return 200, self._raw[base], "application/json"
        tree: Any = self._document_value() if base == NICS_PATH else self._vlans
        try:
            value = walk(tree, rest)
        except KeyError:
            return 404, "Not Found", "text/html"
        if isinstance(value, dict | list):
            if recursive:
                return (
                    200,
                    json.dumps(value, sort_keys=True, separators=(",", ":")),
                    ("application/json"),
                )
            return 200, listing(value), "application/text"
        return 200, str(value), "application/text"

    @staticmethod
    def _refused(request: web.Request, fault: str) -> tuple[int, str] | None:
        if request.headers.get("Metadata-Flavor") != FLAVOR or fault == "403":
            return 403, "Missing or wrong Metadata-Flavor header; Google is expected.\n"
        if "X-Forwarded-For" in request.headers:
            return 403, "Request rejected: X-Forwarded-For header present.\n"
        if request.method != "GET":
            return 405, "Method Not Allowed\n"
        return None

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        path = request.path.lstrip("/")
        if not path.startswith("computeMetadata/"):
            return web.Response(status=404, text="Not Found")
        query = request.query
        recursive = query.get("recursive", "").lower() == "true"
        hold: int | None = None
        if query.get("wait_for_change", "").lower() == "true":
            timeout = query.get("timeout_sec", str(MAX_HOLD))
            if not timeout.isdigit() or int(timeout) < 1:
                return web.Response(status=400, text="invalid timeout_sec\n")
            hold = min(int(timeout), MAX_HOLD)
        reference = query.get("last_etag")
        while True:
            fault = self.active_fault()
            handled, response = await self._connection_fault(request, fault)
            if handled:
                return response
            refused = self._refused(request, fault)
            if refused is not None:
                return web.Response(status=refused[0], text=refused[1], headers=_HEADERS)
            status, body, kind = self._content(path, recursive)
            if status != 200 or hold is None:
                break
            if reference is None:
                reference = etag_of(body)
            await self._hold(path, recursive, reference, hold)
            if self.active_fault() not in _ABORTING:
                status, body, kind = self._content(path, recursive)
                self.long_polls += 1
                self.long_polls_changed += status == 200 and etag_of(body) != reference
                break
        headers = {**_HEADERS, "ETag": etag_of(body)} if status == 200 else _HEADERS
        if self.active_fault() == "slow" and status == 200:
            return await self._trickle(request, body, headers=headers)
        return web.Response(status=status, text=body, content_type=kind, headers=headers)


_HEADERS = {"Metadata-Flavor": FLAVOR, "Server": "Metadata Server for VM"}
