"""upstream.ChangeWatch: a long poll's answers become NIC kicks; failures back off and clear
``healthy`` so that the periodic re-checks come back."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nicreconciled.errors import FetchError
from nicreconciled.upstream import ChangeWatch, long_polls


class ScriptedService:
    """Answers wait_for_change from a script: True, False or an exception per call; then
    blocks, as a long poll with nothing to say does."""

    LONG_POLL = True

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = deque(answers)
        self.waits: list[float] = []
        self.drained = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if not self.answers:
            self.drained.set()
            await asyncio.Event().wait()
        answer = self.answers.popleft()
        if isinstance(answer, Exception):
            raise answer
        return answer


async def run_until_drained(watch: ChangeWatch, service: ScriptedService) -> None:
    # capture_logs: whatever another test configured logging to write to is not used here.
    with capture_logs():
        await _run_until_drained(watch, service)


async def _run_until_drained(watch: ChangeWatch, service: ScriptedService) -> None:
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(service.drained.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class TestChangeWatch:
    async def test_the_first_answer_looks_once_then_only_changes_kick(self) -> None:
        service = ScriptedService(False, False, True, False, True)
        kicks: list[int] = []
        watch = ChangeWatch(service, lambda: kicks.append(1), resync_interval=600)
        await run_until_drained(watch, service)
        # First answer (unchanged) + two changes.
        assert len(kicks) == 3
        assert watch.changes == 2
        assert watch.healthy
        # A quiet long poll is bounded by MAX_WAIT, not by a 10-minute resync interval.
        assert set(service.waits) == {60.0}

    async def test_a_short_resync_interval_bounds_each_wait(self) -> None:
        service = ScriptedService(False)
        watch = ChangeWatch(service, lambda: None, resync_interval=5)
        await run_until_drained(watch, service)
        assert service.waits[0] == 5

    async def test_failures_clear_healthy_back_off_and_the_recovery_looks_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sleeps: list[float] = []

        async def no_sleep(delay: float) -> None:
            sleeps.append(delay)

        service = ScriptedService(False, FetchError("HTTP 503"), RuntimeError("a bug"), False)
        kicks: list[int] = []
        healthy_during: list[bool] = []
        watch = ChangeWatch(
            service, lambda: kicks.append(1), resync_interval=60, rng=random.Random(1)
        )

        async def recording_sleep(delay: float) -> None:
            healthy_during.append(watch.healthy)
            await no_sleep(delay)

        monkeypatch.setattr("nicreconciled.upstream.asyncio.sleep", recording_sleep)
        await run_until_drained(watch, service)
        assert healthy_during == [False, False]
        # Jittered doubling from 1 s.
        assert 0.8 <= sleeps[0] <= 1.2
        assert 1.6 <= sleeps[1] <= 2.4
        # Start, and the answer after the outage (changes made during it are seen then).
        assert len(kicks) == 2
        assert watch.healthy


def test_only_sources_that_say_so_long_poll() -> None:
    class Plain:
        async def wait_for_change(self, timeout: float) -> bool:
            return False

    assert long_polls(ScriptedService())
    assert not long_polls(Plain())
    assert not long_polls(object())


class TestStretch:
    """While the long poll answers, changes arrive through it: a NIC's idle re-check waits
    STRETCH resync intervals; once it fails, one interval again."""

    def test_the_idle_recheck_stretches_only_while_the_long_poll_answers(
        self, tmp_path: Path
    ) -> None:
        from nicreconciled.upstream import STRETCH
        from tests.unit.test_reconciler import ScriptedSource, make

        rec = make(tmp_path, ScriptedSource(None))
        rec.ctx.resync_interval = 10.0
        healthy = [True]
        rec.ctx.long_poll_healthy = lambda: healthy[0]
        stretched = rec._resync_delay()
        assert 0.8 * 10 * STRETCH <= stretched <= 1.2 * 10 * STRETCH
        healthy[0] = False
        assert 8.0 <= rec._resync_delay() <= 12.0
