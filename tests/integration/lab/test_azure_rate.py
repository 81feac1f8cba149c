"""IMDS allows 5 requests per second per VM and answers 429 above (the simulator too): the real
daemon, run as a user would in a test namespace with the Azure simulator on its loopback,
stays far below it while 16 NICs are plugged at once, through three SIGHUPs in a row and
the periodic checks that follow."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Netns
from tests.integration.conftest import sim_stack
from tests.integration.lab.conftest import record_timing

pytestmark = pytest.mark.integration

PRIMARY = "00:0d:3a:10:00:01"


def nic(mac: str, n: int) -> dict[str, Any]:
    return {"mac": mac, "private_ipv4s": [f"10.1.{n}.4"], "subnets4": [f"10.1.{n}.0/24"]}


def busiest_second(log: list[dict[str, Any]]) -> int:
    times = sorted(entry["t"] for entry in log)
    return max((sum(1 for u in times if t <= u <= t + 1.0) for t in times), default=0)


async def test_sixteen_nics_at_once_and_sighups_stay_under_the_rate_limit(
    netns: Netns, tmp_path: Path
) -> None:
    async with sim_stack(netns, tmp_path, "azure") as stack:
        await stack.sim.add_nic(nic(PRIMARY, 0) | {"primary": True})
        macs = [f"00:0d:3a:10:01:{n:02x}" for n in range(1, 17)]
        for n, mac in enumerate(macs, 1):
            await stack.sim.add_nic(nic(mac, n))
        stack.start(resync_interval=1)
        await stack.wait_event("ready", timeout=20)
        await stack.sim.reset_stats()
        plugged = time.monotonic()
        for n, mac in enumerate(macs, 1):
            stack.ns.plug(f"az{n}", mac)
        for n, mac in enumerate(macs, 1):
            await stack.wait_file(mac, f"10.1.{n}.4/24", timeout=30)
        took = time.monotonic() - plugged
        assert stack.daemon is not None
        for _ in range(3):
            stack.daemon.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.1)
        await stack.wait_event("resync_done", timeout=20)
        await asyncio.sleep(3)  # three periodic checks
        stats = await stack.sim.stats()
        busiest = busiest_second(stats["log"])
        record_timing(
            f"Azure daemon, 16 NICs plugged at once + 3 SIGHUPs: every file in {took:.2f} s,"
            f" {stats['requests']} IMDS requests, busiest second {busiest}"
        )
        assert stats["by_status"] == {"200": stats["requests"]}, stats["by_status"]
        assert busiest <= 3
        stack.assert_alive()
