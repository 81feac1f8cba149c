"""Fixtures for the network lab (``nicreconciled.lab``): one lab per test, for each manager.

Every test gets a fresh lab (set-up ~0.1-0.5 s): two namespaces, a private bus, the real
systemd-networkd or NetworkManager, the primary NIC configured by a foreign file, the IMDS
simulator inside the instance. The test starts the daemon itself (its [polling] values and
its tools differ per test), plans ENIs with ``Eni.plan`` and checks the kernel with
``missing_state``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.lab import (
    AddressMonitor,
    Eni,
    Lab,
    Manager,
    Nic,
    SimControl,
    missing_state,
    missing_tools,
)
from tests.conftest import require_tool

MANAGERS: list[Manager] = ["networkd", "nm"]
PRIMARY_MAC = "0a:00:00:00:00:01"
PRIMARY_IPV4 = "10.0.0.10"
#: Lab timings of this session, printed at the end (pytest -s or the terminal summary).
TIMINGS: list[str] = []


@dataclass
class LabStack:
    """A lab with the primary NIC up (foreign file), the simulator listing it, ``ip monitor
    address`` of the instance running, no daemon yet."""

    lab: Lab
    primary: Nic
    sim: SimControl
    monitor: AddressMonitor

    def attach(self, *enis: Eni) -> None:
        """List the ENIs in the simulator, then hot-plug them all at once."""
        nics = []
        for eni in enis:
            eni.nic = self.lab.prepare(self.lab.new_nic(eni.mac, eni.ipv4s[0], 24, eni.subnet6))
            nics.append(eni.nic)
        for eni in enis:
            self.sim.add_nic(eni.spec())
        self.lab.attach(*nics)

    def detach(self, eni: Eni) -> None:
        """The metadata forgets the ENI, then the NIC disappears (remove uevent)."""
        assert eni.nic is not None
        self.sim.remove_nic(eni.mac)
        self.lab.unplug(eni.nic)

    def wait_complete(
        self, eni: Eni, timeout: float = 30, *, settle: float = 0.3, **kw: Any
    ) -> float:
        """Wait for ENI's complete kernel state, then for it to hold with no address change
        on the link for SETTLE s (an apply may still be re-activating it: NetworkManager's
        auto-activation on ``load`` replaced by ``up``). Returns when (time.monotonic())
        the state was first complete."""
        last: list[str] = []
        first: list[float] = []

        def complete() -> bool:
            last[:] = missing_state(self.lab, eni, **kw)
            if not last and not first:
                first.append(time.monotonic())
            return not last

        def settled() -> bool:
            if not complete():
                return False
            events = [e for e in self.monitor.snapshot() if e.ifname == eni.ifname]
            return not events or time.monotonic() - events[-1].at >= settle

        what = f"{eni.mac} in the kernel"
        self.lab.wait_for(complete, timeout, what, describe=lambda: f"missing: {last}")
        self.lab.wait_for(settled, timeout, f"{what}, still", describe=lambda: f"missing: {last}")
        return first[0]

    def wait_settled(self, eni: Eni, timeout: float = 30) -> float:
        """Wait until ENI is complete, its DHCPv4 lease was acknowledged, its DHCPv6 address
        (when it has IPv6) is there, and its addresses stayed still for 0.3 s; returns the
        time.monotonic() of that moment."""
        assert eni.nic is not None
        nic = eni.nic
        last: list[str] = []

        def settled() -> bool:
            last[:] = missing_state(self.lab, eni)
            if self.lab.dhcp_acks(nic) < 1:
                last.append("DHCPACK")
            if eni.subnet6 is not None and eni.ipv6s:
                dynamic = [a for a in self.lab.addresses(eni.ifname, 6) if a.dynamic]
                if not dynamic:
                    last.append("DHCPv6 address")
            events = [e for e in self.monitor.snapshot() if e.ifname == eni.ifname]
            if events and time.monotonic() - events[-1].at < 0.3:
                last.append("0.3 s without address changes")
            return not last

        self.lab.wait_for(
            settled, timeout, f"{eni.ifname} settled", describe=lambda: f"missing: {last}"
        )
        return time.monotonic()


def record_timing(text: str) -> None:
    TIMINGS.append(text)
    print(text)


@pytest.fixture(params=MANAGERS)
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    manager: Manager = request.param
    for tool in missing_tools(manager):
        require_tool(tool)  # fails (never skips) with the install hint
    started = time.monotonic()
    with Lab(manager, tmp_path / "lab", tag="t") as the_lab:
        record_timing(
            f"[{manager}] lab set-up {time.monotonic() - started:.3f} s "
            f"(manager on the bus after {the_lab.timings['manager']:.3f} s)"
        )
        yield the_lab


@pytest.fixture
def stack(lab: Lab) -> LabStack:
    primary = lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
    sim = lab.start_sim()
    sim.add_nic(
        {
            "mac": PRIMARY_MAC,
            "device_number": 0,
            "local_ipv4s": [PRIMARY_IPV4],
            "subnet_ipv4_cidr": "10.0.0.0/24",
        }
    )
    sim.set_primary(PRIMARY_MAC)
    return LabStack(lab, primary, sim, lab.monitor_addresses())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("network lab timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)
