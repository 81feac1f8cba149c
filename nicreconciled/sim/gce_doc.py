"""GCE's metadata simulator, the document side: a scripted NIC (``NicSpec``), the values it
serves at a moment (its schedule applied), and how the server's paths, listings and ETags are
made from them. ``sim/gce.py`` serves them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nicreconciled.model import Mac

#: NicSpec field -> the document's key.
FIELD_KEYS = {
    "ip": "ip",
    "subnetmask": "subnetmask",
    "gateway": "gateway",
    "mtu": "mtu",
    "ip_aliases": "ipAliases",
    "forwarded_ips": "forwardedIps",
    "forwarded_ipv6s": "forwardedIpv6s",
    "target_instance_ips": "targetInstanceIps",
    "ipv6s": "ipv6s",
    "gateway_ipv6": "gatewayIpv6",
    "network": "network",
    "dns_servers": "dnsServers",
}


class NicSpec(BaseModel):
    """One scripted NIC; values are served as given, None = key absent.

    ``index``: its place in the array (nic<index>); the next free one when not given.
    ``schedule`` maps a document key (``ipAliases``, ...) to ``[[t, value], ...]``: from ``t``
    seconds after the NIC was added (or PATCHed) the key serves ``value`` (null: absent).
    """

    model_config = ConfigDict(extra="forbid")

    mac: Mac
    index: int | None = Field(default=None, ge=0, le=63)
    ip: str | None = None
    subnetmask: str | None = None
    gateway: str | None = None
    mtu: int | None = 1460
    ip_aliases: list[str] | None = Field(default_factory=list)
    forwarded_ips: list[str] | None = Field(default_factory=list)
    forwarded_ipv6s: list[str] | None = None
    target_instance_ips: list[str] | None = Field(default_factory=list)
    ipv6s: list[str] | None = None
    gateway_ipv6: str | None = None
    network: str | None = "projects/123456789012/networks/default"
    dns_servers: list[str] | None = Field(default_factory=lambda: ["169.254.169.254"])
    #: None: no access config; "": one without an address (as on a NIC without one).
    external_ip: str | None = None
    schedule: dict[str, list[tuple[float, Any]]] = Field(default_factory=dict)

    def base_values(self) -> dict[str, Any]:
        configs = [] if self.external_ip is None else [{"externalIp": self.external_ip}]
        values: dict[str, Any] = {
            "mac": self.mac,
            "accessConfigs": [c | {"type": "ONE_TO_ONE_NAT"} for c in configs],
        }
        for name, key in FIELD_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                values[key] = value
        return values


@dataclass
class ScriptedNic:
    spec: NicSpec
    index: int
    #: key -> [(absolute clock time, value)], sorted by time.
    schedule: dict[str, list[tuple[float, Any]]] = field(default_factory=dict)

    def values(self, now: float) -> dict[str, Any]:
        values = self.spec.base_values()
        for key, entries in self.schedule.items():
            for when, value in entries:
                if when <= now:
                    values[key] = value
        return {k: v for k, v in values.items() if v is not None}


def etag_of(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _kebab(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", key).lower()


def listing(value: dict[str, Any] | list[Any]) -> str:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    names = [
        f"{_kebab(str(k)) if isinstance(value, dict) else k}"
        + ("/" if isinstance(v, dict | list) else "")
        for k, v in items
    ]
    return "".join(f"{name}\n" for name in names)


def walk(value: Any, parts: list[str]) -> Any:
    """The value at PARTS below VALUE (kebab-case names, list indexes); KeyError if none."""
    for part in parts:
        if isinstance(value, dict):
            names = {_kebab(k): k for k in value}
            value = value[names[part]]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value
