"""OpenStack end to end: the real daemon in a test namespace against the OpenStack
simulator (``python -m nicreconciled.sim --cloud openstack``), veths with the ports' MACs."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.sim.openstack import OpenStackSim
from tests.conftest import Netns
from tests.integration.conftest import Stack, sim_stack

pytestmark = pytest.mark.integration

PRIMARY = "fa:16:3e:00:00:01"
PORT_A = "fa:16:3e:00:00:0a"
PORT_B = "fa:16:3e:00:00:0b"
NETWORK_DATA = "openstack/latest/network_data.json"


def port(mac: str, octet: int, *, secondaries: int = 0, **extra: Any) -> dict[str, Any]:
    return OpenStackSim.lab_spec(
        {
            "mac": mac,
            "ipv4s": [f"10.0.{octet}.{20 + i}" for i in range(secondaries + 1)],
            "subnet4": f"10.0.{octet}.0/24",
            "gateway4": f"10.0.{octet}.1",
            "ipv6s": [f"2001:db8:{octet}::10"],
            "subnet6": f"2001:db8:{octet}::/64",
            "gateway6": f"2001:db8:{octet}::1",
            **extra,
        }
    )


@pytest.fixture
async def os_stack(netns: Netns, tmp_path: Path) -> AsyncIterator[Stack]:
    async with sim_stack(netns, tmp_path, "openstack") as stack:
        await stack.sim.add_nic(port(PRIMARY, 0, primary=True))
        yield stack


class TestOpenStack:
    async def test_a_hot_attached_port_is_written_with_its_addresses_and_table(
        self, os_stack: Stack
    ) -> None:
        await os_stack.sim.add_nic(port(PORT_A, 11, secondaries=1))
        os_stack.start()
        await os_stack.wait_event("ready", timeout=20)
        os_stack.ns.plug("osa1", PORT_A)
        text = await os_stack.wait_file(PORT_A, "2001:db8:11::10/64", timeout=20)
        table = 10000 + (os_stack.ns.ifindex("osa1") - 2) % 99 + 1  # numbering()
        for needle in ("10.0.11.20/24", "10.0.11.21/24", f"table: {table}", "via: 10.0.11.1"):
            assert needle in text, text
        assert text.index("10.0.11.20/24") < text.index("10.0.11.21/24")
        assert os_stack.file_for(PORT_A).stat().st_mode & 0o777 == 0o600

    async def test_a_port_attached_later_converges_and_a_new_fixed_ip_lands_on_sighup(
        self, os_stack: Stack
    ) -> None:
        os_stack.start()
        await os_stack.wait_event("ready", timeout=20)
        # The NIC shows up before nova lists it (its metadata cache): not-listed, then listed.
        os_stack.ns.plug("osb1", PORT_B)
        await os_stack.sim.add_nic(port(PORT_B, 12))
        await os_stack.wait_file(PORT_B, "10.0.12.20/24", timeout=20)
        await os_stack.sim.update_nic(PORT_B, port(PORT_B, 12, secondaries=1))
        assert os_stack.daemon is not None
        os_stack.daemon.send_signal(signal.SIGHUP)
        await os_stack.wait_file(PORT_B, "10.0.12.21/24", timeout=15)

    async def test_garbage_keeps_the_last_good_file(self, os_stack: Stack) -> None:
        await os_stack.sim.add_nic(port(PORT_A, 11))
        os_stack.ns.plug("osa1", PORT_A)
        os_stack.start(resync_interval=1)
        good = await os_stack.wait_file(PORT_A, "10.0.11.20/24", timeout=20)
        await os_stack.sim.set_raw(NETWORK_DATA, '{"links": [{"id": "x\\u0007"}]}')
        await os_stack.wait_event("metadata_invalid", mac=PORT_A, timeout=10)
        assert os_stack.file_for(PORT_A).read_text() == good
        await os_stack.sim.set_raw(NETWORK_DATA, None)
        await os_stack.sim.update_nic(PORT_A, port(PORT_A, 11, secondaries=1))
        await os_stack.wait_file(PORT_A, "10.0.11.21/24", timeout=10)
