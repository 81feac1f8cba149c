"""The per-MAC reconciler with a scripted in-process source and the real filesystem."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from nicreconciled.errors import ApplyError, FetchError
from nicreconciled.model import NicState, Observation, RedFlag
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.stability import Policy
from nicreconciled.status import StatusStore

MAC = "0a:00:00:00:00:02"
FAST = Policy(initial_interval=0.01, max_interval=0.05, probe_interval=0.01, deadline=2.0)


def state(*addrs: str) -> NicState:
    return NicState(
        mac=MAC,
        cloud="ec2",
        primary=False,
        device_number=1,
        route_table=10001,
        route_metric=513,
        ipv4_addresses=tuple(IPv4Address(a) for a in addrs or ("10.0.1.5",)),
        ipv4_subnet=IPv4Network("10.0.1.0/24"),
        ipv4_gateway=IPv4Address("10.0.1.1"),
    )


class ScriptedSource:
    """Answers from a mutable script: a NicState, None (not listed) or an exception."""

    name = "ec2"

    def __init__(self, answer: NicState | Exception | None) -> None:
        self.answer = answer
        self.fetches = 0

    async def detect(self) -> bool:
        return True

    async def fetch(self, mac: str) -> Observation:
        self.fetches += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return Observation(mac, self.answer)

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        return {}

    async def close(self) -> None:
        return None


class RecordingApplier:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.failures = failures

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        self.calls.append((path.name, ifname))
        if self.failures:
            self.failures -= 1
            raise ApplyError("networkctl reload exited 1: boom")


def make(
    tmp_path: Path,
    source: ScriptedSource,
    applier: RecordingApplier | None = None,
    boot_id: str = "boot-1",
) -> Reconciler:
    ctx = Context(
        boot_id=boot_id,
        source=source,
        renderer=NetplanRenderer(),
        applier=applier,
        policy=FAST,
        output_dir=tmp_path / "out",
        status=StatusStore(tmp_path / "state"),
        resync_interval=0.05,
        rng=random.Random(3),
    )
    return Reconciler(ctx, MAC, "eth1")


async def until(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll PREDICATE: the reconciler offers no event to wait on, by design."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "out" / "90-nicreconciled-0a0000000002.yaml"


class TestReconciler:
    async def test_a_stable_state_is_written_once_and_applied_once(
        self, tmp_path: Path, target: Path
    ) -> None:
        applier = RecordingApplier()
        rec = make(tmp_path, ScriptedSource(state()), applier)
        task = asyncio.create_task(rec.run())
        await until(target.exists)
        await asyncio.sleep(0.3)  # several resyncs with the same answer
        task.cancel()
        assert applier.calls == [(target.name, "eth1")]
        assert "10.0.1.0/24" in target.read_text()

    async def test_a_failed_apply_is_retried_until_it_works(
        self, tmp_path: Path, target: Path
    ) -> None:
        applier = RecordingApplier(failures=2)
        rec = make(tmp_path, ScriptedSource(state()), applier)
        task = asyncio.create_task(rec.run())
        await until(lambda: len(applier.calls) == 3)
        await until(lambda: rec.status.last_error is not None and rec.converged)
        task.cancel()
        assert "boom" in (rec.status.last_error or "")

    async def run_until_settled(self, rec: Reconciler) -> None:
        task = asyncio.create_task(rec.run())
        await until(lambda: rec.converged or rec.status.last_error is not None)
        await asyncio.sleep(0.1)  # a few resyncs more: nothing new may happen
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def test_a_file_written_but_not_applied_is_applied_after_a_restart(
        self, tmp_path: Path, target: Path
    ) -> None:
        broken = RecordingApplier(failures=1000)
        await self.run_until_settled(make(tmp_path, ScriptedSource(state()), broken))
        assert target.exists()
        assert broken.calls
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert saved.apply_pending
        applier = RecordingApplier()
        rec = make(tmp_path, ScriptedSource(state()), applier)
        await self.run_until_settled(rec)
        assert applier.calls == [(target.name, "eth1")]  # the file itself had not changed
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert not saved.apply_pending

    async def test_an_applied_file_is_not_applied_again_by_a_restart(
        self, tmp_path: Path, target: Path
    ) -> None:
        await self.run_until_settled(make(tmp_path, ScriptedSource(state()), RecordingApplier()))
        applier = RecordingApplier()
        await self.run_until_settled(make(tmp_path, ScriptedSource(state()), applier))
        assert applier.calls == []

    async def test_what_was_applied_in_another_boot_is_applied_again(
        self, tmp_path: Path, target: Path
    ) -> None:
        await self.run_until_settled(make(tmp_path, ScriptedSource(state()), RecordingApplier()))
        applier = RecordingApplier()
        rec = make(tmp_path, ScriptedSource(state()), applier, boot_id="boot-2")
        await self.run_until_settled(rec)
        assert applier.calls == [(target.name, "eth1")]

    async def test_fetch_errors_never_touch_the_written_file(
        self, tmp_path: Path, target: Path
    ) -> None:
        source = ScriptedSource(state())
        rec = make(tmp_path, source)
        task = asyncio.create_task(rec.run())
        await until(target.exists)
        good = target.read_text()
        source.answer = FetchError("GET meta-data/...: 503")
        seen = source.fetches
        await until(lambda: source.fetches > seen + 3)
        assert target.read_text() == good
        assert rec.status.last_error == "GET meta-data/...: 503"
        task.cancel()

    async def test_a_symlinked_target_is_refused_and_retried_without_crashing(
        self, tmp_path: Path, target: Path
    ) -> None:
        victim = tmp_path / "victim"
        victim.write_text("keep\n")
        target.parent.mkdir(parents=True)
        target.symlink_to(victim)
        rec = make(tmp_path, ScriptedSource(state()))
        task = asyncio.create_task(rec.run())
        await until(lambda: rec.status.last_error is not None)
        assert "symlink" in (rec.status.last_error or "")
        target.unlink()  # the operator removes the symlink: the next retry writes
        await until(target.exists)
        task.cancel()
        assert victim.read_text() == "keep\n"
        assert not target.is_symlink()

    async def test_a_nic_gone_here_and_upstream_has_its_file_removed(
        self, tmp_path: Path, target: Path
    ) -> None:
        source = ScriptedSource(state())
        rec = make(tmp_path, source)
        task = asyncio.create_task(rec.run())
        await until(target.exists)
        rec.set_link(None)
        source.answer = None
        rec.kick(new_episode=True)
        await asyncio.wait_for(task, 3)
        assert rec.removed
        assert not target.exists()

    async def test_a_nic_gone_here_but_still_listed_keeps_its_file(
        self, tmp_path: Path, target: Path
    ) -> None:
        source = ScriptedSource(state())
        rec = make(tmp_path, source)
        task = asyncio.create_task(rec.run())
        await until(target.exists)
        rec.set_link(None)
        rec.kick(new_episode=True)
        await asyncio.sleep(0.3)
        assert target.exists()
        assert not rec.removed
        assert any("still-listed" in w for w in rec.status.waiting_on)
        task.cancel()

    async def test_status_is_recorded_under_the_state_dir(
        self, tmp_path: Path, target: Path
    ) -> None:
        rec = make(tmp_path, ScriptedSource(state()))
        task = asyncio.create_task(rec.run())
        await until(target.exists)
        await asyncio.sleep(0.05)
        task.cancel()
        (saved,) = StatusStore(tmp_path / "state").load_all()
        assert saved.mac == MAC
        assert saved.phase == "converged"
        assert saved.managed == "managed"
        assert saved.rendered_fingerprint == saved.fingerprint


class TestWatchingAfterAGrace:
    async def test_a_nic_still_waiting_for_ipv6_gets_full_resyncs_too(
        self, tmp_path: Path, target: Path
    ) -> None:
        key = f"meta-data/network/interfaces/macs/{MAC}/ipv6s"
        flag = RedFlag("ipv6-pending", "no ipv6s yet", (key,), "ipv6")

        class Pending(ScriptedSource):
            async def fetch(self, mac: str) -> Observation:
                self.fetches += 1
                assert isinstance(self.answer, NicState)
                return Observation(mac, self.answer, (flag,), {key: None})

            async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
                return {key: None}

        source = Pending(state())
        rec = make(tmp_path, source)
        rec.ctx.policy = Policy(
            initial_interval=0.01, max_interval=0.05, probe_interval=0.01, ipv6_grace=0.1
        )
        rec.tracker.policy = rec.ctx.policy
        task = asyncio.create_task(rec.run())
        await until(target.exists)
        source.answer = state("10.0.1.5", "10.0.1.9")  # changes while only ipv6s is probed
        await until(lambda: "10.0.1.9/24" in target.read_text())
        task.cancel()


class TestPrediction:
    async def test_a_predicted_change_is_written_after_one_full_fetch(
        self, tmp_path: Path, target: Path
    ) -> None:
        key = f"meta-data/network/interfaces/macs/{MAC}/ipv6s"
        flag = RedFlag("ipv6-pending", "no ipv6s yet", (key,), "ipv6")
        later = state("10.0.1.5", "10.0.1.9")  # stands for "with its IPv6"

        class Predicting(ScriptedSource):
            value: str | None = None
            fetched_after: int | None = None

            async def fetch(self, mac: str) -> Observation:
                self.fetches += 1
                if self.value is None:
                    return Observation(mac, state(), (flag,), {key: None})
                return Observation(mac, later, (), {})

            async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
                return {key: self.value}

            def predict(self, mac: str, answers: dict[str, str | None]) -> Observation | None:
                self.fetched_after = self.fetches
                return Observation(mac, later, (), {})

        source = Predicting(state())
        rec = make(tmp_path, source)
        rec.ctx.policy = Policy(
            initial_interval=1.0, max_interval=1.0, probe_interval=0.01, ipv6_grace=30
        )
        rec.tracker.policy = rec.ctx.policy
        task = asyncio.create_task(rec.run())
        await until(lambda: source.fetches >= 1)
        source.value = "2001:db8::1"
        await until(lambda: target.exists() and "10.0.1.9/24" in target.read_text())
        task.cancel()
        # One full fetch after the prediction (no second poll initial_interval = 1 s later).
        assert source.fetched_after is not None
        assert source.fetches == source.fetched_after + 1


class OneAnswerSource(ScriptedSource):
    """A source whose one answer describes every NIC (OCI, OpenStack)."""

    ONE_ANSWER = True


class TestResyncSchedule:
    def context(self, tmp_path: Path, source: ScriptedSource, clock: list[float]) -> Context:
        return Context(
            source=source,
            renderer=NetplanRenderer(),
            applier=None,
            policy=FAST,
            output_dir=tmp_path / "out",
            status=StatusStore(tmp_path / "state"),
            resync_interval=60.0,
            rng=random.Random(7),
            resync_phase=0.25,
            clock=lambda: clock[0],
        )

    def test_one_answer_nics_recheck_on_the_same_ticks(self, tmp_path: Path) -> None:
        clock = [0.0]
        ctx = self.context(tmp_path, OneAnswerSource(None), clock)
        # Three NICs converging at different moments: each next re-check lands on a tick
        # (phase 15 s + k * 60 s), at least half an interval away.
        ends = []
        for i, now in enumerate((100.0, 117.5, 130.0)):
            clock[0] = now
            delay = Reconciler(ctx, f"0a:00:00:00:00:1{i}", "eth1")._resync_delay()
            assert delay >= 30.0
            ends.append(now + delay)
        assert ends == [135.0, 195.0, 195.0]

    def test_other_sources_jitter_each_nic_apart(self, tmp_path: Path) -> None:
        ctx = self.context(tmp_path, ScriptedSource(None), [100.0])
        delays = {Reconciler(ctx, f"0a:00:00:00:00:2{i}", "eth1")._resync_delay() for i in range(5)}
        assert len(delays) == 5
        assert all(48.0 <= d <= 72.0 for d in delays)
