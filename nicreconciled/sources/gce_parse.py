"""Google Compute Engine, the pure half: ``network-interfaces/?recursive=true`` -> Observation.

The metadata server answers ``instance/network-interfaces/?recursive=true`` with one JSON
array for every NIC of the instance; ``sources/gce.py`` fetches it (and long-polls it). Where
each fact comes from (their code is not reused):

* The array's position is the NIC's index (nic0, nic1, ...), nic0 the primary; each entry has
  ``mac`` (lower case), ``ip``, ``subnetmask`` (dotted), ``gateway``, ``mtu`` (an integer: 1460
  on the default network, 8244 and others on custom ones), ``ipAliases``, ``forwardedIps``,
  ``targetInstanceIps`` (lists), ``dnsServers``, ``network``, ``accessConfigs``; with IPv6
  ``ipv6s`` (addresses without a length) and ``gatewayIpv6``; ``forwardedIpv6s`` for IPv6
  forwarding rules. (Captured answers quoted in public GCE tooling: a Kubernetes DRA network
  driver's comments, GKE's CNI test fixtures, OpenTelemetry's and other resource detectors;
  google-guest-agent internal/metadata/unmarshal.go ``networkInterface``; a GCE netplan
  builder (ubicloud) reads ``ipv6s`` and ``gatewayIpv6``.)
* ``ipAliases`` are CIDR ranges (``10.24.3.0/24``; a single alias IP is a /32), forwarded and
  target-instance IPs are addresses or ranges; google-guest-agent accepts both spellings
  (internal/network/address/address_test.go) and installs each as
  ``ip route add to local X scope host dev IF proto 66``. Google routes alias ranges of the
  primary NIC automatically, "but not for secondary interfaces ... you must configure policy
  routing" (https://cloud.google.com/vpc/docs/configure-alias-ip-ranges, Limitations).
* IPv6: DHCPv6 hands out the NIC's address as a /128 and router advertisements route the
  subnet through a link-local router (google-guest-agent PR #160 shows
  ``2600:1901:ffb0:7842::/65 via fe80::4001:aff:fe03:1``): there is no on-link IPv6 subnet,
  so none is written; the default route of the NIC's table goes via ``gatewayIpv6``.
* nm-cloud-setup (NetworkManager src/nm-cloud-setup/nmcs-provider-gcp.c) reads only ``mac``
  and ``forwarded-ips`` per index and makes local routes of them, IPv4 only.

What a NIC gets: its ``ip`` (with the subnet's length), the subnet and the default route via
``gateway`` in its table (GCE's DHCP gives a default route on nic0 only); ``mtu``; every
alias, forwarded and target-instance range as a local route (``local_routes``: delivered to
the instance) and as a policy source (``ipv4_prefixes``/``ipv6_prefixes``: a reply from it
leaves by this NIC, which the VPC's anti-spoofing requires). A range that is exactly one of
the NIC's own addresses is left out of both (the kernel has that local route already).

Numbering: table and rule priority 10000 + index, route metric 512 + index (above the
primary's DHCP route, which stays preferred): amazon-ec2-net-utils' layout for device N, so
runbooks read alike. Regular NICs are fixed when the instance is created (no attach or detach
while it runs), so the index is stable for the instance's life, and two NICs never share one.
``device_number`` is the index (what ``interfaces.exclude_device_numbers`` matches).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

from nicreconciled.errors import MetadataError
from nicreconciled.model import Observation, RedFlag, normalize_mac
from nicreconciled.sources.common import entries, make_state, parse_json, scalar

#: The document read, relative to the endpoint; also the probe key of every flag.
NICS_PATH = "computeMetadata/v1/instance/network-interfaces/"
#: Dynamic NICs (VLANs on a NIC, beta): read only to say they are not managed.
VLANS_PATH = "computeMetadata/v1/instance/vlan-network-interfaces/"
#: More NICs than any machine type has (8 on most, a few more on the largest A3/A4 types).
MAX_NICS = 32
#: Entries of one range list: Google allows some dozens of alias ranges per NIC.
MAX_RANGES = 128
MAX_IPV6 = 16
TABLE_BASE = 10000
METRIC_BASE = 512

_IPV4_KEYS = ("ip", "subnetmask", "gateway")
_RANGE_KEYS = ("ipAliases", "forwardedIps", "forwardedIpv6s", "targetInstanceIps")
_DOTTED = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


@dataclass(frozen=True)
class GceNic:
    """One validated entry of the document."""

    index: int
    mac: str
    ip: IPv4Address | None
    subnet4: IPv4Network | None
    gateway4: IPv4Address | None
    mtu: int | None
    #: Alias, forwarded and target-instance ranges in the document's order, deduplicated.
    ranges: tuple[IPv4Network | IPv6Network, ...]
    ipv6s: tuple[IPv6Address, ...]
    gateway6: IPv6Address | None


def numbering(index: int) -> tuple[int, int]:
    """(route table, route metric) of nic<INDEX> (module docstring)."""
    return TABLE_BASE + index, METRIC_BASE + index


# --- fields -------------------------------------------------------------------------------


def _where(index: int, key: str) -> str:
    return f"network-interfaces[{index}].{key}"


def _text(entry: Mapping[str, Any], index: int, key: str) -> str | None:
    """A string field, None when absent, null or empty; MetadataError for anything else."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetadataError(f"{_where(index, key)}: expected a string, got {type(value).__name__}")
    value = scalar(_where(index, key), value)
    return value or None


def _one(entry: Mapping[str, Any], index: int, key: str, kind: Callable[[str], Any]) -> Any:
    text = _text(entry, index, key)
    return None if text is None else entries(_where(index, key), [text], kind, 1)[0]


def _texts(entry: Mapping[str, Any], index: int, key: str) -> list[str]:
    value = entry.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MetadataError(f"{_where(index, key)}: expected a list of strings")
    return value


def _prefix(index: int, mask: str) -> int:
    """The length of a dotted netmask ("255.255.240.0" -> 20): contiguous, 1..30."""
    where = _where(index, "subnetmask")
    if not _DOTTED.fullmatch(mask):
        raise MetadataError(f"{where}: not a dotted netmask: {mask[:40]!r}")
    try:
        length = IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        raise MetadataError(f"{where}: not a netmask: {mask[:40]!r}") from None
    if not 1 <= length <= 30:
        raise MetadataError(f"{where}: /{length} is no subnet with a gateway")
    return length


def _range(where: str, text: str) -> IPv4Network | IPv6Network:
    """An address (a /32 or /128) or a network (host bits clear), never one the instance
    must not take as its own: loopback, link-local (the metadata server's 169.254.169.254),
    multicast, unspecified."""
    if "/" not in text:
        network: IPv4Network | IPv6Network = ip_network(entries(where, [text], ip_address, 1)[0])
    else:
        network = entries(where, [text], ip_network, 1)[0]
    first = network.network_address
    if first.is_loopback or first.is_link_local or first.is_multicast or first.is_unspecified:
        raise MetadataError(f"{where}: {network} is not a range a NIC is given")
    return network


def _ipv6(where: str, text: str) -> IPv6Address:
    # Seen without a length; one given ("/96", the NIC's range) is not the address's: dropped.
    if "/" in text:
        address: IPv6Address = entries(where, [text], IPv6Interface, 1)[0].ip
        if address.is_unspecified:
            raise MetadataError(f"{where}: invalid entry {text[:60]!r}: no address")
        return address
    found: IPv6Address = entries(where, [text], IPv6Address, 1)[0]
    return found


def _mtu(entry: Mapping[str, Any], index: int) -> int | None:
    value = entry.get("mtu")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        raise MetadataError(f"{_where(index, 'mtu')}: not an MTU 68..65535: {value!r:.40}")
    return value


# --- the document -------------------------------------------------------------------------


def parse_entry(index: int, entry: object) -> GceNic:
    if not isinstance(entry, dict):
        raise MetadataError(f"network-interfaces[{index}]: expected a JSON object")
    mac_text = _text(entry, index, "mac")
    if mac_text is None:
        raise MetadataError(f"{_where(index, 'mac')}: missing")
    try:
        mac = normalize_mac(mac_text)
    except ValueError:
        raise MetadataError(f"{_where(index, 'mac')}: not a MAC: {mac_text[:40]!r}") from None
    ip = _one(entry, index, "ip", IPv4Address)
    mask = _text(entry, index, "subnetmask")
    gateway4 = _one(entry, index, "gateway", IPv4Address)
    subnet4 = None
    if mask is not None:
        length = _prefix(index, mask)
        base = ip if ip is not None else gateway4
        if base is not None:
            subnet4 = IPv4Network((base, length), strict=False)
    if subnet4 is not None and gateway4 is not None and gateway4 not in subnet4:
        raise MetadataError(f"{_where(index, 'gateway')}: {gateway4} not in {subnet4}")
    ranges: list[IPv4Network | IPv6Network] = []
    for key in _RANGE_KEYS:
        texts = [t.strip() for t in _texts(entry, index, key)]
        texts = [t for t in texts if t]
        if len(texts) > MAX_RANGES:
            raise MetadataError(
                f"{_where(index, key)}: {len(texts)} entries, more than {MAX_RANGES}"
            )
        for text in texts:
            network = _range(_where(index, key), text)
            # Taken as local, a range holding the router would cut the NIC off from it.
            if gateway4 is not None and gateway4 in network:
                raise MetadataError(f"{_where(index, key)}: {network} holds the gateway")
            ranges.append(network)
    texts6 = [t.strip() for t in _texts(entry, index, "ipv6s")]
    texts6 = [t for t in texts6 if t]
    if len(texts6) > MAX_IPV6:
        raise MetadataError(
            f"{_where(index, 'ipv6s')}: {len(texts6)} entries, more than {MAX_IPV6}"
        )
    ipv6s = tuple(dict.fromkeys(_ipv6(_where(index, "ipv6s"), t) for t in texts6))
    return GceNic(
        index=index,
        mac=mac,
        ip=ip,
        subnet4=subnet4,
        gateway4=gateway4,
        mtu=_mtu(entry, index),
        ranges=tuple(dict.fromkeys(ranges)),
        ipv6s=ipv6s,
        gateway6=_one(entry, index, "gatewayIpv6", IPv6Address),
    )


def parse_nics(text: str) -> tuple[GceNic, ...]:
    """Every NIC of the document; MetadataError (one line, naming the field) for garbage
    anywhere in it: a document is used whole or not at all."""
    data = parse_json(NICS_PATH, text, list)
    if len(data) > MAX_NICS:
        raise MetadataError(f"{NICS_PATH}: {len(data)} NICs, more than {MAX_NICS}")
    nics = tuple(parse_entry(i, entry) for i, entry in enumerate(data))
    seen: set[str] = set()
    for nic in nics:
        if nic.mac in seen:
            raise MetadataError(f"{_where(nic.index, 'mac')}: {nic.mac} listed twice")
        seen.add(nic.mac)
    return nics


def parse_nic(mac: str, text: str) -> Observation:
    """The Observation of MAC in the document TEXT. Pure.

    The probe of every flag is the document itself: any change of it ends the wait.
    """
    mac = normalize_mac(mac)
    nics = parse_nics(text)
    probe: dict[str, str | None] = {NICS_PATH: text}
    nic = next((n for n in nics if n.mac == mac), None)
    if nic is None:
        flag = RedFlag("not-listed", "MAC not in the metadata", (NICS_PATH,), "unlisted")
        return Observation(mac=mac, state=None, flags=(flag,), probe=probe)
    ipv4 = {"ip": nic.ip, "subnetmask": nic.subnet4, "gateway": nic.gateway4}
    complete4 = all(value is not None for value in ipv4.values())
    # An IPv6-only NIC (an IPv6-only subnet) has none of the IPv4 fields.
    ipv6_only = all(value is None for value in ipv4.values()) and bool(nic.ipv6s)
    if not complete4 and not ipv6_only:
        missing = ", ".join(key for key, value in ipv4.items() if value is None)
        flag = RedFlag("incomplete", f"metadata incomplete: missing {missing}", (NICS_PATH,))
        return Observation(mac=mac, state=None, flags=(flag,), probe=probe)
    own = {ip_network(a) for a in (nic.ip, *nic.ipv6s) if a is not None}
    ranges = [r for r in nic.ranges if r not in own]
    table, metric = numbering(nic.index)
    state = make_state(
        mac=mac,
        cloud="gce",
        primary=nic.index == 0,
        device_number=nic.index,
        route_table=table,
        route_metric=metric,
        interface_id=f"nic{nic.index}",
        ipv4_addresses=(nic.ip,) if nic.ip is not None else (),
        ipv4_subnet=nic.subnet4 if complete4 else None,
        ipv4_gateway=nic.gateway4 if complete4 else None,
        ipv6_addresses=nic.ipv6s,
        ipv6_gateway=nic.gateway6 if nic.ipv6s else None,
        mtu=nic.mtu,
        ipv4_prefixes=tuple(r for r in ranges if isinstance(r, IPv4Network)),
        ipv6_prefixes=tuple(r for r in ranges if isinstance(r, IPv6Network)),
        local_routes=tuple(ranges),
    )
    return Observation(mac=mac, state=state, probe=probe)


def dynamic_nics(text: str) -> tuple[str, ...]:
    """The dynamic NICs of a ``vlan-network-interfaces/`` document, one line each
    ("nic0.10 42:01:0a:00:00:05"), sorted; never raises (they are only reported). The shape is
    parent index -> VLAN id -> NIC (google-guest-agent internal/metadata/unmarshal.go
    ``VlanNetworkInterfaces map[int]map[int]vlanInterface``); anything else is one line
    saying so, so that a change of it is still noticed."""
    try:
        data = parse_json(VLANS_PATH, text, dict)
    except MetadataError as exc:
        return () if not text.strip() else (f"unreadable: {str(exc)[:80]}",)
    found: list[str] = []
    for parent, vlans in data.items():
        if not isinstance(vlans, dict):
            found.append(f"nic{str(parent)[:8]}: unreadable")
            continue
        for vlan, nic in vlans.items():
            mac = nic.get("mac") if isinstance(nic, dict) else None
            shown = mac[:17] if isinstance(mac, str) else "?"
            found.append(f"nic{str(parent)[:8]}.{str(vlan)[:8]} {shown}")
    return tuple(sorted(found))
