"""KernelWatch: notifications to the daemon; lost ones mean looking at every NIC again."""

from __future__ import annotations

import asyncio
import os

from nicreconciled import kernelwatch
from nicreconciled.kernelwatch import KernelWatch
from nicreconciled.system import rtnl


class FakeMonitor:
    """A readable pipe standing in for the netlink socket; read() says what the test wants."""

    def __init__(self, answers: list[list[rtnl.Event] | Exception]) -> None:
        self.answers = answers
        self.r, self.w = os.pipe()
        os.write(self.w, b"x")
        self.closed = False

    def fileno(self) -> int:
        return self.r

    def read(self) -> list[rtnl.Event]:
        answer = self.answers.pop(0) if self.answers else []
        if not self.answers:
            os.read(self.r, 1)  # nothing more to read: the loop stops calling us
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
        self.closed = True


EVENT = rtnl.Event("rule", True, rtnl.AF_INET, None, 10001, 77)


async def run_watch(answers: list[list[rtnl.Event] | Exception]) -> tuple[list[object], int]:
    seen: list[object] = []
    lost: list[int] = []
    fake = FakeMonitor(answers)
    original = kernelwatch.rtnl.Monitor
    kernelwatch.rtnl.Monitor = lambda: fake  # type: ignore[assignment,misc]
    try:
        watch = KernelWatch(seen.append, lambda: lost.append(1))
        assert watch.start()
        async with asyncio.timeout(2):
            while fake.answers:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        watch.stop()
    finally:
        kernelwatch.rtnl.Monitor = original  # type: ignore[misc]
    assert fake.closed
    return seen, len(lost)


class TestKernelWatch:
    async def test_notifications_reach_the_daemon(self) -> None:
        seen, lost = await run_watch([[EVENT]])
        assert seen == [[EVENT]]
        assert lost == 0

    async def test_lost_notifications_mean_a_look_at_every_nic(self) -> None:
        seen, lost = await run_watch([rtnl.EventsLost("ENOBUFS"), [EVENT]])
        assert lost == 1
        assert seen == [[EVENT]]

    async def test_no_netlink_no_watch_and_no_crash(self) -> None:
        original = kernelwatch.rtnl.Monitor

        def refuse() -> rtnl.Monitor:
            raise PermissionError(13, "denied")

        kernelwatch.rtnl.Monitor = refuse  # type: ignore[assignment,misc]
        try:
            assert not KernelWatch(lambda events: None, lambda: None).start()
        finally:
            kernelwatch.rtnl.Monitor = original  # type: ignore[misc]
