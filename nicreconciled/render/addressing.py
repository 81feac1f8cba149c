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

Local routes (``NicState.local_routes``: a GCE alias IP range, a forwarded IP) are ranges the
instance accepts as its own without assigning them: each is a route of type local in table
local (255), scope host, out of the NIC, whatever the cloud, on every NIC, primary or not.
The ``local`` rule (priority 0) is looked up before any policy rule, so they need nothing
else to be delivered. Every renderer writes them; ``local_routes`` gives them in the order
they are written (IPv4 first, then IPv6, the metadata's order within a family).

The routing protocol number a route carries says who installed it (``ip route show proto
N``); ``LOCAL_ROUTE_PROTOCOL`` is ours, written where the renderer can say it (networkd's
``Protocol=``). Why 110: ASCII ``n`` (nicreconciled), and assigned to no one we know of: the
kernel's ``RTPROT_*`` (include/uapi/linux/rtnetlink.h: 0-18, 42 babel, 99 openr, 186-192)
and Debian 12's /etc/iproute2/rt_protos name nothing in 100-185; FRR numbers its daemons
191-198 (zebra/rt_netlink.h), and google-guest-agent uses 66 for exactly these routes (``ip
route add to local X scope host dev IF proto 66``, reconciled by that number: FACTS.md). Not
66: the guest agent, where it runs beside us, would take our routes for its own and delete
those it does not want, and ``ip route show proto N`` should keep telling whose a route is.
netplan and NetworkManager keyfiles cannot carry a protocol (netplan has no key for it; libnm
1.42 knows no route attribute for it and drops an unknown one without a word): there the
kernel shows what the manager gives every static route (each render module says which).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final, TypeVar

from nicreconciled.model import NicState

_T = TypeVar("_T")

#: Our routing protocol number (module docstring), the ``proto`` of our local routes where
#: the renderer can say it.
LOCAL_ROUTE_PROTOCOL: Final = 110
#: The kernel's local table (``RT_TABLE_LOCAL``), where every local route lives.
LOCAL_TABLE: Final = 255
#: The host scope (``RT_SCOPE_HOST``) of an IPv4 local route; IPv6 routes have no scope.
SCOPE_HOST: Final = 254


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


def local_routes(state: NicState) -> list[IPv4Network | IPv6Network]:
    """The NIC's local routes, each once: the IPv4 ones, then the IPv6 ones."""
    found = unique(state.local_routes)
    return [n for n in found if n.version == 4] + [n for n in found if n.version == 6]
