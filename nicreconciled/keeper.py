"""Keeping one NIC's promise true in the kernel: when to heal, when to wait, when to stop.

Pure decisions, no I/O: the reconciler reads the kernel, asks ``Keeper.judge`` what the
difference means, and acts (``reconciler.Reconciler.verify_kernel``).

Our own applies and the managers' churn are told apart from drift by the promise, not by
timing: after every apply (and after the manager restarted) the NIC is *pending* until the
kernel has been seen to hold the whole promise; only what goes missing after that is drift,
and so is a promised object that a notification added since the apply and that is gone
again (what a look finds may be left from before, about to be replaced by the manager: the
soak counted such heals after networkd restarts).
A manager that never completes a promise is the one place a clock speaks: once ``settle``
seconds have passed since the apply (``heal_settle`` since a heal) with the promise still
incomplete, the difference is treated as drift too (a manager restarted that restores
nothing, an object removed before it was ever seen), so nothing stays missing for good
without a heal or a word.

Never fight: at most ``limit`` heals of one NIC per ``window`` seconds. Past it the keeper
stops healing, says so once (``Verdict.GIVE_UP``), and the NIC shows phase ``drifting`` until
an operator's SIGHUP (``force``) or a change of the NIC's metadata (``applied`` with a new
promise) starts a new budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from nicreconciled.promise import Promise

#: Heals of one NIC are counted over this many seconds (the contract's "10 minutes").
WINDOW = 600.0
#: After an apply, how long the manager is given to complete the promise before what is
#: still missing counts as drift (our applies land in 0.1-1.5 s; DHCP is never promised).
SETTLE = 5.0
#: The same after a heal: re-applying one configured link takes the managers 20-60 ms, so
#: what is still missing a second later was removed after the heal looked (a second
#: deletion in the same burst) and is healed again without waiting for SETTLE.
HEAL_SETTLE = 1.0


class Verdict(Enum):
    HOLDS = "holds"  # the kernel has everything promised
    NOT_YET = "not_yet"  # pending after an apply: look again at ``Keeper.recheck_at``
    HEAL = "heal"  # drift: re-apply the NIC now (counted)
    GIVE_UP = "give_up"  # drift, and the heal limit was just reached: warn once, stop
    SUSPENDED = "suspended"  # drift, heals stopped earlier: nothing to do
    REPORT = "report"  # drift with ``kernel.heal = false``: report it, do not heal


@dataclass
class Keeper:
    heal: bool = True
    limit: int = 5
    window: float = WINDOW
    settle: float = SETTLE
    heal_settle: float = HEAL_SETTLE
    promise: Promise | None = None
    #: The kernel was seen holding the whole promise since the last apply.
    held: bool = False
    #: Until when a promise not yet seen whole is still given time (not drift yet).
    pending_until: float = 0.0
    #: Heal limit reached: no heal until ``reset`` (SIGHUP, a metadata change).
    suspended: bool = False
    #: What was missing at the last look ([] = it held).
    missing: list[str] = field(default_factory=list)
    #: Drift seen and not repaired yet (reported, suspended, or healing).
    drifted: bool = False
    #: Promised objects a notification added since the last apply while pending: one of them
    #: missing later was removed, not "not yet". Not what a look finds: an object from
    #: before the apply (or the restart) may still be there, about to be replaced by the
    #: manager itself (networkd drops and re-adds a link's configuration), which is no drift.
    seen: set[str] = field(default_factory=set)
    heals: deque[float] = field(default_factory=deque)
    #: Totals for the life of the NIC (status, metrics).
    heals_total: int = 0
    drifts_total: int = 0

    @property
    def recheck_at(self) -> float:
        """When a pending promise that is still incomplete counts as drift."""
        return self.pending_until

    @property
    def drifting(self) -> bool:
        """The kernel lacks what was applied and nothing is healing it (the phase)."""
        return bool(self.missing) and self.drifted and (self.suspended or not self.heal)

    def applied(self, promise: Promise | None, now: float) -> None:
        """The network stack was just (re)loaded with PROMISE: pending until seen whole. A
        different promise (new metadata) gives the NIC a new heal budget."""
        if promise != self.promise:
            self.reset()
        self.promise, self.held, self.pending_until = promise, False, now + self.settle
        self.seen.clear()

    def restarted(self, now: float) -> None:
        """The network manager came back: it reconfigures, so pending again."""
        self.held, self.pending_until = False, now + self.settle
        self.seen.clear()

    def saw(self, item: str) -> None:
        """A notification added ITEM (``Promise.missing``'s words) to the kernel."""
        if not self.held and self.promise is not None:
            self.seen.add(item)

    def reset(self) -> None:
        self.suspended, self.drifted = False, False
        self.heals.clear()

    def judge(self, missing: list[str], now: float, *, force: bool = False) -> Verdict:
        """What MISSING (``Promise.missing`` of the kernel now) calls for. FORCE: an
        operator asked (SIGHUP): heal whatever is missing, budget renewed, ``heal`` or not,
        unless the promise was loaded a moment ago and is still being applied."""
        self.missing = list(missing)
        if not missing:
            self.held, self.drifted = True, False
            self.seen.clear()
            return Verdict.HOLDS
        gone = self.seen.intersection(missing)
        if force:
            self.reset()
        if not self.held and not gone and now < self.recheck_at:
            # Just loaded (a SIGHUP that brought a metadata change too): being applied now.
            return Verdict.NOT_YET
        if not self.drifted:
            self.drifts_total += 1
        self.drifted = True
        if not force and not self.heal:
            return Verdict.REPORT
        if self.suspended:
            return Verdict.SUSPENDED
        while self.heals and now - self.heals[0] >= self.window:
            self.heals.popleft()
        if not force and len(self.heals) >= self.limit:
            self.suspended = True
            return Verdict.GIVE_UP
        self.heals.append(now)
        self.heals_total += 1
        self.held, self.pending_until = False, now + self.heal_settle
        self.seen.clear()
        return Verdict.HEAL
