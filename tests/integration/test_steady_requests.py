"""What a converged instance costs its metadata service, per cloud, measured on the real
daemon against the cloud's simulator: two NICs converged, then a quiet window.

The budget follows from each source's design (``docs/clouds/<cloud>.md``):

* GCE: one open long poll at a time (each held ``min(60, resync_interval)`` s) for the whole
  instance; the NICs' own re-checks stretch to 10 x ``resync_interval`` while it answers.
* Azure: one shared document per ``resync_interval`` tick for every NIC.
* Alibaba: per MAC, like EC2: a NIC's re-check reads its keys every ``resync_interval``
  (jittered 0.8-1.2).

``resync_interval = 1`` (the smallest) makes a short window worth an hour of ticks; the
figures are printed per NIC and per tick, the unit the README's per-hour figures scale from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nicreconciled.sim import simulator_class
from tests.conftest import Netns
from tests.integration.conftest import Stack, sim_stack

pytestmark = pytest.mark.integration

PRIMARY = "02:00:17:bb:00:01"
NICS = ("02:00:17:bb:00:02", "02:00:17:bb:00:03")
WINDOW = 6.0
RESYNC = 1.0


def spec(cloud: str, mac: str, octet: int, primary: bool = False) -> dict[str, object]:
    plan = {
        "mac": mac,
        "device_number": octet - 10,
        "ipv4s": [f"10.0.{octet}.20"],
        "subnet4": f"10.0.{octet}.0/24",
        "gateway4": f"10.0.{octet}.1",
        "ipv6s": [],
        "subnet6": None,
        "gateway6": None,
        "primary": primary,
    }
    result: dict[str, object] = simulator_class(cloud).lab_spec(plan)
    return result


@pytest.fixture(params=["gce", "azure", "aliyun"])
async def quiet(
    request: pytest.FixtureRequest, netns: Netns, tmp_path: Path
) -> AsyncIterator[Stack]:
    cloud = request.param
    async with sim_stack(netns, tmp_path, cloud) as stack:
        await stack.sim.add_nic(spec(cloud, PRIMARY, 10, primary=True))
        for n, mac in enumerate(NICS):
            await stack.sim.add_nic(spec(cloud, mac, 11 + n))
        yield stack


async def test_a_converged_instance_costs_what_its_source_promises(quiet: Stack) -> None:
    stack = quiet
    stack.start(resync_interval=RESYNC)
    await stack.wait_event("ready", timeout=20)
    for n, mac in enumerate(NICS):
        stack.ns.plug(f"sq{n}", mac)
    for mac in NICS:
        await stack.wait_file(mac, "10.0.1", timeout=20)
    await asyncio.sleep(2 * RESYNC)  # the first ticks after convergence settle
    await stack.sim.reset_stats()
    started = time.monotonic()
    await asyncio.sleep(WINDOW)
    stats = await stack.sim.stats()
    took = time.monotonic() - started
    stack.assert_alive()
    requests = int(stats["requests"])
    ticks = took / RESYNC
    per_nic_tick = requests / len(NICS) / ticks
    print(
        f"[{stack.cloud}] steady state: {requests} requests in {took:.1f} s with"
        f" resync_interval {RESYNC:g} s and {len(NICS)} NICs: {per_nic_tick:.2f} per NIC per"
        f" interval; at the default 60 s: {per_nic_tick * 60:.0f} per NIC-hour"
    )
    if stack.cloud == "gce":
        # Long polls back to back (each held RESYNC), nothing per NIC.
        assert requests <= ticks + 3, stats
    elif stack.cloud == "azure":
        assert requests <= ticks + 3, stats  # one shared document per tick
    else:
        # Alibaba asks per NIC: its keys each tick, never more than the jitter allows.
        assert requests <= len(NICS) * 8 * (took / (0.8 * RESYNC) + 1), stats
    assert requests > 0, "no request at all: the window measured nothing"
