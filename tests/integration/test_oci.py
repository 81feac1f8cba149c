"""OCI end to end: the real daemon in a test netns against ``python -m nicreconciled.sim
--cloud oci`` (IMDSv2's ``/opc/v2/vnics/`` on the namespace's 127.0.0.1:8080), VNICs
hot-plugged as veths born with their MAC, netplan files out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicreconciled.sources.oci import VNICS_PATH
from tests.conftest import Netns
from tests.integration.conftest import Stack, sim_stack

pytestmark = pytest.mark.integration

PRIMARY = "02:00:17:00:00:01"
MAC = "02:00:17:00:00:02"
LATER = "02:00:17:00:00:03"


def vnic(mac: str, n: int, **extra: Any) -> dict[str, Any]:
    """VNIC N: 10.0.(10+N).25/24 via .1, vlanTag 100 + N (table 10100 + N)."""
    spec = {
        "mac": mac,
        "private_ip": f"10.0.{10 + n}.25",
        "subnet_cidr": f"10.0.{10 + n}.0/24",
        "virtual_router_ip": f"10.0.{10 + n}.1",
        "vlan_tag": 100 + n,
    }
    return spec | extra


@pytest.fixture
async def oci_stack(netns: Netns, tmp_path: Path) -> AsyncIterator[Stack]:
    async with sim_stack(netns, tmp_path, "oci") as stack:
        assert "oci" in await stack.sim.ready()
        await stack.sim.add_nic(vnic(PRIMARY, 0))
        yield stack


def ethernet(text: str) -> dict[str, Any]:
    ((_, definition),) = yaml.safe_load(text)["network"]["ethernets"].items()
    assert isinstance(definition, dict)
    return definition


async def test_a_hotplugged_vnic_gets_its_table_and_rules(oci_stack: Stack) -> None:
    stack = oci_stack
    stack.start()
    await stack.wait_event("ready", timeout=20)
    await stack.sim.add_nic(vnic(MAC, 1, ipv6_subnet_cidr="2001:db8:11::/64",
                                 ipv6_addresses=["2001:db8:11::25"]))  # fmt: skip
    stack.ns.plug("ocn1", MAC)
    text = await stack.wait_file(MAC, "2001:db8:11::25", timeout=20)
    eth = ethernet(text)
    assert eth["match"] == {"macaddress": MAC}
    assert eth["addresses"] == ["10.0.11.25/24", "2001:db8:11::25/64"]
    assert {"to": "0.0.0.0/0", "via": "10.0.11.1", "table": 10101} in eth["routes"]
    assert {"from": "10.0.11.25/32", "table": 10101, "priority": 10101} in eth["routing-policy"]
    assert stack.file_for(MAC).stat().st_mode & 0o777 == 0o600
    assert not stack.file_for(PRIMARY).exists()  # the primary VNIC is left alone
    found = stack.events("cloud_detected") + stack.events("ready")
    assert found[-1].get("source") == "oci"


async def test_a_vnic_listed_after_the_hotplug_converges(oci_stack: Stack) -> None:
    stack = oci_stack
    stack.start(polling={"deadline": 3}, resync_interval=1)
    await stack.wait_event("ready", timeout=20)
    stack.ns.plug("ocn3", LATER)
    # Not listed: after the short "unlisted" grace it is left alone; the periodic check
    # (one document for every NIC) sees it once it is listed.
    await stack.wait_event("accepted", mac=LATER, timeout=15)
    assert not stack.file_for(LATER).exists()
    await stack.sim.add_nic(vnic(LATER, 3))
    text = await stack.wait_file(LATER, "10.0.13.25/24", timeout=20)
    assert {"from": "10.0.13.25/32", "table": 10103, "priority": 10103} in ethernet(text)[
        "routing-policy"
    ]


async def test_garbage_keeps_the_last_good_file(oci_stack: Stack) -> None:
    stack = oci_stack
    await stack.sim.add_nic(vnic(MAC, 1))
    stack.ns.plug("ocn1", MAC)
    stack.start(resync_interval=1)
    good = await stack.wait_file(MAC, "10.0.11.0/24", timeout=20)
    await stack.sim.set_raw(VNICS_PATH, '[{"macAddr": "02:00:17:00:00:02", "privateIp": 7}]')
    failed = await stack.wait_event("metadata_invalid", mac=MAC, timeout=10)
    assert "vnics[0].privateIp" in str(failed)
    assert stack.file_for(MAC).read_text() == good
    await stack.sim.set_raw(VNICS_PATH, None)
    await stack.sim.update_nic(MAC, {"private_ip": "10.0.11.26"})
    await stack.wait_file(MAC, "10.0.11.26/24", timeout=10)


async def test_a_failing_service_never_changes_the_file(oci_stack: Stack) -> None:
    stack = oci_stack
    await stack.sim.add_nic(vnic(MAC, 1))
    stack.ns.plug("ocn1", MAC)
    stack.start(resync_interval=1)
    good = await stack.wait_file(MAC, "10.0.11.0/24", timeout=20)
    await stack.sim.reset_stats()
    await stack.sim.set_fault("5xx")
    await stack.wait_event("fetch_failed", mac=MAC, timeout=10)
    assert stack.file_for(MAC).read_text() == good
    await stack.sim.set_fault("none")
    await stack.sim.remove_nic(MAC)  # detached, and the metadata says so: now it goes
    stack.ns.unplug("ocn1")
    await stack.wait_gone(MAC, timeout=15)
