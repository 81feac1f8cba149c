"""An IMDSv2 simulator with scripted, time-dependent NICs and injectable faults.

It follows the IMDSv2 rules the daemon depends on (token PUT with a TTL header, 401 without
a valid token, 404 for missing keys, text/plain bodies, directory listings ending
subdirectories with '/') and reproduces the propagation races of a real attach: every NIC
key can be scheduled to change, vanish or answer 404 while still listed, at a given number
of seconds after the NIC was added.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nicreconciled.model import Mac, normalize_mac
from nicreconciled.sim import control
from nicreconciled.sim.server import FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize", "401", "token-fail")

#: Fault modes, plus one one-shot action ("invalidate-tokens") that leaves the mode alone.
FAULTS = (*MODES, "invalidate-tokens")
#: Schedule (or raw) value meaning "listed in the directory, but the key answers 404".
LISTED_404 = "__404__"
MAX_TTL = 21600
MACS_DIR = "meta-data/network/interfaces/macs/"

#: NicSpec field -> the IMDS key it feeds.
FIELD_KEYS = {
    "device_number": "device-number",
    "network_card": "network-card",
    "interface_id": "interface-id",
    "local_ipv4s": "local-ipv4s",
    "subnet_ipv4_cidr": "subnet-ipv4-cidr-block",
    "ipv6s": "ipv6s",
    "subnet_ipv6_cidrs": "subnet-ipv6-cidr-blocks",
    "ipv4_prefixes": "ipv4-prefix",
    "ipv6_prefixes": "ipv6-prefix",
    "subnet_id": "subnet-id",
    "vpc_id": "vpc-id",
}
_TTL = re.compile(r"[0-9]{1,6}")


class NicSpec(BaseModel):
    """One scripted NIC. Values are served as given (garbage included), lists joined by '\\n'.

    ``schedule`` maps an IMDS key to ``[[t, text_or_null], ...]``: from ``t`` seconds after the
    NIC was added (after the PATCH, for a PATCHed schedule) the key serves ``text``; null
    removes it from the listing and "__404__" keeps it listed but answering 404.
    """

    model_config = ConfigDict(extra="forbid")

    mac: Mac
    device_number: int | None = 1
    network_card: int | None = None
    interface_id: str | None = None
    local_ipv4s: list[str] = Field(default_factory=list)
    subnet_ipv4_cidr: str | None = None
    ipv6s: list[str] = Field(default_factory=list)
    subnet_ipv6_cidrs: list[str] = Field(default_factory=list)
    ipv4_prefixes: list[str] = Field(default_factory=list)
    ipv6_prefixes: list[str] = Field(default_factory=list)
    subnet_id: str | None = None
    vpc_id: str | None = None
    schedule: dict[str, list[tuple[float, str | None]]] = Field(default_factory=dict)
    listed_404: list[str] = Field(default_factory=list)

    def base_values(self) -> dict[str, str | None]:
        """Key -> served text before any schedule applies (None = not listed)."""
        hexmac = self.mac.replace(":", "")
        # Plausible ids where the script gives none, so the directory looks real.
        values: dict[str, str | None] = {
            "mac": self.mac,
            "interface-id": f"eni-0{hexmac}abcd",
            "subnet-id": f"subnet-0{hexmac[-8:]}",
            "vpc-id": "vpc-0a1b2c3d4e5f60718",
        }
        for name, key in FIELD_KEYS.items():
            value = getattr(self, name)
            if isinstance(value, list):
                value = "\n".join(value) or None  # an empty list is an absent key
            if value is not None:
                values[key] = str(value)
            elif key not in values:
                values[key] = None
        values.update(dict.fromkeys(self.listed_404, LISTED_404))
        return values


@dataclass
class _Nic:
    spec: NicSpec
    #: key -> [(absolute monotonic time, text)], sorted by time.
    schedule: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)

    def values(self, now: float) -> dict[str, str | None]:
        values = self.spec.base_values()
        for key, entries in self.schedule.items():
            for when, text in entries:
                if when <= now:
                    values[key] = text
        return {k: v for k, v in values.items() if v is not None}


class ImdsSim(FaultyServer):
    """Simulator state plus its aiohttp application; drive it in-process or over control."""

    MODES = MODES
    #: Names the metadata URL in the ready line of ``python -m nicreconciled.sim``.
    READY_KEY = "imds"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str = "i-0123456789abcdef0",
        slow_seconds: float = 5.0,
    ) -> None:
        self.instance_id = instance_id
        self.primary: str | None = None
        self._nics: dict[str, _Nic] = {}
        self._raw: dict[str, str] = {}
        self._tokens: dict[str, float] = {}
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    # --- state (in-process API; the control socket calls the same methods) --------------

    def nics(self) -> list[NicSpec]:
        return [nic.spec for nic in self._nics.values()]

    def add_nic(self, spec: NicSpec | Mapping[str, Any]) -> NicSpec:
        """Add a NIC; its schedule counts from now. The first NIC becomes the primary."""
        spec = spec if isinstance(spec, NicSpec) else NicSpec.model_validate(spec)
        if spec.mac in self._nics:
            raise ValueError(f"NIC {spec.mac} exists")
        nic = _Nic(spec)
        self._schedule(nic, spec.schedule)
        self._nics[spec.mac] = nic
        if self.primary is None:
            self.primary = spec.mac
        return spec

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> NicSpec:
        """Change fields; a changed field's pending schedule is dropped, a new schedule's
        times count from now. Raises KeyError for an unknown MAC, ValueError for bad fields."""
        nic = self._nics[normalize_mac(mac)]
        if "mac" in changes and normalize_mac(str(changes["mac"])) != nic.spec.mac:
            raise ValueError("the MAC of a NIC cannot change")
        # Validate everything before changing anything.
        patch = NicSpec.model_validate(
            {"mac": nic.spec.mac, "schedule": changes.get("schedule", {})}
        )
        merged = {**nic.spec.model_dump(), **changes}
        merged["schedule"] = {**nic.spec.schedule, **patch.schedule}
        spec = NicSpec.model_validate(merged)
        for name, key in FIELD_KEYS.items():
            if name in changes:
                nic.schedule.pop(key, None)
        if "listed_404" in changes:
            for key in set(nic.spec.listed_404) | set(spec.listed_404):
                nic.schedule.pop(key, None)
        nic.spec = spec
        self._schedule(nic, patch.schedule)
        return spec

    def _schedule(self, nic: _Nic, schedule: Mapping[str, list[tuple[float, str | None]]]) -> None:
        now = self.clock()
        for key, entries in schedule.items():
            nic.schedule[key] = sorted(((now + t, text) for t, text in entries), key=lambda e: e[0])

    def remove_nic(self, mac: str) -> None:
        del self._nics[normalize_mac(mac)]

    def set_primary(self, mac: str) -> None:
        self.primary = normalize_mac(mac)

    def set_raw(self, path: str, text: str | None) -> None:
        """Serve TEXT (or, for "__404__", a 404) at PATH under /latest/; None removes it."""
        path = path.removeprefix("/").removeprefix("latest/")
        if text is None:
            self._raw.pop(path, None)
        else:
            self._raw[path] = text

    def set_fault(self, mode: str, duration: float | None = None) -> None:
        """Inject a fault for DURATION seconds (None: until changed).

        "invalidate-tokens" is one-shot: it revokes every token and leaves the mode alone.
        """
        if mode == "invalidate-tokens":
            if duration is not None and duration <= 0:
                raise ValueError("duration must be positive")
            self._tokens.clear()
            return
        super().set_fault(mode, duration)

    def add_control_routes(self, app: web.Application) -> None:
        """Its own control calls (control.control_app adds /ready, faults, stats)."""
        control.add_nic_routes(app, self)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"nics": [spec, ...], "primary": mac, "raw": {path: text}, "fault": {mode, duration}}"""
        for spec in data.get("nics", []):
            self.add_nic(spec)
        if data.get("primary"):
            self.set_primary(str(data["primary"]))
        for path, text in dict(data.get("raw", {})).items():
            self.set_raw(path, text)
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        fault = self.active_fault()
        handled, response = await self._connection_fault(request, fault)
        if handled:
            return response
        status, body, headers = self._route(request, fault)
        if fault == "slow":
            return await self._trickle(request, body, status=status, headers=headers)
        return web.Response(status=status, text=body, content_type="text/plain", headers=headers)

    def _route(self, request: web.Request, fault: str) -> tuple[int, str, dict[str, str]]:
        path = request.path
        if request.method == "PUT" and path == "/latest/api/token":
            if fault == "token-fail":
                return 403, "Forbidden", {}
            ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not _TTL.fullmatch(ttl) or not 1 <= int(ttl) <= MAX_TTL:
                return 400, "Bad Request", {}
            now = self.clock()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            token = secrets.token_urlsafe(42)
            self._tokens[token] = now + int(ttl)
            return 200, token, {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        if not path.startswith("/latest/"):
            return 404, "Not Found", {}
        if request.method != "GET":
            return 405, "Method Not Allowed", {}
        token = request.headers.get("X-aws-ec2-metadata-token", "")
        if fault == "401" or self._tokens.get(token, 0.0) <= self.clock():
            return 401, "Unauthorized", {}
        body = self.lookup(path.removeprefix("/latest/"))
        if body is None:
            return 404, "Not Found", {}
        return 200, body, {}

    def lookup(self, path: str) -> str | None:
        """The body served at PATH (relative to /latest/), None for 404. Tokens aside."""
        if path in self._raw:
            raw = self._raw[path]
            return None if raw == LISTED_404 else raw
        parts = [p for p in path.split("/") if p]
        fixed = {
            ("meta-data",): "instance-id\nmac\nnetwork/",
            ("meta-data", "instance-id"): self.instance_id,
            ("meta-data", "network"): "interfaces/",
            ("meta-data", "network", "interfaces"): "macs/",
            ("meta-data", "network", "interfaces", "macs"): "\n".join(
                f"{mac}/" for mac in self._nics
            ),
        }
        if tuple(parts) in fixed:
            return fixed[tuple(parts)]
        if parts == ["meta-data", "mac"]:
            return self.primary
        if len(parts) not in (5, 6) or parts[:4] != MACS_DIR.strip("/").split("/"):
            return None
        nic = self._nics.get(parts[4])
        if nic is None:
            return None
        values = nic.values(self.clock())
        if len(parts) == 5:
            return "\n".join(sorted(values))
        text = values.get(parts[5])
        return None if text == LISTED_404 else text
