"""How every renderer writes a NIC's addresses and policy sources: one rule, one place.

The primary private IPv4 (the metadata's first) is written as a static address, first,
although DHCP hands out the same address. The kernel's primary IPv4 on a link is the first
one added, and it is the preferred source of the subnet route: with only the secondaries
static, the network manager adds them before the DHCP lease arrives, and traffic from the
host leaves with a secondary address as source (seen on systemd-networkd in the lab). The
static copy makes the primary the first address from the first moment.

A non-primary NIC answers for every one of its addresses and for every delegated prefix:
``rule_sources`` lists them, in the order every renderer writes its rules (IPv4 addresses,
IPv6 addresses, IPv4 prefixes, IPv6 prefixes), each looked up in the NIC's table.
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


def addresses(state: NicState) -> list[str]:
    """Every address of the NIC with its prefix length: IPv4 (the primary first), then IPv6."""
    out = [ipv4_cidr(state, a) for a in unique(state.ipv4_addresses)]
    return out + [ipv6_cidr(state, a) for a in unique(state.ipv6_addresses)]


def rule_sources(state: NicState) -> list[str]:
    """The ``from`` of every policy rule of a non-primary NIC (see the module docstring)."""
    sources = [f"{a}/32" for a in unique(state.ipv4_addresses)]
    sources += [f"{a}/128" for a in unique(state.ipv6_addresses)]
    sources += [str(p) for p in unique(state.ipv4_prefixes)]
    return sources + [str(p) for p in unique(state.ipv6_prefixes)]


def routes_ipv6(state: NicState) -> bool:
    """Whether table T needs IPv6 routes: some IPv6 source (address or prefix) is steered
    into it."""
    return bool(state.ipv6_addresses or state.ipv6_prefixes)
