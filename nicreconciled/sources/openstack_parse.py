"""OpenStack's ``network_data.json``, parsed. Pure: the document -> its ports by MAC
(parse_document), one port -> an Observation (build_observation), a port's table numbering.

Why the document is read this way (nova's shapes, DHCP-only ports completed from their
lease) is told in sources/openstack.py, the source that fetches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from nicreconciled.errors import MetadataError
from nicreconciled.model import MAX_ROUTES as MAX_STATIC_ROUTES
from nicreconciled.model import Observation, RedFlag, StaticRoute, normalize_mac
from nicreconciled.sources.common import make_state, parse_json
from nicreconciled.sources.common import scalar as _scalar
from nicreconciled.sources.leases import Lease, lease_key

#: The document, relative to the endpoint or the config drive's mount point; also the probe key.
NETWORK_DATA = "openstack/latest/network_data.json"
MAX_LINKS = 128
MAX_NETWORKS = 512
MAX_ROUTES = 64
#: Link types of a port (cloud-init cloudinit/sources/helpers/openstack.py
#: KNOWN_PHYSICAL_TYPES; nova nova/network/model.py LEGACY_EXPOSED_VIF_TYPES, else "phy").
PHYSICAL = frozenset(
    {"phy", "ethernet", "bridge", "dvs", "hw_veb", "hyperv", "ovs", "tap", "vhostuser", "vif"}
    | {"bgpovs", "cascading"}
)
#: IPv6 types with an address: nova writes ``ipv6_<ipv6_address_mode>`` with ip_address and
#: netmask when the subnet has an address mode (nova/virt/netutils.py ``_get_nets``).
STATIC6 = frozenset({"ipv6", "ipv6_slaac", "ipv6_dhcpv6-stateless", "ipv6_dhcpv6-stateful"})
DHCP_ONLY = frozenset({"ipv4_dhcp", "ipv6_dhcp"})


def numbering(number: int) -> tuple[int, int]:
    """(route table, route metric) of the port numbered NUMBER by common.device_numbers().

    Nova numbers nothing stable: a port's position in ``links`` shifts when an earlier port
    is detached, and a new table would drop the port's flows. The local ifindex does not
    change while the NIC exists, so the number comes from it (as on CloudStack): table
    10000 + number, rules of that priority, metric 512 + number (above the primary's 100).
    """
    return 10000 + number, 512 + number


@dataclass
class Port:
    """One port of the document, parsed."""

    link_id: str
    position: int
    #: links[].mtu: the network's MTU (Neutron: 1450 on VXLAN, 1500 on VLAN/flat).
    mtu: int | None = None
    ipv4: list[IPv4Address] = field(default_factory=list)
    subnet4: IPv4Network | None = None
    gateway4: IPv4Address | None = None
    ipv6: list[IPv6Address] = field(default_factory=list)
    subnets6: list[IPv6Network] = field(default_factory=list)
    gateway6: IPv6Address | None = None
    routes: list[StaticRoute] = field(default_factory=list)
    dhcp4: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Document:
    ports: dict[str, Port]
    order: list[str]
    #: Links and networks skipped (VLAN, bond, unknown types): logged, never an error.
    skipped: list[str]


def _text(where: str, value: object, limit: int = 255) -> str:
    if not isinstance(value, str):
        raise MetadataError(f"{where}: expected a string, got {type(value).__name__}")
    text = _scalar(where, value)
    if not text or len(text) > limit:
        raise MetadataError(f"{where}: empty or longer than {limit} characters")
    return text


def _list(where: str, value: object, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise MetadataError(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise MetadataError(f"{where}: {len(value)} entries, more than {limit}")
    return value


def _dict(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MetadataError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _network(where: str, address: str, netmask: object, v6: bool) -> IPv4Network | IPv6Network:
    """The subnet of ADDRESS with NETMASK: a mask ("255.255.255.0", nova's IPv6 form
    "ffff:ffff:ffff:ffff::" from ``str(subnet.as_netaddr().netmask)``) or a prefix length."""
    mask = str(netmask) if isinstance(netmask, int) and not isinstance(netmask, bool) else netmask
    mask = _text(f"{where}.netmask", mask, 64)
    try:
        if "%" in mask or "%" in address:  # ipaddress reads "%..." as an IPv6 zone
            raise ValueError(mask)
        if ":" in mask:  # Python's ipaddress knows no IPv6 mask form: turn it into a length
            bits = int(IPv6Address(mask))
            length = bin(bits).count("1")
            if bits != ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1):
                raise ValueError(mask)
            mask = str(length)
        network = ip_network(f"{address}/{mask}", strict=False)
    except ValueError:
        raise MetadataError(f"{where}.netmask: invalid netmask {mask[:45]!r}") from None
    if (network.version == 6) != v6:
        raise MetadataError(f"{where}.netmask: wrong address family")
    return network


def _address(where: str, value: object, v6: bool) -> IPv4Address | IPv6Address:
    """An address of a port or a router: never "/len", never an IPv6 zone ("fe80::1%eth0",
    which ipaddress accepts and no renderer can write), never the unspecified address."""
    text = _text(where, value, 64)
    try:
        if "%" in text:
            raise ValueError(text)
        address = IPv6Address(text) if v6 else IPv4Address(text)
    except ValueError:
        raise MetadataError(f"{where}: not an IPv{6 if v6 else 4} address: {text[:45]!r}") from None
    if address.is_unspecified:
        raise MetadataError(f"{where}: {address} is no address")
    return address


_Routes = list[tuple[IPv4Network | IPv6Network, IPv4Address | IPv6Address]]


def _routes(
    where: str, routes: object, v6: bool
) -> tuple[IPv4Address | IPv6Address | None, _Routes]:
    """The gateway of the family's default route (network 0.0.0.0 or ::, netmask of length
    0, nova's ``_get_default_route``), and the other routes (Neutron's host_routes, nova's
    ``_get_nets`` ``routes``) as (destination, router)."""
    gateway: IPv4Address | IPv6Address | None = None
    others: _Routes = []
    for i, raw in enumerate(_list(f"{where}.routes", routes, MAX_ROUTES)):
        route = _dict(f"{where}.routes[{i}]", raw)
        net = _text(f"{where}.routes[{i}].network", route.get("network"), 64)
        mask = route.get("netmask")
        via = _address(f"{where}.routes[{i}].gateway", route.get("gateway"), ":" in net)
        subnet = _network(f"{where}.routes[{i}]", net, mask, ":" in net)
        if via is None or (via.version == 6) != v6:
            continue
        if subnet.prefixlen == 0:
            gateway = gateway or via
        elif (subnet, via) not in others:
            others.append((subnet, via))
    return gateway, others


def _add_routes(port: Port, found: _Routes, subnets: Sequence[IPv4Network | IPv6Network]) -> None:
    """FOUND's routes whose router is on the port's link: in one of SUBNETS, or an IPv6
    link-local address (the kernel refuses a router it cannot reach on the link)."""
    for to, via in found:
        on_link = (via.version == 6 and via.is_link_local) or any(
            via.version == s.version and via in s for s in subnets
        )
        if not on_link:
            port.notes.append(f"route {to} via {via}: the router is not on the port's subnet")
        elif len(port.routes) >= MAX_STATIC_ROUTES:
            port.notes.append(f"route {to} via {via}: more than {MAX_STATIC_ROUTES} routes")
        else:
            route = StaticRoute(to=to, via=via)
            if route not in port.routes:
                port.routes.append(route)


def parse_document(text: str) -> Document:
    """Validate network_data.json and group its networks by port MAC. Pure.

    MetadataError (one line naming the field) for garbage: not JSON, wrong types, bad
    addresses, control characters, a network naming no or an unknown link, duplicates.
    """
    data = parse_json(NETWORK_DATA, text, dict)
    links = _list("links", data.get("links", []), MAX_LINKS)
    networks = _list("networks", data.get("networks", []), MAX_NETWORKS)
    _list("services", data.get("services", []), MAX_NETWORKS)
    ports: dict[str, Port] = {}
    by_id: dict[str, Port | None] = {}
    skipped: list[str] = []
    for i, raw in enumerate(links):
        link = _dict(f"links[{i}]", raw)
        link_id = _text(f"links[{i}].id", link.get("id"))
        if link_id in by_id:
            raise MetadataError(f"links[{i}].id: duplicate id {link_id!r}")
        kind = link.get("type")
        kind = None if kind is None else _text(f"links[{i}].type", kind, 64)
        mtu = link.get("mtu")
        if mtu is not None and (
            isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535
        ):
            raise MetadataError(f"links[{i}].mtu: not an MTU: {str(mtu)[:20]!r}")
        if kind is not None and kind not in PHYSICAL:
            skipped.append(f"link {link_id!r} of type {kind!r} (not a port's own NIC)")
            by_id[link_id] = None
            continue
        try:
            mac = normalize_mac(
                _text(f"links[{i}].ethernet_mac_address", link.get("ethernet_mac_address"))
            )
        except ValueError as exc:
            raise MetadataError(f"links[{i}].ethernet_mac_address: {exc}") from None
        if mac in ports:
            raise MetadataError(f"links[{i}].ethernet_mac_address: duplicate MAC {mac}")
        ports[mac] = by_id[link_id] = Port(link_id, len(ports), mtu=mtu)
    for i, raw in enumerate(networks):
        where = f"networks[{i}]"
        net = _dict(where, raw)
        link_id = _text(f"{where}.link", net.get("link"))
        if link_id not in by_id:
            raise MetadataError(f"{where}.link: unknown link {link_id[:40]!r}")
        kind = _text(f"{where}.type", net.get("type"), 64)
        port = by_id[link_id]
        if port is None:
            continue  # on a skipped (VLAN, bond) link
        if kind == "ipv4":
            address = _address(f"{where}.ip_address", net.get("ip_address"), False)
            subnet = _network(where, str(address), net.get("netmask"), False)
            gateway, found = _routes(where, net.get("routes", []), False)
            if not isinstance(address, IPv4Address) or not isinstance(subnet, IPv4Network):
                raise MetadataError(f"{where}: not IPv4")  # _address/_network checked it
            if subnet.prefixlen == 0:
                raise MetadataError(f"{where}.netmask: /0 is every address, not a subnet")
            if address not in port.ipv4:
                port.ipv4.append(address)
            if port.subnet4 is None:  # the first IPv4 network is the port's primary one
                port.subnet4 = subnet
                port.gateway4 = gateway if isinstance(gateway, IPv4Address) else None
            elif subnet != port.subnet4:
                port.notes.append(f"{address} is outside {port.subnet4}: added as /32")
            _add_routes(port, found, [port.subnet4])
        elif kind in STATIC6 and "ip_address" in net:
            address = _address(f"{where}.ip_address", net.get("ip_address"), True)
            subnet = _network(where, str(address), net.get("netmask"), True)
            gateway6, found = _routes(where, net.get("routes", []), True)
            if not isinstance(address, IPv6Address) or not isinstance(subnet, IPv6Network):
                raise MetadataError(f"{where}: not IPv6")  # _address/_network checked it
            if subnet.prefixlen == 0:
                raise MetadataError(f"{where}.netmask: /0 is every address, not a subnet")
            if port.gateway6 is None and isinstance(gateway6, IPv6Address):
                port.gateway6 = gateway6
            if address not in port.ipv6:
                port.ipv6.append(address)
            if subnet not in port.subnets6:
                port.subnets6.append(subnet)
            _add_routes(port, found, port.subnets6)
        elif kind == "ipv4_dhcp":
            port.dhcp4 = True
        elif kind in DHCP_ONLY or kind in STATIC6:
            port.notes.append(f"{kind} without an address: left to the kernel's RA handling")
        else:
            skipped.append(f"network {i} of type {kind!r} (unknown)")
    return Document(ports, list(ports), skipped)


def build_observation(
    mac: str,
    document: Document,
    primary_mac: str | None,
    number: int,
    raw: str,
    lease: Lease | None = None,
) -> Observation:
    """One MAC's Observation from the parsed DOCUMENT (RAW: its text, for the probe). Pure.

    NUMBER: the port's local number (numbering()); PRIMARY_MAC: the instance's primary port;
    LEASE: the port's own DHCP lease, what completes an ``ipv4_dhcp`` port.
    """
    mac = normalize_mac(mac)
    port = document.ports.get(mac)
    if port is None:
        flag = RedFlag("not-listed", "MAC not in network_data.json", (NETWORK_DATA,), "unlisted")
        return Observation(mac=mac, state=None, flags=(flag,), probe={NETWORK_DATA: raw})
    ipv6 = port.ipv6
    ipv4, subnet4, gateway4 = tuple(port.ipv4), port.subnet4, port.gateway4
    flags: list[RedFlag] = []
    probe: dict[str, str | None] = {NETWORK_DATA: raw}
    if port.dhcp4 and not port.ipv4:
        network = lease.network if lease is not None else None
        if lease is not None and lease.address is not None and network is not None:
            ipv4, subnet4 = (lease.address,), network
            # A router outside the subnet cannot be a next hop of the table's default route.
            router = lease.router
            gateway4 = router if router is not None and router in network else None
        else:
            # DHCP-only until the lease comes (only a matching configuration makes networkd
            # run a DHCP client); a state with IPv6 and no IPv4 would render as IPv6-only
            # (no DHCPv4 client), so the static IPv6 waits for the lease too.
            ipv6 = []
            detail = "no DHCP lease yet: address unknown"
            flags.append(RedFlag("incomplete", detail, (lease_key(mac),), "lease"))
            probe[lease_key(mac)] = lease.describe() if lease is not None else None
    table, metric = numbering(number)
    state = make_state(
        mac=mac,
        cloud="openstack",
        primary=mac == primary_mac,
        device_number=min(port.position, 99),
        route_table=table,
        route_metric=metric,
        interface_id=port.link_id,
        ipv4_addresses=ipv4,
        ipv4_subnet=subnet4,
        ipv4_gateway=gateway4,
        ipv6_addresses=tuple(ipv6),
        ipv6_subnets=tuple(port.subnets6) if ipv6 else (),
        ipv6_gateway=port.gateway6 if ipv6 else None,
        routes=tuple(r for r in port.routes if r.to.version == 4 or ipv6),
        mtu=port.mtu,
    )
    return Observation(mac=mac, state=state, flags=tuple(flags), probe=probe)
