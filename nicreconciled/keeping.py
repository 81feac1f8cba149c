"""The reconciler's kernel side: what its applied configuration promises, looked at and kept.

A mixin of ``Reconciler`` (reconciler.py), which owns the state it reads. After every load
the reconciler hands the keeper (keeper.py) the promise of what it loaded (promise.py); the
daemon's kernel side (kernelside.py) asks for a look when a notification concerns the NIC;
a look compares the kernel with the promise, the keeper's verdict says what to do, and a
heal goes through the applier, which reloads this NIC alone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nicreconciled.errors import ApplyError
from nicreconciled.keeper import Keeper, Verdict
from nicreconciled.promise import Promise
from nicreconciled.stability import Step
from nicreconciled.status import NicStatus

if TYPE_CHECKING:
    from nicreconciled.reconciler import Context


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KernelKeeping:
    """Kernel looks and heals for one NIC (the reconciler's state, declared here)."""

    ctx: Context
    mac: str
    ifname: str | None
    ifindex: int | None
    status: NicStatus
    keeper: Keeper
    _log: Any
    _synced: bool
    _step: Step | None
    _verifying: asyncio.Lock
    _loaded_at: float
    _healed_at: float | None
    _reported_down: list[str]

    def kick(self, *, new_episode: bool = False, verify: bool = False) -> None:
        raise NotImplementedError

    def _save_status(self, step: Step) -> None:
        raise NotImplementedError

    def _episode_end(self) -> None:
        raise NotImplementedError

    def _promise(self, new: Promise | None, *, loaded: bool = False) -> None:
        """NEW is what the network stack holds for this NIC now (None: nothing of ours).
        LOADED: it was (re)loaded just now, so the kernel is pending until seen whole."""
        keeper = self.keeper
        if new is None or new.empty:
            new = None
        if new == keeper.promise and not loaded:
            return
        self._loaded_at = self.ctx.clock()
        keeper.applied(new, self._loaded_at)
        self.status.promise = None if new is None else new.to_json()
        self.status.kernel_missing = []
        if new is not None:
            # At once (the events of our own apply may be over already), and when a
            # promise still incomplete would count as drift.
            self.ctx.recheck(self.mac, 0.0)
            self.ctx.recheck(self.mac, keeper.settle)

    def manager_restarted(self) -> None:
        """The network manager came back: it reconfigures the NIC; pending again, with a new
        heal budget (what went missing while it was away was no fight)."""
        if self.keeper.promise is not None:
            self._loaded_at = self.ctx.clock()
            self.keeper.reset()
            self.keeper.restarted(self._loaded_at)
            self.ctx.recheck(self.mac, 0.0)
            self.ctx.recheck(self.mac, self.keeper.settle)
        if not self._synced:
            self.kick()  # a failed apply (the manager was gone): retry now

    async def verify_kernel(self, *, force: bool = False, save: bool = True) -> None:
        """Compare the kernel with the promise and act on the keeper's verdict. FORCE: an
        operator's SIGHUP (heal what is missing whatever the budget or ``kernel.heal``)."""
        async with self._verifying:
            await self._verify_kernel(force)
        if save and self._step is not None:
            self._save_status(self._step)
            self.ctx.on_pass(self.mac)

    async def _verify_kernel(self, force: bool) -> None:
        keeper, read = self.keeper, self.ctx.read_kernel
        if keeper.promise is None or read is None or self.ifindex is None:
            return
        if not self._synced or self.status.apply_pending:
            return  # an apply is due: it reloads the NIC, and its promise follows
        try:
            kernel = read(self.ifindex, keeper.promise)
        except OSError as exc:
            self._log.warning("kernel_read_failed", error=str(exc))
            self.ctx.recheck(self.mac, keeper.settle)
            return
        missing = keeper.promise.missing(kernel)
        if self.ctx.manager_away and not force:
            self.status.kernel_missing = list(missing)
            return  # nobody to heal through; the manager's return looks again
        if not kernel.up and missing and not force:
            # Set down on purpose: not ours to undo. Setting it up again is a link event:
            # what is still missing then is healed.
            self.status.kernel_missing = ["link down", *missing]
            if self.status.kernel_missing != self._reported_down:
                self._log.warning("link_down", missing=missing)
            self._reported_down = list(self.status.kernel_missing)
            return
        self._reported_down = []
        was_drifted, was_held = keeper.drifted, keeper.held
        now = self.ctx.clock()
        verdict = keeper.judge(missing, now, force=force)
        self._log.debug("kernel_look", verdict=verdict.value, missing=missing)
        self.status.kernel_missing = list(missing)
        if verdict is Verdict.HOLDS:
            if self._healed_at is not None:
                took = round(now - self._healed_at, 3)
                self._log.info("kernel_healed", took=took, heals=keeper.heals_total)
                self._healed_at = None
            elif not was_held:
                # The first look that finds the whole promise since it was (re)loaded.
                self._log.info("kernel_complete", took=round(now - self._loaded_at, 3))
                self._episode_end()
            return
        if verdict is Verdict.NOT_YET:
            self.ctx.recheck(self.mac, max(keeper.recheck_at - now, 0.0))
            return
        if not was_drifted or force:
            self._log.warning("kernel_drift", missing=missing, forced=force)
        if verdict is Verdict.REPORT:
            return
        if verdict is Verdict.GIVE_UP:
            self._log.warning(
                "heal_limit_reached",
                missing=missing,
                heals=len(keeper.heals),
                window=keeper.window,
                advice="something keeps removing this NIC's state: no more heals until"
                " SIGHUP (systemctl reload nicreconciled) or a metadata change",
            )
            return
        if verdict is Verdict.SUSPENDED:
            return
        await self._heal(missing)

    async def _heal(self, missing: list[str]) -> None:
        assert self.ctx.applier is not None
        assert self.ifname is not None
        if self._healed_at is None:
            self._healed_at = self.ctx.clock()
        self.status.heals, self.status.last_heal = self.keeper.heals_total, _now_iso()
        self._log.info("heal", missing=missing, heals=self.keeper.heals_total)
        try:
            await self.ctx.applier.heal(mac=self.mac, ifname=self.ifname)
        except ApplyError as exc:
            self._log.error("heal_failed", error=str(exc))
        # Whatever happened: look again once the manager had its time.
        self.ctx.recheck(self.mac, self.keeper.heal_settle)
