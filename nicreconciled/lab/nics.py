"""A NIC of the lab and the router port behind it (addresses, names, dnsmasq arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Network, ip_network
from pathlib import Path


@dataclass(frozen=True)
class Nic:
    """A veth NIC: ``ifname`` in the instance (born with ``mac``), ``port`` in the router.

    The router port holds the subnet gateways (network + 1, IPv4 and IPv6); for a NIC made by
    ``Lab.plug`` a dnsmasq on that port leases ``address4`` to ``mac`` and serves DHCPv6 and
    router advertisements for ``subnet6``.
    """

    mac: str
    ifname: str
    port: str
    port_mac: str
    #: The primary private IPv4 with the subnet's prefix length, e.g. "10.0.11.20/24".
    address4: str
    #: The IPv6 subnet, e.g. "2001:db8:11::/64" (None: IPv4 only).
    subnet6: str | None = None
    primary: bool = False
    #: More options of the port's DHCPv4 server, as dnsmasq's ``--dhcp-option-force`` takes
    #: them (e.g. ``"121,168.63.129.16/32,10.0.11.1"``: classless static routes, as Azure's
    #: DHCP gives its primary NIC): sent whether or not the client asked for them.
    dhcp_options: tuple[str, ...] = ()

    @property
    def ipv4(self) -> str:
        return str(IPv4Interface(self.address4).ip)

    @property
    def prefix4(self) -> int:
        return IPv4Interface(self.address4).network.prefixlen

    @property
    def subnet4(self) -> str:
        return str(IPv4Interface(self.address4).network)

    @property
    def gateway4(self) -> str:
        return str(IPv4Interface(self.address4).network.network_address + 1)

    @property
    def gateway6(self) -> str | None:
        if self.subnet6 is None:
            return None
        return str(IPv6Network(self.subnet6).network_address + 1)

    @property
    def prefix6(self) -> int | None:
        return None if self.subnet6 is None else IPv6Network(self.subnet6).prefixlen

    def router_commands(self) -> list[list[str]]:
        """``ip -batch`` lines that make the pair in the router and give the port its
        gateway addresses (the NIC end stays down, and stays in the router for now)."""
        pair = ["link", "add", self.port, "address", self.port_mac, "type", "veth"]
        cmds = [
            [*pair, "peer", "name", self.ifname, "address", self.mac],
            ["addr", "add", f"{self.gateway4}/{self.prefix4}", "dev", self.port],
        ]
        if self.subnet6 is not None:
            cmds.append(
                ["addr", "add", f"{self.gateway6}/{self.prefix6}", "dev", self.port, "nodad"]
            )
        cmds.append(["link", "set", self.port, "up"])
        return cmds

    def dnsmasq_argv(self, workdir: Path) -> list[str]:
        """One dnsmasq for this port: fixed DHCPv4 lease MAC -> address4 with the gateway as
        router; DHCPv6 from a range of subnet6 and router advertisements (M flag)."""
        net = IPv4Interface(self.address4).network
        pool_start, pool_end = net.network_address + 100, net.network_address + 199
        argv = [
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--group=root",
            "--pid-file=",
            f"--dhcp-leasefile={workdir / f'dnsmasq-{self.port}.leases'}",
            f"--interface={self.port}",
            "--bind-interfaces",
            "--log-dhcp",
            f"--dhcp-range={pool_start},{pool_end},{net.netmask},1h",
            f"--dhcp-host={self.mac},{self.ipv4}",
            f"--dhcp-option=option:router,{self.gateway4}",
            *(f"--dhcp-option-force={option}" for option in self.dhcp_options),
        ]
        if self.subnet6 is not None:
            argv += [
                f"--dhcp-range=::100,::1ff,constructor:{self.port},{self.prefix6},1h",
                "--enable-ra",
                f"--ra-param={self.port},high,10,1800",
            ]
        return argv


def check_subnet6(subnet: str | None) -> str | None:
    if subnet is None:
        return None
    net = ip_network(subnet)
    if net.version != 6:
        raise ValueError(f"not an IPv6 subnet: {subnet}")
    return str(net)
