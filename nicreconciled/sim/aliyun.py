"""Alibaba Cloud ECS's metadata service (100.100.100.200), with tokens and injectable faults.

It serves the real shape (see ``sources/aliyun.py`` for where each fact comes from): EC2-like
directories under ``/latest/meta-data/`` (and ``/2016-01-01/``, which nm-cloud-setup and
cloud-init read), ``mac`` for the primary NIC, ``network/interfaces/macs/`` with one
``<mac>/`` per ENI, ``private-ipv4s`` as a JSON array and ``ipv6s`` as a bracketed list
without quotes, 404 for a key the ENI does not have.

Tokens as in hardened mode: ``PUT /latest/api/token`` with
``X-aliyun-ecs-metadata-token-ttl-seconds`` 1..21600 (else 400; 403 with an
``X-Forwarded-For`` header), ``X-aliyun-ecs-metadata-token`` on every GET: an unknown or
expired token is refused with 401; no token at all with 403 while ``hardened`` (the
default: the mode an instance can be set to, and the one nm-cloud-setup fails in), else
answered. Every request's token is logged (``stats()["token_log"]``), so a test can tell
that a client sent one on every request and renewed it.

Every per-MAC key can be scheduled to change or vanish some seconds after the ENI was added
(late propagation); ``set_raw`` serves any text at any path.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nicreconciled.model import Mac, normalize_mac
from nicreconciled.sim import control
from nicreconciled.sim.server import LOG_LIMIT, FaultyServer

MODES = ("none", "5xx", "hang", "reset", "slow", "oversize", "401", "403", "token-fail")
#: Fault modes, plus one one-shot action ("invalidate-tokens") that leaves the mode alone.
FAULTS = (*MODES, "invalidate-tokens")
MAX_TTL = 21600
TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
MACS_DIR = "meta-data/network/interfaces/macs/"
#: The versions the service lists at its root; both serve the same tree here.
VERSIONS = ("2016-01-01", "latest")

#: NicSpec field -> the key it feeds.
FIELD_KEYS = {
    "network_interface_id": "network-interface-id",
    "primary_ip_address": "primary-ip-address",
    "private_ipv4s": "private-ipv4s",
    "vswitch_cidr_block": "vswitch-cidr-block",
    "netmask": "netmask",
    "gateway": "gateway",
    "vpc_cidr_block": "vpc-cidr-block",
    "ipv6s": "ipv6s",
    "vswitch_ipv6_cidr_block": "vswitch-ipv6-cidr-block",
    "ipv6_gateway": "ipv6-gateway",
}
_TTL = re.compile(r"[0-9]{1,6}")

Value = str | list[str] | None


def served(key: str, value: Value) -> str | None:
    """The text the service answers for KEY: lists in the key's own shape; an empty list
    or None is no answer (404)."""
    if not isinstance(value, list):
        return value
    if not value:
        return None
    if key == "private-ipv4s":
        return json.dumps(value, separators=(",", ":"))
    return "[" + ",".join(value) + "]"


class AliyunNicSpec(BaseModel):
    """One scripted ENI; values are served as given (garbage included), None = 404.

    ``schedule`` maps a key (``ipv6s``, ...) to ``[[t, value], ...]``: from ``t`` seconds
    after the ENI was added (or PATCHed) the key serves ``value`` (a text, a list in the
    key's shape, or null: 404). ``primary``: this ENI's MAC is ``meta-data/mac``.
    """

    model_config = ConfigDict(extra="forbid")

    mac: Mac
    primary: bool = False
    network_interface_id: str | None = None
    primary_ip_address: str | None = None
    private_ipv4s: list[str] | None = None
    vswitch_cidr_block: str | None = None
    #: None: the vSwitch block's netmask, when that is a network.
    netmask: str | None = None
    gateway: str | None = None
    vpc_cidr_block: str | None = None
    ipv6s: list[str] | None = None
    vswitch_ipv6_cidr_block: str | None = None
    ipv6_gateway: str | None = None
    schedule: dict[str, list[tuple[float, Value]]] = Field(default_factory=dict)

    def base_values(self) -> dict[str, str | None]:
        hexmac = self.mac.replace(":", "")
        values: dict[str, str | None] = {
            # Plausible where the script gives none, so the directory looks real.
            "network-interface-id": f"eni-bp1{hexmac}x",
            "vpc-id": "vpc-bp1e0g399hkd7c8q3xyz",
            "vswitch-id": f"vsw-bp1{hexmac[-6:]}",
        }
        for name, key in FIELD_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                values[key] = served(key, value)
        if self.netmask is None and self.vswitch_cidr_block is not None:
            with contextlib.suppress(ValueError):  # garbage on purpose: no netmask either
                values["netmask"] = str(ip_network(self.vswitch_cidr_block).netmask)
        return values


@dataclass
class _Nic:
    spec: AliyunNicSpec
    #: key -> [(absolute monotonic time, text or None)], sorted by time.
    schedule: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)

    def values(self, now: float) -> dict[str, str]:
        values = self.spec.base_values()
        for key, entries in self.schedule.items():
            for when, text in entries:
                if when <= now:
                    values[key] = text
        return {k: v for k, v in values.items() if v is not None}


class AliyunSim(FaultyServer):
    """Simulator state plus its aiohttp application; drive it in-process or over control."""

    MODES = MODES
    READY_KEY = "aliyun"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str = "i-bp13znx0m0me8cquuxyz",
        slow_seconds: float = 5.0,
        hardened: bool = True,
    ) -> None:
        self.instance_id = instance_id
        self.hardened = hardened
        self.primary: str | None = None
        self._nics: dict[str, _Nic] = {}
        self._raw: dict[str, str | None] = {}
        #: token -> (its number, 1 for the first issued; expiry)
        self._tokens: dict[str, tuple[int, float]] = {}
        self.tokens_issued = 0
        super().__init__(clock=clock, slow_seconds=slow_seconds)

    def reset_stats(self) -> None:
        super().reset_stats()
        #: (time, method, path, token state, token number or 0, TTL asked for or "")
        self.token_log: deque[tuple[float, str, str, str, int, str]] = deque(maxlen=LOG_LIMIT)

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        """FaultyServer's, plus ``tokens`` (states counted) and, with the log,
        ``token_log``: per request its token's state (``valid``, ``expired``, ``unknown``,
        ``missing``; ``issued``/``refused`` for a PUT) and number (1 = the first issued)."""
        out = super().stats(include_log)
        states = Counter(state for _, _, _, state, _, _ in self.token_log)
        out["tokens"] = {"issued": self.tokens_issued, "by_state": dict(states)}
        if include_log:
            out["token_log"] = [
                {"t": t, "method": m, "path": p, "token": s, "number": n, "ttl": ttl}
                for t, m, p, s, n, ttl in self.token_log
            ]
        return out

    # --- state (in-process API; the control socket calls the same methods) --------------

    def nics(self) -> list[AliyunNicSpec]:
        return [nic.spec for nic in self._nics.values()]

    def add_nic(self, spec: AliyunNicSpec | Mapping[str, Any]) -> AliyunNicSpec:
        """Add an ENI (its schedule counts from now); the first one, or one marked
        ``primary``, is the primary NIC."""
        spec = spec if isinstance(spec, AliyunNicSpec) else AliyunNicSpec.model_validate(spec)
        if spec.mac in self._nics:
            raise ValueError(f"NIC {spec.mac} exists")
        nic = _Nic(spec)
        self._schedule(nic, spec.schedule)
        self._nics[spec.mac] = nic
        if self.primary is None or spec.primary:
            self.primary = spec.mac
        return spec

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> AliyunNicSpec:
        """Change fields (validated before anything changes); a changed key's pending
        schedule is dropped, a new schedule counts from now."""
        nic = self._nics[normalize_mac(mac)]
        if "mac" in changes and normalize_mac(str(changes["mac"])) != nic.spec.mac:
            raise ValueError("the MAC of a NIC cannot change")
        patch = AliyunNicSpec.model_validate({"mac": nic.spec.mac, **changes})
        merged = {**nic.spec.model_dump(), **changes}
        merged["schedule"] = {**nic.spec.schedule, **patch.schedule}
        spec = AliyunNicSpec.model_validate(merged)
        for name, key in FIELD_KEYS.items():
            if name in changes:
                nic.schedule.pop(key, None)
        nic.spec = spec
        self._schedule(nic, patch.schedule)
        if changes.get("primary"):
            self.primary = spec.mac
        return spec

    def _schedule(self, nic: _Nic, schedule: Mapping[str, list[tuple[float, Value]]]) -> None:
        now = self.clock()
        for key, entries in schedule.items():
            timed = ((now + t, served(key, value)) for t, value in entries)
            nic.schedule[key] = sorted(timed, key=lambda e: e[0])

    def remove_nic(self, mac: str) -> None:
        del self._nics[normalize_mac(mac)]

    def set_primary(self, mac: str) -> None:
        self.primary = normalize_mac(mac)

    def set_raw(self, path: str, text: str | None) -> None:
        """Serve TEXT at PATH under /latest/ (None: what the ENIs say again)."""
        path = path.removeprefix("/").removeprefix("latest/")
        if text is None:
            self._raw.pop(path, None)
        else:
            self._raw[path] = text

    def set_fault(self, mode: str, duration: float | None = None) -> None:
        """Inject a fault for DURATION seconds (None: until changed); "invalidate-tokens"
        revokes every token at once and leaves the mode alone."""
        if mode == "invalidate-tokens":
            self._tokens.clear()
            return
        super().set_fault(mode, duration)

    # --- control ------------------------------------------------------------------------

    def add_control_routes(self, app: web.Application) -> None:
        """/nics, /raw, /primary, and PUT /mode {"hardened": bool}."""
        control.add_nic_routes(app, self)

        async def mode(request: web.Request) -> web.Response:
            hardened = (await control.body(request)).get("hardened")
            if not isinstance(hardened, bool):
                raise ValueError("need {hardened: true|false}")
            self.hardened = hardened
            return web.json_response({"hardened": hardened})

        app.router.add_put("/mode", mode)

    def load_scenario(self, data: Mapping[str, Any]) -> None:
        """{"nics": [spec, ...], "primary": mac, "raw": {path: text}, "hardened": bool,
        "fault": {"mode": ..., "duration": ...}}"""
        for spec in data.get("nics", []):
            self.add_nic(spec)
        if data.get("primary"):
            self.set_primary(str(data["primary"]))
        for path, text in dict(data.get("raw", {})).items():
            self.set_raw(path, text)
        if "hardened" in data:
            self.hardened = bool(data["hardened"])
        if data.get("fault"):
            self.set_fault(data["fault"]["mode"], data["fault"].get("duration"))

    @staticmethod
    def lab_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
        """The AliyunNicSpec of a cloud-neutral lab plan (``Eni.plan_dict``): the first IPv4
        is the primary private IP, all of them are ``private-ipv4s``."""
        ipv4s = list(plan.get("ipv4s", []))
        spec: dict[str, Any] = {
            "mac": plan["mac"],
            "primary": bool(plan.get("primary", False)),
            "primary_ip_address": ipv4s[0] if ipv4s else None,
            "private_ipv4s": ipv4s or None,
            "vswitch_cidr_block": plan.get("subnet4"),
            "gateway": plan.get("gateway4"),
        }
        if plan.get("subnet6") is not None:
            spec["vswitch_ipv6_cidr_block"] = plan["subnet6"]
            spec["ipv6s"] = list(plan.get("ipv6s", []))
            spec["ipv6_gateway"] = plan.get("gateway6")
        return spec

    # --- serving ------------------------------------------------------------------------

    async def _answer(self, request: web.Request) -> web.StreamResponse | None:
        fault = self.active_fault()
        handled, response = await self._connection_fault(request, fault)
        if handled:
            return response
        status, body = self._route(request, fault)
        if fault == "slow":
            return await self._trickle(request, body, status=status)
        return web.Response(status=status, text=body, content_type="text/plain")

    def _log_token(self, request: web.Request, state: str, number: int = 0, ttl: str = "") -> None:
        self.token_log.append((self.clock(), request.method, request.path, state, number, ttl))

    def _issue(self, request: web.Request, fault: str) -> tuple[int, str]:
        ttl = request.headers.get(TTL_HEADER, "")
        if fault == "token-fail" or "X-Forwarded-For" in request.headers:
            self._log_token(request, "refused", ttl=ttl)
            return 403, "Forbidden"
        if not _TTL.fullmatch(ttl) or not 1 <= int(ttl) <= MAX_TTL:
            self._log_token(request, "refused", ttl=ttl)
            return 400, "Missing or Invalid Parameters"
        now = self.clock()
        self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        token = secrets.token_urlsafe(32)
        self.tokens_issued += 1
        self._tokens[token] = (self.tokens_issued, now + int(ttl))
        self._log_token(request, "issued", self.tokens_issued, ttl)
        return 200, token

    def _route(self, request: web.Request, fault: str) -> tuple[int, str]:
        version, _, path = request.path.removeprefix("/").partition("/")
        if request.method == "PUT" and request.path == "/latest/api/token":
            return self._issue(request, fault)
        if version not in VERSIONS:
            return (200, "\n".join(VERSIONS)) if not request.path.strip("/") else (404, "Not Found")
        if request.method != "GET":
            return 405, "Method Not Allowed"
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            self._log_token(request, "missing")
            if self.hardened:
                return 403, "Forbidden"
        else:
            number, expiry = self._tokens.get(token, (0, 0.0))
            state = "unknown" if not number else "expired" if expiry <= self.clock() else "valid"
            self._log_token(request, state, number)
            if state != "valid" or fault == "401":
                return 401, "Unauthorized"
        if fault == "403":
            return 403, "Forbidden"
        body = self.lookup(path)
        return (404, "Not Found") if body is None else (200, body)

    def lookup(self, path: str) -> str | None:
        """The body served at PATH (relative to /latest/), None for 404. Tokens aside."""
        if path in self._raw:
            return self._raw[path]
        parts = [p for p in path.split("/") if p]
        fixed = {
            ("meta-data",): "instance-id\nmac\nnetwork/\nnetwork-type\nregion-id",
            ("meta-data", "instance-id"): self.instance_id,
            ("meta-data", "network-type"): "vpc",
            ("meta-data", "region-id"): "cn-hangzhou",
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
        return values.get(parts[5])
