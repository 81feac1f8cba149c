"""Poll-until-stable policy: pure, with time and randomness injected.

The reconciler feeds the tracker what each poll saw; the tracker answers with a Step: what to
accept (render) now, when to poll next, and whether the next poll may be a cheap probe.

Why this shape: EC2 announces a hot-plugged NIC before IMDS holds all of its data, and the
data then fills in over seconds (keys listed but 404, device-number 0 for a while, IPv6 late).
A state is accepted once the same fingerprint was seen on ``stable_polls`` consecutive polls
and no red flag is pending. While red flags are pending inside their grace (nothing can be
accepted then, stable or not), the tracker asks for probes of just the keys the flags wait on
(one request each instead of a full crawl), and for a full fetch as soon as a probe sees
something move. A source that can tell what its last full read becomes with the probe's
answers in place (``Predicts``) gives a sighting of the new state at no cost; the full fetch
then confirms it, so every answer the accepted state is made of has been read twice, and the
full fetch has read the whole NIC afresh. A change of fingerprint seen otherwise resets
backoff so that the confirming poll comes quickly (``initial_interval``, 0.1 s: a state that
fills in over seconds shows it with a red flag, which holds acceptance for its own grace; the
confirming read guards against a value caught mid-change, and its delay is latency).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from nicreconciled.config import PollingConfig
from nicreconciled.fingerprint import fingerprint
from nicreconciled.model import NicState, Observation, RedFlag


@dataclass(frozen=True)
class Policy:
    initial_interval: float = 0.1
    max_interval: float = 5.0
    probe_interval: float = 0.4
    stable_polls: int = 2
    ipv6_grace: float = 10.0
    unlisted_grace: float = 5.0
    deadline: float = 60.0
    #: Relative spread of every delay, so a fleet booted together does not poll in lockstep.
    jitter: float = 0.1

    @classmethod
    def from_config(cls, polling: PollingConfig) -> Policy:
        return cls(
            initial_interval=polling.initial_interval,
            max_interval=polling.max_interval,
            probe_interval=polling.probe_interval,
            stable_polls=polling.stable_polls,
            ipv6_grace=polling.ipv6_grace,
            unlisted_grace=polling.unlisted_grace,
            deadline=polling.deadline,
        )


@runtime_checkable
class Predicts(Protocol):
    """A source that can apply a probe's answers to its last full read of a MAC."""

    def predict(self, mac: str, answers: Mapping[str, str | None]) -> Observation | None: ...


class Phase(Enum):
    CONVERGING = "converging"  # no accepted state yet in this episode
    CONVERGED = "converged"  # accepted, every flag cleared
    SETTLED_WITH_FLAGS = "waiting"  # accepted after a grace/deadline, still watching flags


@dataclass(frozen=True)
class Step:
    """The tracker's answer to one poll."""

    delay: float
    #: Non-empty: the next poll probes only these keys. Empty: the next poll is a full fetch.
    probe: tuple[str, ...] = ()
    #: Set when a state is accepted now (it may equal what was accepted before).
    accept: bool = False
    state: NicState | None = None
    phase: Phase = Phase.CONVERGING
    waiting_on: tuple[str, ...] = ()
    #: One line for the log when something needs an operator's eye (deadline passed, ...).
    warning: str | None = None
    #: Resync cadence applies (nothing left to watch quickly).
    idle: bool = False
    #: A probe saw an awaited key move (the full fetch at once then confirms a prediction).
    moved: bool = False


@dataclass
class Tracker:
    policy: Policy
    rng: random.Random = field(default_factory=random.Random)
    episode_start: float = 0.0
    last_fp: str | None = None
    seen: int = 0
    accepted_fp: str | None = None
    phase: Phase = Phase.CONVERGING
    #: Red flag kind -> when it was first seen, across episodes while it stands: a later
    #: upstream change (a new secondary IPv4, say) must not re-arm a grace that already ran
    #: out for a NIC that simply has no IPv6.
    flag_since: dict[str, float] = field(default_factory=dict)
    _interval: float = 0.0
    _last: Observation | None = None
    _deadline_warned: bool = False

    def start_episode(self, now: float, *, fresh: bool = True) -> None:
        """Converge afresh from NOW: FRESH for the NIC itself (attach), else an upstream change."""
        self.episode_start = now
        self.seen = 0
        self.last_fp = None
        self.phase = Phase.CONVERGING
        self._interval = self.policy.initial_interval
        self._deadline_warned = False
        if fresh:
            self.flag_since.clear()

    # -- helpers -----------------------------------------------------------------------
    def _jittered(self, delay: float) -> float:
        spread = self.policy.jitter
        return max(0.0, delay * self.rng.uniform(1 - spread, 1 + spread))

    def _backoff(self) -> float:
        delay = self._interval
        self._interval = min(self._interval * 2, self.policy.max_interval)
        return self._jittered(delay)

    def _grace(self, flag: RedFlag) -> float:
        if flag.grace == "ipv6":
            return self.policy.ipv6_grace
        if flag.grace == "unlisted":
            return self.policy.unlisted_grace
        if flag.grace == "lease":
            return 0.0  # accepted as soon as stable: the DHCP-only file lets DHCP run
        return self.policy.deadline

    def _watched_long_enough(self, now: float) -> bool:
        """Every standing flag has been watched for ``deadline``: from now on it is only
        looked at with the resync (and on udev events and SIGHUP)."""
        since = min(self.flag_since.values(), default=now)
        return now - since >= self.policy.deadline

    def _pending(self, flags: tuple[RedFlag, ...], now: float) -> tuple[RedFlag, ...]:
        return tuple(f for f in flags if now - self.flag_since.get(f.kind, now) < self._grace(f))

    def _track_flags(self, flags: tuple[RedFlag, ...], now: float) -> None:
        kinds = {f.kind for f in flags}
        for kind in list(self.flag_since):
            if kind not in kinds:
                del self.flag_since[kind]
        for kind in kinds:
            self.flag_since.setdefault(kind, now)

    @staticmethod
    def _probe_keys(flags: tuple[RedFlag, ...]) -> tuple[str, ...]:
        """Probe only if every flag names what it waits on; else a full fetch is needed."""
        if not flags or any(not f.keys for f in flags):
            return ()
        return tuple(dict.fromkeys(k for f in flags for k in f.keys))

    # -- inputs ------------------------------------------------------------------------
    def on_observation(self, now: float, obs: Observation) -> Step:
        fp = fingerprint(obs.state)
        self._last = obs
        if self.phase is not Phase.CONVERGING and fp != self.accepted_fp:
            # Upstream changed after we had accepted a state: converge again.
            self.start_episode(now, fresh=False)
        self._track_flags(obs.flags, now)
        if fp == self.last_fp:
            self.seen += 1
        else:
            self.last_fp, self.seen = fp, 1
            self._interval = self.policy.initial_interval
        stable = self.seen >= self.policy.stable_polls
        pending = self._pending(obs.flags, now)
        waiting = tuple(f"{f.kind}: {f.detail}" for f in obs.flags)

        if stable and not pending:
            self.accepted_fp = fp
            if obs.flags:
                # Accepted after a grace expired: keep an eye on the flags, ever more slowly,
                # and once they stood for the deadline only at the resync cadence.
                self.phase = Phase.SETTLED_WITH_FLAGS
                keys = () if self._watched_long_enough(now) else self._probe_keys(obs.flags)
                return Step(
                    delay=self._backoff(),
                    probe=keys,
                    accept=True,
                    state=obs.state,
                    phase=self.phase,
                    waiting_on=waiting,
                    idle=not keys,
                )
            self.phase = Phase.CONVERGED
            return Step(delay=0.0, accept=True, state=obs.state, phase=self.phase, idle=True)

        elapsed = now - self.episode_start
        if elapsed >= self.policy.deadline and self.phase is Phase.CONVERGING:
            # Never stable in time (flapping, flags that never clear): use the best we know,
            # say so, and keep polling; a later stable state replaces it.
            warning = None
            if not self._deadline_warned:
                self._deadline_warned = True
                warning = f"not stable after {self.policy.deadline:g} s; using the latest state"
            self.accepted_fp = fp
            self.phase = Phase.SETTLED_WITH_FLAGS
            self._interval = self.policy.max_interval
            return Step(
                delay=self._jittered(self.policy.max_interval),
                accept=True,
                state=obs.state,
                phase=self.phase,
                waiting_on=waiting or ("stability",),
                warning=warning,
                idle=True,  # from now on at the resync cadence, on udev events and SIGHUP
            )

        keys = self._probe_keys(pending)
        if keys:
            # Nothing is accepted while these flags are pending, stable or not: watch just
            # what they wait on. The full fetch after a probe's news (or at the end of the
            # grace) sees the whole NIC again, and is confirmed like any other.
            return Step(
                delay=self._jittered(self.policy.probe_interval),
                probe=keys,
                phase=self.phase,
                waiting_on=tuple(f"{f.kind}: {f.detail}" for f in pending),
            )
        if stable:
            # Stable, but pending flags that name no key: full polls, with backoff.
            return Step(
                delay=self._backoff(),
                phase=self.phase,
                waiting_on=tuple(f"{f.kind}: {f.detail}" for f in pending),
            )
        # Not yet seen often enough: confirm soon (backoff was reset by the change).
        return Step(
            delay=self._backoff(),
            phase=self.phase,
            waiting_on=waiting or (f"stable fingerprint ({self.seen}/{self.policy.stable_polls})",),
        )

    def on_probe(self, now: float, answers: dict[str, str | None]) -> Step:
        """A probe answered: full fetch at once if anything moved, else probe again later."""
        last = self._last
        if last is None:
            return Step(delay=0.0, phase=self.phase)
        if any(last.probe.get(k) != v for k, v in answers.items()):
            return Step(delay=0.0, phase=self.phase, moved=True)
        flags = last.flags
        pending = self._pending(flags, now)
        if self.phase is Phase.CONVERGING and not pending:
            # A grace ran out while probing: a full fetch decides acceptance.
            return Step(delay=0.0, phase=self.phase)
        keys = tuple(answers)
        if self.phase is Phase.CONVERGING:
            delay = self._jittered(self.policy.probe_interval)
        elif self._watched_long_enough(now):
            return Step(
                delay=0.0,
                phase=self.phase,
                waiting_on=tuple(f"{f.kind}: {f.detail}" for f in flags),
                idle=True,
            )
        else:
            delay = self._backoff()
        return Step(
            delay=delay,
            probe=keys,
            phase=self.phase,
            waiting_on=tuple(f"{f.kind}: {f.detail}" for f in flags),
        )

    def on_prediction(self, now: float, predicted: Observation) -> None:
        """A sighting of the state a probe's answers make of the last full read.

        Its answers were each read once (the probe's just now, the others by that full
        read), so it is never accepted by itself: the full fetch that follows at once reads
        every one of them again, and its state is stable when it is the predicted one.
        """
        fp = fingerprint(predicted.state)
        if self.phase is not Phase.CONVERGING and fp != self.accepted_fp:
            self.start_episode(now, fresh=False)
        if fp != self.last_fp:
            self.last_fp, self.seen = fp, 1
            self._interval = self.policy.initial_interval

    def on_failure(self, now: float, reason: str) -> Step:
        """No usable answer: nothing changes, try again later (backoff, jitter).

        Once converged, a failed check waits for the next resync instead of backing off from
        the short initial interval: a fleet must not hammer a service that is already down.
        """
        converged = self.phase is Phase.CONVERGED
        return Step(
            delay=0.0 if converged else self._backoff(),
            phase=self.phase,
            waiting_on=(f"error: {reason}",),
            idle=converged,
        )
