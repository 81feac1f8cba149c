"""Keeper: when a difference between kernel and promise is drift, and what to do about it."""

from __future__ import annotations

from nicreconciled.keeper import Keeper, Verdict
from nicreconciled.promise import Promise, PromisedRule

P1 = Promise(
    addresses=("10.0.11.20/24",), rules=(PromisedRule("10.0.11.20/32", 10001, 10001),), table=10001
)
P2 = Promise(addresses=("10.0.11.21/24",), table=10001)
GONE = ["rule from 10.0.11.20/32 lookup 10001 priority 10001"]


def held(keeper: Keeper, now: float = 0.0) -> Keeper:
    keeper.applied(P1, now)
    assert keeper.judge([], now) is Verdict.HOLDS
    return keeper


class TestAfterAnApply:
    def test_what_is_missing_before_the_promise_was_ever_whole_is_not_drift_yet(self) -> None:
        keeper = Keeper(settle=5)
        keeper.applied(P1, 100.0)
        assert keeper.judge(GONE, 101.0) is Verdict.NOT_YET
        assert keeper.recheck_at == 105.0
        assert not keeper.drifted

    def test_still_missing_after_settle_is_drift(self) -> None:
        keeper = Keeper(settle=5)
        keeper.applied(P1, 100.0)
        assert keeper.judge(GONE, 105.0) is Verdict.HEAL

    def test_missing_after_it_held_is_drift_at_once(self) -> None:
        keeper = held(Keeper(settle=5), 100.0)
        assert keeper.judge(GONE, 100.1) is Verdict.HEAL
        assert keeper.drifts_total == keeper.heals_total == 1

    def test_an_object_seen_since_the_apply_and_gone_again_is_drift_at_once(self) -> None:
        keeper = Keeper(settle=5)
        keeper.applied(P1, 100.0)
        keeper.saw(GONE[0])  # the manager added it (a notification), then someone removed it
        assert keeper.judge(GONE, 100.1) is Verdict.HEAL

    def test_what_a_look_finds_is_not_seen(self) -> None:
        """Left from before the apply, it may be the manager's to drop and re-add."""
        keeper = Keeper(settle=5)
        keeper.applied(P1, 100.0)
        assert keeper.judge(["address 10.0.11.20/24"], 100.1) is Verdict.NOT_YET  # rule there
        assert keeper.judge(GONE, 100.2) is Verdict.NOT_YET

    def test_a_new_apply_forgets_what_was_seen(self) -> None:
        keeper = Keeper(settle=5)
        keeper.applied(P1, 100.0)
        keeper.saw(GONE[0])
        keeper.applied(P1, 101.0)
        assert keeper.judge(GONE, 101.1) is Verdict.NOT_YET

    def test_a_heal_makes_the_nic_pending_again(self) -> None:
        keeper = held(Keeper(settle=5))
        assert keeper.judge(GONE, 1.0) is Verdict.HEAL
        # The manager is still re-applying: not a second heal.
        assert keeper.judge(GONE, 1.1) is Verdict.NOT_YET
        assert keeper.judge([], 1.2) is Verdict.HOLDS
        assert not keeper.drifted


class TestNeverFight:
    def test_the_limit_stops_heals_once_and_says_so_once(self) -> None:
        keeper = held(Keeper(limit=2, settle=5))
        verdicts = []
        for t in (1.0, 2.0, 3.0, 4.0):
            verdicts.append(keeper.judge(GONE, t))
            keeper.judge([], t + 0.1)  # healed, then deleted again
        assert verdicts == [Verdict.HEAL, Verdict.HEAL, Verdict.GIVE_UP, Verdict.SUSPENDED]
        assert keeper.suspended

    def test_drifting_while_suspended_and_missing(self) -> None:
        keeper = held(Keeper(limit=0))
        assert keeper.judge(GONE, 1.0) is Verdict.GIVE_UP
        assert keeper.drifting

    def test_heals_older_than_the_window_do_not_count(self) -> None:
        keeper = held(Keeper(limit=1, window=600, settle=5))
        assert keeper.judge(GONE, 1.0) is Verdict.HEAL
        keeper.judge([], 1.1)
        assert keeper.judge(GONE, 700.0) is Verdict.HEAL

    def test_sighup_heals_past_the_limit_and_renews_the_budget(self) -> None:
        keeper = held(Keeper(limit=0))
        assert keeper.judge(GONE, 1.0) is Verdict.GIVE_UP
        assert keeper.judge(GONE, 2.0, force=True) is Verdict.HEAL
        assert not keeper.suspended

    def test_sighup_right_after_its_own_apply_does_not_heal_what_is_being_applied(
        self,
    ) -> None:
        keeper = Keeper(settle=5)
        keeper.applied(P1, 100.0)
        assert keeper.judge(GONE, 100.1, force=True) is Verdict.NOT_YET

    def test_a_new_promise_renews_the_budget(self) -> None:
        keeper = held(Keeper(limit=0))
        keeper.judge(GONE, 1.0)
        keeper.applied(P2, 2.0)
        assert not keeper.suspended
        assert not keeper.drifting

    def test_the_same_promise_reloaded_keeps_the_budget(self) -> None:
        keeper = held(Keeper(limit=0))
        keeper.judge(GONE, 1.0)
        keeper.applied(P1, 2.0)
        assert keeper.suspended


class TestHealOff:
    def test_drift_is_reported_not_healed(self) -> None:
        keeper = held(Keeper(heal=False))
        assert keeper.judge(GONE, 1.0) is Verdict.REPORT
        assert keeper.drifting
        assert keeper.heals_total == 0

    def test_sighup_heals_all_the_same(self) -> None:
        keeper = held(Keeper(heal=False))
        assert keeper.judge(GONE, 1.0, force=True) is Verdict.HEAL

    def test_restored_by_someone_else_is_no_longer_drifting(self) -> None:
        keeper = held(Keeper(heal=False))
        keeper.judge(GONE, 1.0)
        assert keeper.judge([], 2.0) is Verdict.HOLDS
        assert not keeper.drifting
