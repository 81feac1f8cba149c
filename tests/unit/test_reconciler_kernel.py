"""The reconciler keeps its NIC's promise: verify_kernel reads the kernel (a fake reader
here; the lab has the real one), and heals, waits or gives up as the keeper says."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from nicreconciled.promise import Promise, Snapshot, snapshot
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.status import NicPhase, StatusStore
from tests.unit.test_reconciler import FAST, MAC, RecordingApplier, ScriptedSource, state, until


class Kernel:
    """What the fake kernel holds: the promise whole, or with what a test took away."""

    def __init__(self) -> None:
        self.removed: set[str] = set()
        self.reads = 0
        self.up = True

    def read(self, ifindex: int, promise: Promise) -> Snapshot:
        self.reads += 1
        assert ifindex == 7
        return snapshot(
            [a for a in promise.addresses if f"address {a}" not in self.removed],
            [
                (r.source, r.table, r.priority)
                for r in promise.rules
                if r.describe() not in self.removed
            ],
            [
                (r.destination, r.gateway, r.table)
                for r in promise.routes
                if r.describe() not in self.removed
            ],
            up=self.up,
        )


class HealingApplier(RecordingApplier):
    def __init__(self, kernel: Kernel) -> None:
        super().__init__()
        self.kernel = kernel
        self.heals: list[str] = []

    async def heal(self, *, mac: str, ifname: str) -> None:
        self.heals.append(ifname)
        self.kernel.removed.clear()


RULE = "rule from 10.0.1.5/32 lookup 10001 priority 10001"


def make(
    tmp_path: Path, kernel: Kernel, applier: HealingApplier, **kw: object
) -> tuple[Reconciler, list[tuple[str, float]]]:
    rechecks: list[tuple[str, float]] = []
    ctx = Context(
        source=ScriptedSource(state()),
        renderer=NetplanRenderer(),
        applier=applier,
        policy=FAST,
        output_dir=tmp_path / "out",
        status=StatusStore(tmp_path / "state"),
        resync_interval=0.05,
        rng=random.Random(3),
        read_kernel=kernel.read,
        recheck=lambda mac, delay: rechecks.append((mac, delay)),
        **kw,  # type: ignore[arg-type]
    )
    rec = Reconciler(ctx, MAC, "eth1")
    rec.set_link("eth1", 7)
    return rec, rechecks


async def settle(rec: Reconciler) -> asyncio.Task[None]:
    task = asyncio.create_task(rec.run())
    await until(lambda: rec.keeper.promise is not None)
    await rec.verify_kernel()
    assert rec.keeper.held
    return task


class TestVerifyKernel:
    async def test_an_applied_promise_is_saved_and_asks_for_a_look(self, tmp_path: Path) -> None:
        kernel = Kernel()
        rec, rechecks = make(tmp_path, kernel, HealingApplier(kernel))
        task = await settle(rec)
        task.cancel()
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert saved.promise is not None
        assert Promise.from_json(saved.promise) == rec.keeper.promise
        assert (MAC, 0.0) in rechecks

    async def test_drift_after_it_held_is_healed_once(self, tmp_path: Path) -> None:
        kernel = Kernel()
        applier = HealingApplier(kernel)
        rec, _ = make(tmp_path, kernel, applier)
        task = await settle(rec)
        kernel.removed = {RULE, "route default via 10.0.1.1 table 10001"}
        await rec.verify_kernel()
        assert applier.heals == ["eth1"]
        await rec.verify_kernel()  # the heal's own events: the promise holds again
        assert rec.keeper.held
        assert rec.status.heals == 1
        assert rec.status.kernel_missing == []
        task.cancel()

    async def test_heal_off_reports_drifting_and_sighup_heals(self, tmp_path: Path) -> None:
        kernel = Kernel()
        applier = HealingApplier(kernel)
        rec, _ = make(tmp_path, kernel, applier, heal=False)
        task = await settle(rec)
        kernel.removed = {RULE}
        await rec.verify_kernel()
        assert applier.heals == []
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert saved.phase is NicPhase.DRIFTING
        assert saved.kernel_missing == [RULE]
        rec.kick(verify=True)  # what SIGHUP does
        await until(lambda: applier.heals == ["eth1"])
        await rec.verify_kernel()
        assert rec._phase(rec._step) is not NicPhase.DRIFTING  # type: ignore[arg-type]
        task.cancel()

    async def test_the_limit_stops_the_fight(self, tmp_path: Path) -> None:
        kernel = Kernel()
        applier = HealingApplier(kernel)
        rec, _ = make(tmp_path, kernel, applier, heal_limit=2)
        task = await settle(rec)
        for _ in range(4):
            kernel.removed = {RULE}
            await rec.verify_kernel()
            await rec.verify_kernel()
        assert applier.heals == ["eth1", "eth1"]
        assert rec.keeper.suspended
        assert rec.status.phase is NicPhase.DRIFTING
        task.cancel()

    async def test_no_look_while_an_apply_is_due(self, tmp_path: Path) -> None:
        kernel = Kernel()
        applier = HealingApplier(kernel)
        rec, _ = make(tmp_path, kernel, applier)
        task = await settle(rec)
        reads = kernel.reads
        rec.status.applied = "something else"  # written, not loaded yet
        await rec.verify_kernel()
        assert kernel.reads == reads
        task.cancel()


class TestManagerAway:
    async def test_no_heal_while_the_manager_is_gone_and_a_new_budget_when_back(
        self, tmp_path: Path
    ) -> None:
        kernel = Kernel()
        applier = HealingApplier(kernel)
        rec, _ = make(tmp_path, kernel, applier, heal_limit=1)
        task = await settle(rec)
        rec.ctx.manager_away = True
        kernel.removed = {RULE}
        for _ in range(3):
            await rec.verify_kernel()
        assert applier.heals == []
        assert rec.status.kernel_missing == [RULE]
        rec.ctx.manager_away = False
        rec.keeper.suspended = True  # as if an earlier fight had spent the budget
        rec.manager_restarted()
        rec.keeper.pending_until = 0.0  # the manager had its time and restored nothing
        await rec.verify_kernel()
        assert applier.heals == ["eth1"]
        task.cancel()


class TestLinkDown:
    async def test_a_link_set_down_is_reported_not_healed(self, tmp_path: Path) -> None:
        kernel = Kernel()
        applier = HealingApplier(kernel)
        rec, _ = make(tmp_path, kernel, applier)
        task = await settle(rec)
        kernel.up = False
        kernel.removed = {"route 10.0.1.0/24 table 10001"}
        await rec.verify_kernel()
        assert applier.heals == []
        assert rec.status.kernel_missing == ["link down", "route 10.0.1.0/24 table 10001"]
        kernel.up = True  # set up again, and the manager left the route out: healed
        await rec.verify_kernel()
        assert applier.heals == ["eth1"]
        task.cancel()
