"""OCI on the real systemd-networkd: a hot-plugged secondary VNIC gets its complete kernel
state (its address from DHCP and the metadata, a rule from each address to its table
10000 + vlanTag, the subnet and default routes there) and the remote peer's pings are
answered through the VNIC's own router port (strict rp_filter); then an IPv6 address added
upstream lands after SIGHUP."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nicreconciled.lab import Eni, Lab, missing_state, missing_tools
from nicreconciled.sim.oci import OciSim
from tests.conftest import require_tool
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration


@pytest.fixture
def networkd_lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    for tool in missing_tools("networkd"):
        require_tool(tool)  # fails (never skips) with the install hint
    with Lab("networkd", tmp_path / "lab", tag="oci") as lab:
        yield lab


def test_a_hotplugged_vnic_gets_its_complete_state_and_answers_on_its_port(
    networkd_lab: Lab,
) -> None:
    lab = networkd_lab
    lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
    sim = lab.start_sim(cloud="oci")
    primary = Eni(0, PRIMARY_MAC, [PRIMARY_IPV4], "10.0.0.0/24", [], None)
    sim.add_nic(OciSim.lab_spec({**primary.plan_dict(), "primary": True}))
    daemon = lab.start_daemon(cloud="oci")

    # The metadata has one private IPv4 per VNIC (no secondary private IPs): plan none.
    eni = Eni.plan(1, secondaries=0)
    spec = OciSim.lab_spec(eni.plan_dict())
    eni.route_table = 10000 + spec["vlan_tag"]  # sources/oci.py numbering(): by vlanTag
    sim.add_nic(spec)
    eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24, eni.subnet6)

    last: list[str] = []

    def complete() -> bool:
        last[:] = missing_state(lab, eni)
        return not last

    lab.wait_for(complete, 30, "the VNIC's complete kernel state", describe=lambda: f"{last}")
    elapsed = time.monotonic() - lab.plugged_at[eni.mac]
    record_timing(f"[networkd] OCI hot-plug -> complete kernel state: {elapsed:.2f} s")

    assert eni.table == 10101
    assert lab.rule_sources(4, eni.table) == set(eni.ipv4s)
    assert lab.rule_sources(6, eni.table) == set(eni.ipv6s)
    assert lab.route_destinations(4, eni.table) == {"10.0.11.0/24": None, "default": "10.0.11.1"}
    # The primary VNIC keeps the main table's default route; it got no rules of ours.
    assert lab.route_destinations(4, "main").get("default") == "10.0.0.1"
    assert not lab.path(lab.output_file(PRIMARY_MAC)).exists()

    # ipv6VirtualRouterIp is an IPv6 default route of the VNIC's table (with netplan >= 1.1
    # the router advertisement's default route lands in the table too, possibly first).
    defaults = {r.get("gateway") for r in lab.routes(6, eni.table) if r.get("dst") == "default"}
    assert eni.gateway6 in defaults, defaults
    for address in [eni.ipv4s[0], eni.ipv6s[0]]:
        result = lab.ping_from_peer(address)
        assert result.received == result.sent, str(result)
        assert result.replies_by_port.get(eni.nic.port) == result.sent, str(result)

    # An upstream change OCI's metadata can express (it has no secondary private IPv4s): a
    # second IPv6 address on the VNIC, picked up at once after SIGHUP.
    eni.ipv6s.append("2001:db8:11::11")
    sim.update_nic(eni.mac, OciSim.lab_spec(eni.plan_dict()))
    daemon.hup()
    changed = time.monotonic()
    lab.wait_for(complete, 20, "the new IPv6 address in the kernel", describe=lambda: f"{last}")
    record_timing(f"[networkd] OCI new IPv6 after SIGHUP: {time.monotonic() - changed:.2f} s")
    assert lab.rule_sources(6, eni.table) == set(eni.ipv6s)
    result = lab.ping_from_peer(eni.ipv6s[1])
    assert result.replies_by_port.get(eni.nic.port) == result.sent, str(result)
