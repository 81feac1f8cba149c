"""NicState -> one systemd-networkd ``.network`` file per NIC, for ``/run/systemd/network``.

The routing design is the netplan renderer's (read its module docstring first): the same
addresses, table T = 10000 + 100*card + device with the subnet and default routes, one rule
(priority T) from every address and delegated prefix, DHCP route metric M = 512 + ...; this
module only says where writing networkd directly differs. Everything here exists in
systemd 252 (Debian 12) and was checked in the project's lab on the real systemd-networkd
(``tests/integration/lab/test_networkd_renderer.py``: kernel state and packets).

* File name ``05-nicreconciled-<mac key>.network``. networkd applies the *first* ``.network``
  file, in lexical order of the file names across /etc, /run and /usr/lib, whose
  ``[Match]`` fits the link, and ignores every later one. ``05`` sorts before everything
  known to match an ENI: Debian's amazon-ec2-net-utils writes ``07-IFACE.network`` (its
  Debian patch moved it from ``70-`` so that it beats netplan), cloud-init's networkd
  renderer and netplan write ``10-*``, upstream amazon-ec2-net-utils ``70-IFACE.network``,
  AL2023's catch-all ``80-ec2.network``, systemd's own examples ``80-*``/``89-*``.
  ``00``-``04`` stay free for an operator who deliberately wants to override us.

* ``[Match]``: ``MACAddress=`` (the current MAC) with ``Type=ether`` and a ``Kind=`` that
  excludes the stacked devices which take over their lower device's MAC, not
  ``PermanentMACAddress=`` (what netplan writes). Why:
  the daemon decides which NIC to manage by its current MAC (read from sysfs), so matching
  the same value applies the file to exactly that device, whatever it is; a veth (the lab,
  ``interfaces.virtual``) has no permanent MAC and ``PermanentMACAddress=`` would never
  match it (netplan's output needs a rewriting wrapper in the lab for that reason), while
  real ENIs and virtio NICs have one equal to their current MAC. What the permanent MAC
  would buy is immunity to devices that share the MAC: a VLAN, bond or bridge on top of
  the ENI (excluded by ``Type=ether``: their ``DEVTYPE`` is vlan/bond/bridge), and
  macvlan/macvtap in passthru mode or ipvlan/ipvtap, whose type is plain ether: ``Kind=``
  excludes those (and team, to be safe). Checked in the lab: a passthru macvlan carrying the
  ENI's MAC is left unmanaged; without the ``Kind=`` it got our addresses.

* Mode 0644, not 0600 (``NetworkdRenderer.mode``): systemd-networkd reads its files as the
  ``systemd-network`` user, and a root-only file is skipped ("Permission denied", seen in
  the lab). The file holds addresses and routes, nothing secret; netplan writes its
  ``.network`` files 0644 for the same reason.

* DHCP: ``DHCP=yes`` with IPv6 addresses, ``ipv4`` without, ``ipv6`` for an ENI of an
  IPv6-only subnet; every address also static, the primary IPv4 first (``addressing.py``).
  The metric M goes to ``[DHCPv4] RouteMetric=`` and ``[IPv6AcceptRA] RouteMetric=`` (the
  sections networkd documents today, not netplan's legacy ``[DHCP]``); ``UseMTU=yes`` as
  netplan writes it (EC2 hands out MTU 9001 by DHCP).

* IPv6 default route in table T: ``[IPv6AcceptRA] RouteTable=T``. The RA's routes (the
  default route via the router's link-local address, the on-link prefix route) go into T
  and none into main; the kernel's prefix route of each static address stays in main, so
  the host still reaches the subnet directly. This is what netplan >= 1.1 writes for
  ``ra-overrides: {table: T}`` and what the networkmanager renderer achieves with
  ``ipv6.route-table``, so the three agree on the kernel state. The alternative,
  ``[Route] Gateway=_ipv6ra`` + ``Table=T`` (amazon-ec2-net-utils' choice), also works on
  systemd 252 (tried in the lab) but keeps the RA default route in main as well, with
  metric M: that wins over a primary NIC whose own RA route has networkd's default metric
  1024, and would steer the host's unbound IPv6 traffic out of a secondary NIC. The IPv6
  subnet routes are also written to T statically, so T serves on-subnet replies before the
  first RA. A non-primary NIC without IPv6 addresses gets ``IPv6AcceptRA=no`` (no RA route
  anywhere), except with delegated IPv6 prefixes, where RAs fill T for replies sourced from
  a prefix; no DHCPv6 address is asked for there (``DHCPv6Client=no``): the ENI has none.

* The primary NIC (rendered only with ``manage_primary``) gets DHCP and its addresses, no
  policy routing, networkd's own metrics and RA handling.

* Local routes (``addressing.py``), on every NIC: ``[Route] Destination=X Type=local
  Scope=host Table=255 Protocol=110`` (no ``Scope=`` for IPv6, where networkd ignores it
  with a warning). The kernel shows ``local X dev IF table local proto 110 scope host``
  (IPv6: ``proto 110 metric 1024``), so ``ip route show table local proto 110`` lists ours
  and nothing else. networkd puts them back when it reconfigures the link (a heal's
  ``networkctl reconfigure``, its own restart): they are in the link's configuration, not
  foreign routes it would drop.

* The file is built as data (sections of key/value pairs; sections repeat) and serialized
  by a writer that refuses any name or value outside a small character set: nothing can
  carry a newline, a comment character, a ``\\`` continuation or a quote into the file.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Final

from nicreconciled.model import NicState, mac_to_key
from nicreconciled.render.addressing import (
    LOCAL_ROUTE_PROTOCOL,
    LOCAL_TABLE,
    addresses,
    local_routes,
    routes_ipv6,
    rule_sources,
    unique,
)

if TYPE_CHECKING:
    from nicreconciled.config import Config

_HEADER: Final = "# Written by nicreconciled for {mac}; do not edit (rewritten on change).\n"

#: Devices that share their lower device's MAC and whose type is plain ether.
SHARED_MAC_KINDS: Final = ("macvlan", "macvtap", "ipvlan", "ipvtap", "team")

Section = tuple[str, list[tuple[str, str]]]

_NAME_RE: Final = re.compile(r"[A-Z][A-Za-z0-9]*")
# Addresses, numbers, booleans, "!kind" lists: nothing the unit-file syntax gives a meaning
# to (newline, "#", ";", "\\", quotes, "%" specifiers, leading or trailing blanks).
_VALUE_RE: Final = re.compile(r"[A-Za-z0-9:./_!-]+(?: [A-Za-z0-9:./_!-]+)*")


class NetworkdRenderer:
    """Renders one NIC as a ``.network`` file for ``/run/systemd/network``."""

    name: ClassVar[str] = "networkd"
    prefix: ClassVar[str] = "05-nicreconciled-"
    suffix: ClassVar[str] = ".network"
    #: systemd-networkd reads its files as an unprivileged user (module docstring).
    mode: ClassVar[int] = 0o644

    @classmethod
    def from_config(cls, config: Config) -> NetworkdRenderer:
        return cls()

    def filename(self, mac: str) -> str:
        """``05-nicreconciled-0a1b2c3d4e5f.network``; ValueError if MAC is not a MAC."""
        return f"{self.prefix}{mac_to_key(mac)}{self.suffix}"

    def render(self, state: NicState) -> str:
        return write_network(network(state), comment=_HEADER.format(mac=state.mac))


def network(state: NicState) -> list[Section]:
    """The file as ordered sections of (key, value); what ``render`` serializes."""
    sections: list[Section] = [
        (
            "Match",
            [
                ("MACAddress", state.mac),
                ("Type", "ether"),
                ("Kind", " ".join(f"!{kind}" for kind in SHARED_MAC_KINDS)),
            ],
        ),
    ]
    if state.mtu is not None:
        sections.append(("Link", [("MTUBytes", str(state.mtu))]))
    sections.append(("Network", _network(state)))
    policy = not state.primary
    metric = str(state.route_metric)
    if not state.ipv6_only:
        dhcp4 = [("RouteMetric", metric)] if policy else []
        if policy and not state.dhcp_routes:
            dhcp4.append(("UseRoutes", "no"))  # UseGateway= follows it
        # A metadata MTU is the link's ([Link] MTUBytes); networkd refuses both at once.
        use_mtu = [("UseMTU", "yes")] if state.mtu is None else []
        if dhcp4 or use_mtu:
            sections.append(("DHCPv4", [*dhcp4, *use_mtu]))
    if policy and routes_ipv6(state):
        ra = [("RouteMetric", metric), ("RouteTable", str(state.route_table))]
        if not state.ipv6_addresses:
            ra.append(("DHCPv6Client", "no"))
        sections.append(("IPv6AcceptRA", ra))
    sections += [
        ("Route", [("Destination", str(r.to)), ("Gateway", str(r.via)), ("Metric", metric)])
        for r in state.routes
    ]  # the metadata's routes, in main
    if policy:
        sections += _routes(state)
    sections += _local_routes(state)
    if policy:
        table, priority = str(state.route_table), str(state.rule_priority)
        sections += [
            ("RoutingPolicyRule", [("From", source), ("Table", table), ("Priority", priority)])
            for source in rule_sources(state)
        ]
    return sections


def _network(state: NicState) -> list[tuple[str, str]]:
    has_ipv6 = bool(state.ipv6_addresses)
    dhcp = "ipv6" if state.ipv6_only else "yes" if has_ipv6 else "ipv4"
    entries = [("DHCP", dhcp), ("LinkLocalAddressing", "ipv6")]
    if has_ipv6 or (not state.primary and routes_ipv6(state)):
        entries.append(("IPv6AcceptRA", "yes"))
    elif not state.primary:
        entries.append(("IPv6AcceptRA", "no"))
    entries += [("Address", address) for address in addresses(state)]
    return entries


def _local_routes(state: NicState) -> list[Section]:
    """Each local route: type local in table local, scope host (IPv4: networkd warns about
    and ignores a scope on an IPv6 route), our protocol number (``addressing.py``)."""
    sections: list[Section] = []
    for network in local_routes(state):
        entries = [("Destination", str(network)), ("Type", "local")]
        if network.version == 4:
            entries.append(("Scope", "host"))
        entries += [("Table", str(LOCAL_TABLE)), ("Protocol", str(LOCAL_ROUTE_PROTOCOL))]
        sections.append(("Route", entries))
    return sections


def _routes(state: NicState) -> list[Section]:
    """The static routes of table T (the RA's come from ``[IPv6AcceptRA] RouteTable=``)."""
    table = str(state.route_table)
    routes: list[Section] = []
    if state.ipv4_subnet is not None:
        subnet = [("Destination", str(state.ipv4_subnet)), ("Scope", "link")]
        routes.append(("Route", [*subnet, ("Table", table)]))
    if state.ipv4_gateway is not None:
        default = [("Destination", "0.0.0.0/0"), ("Gateway", str(state.ipv4_gateway))]
        routes.append(("Route", [*default, ("Table", table)]))
    if routes_ipv6(state):
        routes += [
            ("Route", [("Destination", str(subnet)), ("Table", table)])
            for subnet in unique(state.ipv6_subnets)
        ]
        if state.ipv6_gateway is not None:
            default6 = [("Destination", "::/0"), ("Gateway", str(state.ipv6_gateway))]
            routes.append(("Route", [*default6, ("Table", table)]))
    routes += [
        ("Route", [("Destination", str(r.to)), ("Gateway", str(r.via)), ("Table", table)])
        for r in state.routes
    ]
    return routes


def write_network(sections: list[Section], *, comment: str = "") -> str:
    """Serialize SECTIONS; ValueError for any name or value the format could misread."""
    lines = [comment.rstrip("\n")] if comment else []
    for name, entries in sections:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid section name {name!r}")
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, value in entries:
            if not _NAME_RE.fullmatch(key):
                raise ValueError(f"invalid key {key!r} in [{name}]")
            if not _VALUE_RE.fullmatch(value):
                raise ValueError(f"invalid value for {name}.{key}: {value[:60]!r}")
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"
