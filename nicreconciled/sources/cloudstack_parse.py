"""CloudStack, parsed. Pure: the virtual router's answers -> VrMetadata (parse_metadata), a
NIC's lease and those answers -> an Observation (build_state), a NIC's table numbering.

Why a NIC's state comes from its lease and the VR only confirms it, and how NICs are
numbered without device numbers, is told in sources/cloudstack.py, the source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from nicreconciled.errors import MetadataError
from nicreconciled.model import NicState, Observation, RedFlag, normalize_mac
from nicreconciled.sources.common import scalar
from nicreconciled.sources.leases import Lease, lease_key

#: An id (instance-id, vm-id); the source's liveness check demands one too.
ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]{1,255}")
#: The keys we read, and the shape of those that have one (the others are IPv4 addresses
#: or free text on one line). Only listed keys are fetched, except REQUIRED.
WANTED: dict[str, re.Pattern[str] | None] = {
    "instance-id": ID_SHAPE,
    "local-ipv4": None,
    "vm-id": ID_SHAPE,
    "local-hostname": _HOSTNAME,
    "public-ipv4": None,
    "public-hostname": _HOSTNAME,
    "service-offering": None,
    "availability-zone": None,
    "cloud-identifier": None,
    "hypervisor-host-name": _HOSTNAME,
}
#: Always requested, so "not listed" and "404" read the same: None.
REQUIRED = ("instance-id", "local-ipv4")
MAX_TEXT = 255
LINK_KEY = "link:"
META = "/latest/meta-data/"

_ADDRESSES = ("local-ipv4", "public-ipv4")


@dataclass(frozen=True)
class VrMetadata:
    """The VR's answers, validated; absent, 404 and empty values are left out."""

    instance_id: str
    local_ipv4: IPv4Address | None
    public_ipv4: IPv4Address | None
    #: Every other key answered (local-hostname, service-offering, ...): one line of text.
    texts: Mapping[str, str]


def metadata_url(vr: str, key: str) -> str:
    return f"{vr}{META}{key}"


def link_key(mac: str) -> str:
    return f"{LINK_KEY}{normalize_mac(mac)}"


def _text(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    text = scalar(key, value)
    if len(text) > MAX_TEXT:
        raise MetadataError(f"{key}: longer than {MAX_TEXT} characters")
    shape = WANTED.get(key)
    if text and shape is not None and not shape.fullmatch(text):
        what = "an id" if shape is ID_SHAPE else "a hostname"
        raise MetadataError(f"{key}: not {what}: {text[:40]!r}")
    # An empty file is a VR still writing its metadata, not a value.
    return text or None


def _address(key: str, value: str | None) -> IPv4Address | None:
    """The address, None when absent, empty or 0.0.0.0 (no address, as for the lease
    readers: systemd-networkd reads ``Address=0.0.0.0/N`` as "any free address")."""
    text = _text(key, value)
    try:
        address = None if text is None else IPv4Address(text)  # no "%scope", "/len", "010."
    except ValueError:
        raise MetadataError(f"{key}: not an IPv4 address: {text!r:.40}") from None
    return None if address is None or address.is_unspecified else address


def parse_metadata(raw: Mapping[str, str | None]) -> VrMetadata:
    """Validate the VR's answers (key -> body, None = 404). Pure.

    Raises MetadataError naming the key for garbage. instance-id must be present: the I/O
    layer treats a VR without it as no VR at all.
    """
    texts = {k: _text(k, raw.get(k)) for k in WANTED if k not in _ADDRESSES}
    instance_id = texts.pop("instance-id")
    if instance_id is None:
        raise MetadataError("instance-id: missing")
    return VrMetadata(
        instance_id,
        _address("local-ipv4", raw.get("local-ipv4")),
        _address("public-ipv4", raw.get("public-ipv4")),
        {k: v for k, v in texts.items() if v is not None},
    )


def numbering(number: int) -> tuple[int, int]:
    """(route table, route metric) of the NIC numbered NUMBER by device_numbers(): table
    10000 + number (the EC2 scheme with one network card), metric 512 + number."""
    return 10000 + number, 512 + number


def build_state(
    mac: str,
    raw: Mapping[str, str | None],
    lease: Lease | None,
    *,
    vr: str,
    own_vr: bool,
    primary: bool,
    device_number: int,
) -> Observation:
    """One NIC's Observation from its lease and the VR's raw answers. Pure.

    ``own_vr``: VR serves this NIC's network (its lease named it, or the NIC is the primary
    and asked the default VR), so its local-ipv4 is this NIC's address.
    """
    mac = normalize_mac(mac)
    meta = parse_metadata(raw)
    flags: list[RedFlag] = []
    probe: dict[str, str | None] = {}
    local_url = metadata_url(vr, "local-ipv4")
    if meta.local_ipv4 is None:
        detail = "the VR answers instance-id but not local-ipv4 yet"
        flags.append(RedFlag("incomplete", detail, (local_url,)))
        probe[local_url] = raw.get("local-ipv4")

    key = lease_key(mac)
    address = lease.address if lease is not None else None
    if address is None and own_vr:
        address = meta.local_ipv4
    if address is None:
        # No address yet: rendered DHCP-only at once (on networkd, or NetworkManager with
        # no-auto-default, only a matching configuration makes a DHCP client run, so waiting
        # for the lease would wait for ever); the lease that follows shows up in the probe and
        # completes the NIC (table, rules, routes).
        detail = "no DHCP lease yet: address unknown"
        flags.append(RedFlag("incomplete", detail, (key,), "lease"))
        probe[key] = lease.describe() if lease is not None else None
    elif own_vr and lease is not None and meta.local_ipv4 not in (None, address):
        # A lease file that outlived its NIC (dhclient's, under /var/lib) names an old
        # address; the VR knows the current one. Wait for them to agree.
        detail = f"lease address {address} is not the VR's local-ipv4 {meta.local_ipv4}"
        flags.append(RedFlag("incomplete", detail, (key, local_url)))
        probe[key] = lease.describe()
        probe[local_url] = raw.get("local-ipv4")

    subnet: IPv4Network | None = None
    gateway: IPv4Address | None = None
    if lease is not None and address is not None and lease.address == address:
        subnet = lease.network
        # A router outside the subnet cannot be a next hop of the table's default route.
        if subnet is not None and lease.router is not None and lease.router in subnet:
            gateway = lease.router
    # Typed values, and device_numbers() keeps the number in 0..99: NicState refusing this
    # would be a bug here, not garbage from the VR.
    table, metric = numbering(device_number)
    state = NicState(
        mac=mac,
        cloud="cloudstack",
        primary=primary,
        route_table=table,
        route_metric=metric,
        ipv4_addresses=(address,) if address is not None else (),
        ipv4_subnet=subnet,
        ipv4_gateway=gateway,
    )
    return Observation(mac=mac, state=state, flags=tuple(flags), probe=probe)
