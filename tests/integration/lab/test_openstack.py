"""OpenStack on the real systemd-networkd: a hot-attached port's complete kernel state and
the remote peer's ping answered through the port's own router port."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nicreconciled.lab import Eni, Lab, missing_state, missing_tools
from nicreconciled.sim.openstack import OpenStackSim
from tests.conftest import require_tool
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration


def test_hot_attached_port_complete_on_networkd(tmp_path: Path) -> None:
    for tool in missing_tools("networkd"):
        require_tool(tool)
    with Lab("networkd", tmp_path / "lab", tag="os") as lab:
        lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        sim = lab.start_sim(cloud="openstack")
        primary = Eni(0, PRIMARY_MAC, [PRIMARY_IPV4], "10.0.0.0/24", [], None)
        sim.add_nic(OpenStackSim.lab_spec({**primary.plan_dict(), "primary": True}))
        lab.start_daemon(cloud="openstack")
        eni = Eni.plan(1, secondaries=1)
        # A host route (Neutron host_routes) via the port's router, to a network the router
        # holds an address of: traffic there must leave by this port, not the primary.
        lab.run_router(["ip", "addr", "add", "192.168.77.1/32", "dev", "lo"])
        routes4 = [["192.168.77.0/24", eni.gateway4]]
        sim.add_nic(OpenStackSim.lab_spec({**eni.plan_dict(), "routes4": routes4}))
        eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24, eni.subnet6)
        last: list[str] = []

        def complete() -> bool:
            # The table comes from the port's ifindex (sources/openstack.py numbering()):
            # read it from the kernel's rule for the first address.
            tables = [r.table for r in lab.rules(4) if r.src == eni.ipv4s[0]]
            if not tables or not tables[0].isdigit():
                last[:] = ["rule from the first address"]
                return False
            eni.route_table = int(tables[0])
            last[:] = missing_state(lab, eni)
            if "192.168.77.0/24" not in lab.route_destinations(4, eni.table):
                last.append("host route 192.168.77.0/24 in the table")
            return not last

        lab.wait_for(complete, 30, f"{eni.mac} in the kernel", describe=lambda: f"missing: {last}")
        elapsed = time.monotonic() - lab.plugged_at[eni.mac]
        record_timing(f"[networkd] openstack hot-plug -> complete kernel state: {elapsed:.2f} s")
        assert 10001 <= eni.table <= 10099
        # links[].mtu (the simulator's ports say 1450, Neutron's VXLAN MTU) on the link.
        (link,) = lab.ip_json("link", "show", "dev", eni.ifname)
        assert link["mtu"] == 1450, link
        # The host route: in main with the port's metric, and in the port's table.
        (route,) = lab.ip_json("route", "show", "192.168.77.0/24")
        assert (route["gateway"], route["dev"]) == (eni.gateway4, eni.ifname), route
        assert lab.route_destinations(4, eni.table).get("192.168.77.0/24") == eni.gateway4
        (chosen,) = lab.ip_json("route", "get", "192.168.77.1")
        assert chosen["dev"] == eni.ifname, chosen
        assert lab.run(["ping", "-c", "1", "-W", "2", "192.168.77.1"], check=False).returncode == 0
        # The gateway of the port's "::" route is an IPv6 default route of its table. With
        # netplan >= 1.1 (ra-overrides) the RA's default route joins it once an RA has come:
        # the same router by its link-local address, with the port's metric (lower than the
        # static route's 1024), so it is not always the one the kernel prefers.
        routes6 = lab.routes(6, eni.table)
        defaults = {r.get("gateway") for r in routes6 if r.get("dst") == "default"}
        assert eni.gateway6 in defaults, routes6
        for address in [*eni.ipv4s, *eni.ipv6s]:
            result = lab.ping_from_peer(address)
            assert result.received == result.sent, (str(result), lab.describe())
            assert result.replies_by_port.get(eni.nic.port) == result.sent, str(result)
        assert lab.stop_daemon() == 0


def test_a_dhcp_port_is_completed_from_its_lease_on_networkd(tmp_path: Path) -> None:
    """The common Neutron case: nova lists the port as ``ipv4_dhcp`` (no address). The daemon
    writes it DHCP-only at once, networkd's DHCP client gets the lease from the router's
    dnsmasq, and the daemon completes the port from that lease: a rule from the leased
    address to the port's table, the subnet and default routes there. The remote peer's
    pings are answered through the port's own router port; without the rule (negative
    control) they are not."""
    for tool in missing_tools("networkd"):
        require_tool(tool)
    with Lab("networkd", tmp_path / "lab", tag="osd") as lab:
        primary_nic = lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        sim = lab.start_sim(cloud="openstack")
        primary = Eni(0, PRIMARY_MAC, [PRIMARY_IPV4], "10.0.0.0/24", [], None)
        sim.add_nic(OpenStackSim.lab_spec({**primary.plan_dict(), "primary": True}))
        lab.start_daemon(cloud="openstack")
        eni = Eni.plan(2, secondaries=0, ipv6=False)
        sim.add_nic(OpenStackSim.lab_spec({**eni.plan_dict(), "dhcp4": True}))
        eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24)
        last: list[str] = []

        def complete() -> bool:
            tables = [r.table for r in lab.rules(4) if r.src == eni.ipv4s[0]]
            if not tables or not tables[0].isdigit():
                last[:] = ["rule from the leased address"]
                return False
            eni.route_table = int(tables[0])
            last[:] = missing_state(lab, eni, ipv6=False)
            return not last

        lab.wait_for(
            complete, 30, f"{eni.mac} completed from its lease", describe=lambda: f"{last}"
        )
        elapsed = time.monotonic() - lab.plugged_at[eni.mac]
        record_timing(f"[networkd] openstack DHCP port -> complete from its lease: {elapsed:.2f} s")
        assert 10001 <= eni.table <= 10099
        result = lab.ping_from_peer(eni.ipv4s[0])
        assert result.received == result.sent, (str(result), lab.describe())
        assert result.replies_by_port.get(eni.nic.port) == result.sent, str(result)

        # Negative control: without the rule the replies leave by the primary port.
        lab.stop_daemon()
        gateway = primary_nic.gateway4
        lab.run(["ping", "-c", "1", "-W", "2", "-I", PRIMARY_IPV4, gateway])
        lab.run(["ip", "rule", "del", "from", eni.ipv4s[0], "table", str(eni.table)])
        result = lab.ping_from_peer(eni.ipv4s[0])
        assert result.replies_by_port.get(eni.nic.port, 0) == 0, str(result)
