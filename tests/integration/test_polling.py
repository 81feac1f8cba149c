"""Polling end to end: a late IPv6 written soon after it appears, once; quiet resyncs.

Issue 12: a change seen by a probe was confirmed by a second full poll initial_interval
later, and every resync opened new TCP connections (aiohttp kept them 15 s). Now the full
poll right after the probe confirms the state the probe's answer predicted, and the
background checks reuse the connections they kept.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import Netns
from tests.integration.conftest import Stack, nic_spec

pytestmark = pytest.mark.integration

MAC = "0a:00:00:00:00:02"
IPV6 = "2001:db8:11::25"
DELAY = 2.0


def active_opens(ns: Netns) -> int:
    """TCP connections opened from inside the namespace (the daemon is its only client)."""
    lines = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    head, values = [line for line in lines if line and line[0] == "Tcp:"][:2]
    return int(dict(zip(head, values, strict=True))["ActiveOpens"])


class TestLateIpv6:
    async def test_the_ipv6_is_written_soon_after_it_appears_and_nothing_before(
        self, stack: Stack
    ) -> None:
        stack.start()
        await stack.wait_event("ready")
        spec = nic_spec(
            MAC, subnet_ipv6_cidrs=["2001:db8:11::/64"], schedule={"ipv6s": [[DELAY, IPV6]]}
        )
        added = time.time()
        await stack.sim.add_nic(spec)
        stack.ns.plug("eth1", MAC)
        await stack.wait_file(MAC, IPV6, timeout=DELAY + 10)
        rendered = stack.events("rendered", mac=MAC)
        assert len(rendered) == 1, rendered  # no IPv4-only file inside the grace
        excess = float(rendered[0]["timestamp"]) - (added + DELAY)
        stats = await stack.sim.stats(log=True)
        mine = [e for e in stats["log"] if MAC in str(e["path"])]
        print(f"late IPv6 (D = {DELAY:g} s): written {excess:.3f} s after it appeared, "
              f"{len(mine)} requests naming the MAC")  # fmt: skip
        # Probes every 0.4 s, then one full poll: well under a second on a quiet machine.
        assert excess < 1.0
        # One full poll (6 requests) + ~5 probes + one full poll with ipv6s (7).
        assert len(mine) <= 6 + DELAY / 0.4 + 2 + 7


class TestQuietResyncs:
    async def test_background_checks_reuse_their_connections(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start(resync_interval=1)
        await stack.wait_file(MAC, "10.0.11.25")
        await stack.wait_event("accepted", mac=MAC)
        # The first resync after the file may open what it needs; from then on nothing new.
        await stack.sim.reset_stats()
        async with asyncio.timeout(10):
            while (await stack.sim.stats())["requests"] < 6:  # one full poll: dir + 5 keys
                stack.assert_alive()
                await asyncio.sleep(0.05)
        await stack.sim.reset_stats()
        opens = active_opens(stack.ns)
        await asyncio.sleep(4.0)  # a measurement window: ~4 resyncs
        new = active_opens(stack.ns) - opens
        stats = await stack.sim.stats()
        print(f"{stats['requests']} requests in 4 s of resyncs over {new} new TCP connections")
        assert stats["requests"] >= 6  # resyncs did happen
        assert new == 0
        stack.assert_alive()
