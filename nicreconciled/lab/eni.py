"""ENIs as the lab plans them, and the kernel state the product promises for one.

``Eni.plan(n)`` gives device N its own subnets, addresses and MAC; ``Eni.spec()`` is what
the IMDS simulator lists; ``missing_state(lab, eni)`` is what of the promised kernel state
is not there yet (the README's "What the netplan file contains"): every address, one rule
(priority T) from each to table T = 10000 + 100*card + device, and in T the IPv4 subnet
route, the IPv4 default route via the subnet gateway and the IPv6 subnet routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nicreconciled.lab.kernel import Family
from nicreconciled.lab.nics import Nic

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


def missing_state(
    lab: Lab, eni: Eni, *, ipv4s: list[str] | None = None, ipv6: bool = True
) -> list[str]:
    """What of ENI's promised kernel state is not there yet ([] = complete): every address,
    exactly one rule (priority T) from each address to table T, in T the IPv4 subnet route,
    the IPv4 default route via the subnet gateway and the IPv6 subnet route. IPV4S: the
    IPv4 addresses expected instead of the planned ones; IPV6 False: IPv4 only."""
    want4 = eni.ipv4s if ipv4s is None else ipv4s
    want6 = eni.ipv6s if ipv6 else []
    missing = []
    present = {a.local for a in lab.addresses(eni.ifname) if not a.tentative}
    missing += [f"address {a}" for a in [*want4, *want6] if a not in present]
    t = eni.table
    families: list[tuple[Family, list[str]]] = [(4, want4)]
    if ipv6:
        families.append((6, want6))
    for family, wanted in families:
        found = {(r.src, r.priority) for r in lab.rules(family, t)}
        missing += [f"rule from {a} lookup {t}" for a in wanted if (a, t) not in found]
        extra = {src for src, _ in found} - set(wanted)
        missing += [f"no stale rule from {src} lookup {t}" for src in sorted(map(str, extra))]
    routes4 = lab.route_destinations(4, t)
    if eni.subnet4 not in routes4:
        missing.append(f"route {eni.subnet4} table {t}")
    if routes4.get("default") != eni.gateway4:
        missing.append(f"route default via {eni.gateway4} table {t}")
    if eni.subnet6 is not None and want6 and eni.subnet6 not in lab.route_destinations(6, t):
        missing.append(f"route {eni.subnet6} table {t}")
    return missing
