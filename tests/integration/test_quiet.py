"""What is not ours costs little: a NIC the metadata does not list next to an ENI.

Issue: such a NIC was probed twice a second for the whole deadline, then every 5 s forever,
and `once` waited for the deadline. Now whether a MAC is listed comes from one shared
listing, an unlisted MAC is "not ours" after polling.unlisted_grace, and a daemon whose NICs
are all settled asks the metadata service nothing until the next resync.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.conftest import Stack, nic_spec

pytestmark = pytest.mark.integration

MAC = "0a:00:00:00:00:02"
FOREIGN = "0a:00:00:00:09:09"


class TestForeignNic:
    async def test_once_returns_in_seconds_with_exit_0(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.ns.plug("eth9", FOREIGN)
        started = time.monotonic()
        proc = stack.start("once", polling={"deadline": 60, "unlisted_grace": 2})
        code = await asyncio.to_thread(proc.wait, 90)
        took = time.monotonic() - started
        assert code == 0, stack.tail()
        assert stack.file_for(MAC).exists()
        assert not stack.file_for(FOREIGN).exists()
        print(f"once with a foreign NIC next to an ENI: exit 0 in {took:.1f} s")
        assert took < 30  # not the 60 s deadline

    async def test_settled_daemon_makes_no_metadata_request_between_resyncs(
        self, stack: Stack
    ) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.ns.plug("eth9", FOREIGN)
        plugged = time.monotonic()
        stack.start(resync_interval=600, polling={"deadline": 3, "unlisted_grace": 1})
        await stack.wait_file(MAC, "10.0.11.25")
        status = await stack.wait_event("poll", mac=FOREIGN)
        assert status["mac"] == FOREIGN
        # Every flag has stood for the deadline (and the last backoff step ran out).
        while time.monotonic() < plugged + 3 + 2:
            stack.assert_alive()
            await asyncio.sleep(0.1)
        await stack.sim.reset_stats()
        await asyncio.sleep(5.0)  # a measurement window, not a wait for a condition
        stats = await stack.sim.stats()
        print(f"requests in a 5 s idle window next to a foreign NIC: {stats['requests']}")
        assert stats["requests"] == 0, stats
        stack.assert_alive()
