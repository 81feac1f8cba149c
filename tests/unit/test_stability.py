"""The poll-until-stable policy, driven with injected time."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from nicreconciled.model import NicState, Observation, RedFlag
from nicreconciled.stability import Phase, Policy, Tracker

MAC = "0a:00:00:00:00:01"
IPV6_KEY = f"meta-data/network/interfaces/macs/{MAC}/ipv6s"
DEVNUM_KEY = f"meta-data/network/interfaces/macs/{MAC}/device-number"
POLICY = Policy(jitter=0.0)


def state(*, ipv6: bool = False, device_number: int = 1, addrs: int = 1) -> NicState:
    return NicState(
        mac=MAC,
        cloud="ec2",
        primary=False,
        device_number=device_number,
        route_table=10000 + device_number,
        route_metric=512 + device_number,
        ipv4_addresses=tuple(IPv4Address(f"10.0.1.{10 + i}") for i in range(addrs)),
        ipv4_subnet=IPv4Network("10.0.1.0/24"),
        ipv4_gateway=IPv4Address("10.0.1.1"),
        ipv6_addresses=(IPv6Address("2001:db8:1::10"),) if ipv6 else (),
        ipv6_subnets=(IPv6Network("2001:db8:1::/64"),),
    )


def ipv6_pending(raw: str | None = None) -> RedFlag:
    return RedFlag("ipv6-pending", "subnet has IPv6, NIC none yet", (IPV6_KEY,), "ipv6")


def obs(st: NicState | None, *flags: RedFlag, probe: dict[str, str | None] | None = None):
    return Observation(MAC, st, tuple(flags), probe or {k: None for f in flags for k in f.keys})


def tracker(policy: Policy = POLICY) -> Tracker:
    t = Tracker(policy, rng=random.Random(1))
    t.start_episode(0.0)
    return t


class TestStableFingerprint:
    def test_a_state_is_accepted_only_after_it_was_seen_twice(self) -> None:
        t = tracker()
        first = t.on_observation(0.0, obs(state()))
        assert not first.accept
        assert first.delay == POLICY.initial_interval
        second = t.on_observation(0.25, obs(state()))
        assert second.accept
        assert second.state == state()
        assert second.phase is Phase.CONVERGED
        assert second.idle

    def test_the_daemons_default_confirms_a_tenth_of_a_second_later_and_still_twice(
        self,
    ) -> None:
        # Issue 22: the confirming read was 0.25 s of a complete NIC's 0.3 s to the kernel.
        # It comes 0.1 s (+-10 % jitter) after the first sighting now, and the rule stays:
        # one read is never accepted, a value that changed in between starts over.
        from nicreconciled.config import PollingConfig

        t = Tracker(Policy.from_config(PollingConfig()), rng=random.Random(3))
        t.start_episode(0.0)
        first = t.on_observation(0.0, obs(state()))
        assert not first.accept
        assert 0.09 <= first.delay <= 0.11
        moved = t.on_observation(first.delay, obs(state(addrs=2)))
        assert not moved.accept
        assert 0.09 <= moved.delay <= 0.11
        confirmed = t.on_observation(first.delay + moved.delay, obs(state(addrs=2)))
        assert confirmed.accept
        assert confirmed.state == state(addrs=2)

    def test_a_change_resets_the_count_and_the_backoff(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state()))
        t.on_observation(0.3, obs(state(addrs=2)))
        step = t.on_observation(0.6, obs(state(addrs=3)))
        assert not step.accept
        assert step.delay == POLICY.initial_interval

    def test_a_flapping_value_is_never_accepted_before_the_deadline(self) -> None:
        t = tracker()
        now = 0.0
        accepted_at = None
        for i in range(400):
            step = t.on_observation(now, obs(state(addrs=1 + i % 2)))
            if step.accept:
                accepted_at = now
                break
            now += max(step.delay, 0.25)
        assert accepted_at is not None
        assert accepted_at >= POLICY.deadline
        assert step.warning is not None
        assert "not stable" in step.warning

    def test_after_acceptance_an_unchanged_poll_stays_converged(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state()))
        t.on_observation(0.3, obs(state()))
        step = t.on_observation(60.0, obs(state()))
        assert step.phase is Phase.CONVERGED
        assert step.idle

    def test_a_later_upstream_change_needs_its_own_confirmation(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state()))
        t.on_observation(0.3, obs(state()))
        changed = t.on_observation(60.0, obs(state(ipv6=True)))
        assert not changed.accept
        assert changed.phase is Phase.CONVERGING
        assert changed.delay == POLICY.initial_interval
        confirmed = t.on_observation(60.3, obs(state(ipv6=True)))
        assert confirmed.accept
        assert confirmed.state == state(ipv6=True)


class TestLateIpv6:
    def test_a_dual_stack_subnet_without_ipv6s_waits_and_probes_only_ipv6s(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        step = t.on_observation(0.25, obs(state(), ipv6_pending()))
        assert not step.accept
        assert step.probe == (IPV6_KEY,)
        assert step.delay == POLICY.probe_interval

    def test_a_probe_that_sees_nothing_new_probes_again(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(0.25, obs(state(), ipv6_pending()))
        step = t.on_probe(0.75, {IPV6_KEY: None})
        assert step.probe == (IPV6_KEY,)
        assert step.delay == POLICY.probe_interval

    def test_a_probe_that_sees_ipv6_asks_for_a_full_fetch_at_once(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(0.25, obs(state(), ipv6_pending()))
        step = t.on_probe(4.1, {IPV6_KEY: "2001:db8:1::10"})
        assert step.delay == 0.0
        assert step.probe == ()

    def test_ipv6_arriving_within_the_grace_is_in_the_first_accepted_state(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(0.25, obs(state(), ipv6_pending()))
        t.on_probe(4.1, {IPV6_KEY: "2001:db8:1::10"})
        first = t.on_observation(4.1, obs(state(ipv6=True)))
        assert not first.accept
        final = t.on_observation(first.delay + 4.1, obs(state(ipv6=True)))
        assert final.accept
        assert final.state == state(ipv6=True)
        assert final.phase is Phase.CONVERGED

    def test_after_the_grace_ipv4_only_is_accepted_and_ipv6s_still_watched(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        step = t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        assert step.accept
        assert step.state == state()
        assert step.phase is Phase.SETTLED_WITH_FLAGS
        assert step.probe == (IPV6_KEY,)
        assert not step.idle

    def test_watching_after_the_grace_backs_off_to_the_max_interval(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        delays = [t.on_probe(20.0 + i, {IPV6_KEY: None}).delay for i in range(10)]
        assert delays == sorted(delays)
        assert delays[-1] == POLICY.max_interval

    def test_ipv6_arriving_after_the_grace_is_accepted_as_a_change(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        assert t.on_probe(45.0, {IPV6_KEY: "2001:db8:1::10"}).delay == 0.0
        t.on_observation(45.0, obs(state(ipv6=True)))
        step = t.on_observation(45.25, obs(state(ipv6=True)))
        assert step.accept
        assert step.state == state(ipv6=True)
        assert step.phase is Phase.CONVERGED


class TestPropagationRedFlags:
    def test_device_number_zero_on_a_secondary_nic_is_not_accepted_early(self) -> None:
        t = tracker()
        flag = RedFlag("device-number-0", "non-primary reads 0", (DEVNUM_KEY,))
        t.on_observation(0.0, obs(state(device_number=0), flag, probe={DEVNUM_KEY: "0"}))
        step = t.on_observation(0.25, obs(state(device_number=0), flag, probe={DEVNUM_KEY: "0"}))
        assert not step.accept
        assert step.probe == (DEVNUM_KEY,)
        moved = t.on_probe(1.0, {DEVNUM_KEY: "2"})
        assert moved.delay == 0.0
        t.on_observation(1.0, obs(state(device_number=2)))
        final = t.on_observation(1.25, obs(state(device_number=2)))
        assert final.accept
        assert final.state is not None
        assert final.state.device_number == 2

    def test_listed_but_404_waits_until_the_deadline_then_accepts_best_known(self) -> None:
        t = tracker()
        key = f"meta-data/network/interfaces/macs/{MAC}/ipv4-prefix"
        flag = RedFlag("listed-but-404", "ipv4-prefix listed but 404", (key,))
        t.on_observation(0.0, obs(state(), flag))
        assert not t.on_observation(0.25, obs(state(), flag)).accept
        assert not t.on_observation(POLICY.deadline - 1, obs(state(), flag)).accept
        late = t.on_observation(POLICY.deadline + 0.1, obs(state(), flag))
        assert late.accept
        assert late.phase is Phase.SETTLED_WITH_FLAGS

    def test_a_grace_running_out_during_probes_triggers_a_full_fetch(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(0.25, obs(state(), ipv6_pending()))
        step = t.on_probe(POLICY.ipv6_grace + 0.5, {IPV6_KEY: None})
        assert step.delay == 0.0
        assert step.probe == ()


class TestFailures:
    def test_failures_back_off_exponentially_up_to_the_max(self) -> None:
        t = tracker()
        delays = [t.on_failure(float(i), "timeout").delay for i in range(8)]
        assert delays[0] == POLICY.initial_interval
        assert delays[1] == 2 * POLICY.initial_interval
        assert delays[-1] == POLICY.max_interval
        assert all(not t.on_failure(9.0, "x").accept for _ in range(3))

    def test_a_failure_between_two_equal_polls_does_not_break_stability(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state()))
        t.on_failure(0.25, "reset")
        assert t.on_observation(0.75, obs(state())).accept

    def test_a_failure_after_convergence_waits_for_the_next_resync(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state()))
        t.on_observation(0.25, obs(state()))
        step = t.on_failure(60.0, "503")
        assert step.idle
        assert not step.accept

    def test_jitter_spreads_delays_within_the_configured_fraction(self) -> None:
        t = Tracker(Policy(initial_interval=0.25, jitter=0.1), rng=random.Random(7))
        t.start_episode(0.0)
        delays = {
            round(t.on_observation(0.0, obs(state(addrs=i % 2 + 1))).delay, 6) for i in range(20)
        }
        assert len(delays) > 5
        assert all(0.225 <= d <= 0.275 for d in delays)


class TestFlagGraceAcrossChanges:
    def test_an_upstream_change_does_not_rearm_an_expired_ipv6_grace(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        # Much later a secondary IPv4 appears; the NIC still has no IPv6.
        t.on_observation(100.0, obs(state(addrs=2), ipv6_pending()))
        step = t.on_observation(100.25, obs(state(addrs=2), ipv6_pending()))
        assert step.accept
        assert step.state == state(addrs=2)

    def test_a_fresh_attach_waits_for_ipv6_again(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        t.start_episode(100.0)  # detached and attached again
        t.on_observation(100.0, obs(state(), ipv6_pending()))
        assert not t.on_observation(100.25, obs(state(), ipv6_pending())).accept

    def test_a_flag_that_clears_and_returns_starts_its_grace_anew(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(0.25, obs(state(ipv6=True)))
        t.on_observation(0.5, obs(state(ipv6=True)))
        assert "ipv6-pending" not in t.flag_since
        t.on_observation(50.0, obs(state(), ipv6_pending()))
        assert t.flag_since["ipv6-pending"] == 50.0


LISTING = "meta-data/network/interfaces/macs/"


def unlisted() -> RedFlag:
    return RedFlag("not-listed", "MAC not in the metadata", (LISTING,), "unlisted")


class TestWhatNeverComes:
    def test_an_unlisted_mac_is_called_not_ours_after_the_short_grace(self) -> None:
        t = tracker()
        listing = {LISTING: "0a:00:00:00:00:09/\n"}
        t.on_observation(0.0, obs(None, unlisted(), probe=listing))
        early = t.on_observation(0.25, obs(None, unlisted(), probe=listing))
        assert not early.accept
        assert early.probe == (LISTING,)
        step = t.on_observation(POLICY.unlisted_grace + 0.1, obs(None, unlisted(), probe=listing))
        assert step.accept
        assert step.state is None
        assert step.phase is Phase.SETTLED_WITH_FLAGS
        assert POLICY.unlisted_grace < POLICY.deadline

    def test_an_unlisted_mac_is_looked_at_ever_more_rarely_then_only_at_resync(self) -> None:
        t = tracker()
        listing = {LISTING: ""}
        t.on_observation(0.0, obs(None, unlisted(), probe=listing))
        t.on_observation(POLICY.unlisted_grace + 0.1, obs(None, unlisted(), probe=listing))
        now, delays = POLICY.unlisted_grace + 0.1, []
        while True:
            step = t.on_probe(now, listing)
            if step.idle:
                break
            delays.append(step.delay)
            now += step.delay
        assert delays == sorted(delays)
        assert max(delays) <= POLICY.max_interval
        assert POLICY.deadline <= now < POLICY.deadline + POLICY.max_interval
        assert step.probe == ()  # the next look is the resync's full poll

    def test_a_flag_that_never_clears_is_watched_at_resync_after_the_deadline(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        assert not t.on_probe(POLICY.deadline - 1, {IPV6_KEY: None}).idle
        assert t.on_probe(POLICY.deadline + 0.1, {IPV6_KEY: None}).idle
        # A resync's full poll that still sees the flag stays at the resync cadence.
        step = t.on_observation(POLICY.deadline + 60, obs(state(), ipv6_pending()))
        assert step.idle
        assert step.probe == ()

    def test_a_state_forced_by_the_deadline_is_then_watched_at_resync(self) -> None:
        t = tracker()
        key = f"meta-data/network/interfaces/macs/{MAC}/ipv4-prefix"
        flag = RedFlag("listed-but-404", "ipv4-prefix listed but 404", (key,))
        t.on_observation(0.0, obs(state(), flag))
        late = t.on_observation(POLICY.deadline + 0.1, obs(state(), flag))
        assert late.accept
        assert late.idle


class TestProbingAndPrediction:
    def test_a_pending_flag_is_probed_from_the_first_poll_on(self) -> None:
        t = tracker()
        step = t.on_observation(0.0, obs(state(), ipv6_pending()))
        assert not step.accept
        assert step.probe == (IPV6_KEY,)
        assert step.delay == POLICY.probe_interval

    def test_a_probe_that_sees_the_key_move_says_so(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        assert not t.on_probe(0.4, {IPV6_KEY: None}).moved
        moved = t.on_probe(0.8, {IPV6_KEY: "2001:db8:1::10"})
        assert moved.moved
        assert moved.delay == 0.0
        assert moved.probe == ()

    def test_the_full_fetch_confirming_a_prediction_is_accepted_at_once(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_probe(4.0, {IPV6_KEY: "2001:db8:1::10"})
        t.on_prediction(4.0, obs(state(ipv6=True)))
        step = t.on_observation(4.02, obs(state(ipv6=True)))
        assert step.accept
        assert step.state == state(ipv6=True)
        assert step.phase is Phase.CONVERGED

    def test_a_prediction_alone_is_never_accepted(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_prediction(4.0, obs(state(ipv6=True)))
        assert t.accepted_fp is None
        assert t.seen == 1

    def test_a_full_fetch_that_differs_from_the_prediction_needs_its_own_confirmation(
        self,
    ) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_prediction(4.0, obs(state(ipv6=True)))
        # A secondary IPv4 came meanwhile: what the full fetch saw was seen once.
        step = t.on_observation(4.02, obs(state(ipv6=True, addrs=2)))
        assert not step.accept
        assert step.delay == POLICY.initial_interval
        assert t.on_observation(4.27, obs(state(ipv6=True, addrs=2))).accept

    def test_without_a_prediction_the_change_is_confirmed_by_a_second_poll(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        t.on_probe(4.0, {IPV6_KEY: "2001:db8:1::10"})
        first = t.on_observation(4.02, obs(state(ipv6=True)))
        assert not first.accept
        assert t.on_observation(4.02 + first.delay, obs(state(ipv6=True))).accept

    def test_a_prediction_after_the_grace_is_confirmed_by_the_next_full_fetch(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        settled = t.on_observation(POLICY.ipv6_grace + 0.1, obs(state(), ipv6_pending()))
        assert settled.accept
        assert t.on_probe(45.0, {IPV6_KEY: "2001:db8:1::10"}).moved
        t.on_prediction(45.0, obs(state(ipv6=True)))
        step = t.on_observation(45.02, obs(state(ipv6=True)))
        assert step.accept
        assert step.state == state(ipv6=True)
        assert step.phase is Phase.CONVERGED

    def test_an_unchanged_state_at_the_end_of_the_grace_needs_no_extra_poll(self) -> None:
        t = tracker()
        t.on_observation(0.0, obs(state(), ipv6_pending()))
        expired = t.on_probe(POLICY.ipv6_grace + 0.2, {IPV6_KEY: None})
        assert expired.delay == 0.0  # a full fetch decides
        step = t.on_observation(POLICY.ipv6_grace + 0.2, obs(state(), ipv6_pending()))
        assert step.accept  # the same as the first poll: seen twice in a row
        assert step.state == state()
