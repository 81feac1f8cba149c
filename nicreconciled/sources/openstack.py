"""OpenStack: every port of the instance from one document, ``network_data.json``.

Why it looks the way it does (facts cited where they are used; see docs/clouds/openstack.md):

* Nova describes all ports in one document (openstack/nova nova/virt/netutils.py
  ``get_network_metadata``): ``links`` (one per port: ``id``, ``type``,
  ``ethernet_mac_address``, ``mtu``) and ``networks`` (each names its link by ``id``). It is
  fetched through a SharedAnswer: N NICs polling together cost one request.
* Nova's metadata API caches an instance's metadata for ``[api] metadata_cache_expiration``
  seconds (default 15; nova/conf/api.py), so a port attached a moment ago can be missing
  from the document: a "not-listed" flag (grace "unlisted") like EC2's unlisted MAC.
* Only static networks carry addresses. ``ipv4_dhcp`` / ``ipv6_dhcp`` name no address
  (nova writes them for subnets with ``enable_dhcp`` or a DHCP port, which is most Neutron
  deployments). Such a port is written DHCP-only at once, so that its DHCP client runs, and
  completed from the port's own lease (address, prefix, router: ``sources/leases.py``)
  with its table and rules when the lease appears, as CloudStack NICs are. Without the rule,
  replies from a second port's address leave by the first, whose port security drops them.
* The config drive is written once, when the instance boots (nova
  doc/source/user/metadata.rst, "Config drives"): it never shows a port attached later. It
  is read only when the service gives no usable answer; a hot-attached port is then
  "not-listed" until the service answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Any, ClassVar

import structlog
from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.model import (
    COMMON_FLAG_KINDS,
    Observation,
    RedFlag,
    StaticRoute,
    normalize_mac,
)
from nicreconciled.model import MAX_ROUTES as MAX_STATIC_ROUTES
from nicreconciled.sources.common import (
    SharedAnswer,
    device_numbers,
    make_state,
    parse_json,
    routed_macs,
)
from nicreconciled.sources.common import scalar as _scalar
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.leases import LEASE_KEY, Lease, LocalLeases, lease_key
from nicreconciled.system import proc, sysfs

_log = structlog.get_logger(__name__)

#: The document, relative to the endpoint or the config drive's mount point; also the probe key.
NETWORK_DATA = "openstack/latest/network_data.json"
DOCUMENT_TTL = 0.5
DETECT_TIMEOUT = 1.0
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
_DMI_VENDOR = "OpenStack Foundation"  # nova/version.py NOVA_VENDOR (libvirt sysinfo)
_DMI_PRODUCTS = ("OpenStack Nova", "OpenStack Compute")  # cloud-init tools/ds-identify


class OpenStackConfig(Section):
    """``[openstack]``: the metadata service, and a config drive to fall back on."""

    endpoint: str = "http://169.254.169.254"
    #: Where a config drive (label ``config-2``) is mounted; "" = no fallback.
    config_drive: str = ""

    _endpoint = field_validator("endpoint")(check_endpoint)

    @field_validator("config_drive")
    @classmethod
    def _drive(cls, value: str) -> str:
        if value and (not value.startswith("/") or "\0" in value):
            raise ValueError("must be an absolute path or empty")
        return value


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


# --- pure parsing -------------------------------------------------------------------------


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


# --- I/O ----------------------------------------------------------------------------------


class OpenStackSource:
    """network_data.json from the metadata service (or a config drive). One event loop."""

    name: ClassVar[str] = "openstack"
    Settings: ClassVar[type[Section]] = OpenStackConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    ONE_ANSWER: ClassVar[bool] = True
    detect_error: str = "not detected"

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> OpenStackSource:
        return cls(config.section(OpenStackConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """Nova's libvirt driver writes sys_vendor "OpenStack Foundation" and product_name
        "OpenStack Nova" (nova/version.py, nova/virt/libvirt/driver.py sysinfo); RDO's nova
        says "OpenStack Compute" (cloud-init tools/ds-identify, LP: #1675349)."""
        if sysfs.dmi("sys_vendor", sys_root) == _DMI_VENDOR:
            return True
        return True if sysfs.dmi("product_name", sys_root) in _DMI_PRODUCTS else None

    def __init__(
        self,
        config: OpenStackConfig,
        http: HttpClient,
        *,
        root: Path = Path("/"),
        runner: proc.Runner = proc.run,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = DOCUMENT_TTL,
    ) -> None:
        self._http = http
        self._url = f"{config.endpoint}/{NETWORK_DATA}"
        self._drive = Path(config.config_drive) if config.config_drive else None
        self._root = root
        self._clock = clock
        self._leases = LocalLeases(root=root, runner=runner, clock=clock)
        self._document = SharedAnswer(self._load, ttl, clock)
        self._numbers: dict[str, int] = {}
        self._warned: set[str] = set()
        self._log = _log.bind(source="openstack")

    async def _get_service(self) -> str:
        answer = await self._http.request("GET", self._url)
        if answer.status != 200:
            raise FetchError(f"GET /{NETWORK_DATA}: HTTP {answer.status}")
        return answer.body

    async def _load(self) -> tuple[str, Document]:
        try:
            text = await self._get_service()
        except FetchError as exc:
            if self._drive is None:
                raise
            text = self._read_drive(str(exc))
        return text, parse_document(text)

    def _read_drive(self, why: str) -> str:
        assert self._drive is not None
        path = self._drive / NETWORK_DATA
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FetchError(f"{why}; config drive {path}: {exc}") from None
        self._log.warning("config_drive_used", reason=why, path=str(path))
        return text

    async def detect(self) -> bool:
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                parse_json(NETWORK_DATA, await self._get_service(), dict)
        except Exception as exc:
            self.detect_error = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            return False
        return True

    def _primary(self, document: Document, links: Sequence[sysfs.Link]) -> str | None:
        """The port carrying the kernel's IPv4 default route (lowest metric first), else the
        document's first; a port's own DHCP route does not count (common.routed_macs)."""
        ours = {m: numbering(n)[1] for m, n in self._numbers.items() if n > 0}
        for mac in routed_macs(links, self._leases.default_routes(), ours):
            if mac in document.ports:
                return mac
        return document.order[0] if document.order else None

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        asked = self._clock()
        # An answer sent after this poll began (a SIGHUP or a resync must see a change made
        # a moment ago); polls that overlap share it, so N NICs polling together cost one.
        text, document = await self._document.get(newer_than=asked)
        for note in set(document.skipped) - self._warned:  # once each, not every poll
            self._warned.add(note)
            self._log.warning("openstack_skipped", what=note)
        port = document.ports.get(mac)
        for note in port.notes if port is not None else ():
            self._log.info("openstack_not_rendered", mac=mac, what=note)
        links = self._leases.links()
        primary = self._primary(document, links)
        numbers = device_numbers(links, primary)
        self._numbers.update(numbers)
        number = numbers.get(mac, self._numbers.get(mac, 99))
        lease = None
        if port is not None and port.dhcp4 and not port.ipv4:
            lease = await self._lease(mac, links)
        return build_observation(mac, document, primary, number, text, lease)

    async def _lease(self, mac: str, links: Sequence[sysfs.Link]) -> Lease | None:
        """MAC's own DHCP lease (None: no such NIC here, or no lease yet)."""
        names = [link.name for link in links if link.mac == mac]
        return await self._leases.leases_for(names[0]) if names else None

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for key in keys:
            if key.startswith(LEASE_KEY):
                mac = normalize_mac(key.removeprefix(LEASE_KEY))
                lease = await self._lease(mac, self._leases.links())
                out[key] = lease.describe() if lease is not None else None
            elif key == NETWORK_DATA:
                out[key], _ = await self._document.get()
            else:
                raise ValueError(f"not an OpenStack probe key: {key[:80]!r}")
        return out

    def predict(self, mac: str, answers: Mapping[str, str | None]) -> Observation | None:
        """MAC's Observation from a probed document text (None: garbage or no answer)."""
        text = answers.get(NETWORK_DATA)
        number = self._numbers.get(normalize_mac(mac))
        if text is None or number is None:
            return None
        try:
            document = parse_document(text)
        except MetadataError:
            return None
        port = document.ports.get(normalize_mac(mac))
        if port is not None and port.dhcp4 and not port.ipv4:
            return None  # its state needs the lease: the full fetch that follows reads it
        primary = self._primary(document, self._leases.links())
        return build_observation(mac, document, primary, number, text)

    async def close(self) -> None:
        await self._http.close()
