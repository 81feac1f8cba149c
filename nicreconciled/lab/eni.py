"""ENIs as the lab plans them, and the kernel state the product promises for one.

``Eni.plan(n)`` gives device N its own subnets, addresses and MAC; ``Eni.spec()`` is what
the IMDS simulator lists; ``missing_state(lab, eni)`` is what of the promised kernel state
is not there yet, by the product's one definition (``nicreconciled.promise``) applied to the
plan: every address, one rule (priority T) from each to table T = 10000 + 100*card +
device, and in T the IPv4 subnet route, the IPv4 default route via the subnet gateway and
the IPv6 subnet routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any

from nicreconciled.lab.kernel import Family
from nicreconciled.lab.nics import Nic
from nicreconciled.model import NicState
from nicreconciled.promise import Snapshot, promise, snapshot

if TYPE_CHECKING:
    from nicreconciled.lab.lab import Lab


def table_of(device_number: int, network_card: int = 0) -> int:
    """The product's per-NIC routing table (and rule priority): 10000 + 100*card + device."""
    return 10000 + 100 * network_card + device_number


@dataclass
class Eni:
    """A planned ENI: device N gets 10.0.(10+N).0/24 and 2001:db8:(10+N)::/64, the primary
    private IPv4 .20, secondaries .21, .22, ..., IPv6 ::10."""

    device_number: int
    mac: str
    ipv4s: list[str]
    subnet4: str
    ipv6s: list[str]
    subnet6: str | None
    nic: Nic | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The NIC's policy-routing table; 0: EC2's numbering of device_number (table_of). A
    #: cloud that numbers its NICs otherwise sets it from its source's numbering.
    route_table: int = 0

    @classmethod
    def plan(cls, device_number: int, secondaries: int = 2, ipv6: bool = True) -> Eni:
        octet = 10 + device_number
        ipv4s = [f"10.0.{octet}.{20 + i}" for i in range(secondaries + 1)]
        return cls(
            device_number=device_number,
            mac=f"0a:00:00:00:01:{device_number:02x}",
            ipv4s=ipv4s,
            subnet4=f"10.0.{octet}.0/24",
            ipv6s=[f"2001:db8:{octet}::10"] if ipv6 else [],
            subnet6=f"2001:db8:{octet}::/64" if ipv6 else None,
        )

    @property
    def table(self) -> int:
        return self.route_table or table_of(self.device_number)

    @property
    def ifname(self) -> str:
        assert self.nic is not None, "not plugged"
        return self.nic.ifname

    @property
    def gateway4(self) -> str:
        return self.subnet4.rsplit(".", 1)[0] + ".1"

    @property
    def gateway6(self) -> str | None:
        return None if self.subnet6 is None else self.subnet6.split("/")[0] + "1"

    def plan_dict(self) -> dict[str, Any]:
        """The cloud-neutral plan a simulator's ``lab_spec`` turns into its own NIC spec."""
        return {
            "mac": self.mac,
            "device_number": self.device_number,
            "ipv4s": list(self.ipv4s),
            "subnet4": self.subnet4,
            "gateway4": self.gateway4,
            "ipv6s": list(self.ipv6s),
            "subnet6": self.subnet6,
            "gateway6": self.gateway6,
        }

    def spec(self, **changes: Any) -> dict[str, Any]:
        """The EC2 simulator's NicSpec for this ENI."""
        spec: dict[str, Any] = {
            "mac": self.mac,
            "device_number": self.device_number,
            "local_ipv4s": list(self.ipv4s),
            "subnet_ipv4_cidr": self.subnet4,
        }
        if self.subnet6 is not None:
            spec["subnet_ipv6_cidrs"] = [self.subnet6]
            spec["ipv6s"] = list(self.ipv6s)
        spec.update(self.extra)
        spec.update(changes)
        return spec


def plan_state(eni: Eni, *, ipv4s: list[str] | None = None, ipv6: bool = True) -> NicState:
    """The NicState the product builds from ENI's planned metadata (EC2's numbering, or the
    cloud's table in ``route_table``): what ``promise.promise`` is asked about. The IPv6
    router and extra routes are left out (not every cloud's simulator names them)."""
    want6 = eni.ipv6s if ipv6 else []
    return NicState(
        mac=eni.mac,
        cloud="ec2",
        primary=False,
        device_number=eni.device_number,
        route_table=eni.table,
        route_metric=512 + eni.device_number,
        ipv4_addresses=tuple(IPv4Address(a) for a in (eni.ipv4s if ipv4s is None else ipv4s)),
        ipv4_subnet=IPv4Network(eni.subnet4),
        ipv4_gateway=IPv4Address(eni.gateway4),
        ipv6_addresses=tuple(IPv6Address(a) for a in want6),
        ipv6_subnets=(IPv6Network(eni.subnet6),) if eni.subnet6 and want6 else (),
    )


def _prefix(text: str, family: Family) -> str:
    """``ip -j``'s spelling of a destination or source as a prefix."""
    if text in ("default", "all", ""):
        return "0.0.0.0/0" if family == 4 else "::/0"
    return text if "/" in text else f"{text}/{32 if family == 4 else 128}"


def kernel_snapshot(lab: Lab, ifname: str, table: int) -> Snapshot:
    """IFNAME's addresses (tentative ones not yet), TABLE's rules and routes, and the routes
    of type local out of IFNAME in table local, both families, as ``ip -j`` shows them in
    the lab's instance."""
    addresses = [a.cidr for a in lab.addresses(ifname) if not a.tentative]
    rules: list[tuple[str, int, int]] = []
    routes: list[tuple[str, str | None, int]] = []
    local: list[str] = []
    families: tuple[Family, Family] = (4, 6)
    for f in families:
        local += [
            _prefix(str(route["dst"]), f)
            for route in lab.routes(f, "local")
            if route.get("type") == "local" and route.get("dev") == ifname
        ]
        for rule in lab.rules(f, table):
            source = (
                rule.src
                if rule.src is None or rule.src_len is None
                else f"{rule.src}/{rule.src_len}"
            )
            rules.append((_prefix(source or "all", f), table, rule.priority))
        for route in lab.routes(f, table):
            if route.get("type", "unicast") != "unicast":
                continue
            destination = _prefix(str(route.get("dst", "")), f)
            # A multipath route (NetworkManager 1.52 merges a static and an RA default route
            # of one metric): a route per next hop, as the product reads it.
            for hop in route.get("nexthops") or [route]:
                routes.append((destination, hop.get("gateway"), table))
    return snapshot(addresses, rules, routes, local=local)


def missing_state(
    lab: Lab, eni: Eni, *, ipv4s: list[str] | None = None, ipv6: bool = True
) -> list[str]:
    """What of ENI's promised kernel state is not there yet ([] = complete): the product's
    own promise (``promise.promise``) of the NicState its plan makes (``plan_state``) against
    the kernel, plus one lab check of its own: no rule in T from an address the plan does not
    have (a stale one). IPV4S: the IPv4 addresses expected instead of the planned ones; IPV6
    False: IPv4 only."""
    state = plan_state(eni, ipv4s=ipv4s, ipv6=ipv6)
    promised = promise(state)
    kernel = kernel_snapshot(lab, eni.ifname, eni.table)
    missing = promised.missing(kernel)
    ours = {r.source for r in promised.rules}
    stale = sorted(r.source for r in kernel.rules if r.source not in ours)
    if not ipv6:
        stale = [s for s in stale if ":" not in s]
    return missing + [f"no stale rule from {s} lookup {eni.table}" for s in stale]
