"""Alibaba Cloud ECS metadata, the pure half: one MAC's answers -> an Observation.

``parse_nic`` takes what ``sources/aliyun.py`` fetched (the ``macs/`` listing, the answers of
the MAC's keys, the instance's primary MAC) and builds the best-known NicState with red flags
for what is still propagating. No I/O here; every fact's source is in ``sources/aliyun.py``.

Two list shapes are served: ``private-ipv4s`` is a JSON array (``["192.168.0.9"]``),
``ipv6s`` a bracketed list without quotes (``[2408:4005::1,2408:4005::2]``). Both are read
by one parser that takes either spelling of either list, and refuses anything else.

Numbering: the metadata numbers no ENI (no device index; the ``macs/`` listing's order is
not stable), so an ENI's table comes from its MAC; see ``numbering``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from nicreconciled.errors import MetadataError
from nicreconciled.model import (
    COMMON_FLAG_KINDS,
    MAX_ADDRESSES,
    Observation,
    RedFlag,
    normalize_mac,
)
from nicreconciled.sources.common import check_text, entries, make_state, one, scalar

_T = TypeVar("_T")

MACS_DIR = "meta-data/network/interfaces/macs/"
PRIMARY_MAC = "meta-data/mac"
#: The per-MAC keys read, in request order. Not read: ``netmask`` (the prefix of
#: ``vswitch-cidr-block``), ``vpc-cidr-block`` (renders nothing), the delegated
#: ``ipv4-prefixes``/``ipv6-prefixes`` (not supported yet).
KEYS = (
    "network-interface-id",
    "primary-ip-address",
    "private-ipv4s",
    "vswitch-cidr-block",
    "gateway",
    "ipv6s",
    "vswitch-ipv6-cidr-block",
    "ipv6-gateway",
)
#: Without these there is no IPv4 state (every ECS ENI has its IPv4 side).
REQUIRED = ("primary-ip-address", "private-ipv4s", "vswitch-cidr-block", "gateway")
FLAG_KINDS = COMMON_FLAG_KINDS | {"ipv6-pending"}
#: More MACs than any instance type attaches: the listing is garbage.
MAX_MACS = 256
#: Tables 10000..29999: clear of the kernel's (253-255), of main's and default's rule
#: priorities, and of nm-cloud-setup's 30200+ tables and its 30350 rule.
TABLE_BASE, TABLE_SPAN = 10000, 20000
#: Above the primary's DHCP route (100 with networkd and NetworkManager).
METRIC_BASE = 512

_ENI = re.compile(r"eni-[0-9A-Za-z]{1,64}")


def mac_dir(mac: str) -> str:
    return f"{MACS_DIR}{normalize_mac(mac)}/"


def key_path(mac: str, key: str) -> str:
    return f"{mac_dir(mac)}{key}"


def parse_mac_listing(text: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """The MACs of the ``macs/`` listing (``00:16:3e:0f:1a:2b/`` per line), and the entries
    rejected as not a MAC (never used in a path). MetadataError for an absurd listing."""
    check_text(MACS_DIR, text)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_MACS:
        raise MetadataError(f"{MACS_DIR}: {len(lines)} entries, more than {MAX_MACS}")
    macs: set[str] = set()
    rejected: list[str] = []
    for entry in lines:
        try:
            macs.add(normalize_mac(entry.removesuffix("/")))
        except ValueError:
            rejected.append(entry)
    return frozenset(macs), tuple(rejected)


# --- numbering ------------------------------------------------------------------------------


def home_table(mac: str) -> int:
    """The table MAC asks for: its low 24 bits (the part after the OUI) modulo the span."""
    low = int(normalize_mac(mac).replace(":", ""), 16) & 0xFFFFFF
    return TABLE_BASE + low % TABLE_SPAN


def numbering(mac: str, listed: Iterable[str]) -> tuple[int, int]:
    """(route table, route metric) of MAC among the instance's LISTED MACs.

    Each MAC has a home table (``home_table``). Alibaba hands out MACs close to each other,
    and MACs less than 20000 apart never share a home; two that do (a chance of about one in
    20000 per pair of unrelated MACs) are told apart deterministically: the lower MAC keeps
    the home, the other takes the next table up that is nobody's home and not yet taken.

    The trade-off: a MAC whose home it does not share keeps its table whatever attaches or
    detaches; only a displaced MAC can move (back home when the other one detaches, or on
    when a newcomer's home is the table it took). Positions in the ``macs/`` listing, which
    nm-cloud-setup numbers by, would move every later ENI whenever an earlier one detaches.
    Metric: METRIC_BASE + the table's offset, so the primary's DHCP route stays preferred.
    """
    mac = normalize_mac(mac)
    macs = sorted({normalize_mac(m) for m in listed} | {mac}, key=lambda m: (home_table(m), m))
    homes = {home_table(m) for m in macs}
    taken: set[int] = set()
    table = TABLE_BASE
    for other in macs:
        slot = home_table(other)
        while slot in taken or (slot != home_table(other) and slot in homes):
            slot = TABLE_BASE + (slot + 1 - TABLE_BASE) % TABLE_SPAN
        taken.add(slot)
        if other == mac:
            table = slot
            break
    return table, METRIC_BASE + table - TABLE_BASE


# --- values ---------------------------------------------------------------------------------


def parse_list(key: str, value: str, kind: type[_T], limit: int) -> tuple[_T, ...]:
    """A bracketed list (``["a","b"]`` or ``[a,b]``; ``[]`` is empty) of KIND entries."""
    text = scalar(key, value)
    if not (text.startswith("[") and text.endswith("]")):
        raise MetadataError(f"{key}: not a bracketed list: {text[:60]!r}")
    inner = text[1:-1].strip()
    if not inner:
        return ()
    items: list[str] = []
    for part in inner.split(","):
        item = part.strip()
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        if not item:
            raise MetadataError(f"{key}: empty entry in {text[:60]!r}")
        items.append(item)
    return entries(key, items, kind, limit)


def _inside(key: str, addresses: Iterable[IPv4Address], subnet: IPv4Network) -> None:
    for address in addresses:
        if address not in subnet:
            raise MetadataError(f"{key}: {address} not in vswitch-cidr-block {subnet}")


# --- the parser -----------------------------------------------------------------------------


def parse_nic(
    mac: str, listing: str, raw: Mapping[str, str | None], primary_mac: str
) -> Observation:
    """The Observation of MAC from its keys' answers. Pure.

    RAW maps key names (``ipv6s``) to answers, None (or absent) meaning 404. LISTING is the
    ``macs/`` listing the MAC was found in (numbering). MetadataError (one line, naming the
    key) for any value that is not what the key holds.
    """
    mac = normalize_mac(mac)
    listed, _ = parse_mac_listing(listing)
    got = {key: value for key in KEYS if (value := raw.get(key)) is not None}
    for key, value in got.items():
        check_text(key, value)

    interface_id = None
    if "network-interface-id" in got:
        interface_id = scalar("network-interface-id", got["network-interface-id"])
        if not _ENI.fullmatch(interface_id):
            raise MetadataError(f"network-interface-id: not an ENI id: {interface_id[:40]!r}")
    primary_ip = None
    if "primary-ip-address" in got:
        primary_ip = one("primary-ip-address", got["primary-ip-address"], IPv4Address)
    private = parse_list(
        "private-ipv4s", got.get("private-ipv4s", "[]"), IPv4Address, MAX_ADDRESSES
    )
    if "private-ipv4s" in got and not private:
        raise MetadataError("private-ipv4s: empty list (an ENI always has its primary address)")
    subnet4 = None
    if "vswitch-cidr-block" in got:
        subnet4 = one("vswitch-cidr-block", got["vswitch-cidr-block"], IPv4Network)
        if subnet4.prefixlen > 30:
            raise MetadataError(f"vswitch-cidr-block: /{subnet4.prefixlen} has no room for hosts")
    gateway = one("gateway", got["gateway"], IPv4Address) if "gateway" in got else None
    if subnet4 is not None:
        _inside("primary-ip-address", [primary_ip] if primary_ip else [], subnet4)
        _inside("private-ipv4s", private, subnet4)
        _inside("gateway", [gateway] if gateway else [], subnet4)
    ipv6s = parse_list("ipv6s", got.get("ipv6s", "[]"), IPv6Address, MAX_ADDRESSES)
    subnet6 = None
    if "vswitch-ipv6-cidr-block" in got:
        subnet6 = one("vswitch-ipv6-cidr-block", got["vswitch-ipv6-cidr-block"], IPv6Network)
    gateway6 = None
    if "ipv6-gateway" in got:
        gateway6 = one("ipv6-gateway", got["ipv6-gateway"], IPv6Address)

    flags: list[RedFlag] = []
    probe: dict[str, str | None] = {}
    missing = [key for key in REQUIRED if key not in got]
    if ipv6s and subnet6 is None:
        missing.append("vswitch-ipv6-cidr-block")
    if missing:
        paths = tuple(key_path(mac, key) for key in missing)
        probe.update(dict.fromkeys(paths))
        if not got:
            # Nothing answers: a detach still propagating looks the same; watch the listing.
            paths = (MACS_DIR, *paths)
            probe[MACS_DIR] = listing
        detail = f"metadata incomplete: missing {', '.join(missing)}"
        flags.append(RedFlag("incomplete", detail, paths))
    if subnet6 is not None and not ipv6s:
        path = key_path(mac, "ipv6s")
        flags.append(
            RedFlag("ipv6-pending", "vswitch has IPv6 but the ENI has none yet", (path,), "ipv6")
        )
        probe[path] = got.get("ipv6s")

    state = None
    if primary_ip is not None and private and subnet4 is not None and gateway is not None:
        table, metric = numbering(mac, listed)
        state = make_state(
            mac=mac,
            cloud="aliyun",
            primary=mac == normalize_mac(primary_mac),
            # No number in the metadata: nothing for interfaces.exclude_device_numbers.
            device_number=None,
            route_table=table,
            route_metric=metric,
            interface_id=interface_id,
            # The primary private IP first (DHCP gives it), then the others as listed.
            ipv4_addresses=(primary_ip, *(a for a in private if a != primary_ip)),
            ipv4_subnet=subnet4,
            ipv4_gateway=gateway,
            ipv6_addresses=ipv6s,
            ipv6_subnets=(subnet6,) if subnet6 is not None else (),
            # A static IPv6 default route in T, no wait for a router advertisement.
            ipv6_gateway=gateway6 if ipv6s else None,
        )
    return Observation(mac=mac, state=state, flags=tuple(flags), probe=probe)
