"""The daemon's side of the kernel watch: notifications -> the NICs they concern, debounced."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from nicreconciled.config import Config
from nicreconciled.daemon import Daemon
from nicreconciled.kernelside import DEBOUNCE, DEBOUNCE_MAX
from nicreconciled.promise import Promise, PromisedRule
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.status import StatusStore
from nicreconciled.system.rtnl import AF_INET, Event
from tests.unit.test_reconciler import FAST, MAC, ScriptedSource, state

PROMISE = Promise(
    addresses=("10.0.1.5/24",), rules=(PromisedRule("10.0.1.5/32", 10001, 10001),), table=10001
)


def daemon(tmp_path: Path) -> tuple[Daemon, Reconciler]:
    ctx = Context(
        source=ScriptedSource(state()),
        renderer=NetplanRenderer(),
        applier=None,
        policy=FAST,
        output_dir=tmp_path / "out",
        status=StatusStore(tmp_path / "state"),
        rng=random.Random(1),
    )
    d = Daemon(Config(state_dir=tmp_path / "state"), ctx, notify=lambda line: True)
    rec = Reconciler(ctx, MAC, "eth1")
    rec.set_link("eth1", 7)
    rec.keeper.applied(PROMISE, 0.0)
    d.reconcilers[MAC] = rec
    return d, rec


def event(kind: str, *, ifindex: int | None = None, table: int | None = None) -> Event:
    return Event(kind, True, AF_INET, ifindex, table, 1234)  # type: ignore[arg-type]


class TestWhichNic:
    async def test_by_link_or_by_table(self, tmp_path: Path) -> None:
        d, _rec = daemon(tmp_path)
        d.on_kernel_events([event("address", ifindex=7)])
        assert MAC in d.kernel._rechecks
        d.kernel._rechecks.pop(MAC)[0].cancel()
        d.on_kernel_events([event("rule", table=10001)])
        assert MAC in d.kernel._rechecks
        d.kernel._rechecks.pop(MAC)[0].cancel()

    async def test_what_is_not_ours_is_dropped(self, tmp_path: Path) -> None:
        d, _rec = daemon(tmp_path)
        d.on_kernel_events(
            [
                event("route", ifindex=3, table=300),
                event("rule", table=200),
                event("link", ifindex=9),
            ]
        )
        assert d.kernel._rechecks == {}

    async def test_a_link_deleted_is_udevs_business(self, tmp_path: Path) -> None:
        d, _rec = daemon(tmp_path)
        d.on_kernel_events([event("link", ifindex=7)])
        assert d.kernel._rechecks == {}

    async def test_a_nic_without_a_promise_is_not_watched(self, tmp_path: Path) -> None:
        d, rec = daemon(tmp_path)
        rec.keeper.promise = None
        d.on_kernel_events([event("address", ifindex=7)])
        assert d.kernel._rechecks == {}


class TestDebounce:
    async def test_a_burst_is_one_look_never_later_than_the_cap(self, tmp_path: Path) -> None:
        d, _rec = daemon(tmp_path)
        loop = asyncio.get_running_loop()
        start = loop.time()
        d.recheck(MAC, 0.0)
        first_at = d.kernel._rechecks[MAC][1]
        assert first_at <= start + DEBOUNCE + 0.01
        for _ in range(50):  # notifications keep coming: the look moves, up to the cap
            d.recheck(MAC, 0.0)
        assert d.kernel._rechecks[MAC][1] <= start + DEBOUNCE_MAX + 0.01
        assert len(d.kernel._rechecks) == 1
        d.kernel._rechecks.pop(MAC)[0].cancel()

    async def test_a_later_request_never_delays_an_earlier_look(self, tmp_path: Path) -> None:
        d, _rec = daemon(tmp_path)
        d.recheck(MAC, 0.0)
        soon = d.kernel._rechecks[MAC][1]
        d.recheck(MAC, 5.0)
        assert d.kernel._rechecks[MAC][1] == soon
        d.kernel._rechecks.pop(MAC)[0].cancel()

    async def test_an_earlier_request_replaces_a_later_one(self, tmp_path: Path) -> None:
        d, _rec = daemon(tmp_path)
        d.recheck(MAC, 5.0)
        late = d.kernel._rechecks[MAC][1]
        d.recheck(MAC, 0.0)
        assert d.kernel._rechecks[MAC][1] < late
        d.kernel._rechecks.pop(MAC)[0].cancel()

    async def test_the_look_runs_the_reconcilers_verification(self, tmp_path: Path) -> None:
        d, rec = daemon(tmp_path)
        looked = asyncio.Event()

        async def verify_kernel(*, force: bool = False, save: bool = True) -> None:
            looked.set()

        rec.verify_kernel = verify_kernel  # type: ignore[method-assign]
        d.recheck(MAC, 0.0)
        await asyncio.wait_for(looked.wait(), 2)
        await d.shutdown()
