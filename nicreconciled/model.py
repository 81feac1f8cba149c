"""Typed, validated, frozen views of what the metadata says about one NIC."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")

#: AWS allows at most 50 addresses of a family per ENI; anything far above is garbage.
MAX_ADDRESSES = 256


def normalize_mac(value: str) -> str:
    """Lower-case colon form; raises ValueError for anything that is not a MAC."""
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(mac):
        raise ValueError(f"not a MAC address: {value[:40]!r}")
    return mac


def mac_to_key(mac: str) -> str:
    """The file-name form of a MAC: 0a1b2c3d4e5f."""
    return normalize_mac(mac).replace(":", "")


def key_to_mac(key: str) -> str:
    if len(key) != 12:
        raise ValueError(f"not a MAC key: {key!r}")
    return normalize_mac(":".join(key[i : i + 2] for i in range(0, 12, 2)))


Mac = Annotated[str, AfterValidator(normalize_mac)]
#: A registered cloud's name (``sources.SOURCES``); a string, so a new cloud edits no type.
Cloud = Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{1,15}$")]

#: Policy-routing tables and rule priorities a source may choose: above the kernel's
#: reserved 253-255 and the rule priorities of main (32766) and default (32767) stay free.
MIN_TABLE, MAX_TABLE = 1000, 32765


#: Routes beyond the default a NIC's metadata may name (OpenStack: Neutron's host_routes).
MAX_ROUTES = 64


class StaticRoute(BaseModel):
    """A route the metadata names: TO via the on-link router VIA (same family)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address

    @model_validator(mode="after")
    def _same_family(self) -> StaticRoute:
        if self.to.version != self.via.version:
            raise ValueError(f"{self.to} via {self.via}: the families differ")
        if self.to.prefixlen == 0:
            raise ValueError("a default route is the gateway's, not a static route")
        return self


class NicState(BaseModel):
    """Everything a renderer needs to know about one NIC, and nothing it does not.

    Only rendering-relevant facts belong here: the fingerprint is computed over this model, so
    a field that changes without changing the rendered output would cause needless polls.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mac: Mac
    cloud: Cloud
    #: The instance's primary (EC2 device-number 0 / CloudStack default) NIC.
    primary: bool
    #: The number the cloud's metadata gives the NIC (EC2 device-number, OCI nicIndex,
    #: OpenStack's link order); None where it gives none (CloudStack). What
    #: ``interfaces.exclude_device_numbers`` matches.
    device_number: int | None = Field(default=None, ge=0, le=99)
    #: The NIC's own policy-routing table; its rules have this priority. Each source numbers
    #: its NICs (``sources/<cloud>.py``) so that two NICs of one instance never share one.
    route_table: int = Field(ge=MIN_TABLE, le=MAX_TABLE)
    #: Metric of the NIC's routes in main: higher than the primary's, which stays preferred.
    route_metric: int = Field(ge=1, le=65535)
    #: The cloud's id of the NIC (ENI id, VNIC OCID, port id), shown in comments only.
    interface_id: str | None = None
    #: First entry is the primary private IPv4 (obtained by DHCP); the rest are secondaries.
    ipv4_addresses: tuple[IPv4Address, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    ipv4_subnet: IPv4Network | None = None
    ipv4_gateway: IPv4Address | None = None
    ipv6_addresses: tuple[IPv6Address, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    ipv6_subnets: tuple[IPv6Network, ...] = Field(default=(), max_length=16)
    #: The IPv6 router where the metadata names it (OCI, OpenStack): a static default route
    #: in table T. None where routers are learnt from RAs only (EC2).
    ipv6_gateway: IPv6Address | None = None
    #: The link MTU where the metadata names it (OpenStack's links[].mtu: 1450 on VXLAN
    #: networks, where no DHCP server may be there to say so); None: the DHCP answer's, or
    #: the kernel's.
    mtu: int | None = Field(default=None, ge=68, le=65535)
    #: Routes beyond the default, each via a router on the NIC's link: in main with
    #: route_metric (traffic to TO goes this way), and in table T for a non-primary NIC.
    routes: tuple[StaticRoute, ...] = Field(default=(), max_length=MAX_ROUTES)
    #: Delegated prefixes (EC2 prefix delegation): routed to this NIC, not assigned to it.
    ipv4_prefixes: tuple[IPv4Network, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    ipv6_prefixes: tuple[IPv6Network, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    #: Ranges the cloud delivers to this NIC for the instance to accept as its own without
    #: assigning them (GCE alias IP ranges, forwarded IPs, target-instance IPs): each a route
    #: of type local in table local (255) out of the NIC, scope host, with our routing protocol
    #: number where the renderer can say it (``render/addressing.LOCAL_ROUTE_PROTOCOL``).
    local_routes: tuple[IPv4Network | IPv6Network, ...] = Field(
        default=(), max_length=MAX_ADDRESSES
    )
    #: Whether a non-primary NIC installs the routes its DHCP lease names (in main, with
    #: route_metric). False where a lease's routes must not steer the instance's own traffic
    #: (Azure: a secondary NIC's 168.63.129.16/32 or 169.254.169.254/32 would beat the
    #: primary's default route). The primary NIC's lease is always used whole.
    dhcp_routes: bool = True

    @model_validator(mode="after")
    def _no_default_local_route(self) -> NicState:
        for network in self.local_routes:
            if network.prefixlen == 0:
                raise ValueError(f"local_routes: {network} would make every address local")
        return self

    @property
    def key(self) -> str:
        return mac_to_key(self.mac)

    @property
    def ipv6_only(self) -> bool:
        """No IPv4 at all, IPv6 addresses: an ENI of an EC2 IPv6-only subnet. Renderers run
        no DHCPv4 client for it (there is no DHCPv4 server in such a subnet).

        Derived rather than stored: a NIC whose IPv4 is merely unknown yet (a CloudStack NIC
        without a lease) has no IPv6 addresses either and keeps its DHCPv4 client; sources
        only build an IPv4-less state with IPv6 addresses for a NIC that has no IPv4 (see
        ``sources/ec2.py``). Not a field, so every fingerprint stays what it was.
        """
        return not self.ipv4_addresses and self.ipv4_subnet is None and bool(self.ipv6_addresses)

    @property
    def rule_priority(self) -> int:
        return self.route_table


#: Red-flag kinds the reconciler itself knows; each source declares its own (FLAG_KINDS).
#: "not-listed": the metadata does not know the MAC; "still-listed": the NIC is gone here
#: but the metadata still lists it; "incomplete": keys the state needs are missing.
COMMON_FLAG_KINDS = frozenset({"not-listed", "still-listed", "incomplete"})


@dataclass(frozen=True)
class RedFlag:
    """A sign that the metadata is still propagating: do not call it stable yet.

    ``keys`` names the source paths whose change would end the wait, so the reconciler can
    watch them with cheap probes instead of full fetches. ``grace`` selects which timer lets
    the reconciler accept the state anyway: the short IPv6 grace, the short grace of a MAC the
    metadata does not list (not an ENI, or one still propagating), none at all for a CloudStack
    NIC without a DHCP lease (it is written DHCP-only at once, so that its DHCP client runs,
    and completed when the lease comes), or the general deadline.
    """

    kind: str
    detail: str
    keys: tuple[str, ...] = ()
    grace: Literal["ipv6", "unlisted", "lease", "deadline"] = "deadline"


@dataclass(frozen=True)
class Observation:
    """One complete, successful fetch for one MAC.

    ``state`` is None when the metadata does not (yet) know the MAC. ``probe`` holds the raw
    answers for every key any flag waits on (None = 404), as seen by this fetch.
    """

    mac: str
    state: NicState | None
    flags: tuple[RedFlag, ...] = ()
    probe: dict[str, str | None] = field(default_factory=dict)
