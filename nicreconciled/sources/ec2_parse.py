"""EC2 instance metadata, parsed: one MAC's raw IMDS answers -> an Observation. Pure.

Metadata for a freshly attached ENI propagates asynchronously: the MAC can be listed while
its keys still answer 404, ``device-number`` can read 0 for a secondary ENI, and ``ipv6s``
can appear seconds after the subnet's IPv6 block. parse_nic() builds the best-known state
and attaches red flags for each of these, naming the keys whose change would end the wait,
so the reconciler can poll them cheaply instead of refetching everything.

An ENI of an IPv6-only subnet lists ``ipv6s`` and ``subnet-ipv6-cidr-blocks`` but no IPv4 key
at all; it is complete without IPv4 (see ``_ipv6_only`` for how it is told apart from a
dual-stack ENI whose IPv4 is late, which keeps waiting on its IPv4 keys).

The I/O (the token, the endpoints, the listing every NIC shares) is sources/ec2.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from nicreconciled.errors import MetadataError
from nicreconciled.model import MAX_ADDRESSES, Observation, RedFlag, normalize_mac
from nicreconciled.sources.common import check_text, lines, make_state, one
from nicreconciled.sources.common import scalar as _scalar
from nicreconciled.sources.common import small_int as _small_int

MACS_DIR = "meta-data/network/interfaces/macs/"

#: The per-MAC keys we read, in fetch order; only those present in the listing are fetched.
WANTED = (
    "device-number",
    "network-card",
    "interface-id",
    "local-ipv4s",
    "subnet-ipv4-cidr-block",
    "ipv6s",
    "subnet-ipv6-cidr-blocks",
    "ipv4-prefix",
    "ipv6-prefix",
)
REQUIRED = ("device-number", "local-ipv4s", "subnet-ipv4-cidr-block")
#: An ENI of an IPv6-only subnet lists no IPv4 key at all; it needs these instead.
REQUIRED_IPV6_ONLY = ("device-number", "ipv6s", "subnet-ipv6-cidr-blocks")
IPV4_KEYS = ("local-ipv4s", "subnet-ipv4-cidr-block")
#: IMDS answers 404 rather than an empty body when an ENI has no delegated prefix
#: (amazon-ec2-net-utils lib.sh says so), so for these keys 404 means "none", not "not yet".
EMPTY_IS_404 = frozenset({"ipv4-prefix", "ipv6-prefix"})

_ENI = re.compile(r"eni-[0-9a-f]{8,17}")


def numbering(device_number: int, network_card: int) -> tuple[int, int]:
    """(route table, route metric) of an ENI, numbered as amazon-ec2-net-utils does: table
    10000 + 100 x network card + device number, rules of the same priority; metric 512 + the
    same offset, above the primary's DHCP route (100) so that the primary stays preferred."""
    offset = 100 * network_card + device_number
    return 10000 + offset, 512 + offset


def mac_dir(mac: str) -> str:
    """Probe key of a MAC's directory (its answer is the listing text)."""
    return f"{MACS_DIR}{normalize_mac(mac)}/"


def key_path(mac: str, key: str) -> str:
    return f"{mac_dir(mac)}{key}"


def listing_names(listing: str) -> frozenset[str]:
    """Entry names of a directory listing; subdirectories lose their trailing '/'."""
    return frozenset(line.strip().rstrip("/") for line in listing.split("\n") if line.strip())


def parse_mac_listing(text: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """The MACs of the ``macs/`` listing, and the entries rejected as not a MAC.

    A rejected entry (say ``../../etc/``) is never used in a path.
    """
    macs: set[str] = set()
    rejected: list[str] = []
    for line in text.split("\n"):
        entry = line.strip()
        if not entry:
            continue
        try:
            macs.add(normalize_mac(entry.removesuffix("/")))
        except ValueError:
            rejected.append(entry)
    return frozenset(macs), tuple(rejected)


def parse_nic(
    mac: str, listing: str, raw: Mapping[str, str | None], primary_mac: str
) -> Observation:
    """Turn raw IMDS answers for one MAC into an Observation. Pure.

    ``listing`` is the text of the MAC's directory; ``raw`` maps key names (e.g.
    ``ipv6s``) to answers, None meaning 404; a listed key missing from ``raw`` counts as 404.
    Raises MetadataError (one line, naming the key) for any invalid value.
    """
    mac = normalize_mac(mac)
    directory = mac_dir(mac)
    check_text(directory, listing)
    for key, value in raw.items():
        if value is not None:
            check_text(key, value)
    names = listing_names(listing)
    got = {k: v for k in WANTED if k in names and (v := raw.get(k)) is not None}

    device_number = (
        _small_int("device-number", got["device-number"]) if "device-number" in got else None
    )
    network_card = _small_int("network-card", got["network-card"]) if "network-card" in got else 0
    interface_id = None
    if "interface-id" in got:
        interface_id = _scalar("interface-id", got["interface-id"])
        if not _ENI.fullmatch(interface_id):
            raise MetadataError(f"interface-id: not an ENI id: {interface_id[:40]!r}")
    ipv4s = lines("local-ipv4s", got.get("local-ipv4s", ""), IPv4Address, MAX_ADDRESSES)
    if "local-ipv4s" in got and not ipv4s:
        raise MetadataError("local-ipv4s: empty value")
    subnet4 = None
    gateway = None
    if "subnet-ipv4-cidr-block" in got:
        subnet4 = one("subnet-ipv4-cidr-block", got["subnet-ipv4-cidr-block"], IPv4Network)
        if subnet4.prefixlen > 30:
            raise MetadataError(f"subnet-ipv4-cidr-block: /{subnet4.prefixlen} has no gateway")
        # The VPC router is always the subnet's first host address.
        gateway = subnet4.network_address + 1
    ipv6s = lines("ipv6s", got.get("ipv6s", ""), IPv6Address, MAX_ADDRESSES)
    subnets6 = lines(
        "subnet-ipv6-cidr-blocks", got.get("subnet-ipv6-cidr-blocks", ""), IPv6Network, 16
    )
    prefixes4 = lines("ipv4-prefix", got.get("ipv4-prefix", ""), IPv4Network, MAX_ADDRESSES)
    prefixes6 = lines("ipv6-prefix", got.get("ipv6-prefix", ""), IPv6Network, MAX_ADDRESSES)

    flags: list[RedFlag] = []
    probe: dict[str, str | None] = {}
    ipv6_only = _ipv6_only(names)
    missing = [k for k in (REQUIRED_IPV6_ONLY if ipv6_only else REQUIRED) if k not in names]
    if missing:
        detail = f"metadata incomplete: missing {', '.join(missing)}"
        if not ipv6_only and not any(k in names for k in IPV4_KEYS):
            detail += " (or ipv6s, for an ENI of an IPv6-only subnet)"
        flags.append(RedFlag("incomplete", detail, (directory,)))
        probe[directory] = listing
    lost = [k for k in WANTED if k in names and k not in got and k not in EMPTY_IS_404]
    if lost:
        paths = tuple(key_path(mac, k) for k in lost)
        flags.append(RedFlag("listed-but-404", f"listed but 404: {', '.join(lost)}", paths))
        probe.update(dict.fromkeys(paths))
    is_primary = mac == normalize_mac(primary_mac)
    if device_number == 0 and not is_primary:
        path = key_path(mac, "device-number")
        flags.append(RedFlag("device-number-0", "secondary ENI reads device-number 0", (path,)))
        probe[path] = got["device-number"]
    if subnets6 and not ipv6s:
        path = key_path(mac, "ipv6s")
        flags.append(
            RedFlag("ipv6-pending", "subnet has IPv6 but the ENI has none yet", (path,), "ipv6")
        )
        probe[path] = got.get("ipv6s")

    state = None
    complete4 = bool(ipv4s) and subnet4 is not None
    if device_number is not None and (complete4 or (ipv6_only and ipv6s and subnets6)):
        table, metric = numbering(device_number, network_card)
        state = make_state(
            mac=mac,
            cloud="ec2",
            primary=is_primary,
            device_number=device_number,
            route_table=table,
            route_metric=metric,
            interface_id=interface_id,
            ipv4_addresses=ipv4s,
            ipv4_subnet=subnet4,
            ipv4_gateway=gateway,
            ipv6_addresses=ipv6s,
            ipv6_subnets=subnets6,
            ipv4_prefixes=prefixes4,
            ipv6_prefixes=prefixes6,
        )
    return Observation(mac=mac, state=state, flags=tuple(flags), probe=probe)


def _ipv6_only(names: frozenset[str]) -> bool:
    """Whether the MAC's directory describes an ENI of an IPv6-only subnet.

    Such an ENI has ``ipv6s`` and ``subnet-ipv6-cidr-blocks`` and no IPv4 key at all. The
    rule is strict on purpose: a dual-stack ENI whose IPv4 is merely late still lists one of
    its IPv4 keys (a key listed but answering 404 counts as listed) or lacks its IPv6 keys,
    and then keeps waiting on the IPv4 keys as before. Only a directory that lists the IPv6
    side and nothing of the IPv4 side is read as IPv6-only. Should a dual-stack ENI ever
    show that shape while its IPv4 propagates, the IPv6 part is written first and the IPv4
    part follows when its keys appear (a new fingerprint), as late IPv6 does the other way
    round; nothing is lost.
    """
    return not any(k in names for k in IPV4_KEYS) and "ipv6s" in names
