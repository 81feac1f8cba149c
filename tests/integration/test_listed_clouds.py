"""Every cloud whose metadata lists the NICs (OCI, OpenStack, GCE, Azure: one document;
Alibaba: per MAC, like EC2), run as a user would: the real daemon in a test namespace, the
cloud's simulator on its loopback, veths hot-plugged there. Two NICs at the same instant, one
the metadata lists and one it never will (not a VNIC / port of this instance); a detach; a
metadata service that goes down, in every way the simulators can fail."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.model import mac_to_key
from nicreconciled.sim import simulator_class
from tests.conftest import Netns
from tests.integration.conftest import Stack, sim_stack

pytestmark = pytest.mark.integration

PRIMARY = "02:00:17:aa:00:01"
LISTED = "02:00:17:aa:00:02"
FOREIGN = "02:00:17:aa:00:09"
#: Clouds whose metadata names no IPv6 router (the router advertisement gives it).
NO_IPV6_ROUTER = {"azure"}


def spec(cloud: str, mac: str, octet: int, **plan: Any) -> dict[str, Any]:
    """The simulator's NIC spec of a cloud-neutral plan: 10.0.OCTET.20/24 via .1, IPv6
    2001:db8:OCTET::10/64 via ::1."""
    base = {
        "mac": mac,
        "device_number": octet - 10,
        "ipv4s": [f"10.0.{octet}.20"],
        "subnet4": f"10.0.{octet}.0/24",
        "gateway4": f"10.0.{octet}.1",
        "ipv6s": [f"2001:db8:{octet}::10"],
        "subnet6": f"2001:db8:{octet}::/64",
        "gateway6": f"2001:db8:{octet}::1",
    }
    spec: dict[str, Any] = simulator_class(cloud).lab_spec(base | plan)
    return spec


@pytest.fixture(params=["oci", "openstack", "gce", "azure", "aliyun"])
async def listed(
    request: pytest.FixtureRequest, netns: Netns, tmp_path: Path
) -> AsyncIterator[Stack]:
    cloud = request.param
    async with sim_stack(netns, tmp_path, cloud) as stack:
        await stack.sim.add_nic(spec(cloud, PRIMARY, 10, primary=True))
        yield stack


async def wait_status(stack: Stack, mac: str, managed: str, timeout: float = 15) -> None:
    """Until MAC's status file says MANAGED (written at once after each step)."""
    path = stack.state / "nics" / f"{mac_to_key(mac)}.json"
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        if path.exists():
            seen = json.loads(path.read_text()).get("managed")
            if seen == managed:
                return
        stack.assert_alive()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{mac}: managed {seen!r}, never {managed!r}:\n{stack.tail()}")


async def test_a_listed_nic_and_a_foreign_one_plugged_together(listed: Stack) -> None:
    stack = listed
    await stack.sim.add_nic(spec(stack.cloud, LISTED, 11))
    stack.start(polling={"unlisted_grace": 1})
    await stack.wait_event("ready", timeout=20)
    stack.ns.plug("lca1", LISTED)
    stack.ns.plug("lcf1", FOREIGN)
    # GCE gives a NIC its IPv6 as a /128 behind the router; the others, on the /64.
    text = await stack.wait_file(LISTED, "2001:db8:11::10/", timeout=20)
    assert "10.0.11.20/24" in text, text
    assert "via: 10.0.11.1" in text, text
    if stack.cloud not in NO_IPV6_ROUTER:
        assert "via: 2001:db8:11::1" in text, text
    # The foreign NIC: looked at for the unlisted grace, then left alone, never written.
    await wait_status(stack, FOREIGN, "unlisted")
    assert not stack.file_for(FOREIGN).exists()
    await wait_status(stack, LISTED, "managed")
    stack.assert_alive()


async def test_a_detached_nic_loses_its_file_and_a_dead_service_costs_nothing(
    listed: Stack,
) -> None:
    stack = listed
    second = "02:00:17:aa:00:03"
    await stack.sim.add_nic(spec(stack.cloud, LISTED, 11))
    await stack.sim.add_nic(spec(stack.cloud, second, 12))
    stack.ns.plug("lca1", LISTED)
    stack.ns.plug("lcb1", second)
    stack.start(resync_interval=1, polling={"request_timeout": 0.5})
    good = await stack.wait_file(LISTED, "10.0.11.20/24", timeout=20)
    await stack.wait_file(second, "10.0.12.20/24", timeout=20)
    # The service answers 5xx, then the NIC is detached: a 5xx is not "gone".
    await stack.sim.set_fault("5xx")
    stack.ns.unplug("lca1")
    await stack.wait_event("nic_removed", mac=LISTED, timeout=15)
    await stack.wait_event("fetch_failed", timeout=15)
    assert stack.file_for(LISTED).read_text() == good
    # Back: the detached NIC's file goes, the other one's stays as it was.
    await stack.sim.set_fault("none")
    await stack.sim.remove_nic(LISTED)
    await stack.wait_gone(LISTED, timeout=15)
    assert "10.0.12.20/24" in stack.file_for(second).read_text()
    stack.assert_alive()


async def test_every_fault_of_the_service_leaves_the_file_and_the_daemon_alone(
    listed: Stack,
) -> None:
    """5xx, a hang, a reset, a slow answer and a 10 MB one, each met by a SIGHUP resync:
    a failed fetch each time, the file untouched, the daemon alive; then the service heals
    and an upstream change lands."""
    stack = listed
    await stack.sim.add_nic(spec(stack.cloud, LISTED, 11))
    stack.ns.plug("lca1", LISTED)
    stack.start(polling={"request_timeout": 0.5, "max_interval": 0.5})
    good = await stack.wait_file(LISTED, "10.0.11.20/24", timeout=20)
    assert stack.daemon is not None
    for mode in ("5xx", "hang", "reset", "slow", "oversize"):
        failures = len(stack.events("fetch_failed", mac=LISTED))
        await stack.sim.set_fault(mode)
        stack.daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while len(stack.events("fetch_failed", mac=LISTED)) <= failures:
            stack.assert_alive()
            assert time.monotonic() < deadline, f"{mode}: no fetch_failed\n{stack.tail()}"
            await asyncio.sleep(0.05)
        assert stack.file_for(LISTED).read_text() == good, mode
        await stack.sim.set_fault("none")
    await stack.sim.update_nic(LISTED, spec(stack.cloud, LISTED, 11, ipv6s=["2001:db8:11::11"]))
    stack.daemon.send_signal(signal.SIGHUP)
    await stack.wait_file(LISTED, "2001:db8:11::11/", timeout=20)
    stack.assert_alive()
