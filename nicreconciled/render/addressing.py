"""How both renderers write a NIC's addresses: one rule, one place.

The primary private IPv4 (the metadata's first) is written as a static address, first,
although DHCP hands out the same address. The kernel's primary IPv4 on a link is the first
one added, and it is the preferred source of the subnet route: with only the secondaries
static, the network manager adds them before the DHCP lease arrives, and traffic from the
host leaves with a secondary address as source (seen on systemd-networkd in the lab). The
static copy makes the primary the first address from the first moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from nicreconciled.model import NicState

_T = TypeVar("_T")


def unique(items: Iterable[_T]) -> list[_T]:
    """Drop repeats, keep the metadata's order (the first IPv4 is the DHCP one)."""
    return list(dict.fromkeys(items))


def ipv4_cidr(state: NicState, address: IPv4Address) -> str:
    """ADDRESS with its subnet's prefix length.

    All of an ENI's addresses are in its subnet; /32 when the subnet is not known (or,
    defensively, does not contain the address) still adds the address without claiming a
    wrong on-link range.
    """
    subnet = state.ipv4_subnet
    prefixlen = subnet.prefixlen if subnet is not None and address in subnet else 32
    return f"{address}/{prefixlen}"


def ipv6_cidr(state: NicState, address: IPv6Address) -> str:
    """ADDRESS with the prefix length of the IPv6 subnet containing it, else /128."""
    for subnet in state.ipv6_subnets:
        if address in subnet:
            return f"{address}/{subnet.prefixlen}"
    return f"{address}/128"
