"""Azure IMDS ``/metadata/instance/network``: the pure parser (text -> Observation).

Where each fact comes from is in ``sources/azure.py`` (the I/O) and ``docs/clouds/azure.md``.
The shape (Microsoft's IMDS page, MicrosoftDocs/azure-compute-docs
articles/virtual-machines/instance-metadata-service.md; captured answers in canonical/cloud-init
tests/unittests/sources/test_azure.py ``NETWORK_METADATA``, ``SECONDARY_INTERFACE``):

    {"interface": [{"macAddress": "000D3AF806EC",
                    "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4",
                                            "publicIpAddress": "104.46.124.81"}],
                             "subnet": [{"address": "10.0.0.0", "prefix": "24"}]},
                    "ipv6": {"ipAddress": [{"privateIpAddress": "fd00::4"}]}}]}

* Every primitive is a string, a missing value an empty string ("In json responses, all
  primitives will be of type string"): ``prefix`` is ``"24"``, a NIC without a public IP
  reads ``"publicIpAddress": ""``.
* ``macAddress`` is upper case without separators.
* The first ``ipAddress`` entry is the NIC's primary IP configuration, the address its DHCP
  lease carries; the others are secondary IP configurations (cloud-init
  ``generate_network_config_from_instance_network_metadata``: "First IPv4 and/or IPv6
  address will be obtained via DHCP", the rest static).
* No gateway, MTU or index field: the gateway is the subnet's first address + 1 ("x.x.x.1:
  Reserved by Azure for the default gateway", Azure virtual network FAQ; nm-cloud-setup's
  nmcs-provider-azure.c computes it the same way). IPv4 subnets are /29 or larger (same
  FAQ), so a longer prefix is garbage. IPv6 subnets are exactly /64 (same FAQ): where the
  answer lists no ``ipv6.subnet`` (Microsoft's sample lists none), each address's /64 is
  its subnet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

from nicreconciled.errors import MetadataError
from nicreconciled.model import MAX_ADDRESSES, Observation, RedFlag, key_to_mac, normalize_mac
from nicreconciled.sources.common import entries, make_state, parse_json, scalar

_T = TypeVar("_T")

#: The path read, relative to the endpoint; also the probe key of every flag.
NETWORK_PATH = "metadata/instance/network"
#: The API version asked for (FACTS.md; the one nm-cloud-setup's successors and cloud-init's
#: IMDS_VER_MIN predate): its ``network`` shape is the one above.
API_VERSION = "2021-02-01"
#: More NICs than any VM size takes (8 at most today).
MAX_INTERFACES = 64
#: Azure allows 256 IP configurations per NIC; more is garbage.
MAX_IP_CONFIGS = MAX_ADDRESSES
MAX_SUBNETS = 16
#: "The smallest supported IPv4 subnet is /29" (Azure virtual network FAQ).
LONGEST_PREFIX4 = 29
#: "IPv6 subnets must be exactly /64 in size" (same FAQ).
PREFIX6 = 64
#: Tables of the NICs: 10000 + the device number, as OpenStack's (see ``numbering``).
TABLE_BASE = 10000
METRIC_BASE = 512

_BARE_MAC = re.compile(r"[0-9A-Fa-f]{12}")
_PREFIX = re.compile(r"[0-9]{1,3}")


@dataclass(frozen=True)
class Interface:
    """One validated ``interface[]`` entry."""

    position: int
    mac: str
    #: The private IPv4s, the primary IP configuration's first.
    ipv4s: tuple[IPv4Address, ...]
    subnets4: tuple[IPv4Network, ...]
    ipv6s: tuple[IPv6Address, ...]
    subnets6: tuple[IPv6Network, ...]

    @property
    def subnet4(self) -> IPv4Network | None:
        """The subnet of the primary IP configuration (the first listed without one)."""
        if self.ipv4s:
            for subnet in self.subnets4:
                if self.ipv4s[0] in subnet:
                    return subnet
        return self.subnets4[0] if self.subnets4 else None


@dataclass(frozen=True)
class Document:
    interfaces: tuple[Interface, ...]

    def get(self, mac: str) -> Interface | None:
        return next((i for i in self.interfaces if i.mac == mac), None)

    @property
    def first(self) -> str | None:
        return self.interfaces[0].mac if self.interfaces else None


def numbering(number: int) -> tuple[int, int]:
    """(route table and rule priority, route metric) of the NIC numbered NUMBER (0 the
    primary, 1..99 the others: ``common.device_numbers``): 10000 + N and 512 + N.

    The metadata numbers nothing (no index field, and "the nics returned by the network call
    are not guaranteed to be in order", Microsoft's IMDS page), so the number is the NIC's
    ifindex folded into 1..99: unique among the VM's NICs, fixed while the NIC exists (an
    Azure NIC exists from boot to deallocation; an accelerated-networking VF coming and going
    does not move it). Tables 10000..10099, clear of the kernel's and of cloud-init's
    (100 + index); metric 512 + N, above the primary's DHCP route (cloud-init gives it 100,
    NetworkManager 100, networkd 1024 when unset: see docs/clouds/azure.md).
    """
    return TABLE_BASE + number, METRIC_BASE + number


# --- pure parsing -------------------------------------------------------------------------


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MetadataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: object, where: str, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MetadataError(f"{where}: expected a JSON list, got {type(value).__name__}")
    if len(value) > limit:
        raise MetadataError(f"{where}: {len(value)} entries, more than {limit}")
    return value


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    """A string field ("" when absent: IMDS writes "" for a missing value)."""
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise MetadataError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    return scalar(f"{where}.{key}", value)


def _address(text: str, where: str, kind: Callable[[str], _T]) -> _T:
    return entries(where, [text], kind, 1)[0]


def _mac(entry: Mapping[str, Any], where: str) -> str:
    text = _text(entry, "macAddress", where)
    if not text:
        raise MetadataError(f"{where}.macAddress: missing")
    try:
        return key_to_mac(text) if _BARE_MAC.fullmatch(text) else normalize_mac(text)
    except ValueError:
        raise MetadataError(f"{where}.macAddress: not a MAC: {text[:40]!r}") from None


def _subnets(
    family: Mapping[str, Any], where: str, kind: Callable[[str], IPv4Network | IPv6Network]
) -> list[IPv4Network | IPv6Network]:
    out: list[IPv4Network | IPv6Network] = []
    for n, raw in enumerate(_list(family.get("subnet"), f"{where}.subnet", MAX_SUBNETS)):
        at = f"{where}.subnet[{n}]"
        subnet = _object(raw, at)
        address, prefix = _text(subnet, "address", at), _text(subnet, "prefix", at)
        if not address and not prefix:
            continue  # an empty entry: "missing values are ... an empty string"
        if not _PREFIX.fullmatch(prefix):
            raise MetadataError(f"{at}.prefix: not a prefix length: {prefix[:40]!r}")
        network = entries(f"{at}.address", [f"{address}/{prefix}"], kind, 1)
        if not network:
            raise MetadataError(f"{at}.address: missing")
        if network[0].version == 4 and network[0].prefixlen > LONGEST_PREFIX4:
            raise MetadataError(f"{at}.prefix: /{prefix}, longer than /{LONGEST_PREFIX4}")
        if network[0] not in out:
            out.append(network[0])
    return out


def _private_ips(
    family: Mapping[str, Any], where: str, kind: Callable[[str], IPv4Address | IPv6Address]
) -> list[IPv4Address | IPv6Address]:
    out: list[IPv4Address | IPv6Address] = []
    configs = _list(family.get("ipAddress"), f"{where}.ipAddress", MAX_IP_CONFIGS)
    for n, raw in enumerate(configs):
        at = f"{where}.ipAddress[{n}]"
        config = _object(raw, at)
        private = _text(config, "privateIpAddress", at)
        if not private:
            raise MetadataError(f"{at}.privateIpAddress: missing")
        address = _address(private, f"{at}.privateIpAddress", kind)
        public = _text(config, "publicIpAddress", at)
        if public:  # validated, not used: the public IP is NATed, never on the NIC
            _address(public, f"{at}.publicIpAddress", IPv4Address)
        if address not in out:
            out.append(address)
    return out


def _inside(
    addresses: Sequence[IPv4Address | IPv6Address],
    subnets: Sequence[IPv4Network | IPv6Network],
    where: str,
) -> None:
    for n, address in enumerate(addresses):
        if subnets and not any(address in subnet for subnet in subnets):
            raise MetadataError(
                f"{where}.ipAddress[{n}].privateIpAddress: {address} in no listed subnet"
            )


def parse_interface(position: int, raw: object) -> Interface:
    where = f"interface[{position}]"
    entry = _object(raw, where)
    mac = _mac(entry, where)
    ipv4 = _object(entry.get("ipv4", {}), f"{where}.ipv4")
    ipv6 = _object(entry.get("ipv6", {}), f"{where}.ipv6")
    subnets4 = _subnets(ipv4, f"{where}.ipv4", IPv4Network)
    ipv4s = _private_ips(ipv4, f"{where}.ipv4", IPv4Address)
    _inside(ipv4s, subnets4, f"{where}.ipv4")
    subnets6 = _subnets(ipv6, f"{where}.ipv6", IPv6Network)
    ipv6s = _private_ips(ipv6, f"{where}.ipv6", IPv6Address)
    _inside(ipv6s, subnets6, f"{where}.ipv6")
    if not subnets6:
        subnets6 = list(dict.fromkeys(IPv6Network((a, PREFIX6), strict=False) for a in ipv6s))
    return Interface(
        position=position,
        mac=mac,
        ipv4s=tuple(a for a in ipv4s if isinstance(a, IPv4Address)),
        subnets4=tuple(s for s in subnets4 if isinstance(s, IPv4Network)),
        ipv6s=tuple(a for a in ipv6s if isinstance(a, IPv6Address)),
        subnets6=tuple(s for s in subnets6 if isinstance(s, IPv6Network)),
    )


def parse_document(text: str) -> Document:
    """Every interface of the answer; MetadataError (one line, naming the field) for garbage
    anywhere in it: a document is used whole or not at all."""
    data = parse_json(NETWORK_PATH, text, dict)
    if "interface" not in data:
        raise MetadataError("interface: missing")
    raw = _list(data["interface"], "interface", MAX_INTERFACES)
    interfaces = tuple(parse_interface(n, entry) for n, entry in enumerate(raw))
    seen: set[str] = set()
    for interface in interfaces:
        if interface.mac in seen:
            where = f"interface[{interface.position}].macAddress"
            raise MetadataError(f"{where}: {interface.mac} listed twice")
        seen.add(interface.mac)
    return Document(interfaces)


def build_observation(
    mac: str, document: Document, text: str, primary_mac: str | None, number: int
) -> Observation:
    """MAC's Observation in DOCUMENT (whose answer was TEXT): PRIMARY_MAC is the VM's primary
    NIC, NUMBER the NIC's device number (``numbering``). Pure.

    The probe of every flag is the document itself: any change of it ends the wait.
    """
    mac = normalize_mac(mac)
    probe: dict[str, str | None] = {NETWORK_PATH: text}
    interface = document.get(mac)
    if interface is None:
        flag = RedFlag("not-listed", "MAC not in the metadata", (NETWORK_PATH,), "unlisted")
        return Observation(mac=mac, state=None, flags=(flag,), probe=probe)
    subnet = interface.subnet4
    if not interface.ipv4s or subnet is None:
        # cloud-init's SECONDARY_INTERFACE_NO_IP: listed, no IP configuration (yet).
        missing = "ipv4.ipAddress" if not interface.ipv4s else "ipv4.subnet"
        flag = RedFlag("incomplete", f"metadata incomplete: no {missing}", (NETWORK_PATH,))
        return Observation(mac=mac, state=None, flags=(flag,), probe=probe)
    table, metric = numbering(number)
    state = make_state(
        mac=mac,
        cloud="azure",
        primary=mac == primary_mac,
        device_number=number,
        route_table=table,
        route_metric=metric,
        ipv4_addresses=interface.ipv4s,
        ipv4_subnet=subnet,
        ipv4_gateway=subnet.network_address + 1,
        ipv6_addresses=interface.ipv6s,
        ipv6_subnets=interface.subnets6 if interface.ipv6s else (),
        # Never the wireserver or IMDS through a secondary NIC (cloud-init #3344): should its
        # lease name /32 routes to them, they would beat the primary's default route.
        dhcp_routes=mac == primary_mac,
    )
    return Observation(mac=mac, state=state, flags=(), probe=probe)


def parse_nic(
    mac: str, text: str, *, primary_mac: str | None = None, number: int | None = None
) -> Observation:
    """``build_observation`` of a text alone (tests, fuzzing): PRIMARY_MAC defaults to the
    first interface's, NUMBER to 0 for the primary and 1 + position for the others."""
    document = parse_document(text)
    mac = normalize_mac(mac)
    primary = document.first if primary_mac is None else normalize_mac(primary_mac)
    if number is None:
        interface = document.get(mac)
        number = 0 if mac == primary else min(1 + (interface.position if interface else 0), 99)
    return build_observation(mac, document, text, primary, number)
