"""One task per MAC: fetch until stable, render, write, apply; then keep it true.

The reconciler never writes anything that came from an error: a failed or garbage fetch
only delays the next poll, and the file on disk stays the last good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from nicreconciled import conflicts, upstream
from nicreconciled import fingerprint as fp
from nicreconciled.apply import Applier
from nicreconciled.config import DeviceRange, excluded_device_number
from nicreconciled.errors import ApplyError, FetchError, MetadataError, UnsafePathError
from nicreconciled.keeper import Keeper
from nicreconciled.keeping import KernelKeeping
from nicreconciled.model import NicState, Observation, RedFlag
from nicreconciled.promise import Choices, Promise, Snapshot, promise
from nicreconciled.render import Renderer
from nicreconciled.sources import Source
from nicreconciled.stability import Phase, Policy, Predicts, Step, Tracker
from nicreconciled.status import Managed, NicPhase, NicStatus, StatusStore
from nicreconciled.system import fs, sysfs

_UNSET: Any = object()
#: ``applied`` when the network stack may hold a version of the file we cannot name.
_UNKNOWN = "unknown"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Context:
    """What every reconciler shares (one per daemon)."""

    source: Source
    renderer: Renderer
    applier: Applier | None
    policy: Policy
    output_dir: Path
    status: StatusStore
    manage_primary: bool = False
    #: interfaces.exclude_device_numbers: EC2 NICs reported as excluded, never written.
    exclude_device_numbers: tuple[DeviceRange, ...] = ()
    resync_interval: float = 60.0
    #: Where other tools' files are looked for (conflicts); tests point it at a tree.
    root: Path = Path("/")
    #: Called with the MAC after every pass (poll, write, apply, status saved): the daemon
    #: updates its STATUS= summary and tracks SIGHUP resyncs from here, without a timer.
    on_pass: Callable[[str], None] = lambda mac: None
    rng: random.Random = field(default_factory=random.Random)
    #: Where in each resync_interval the aligned re-checks fall (0..1), drawn once per
    #: daemon: the NICs of one instance re-check together, instances stay spread.
    resync_phase: float = field(default_factory=random.random)
    clock: Callable[[], float] = time.monotonic
    boot_id: str = field(default_factory=sysfs.boot_id)
    #: [kernel]: heal drift by itself, and how often per NIC (keeper.py).
    heal: bool = True
    heal_limit: int = 5
    #: What the renderer can put in the kernel (promise.Choices).
    choices: Choices = field(default_factory=Choices)
    #: Reads what the kernel has for a promise on a link (ifindex); tests swap it.
    read_kernel: Callable[[int, Promise], Snapshot] | None = None
    #: Asks the daemon to look at MAC's kernel state again in DELAY seconds (debounced).
    recheck: Callable[[str, float], None] = lambda mac, delay: None
    #: True while the source's long poll answers (upstream.ChangeWatch): changes then arrive
    #: through it, and the idle re-checks stretch to upstream.STRETCH x resync_interval.
    long_poll_healthy: Callable[[], bool] = lambda: False
    #: The network manager's bus name is gone (stopped, restarting): nothing can heal now,
    #: and what it took down with it is no fight; its return re-checks every NIC.
    manager_away: bool = False


class Reconciler(KernelKeeping):
    def __init__(self, ctx: Context, mac: str, ifname: str | None, *, once: bool = False) -> None:
        self.ctx = ctx
        self.mac = mac
        self.ifname = ifname
        self.once = once
        self.tracker = Tracker(ctx.policy, rng=random.Random(ctx.rng.random()))
        self.filename = ctx.renderer.filename(mac)
        self.status = NicStatus(mac=mac, ifname=ifname, file=self.filename)
        self._recall(ctx.status.load(mac))
        self._status_error: str | None = None  # the last status write failure, logged once
        self.removed = False
        self.forced = False  # accepted after the deadline, not because it was stable
        self._kick = asyncio.Event()
        self._new_episode = True
        #: When the current episode (hot-plug, upstream change) began; None: none open.
        self._episode_at: float | None = None
        self._desired: NicState | None = _UNSET
        self._synced = True
        self._retry = ctx.policy.initial_interval
        self._next_full = 0.0
        self._log = structlog.get_logger("nicreconciled.reconciler").bind(
            mac=mac, ifname=ifname, cloud=ctx.source.name
        )
        #: The link's index (from sysfs, set by the daemon): kernel events name links by it.
        self.ifindex: int | None = None
        self.keeper = Keeper(heal=ctx.heal, limit=ctx.heal_limit)
        self._verify = False  # SIGHUP: verify the kernel after the next pass
        self._verifying = asyncio.Lock()
        self._step: Step | None = None
        self._healed_at: float | None = None
        self._loaded_at = 0.0
        self._reported_down: list[str] = []

    def _recall(self, previous: NicStatus | None) -> None:
        """What an earlier run of this boot wrote and loaded: a load it missed is redone."""
        if previous is None or previous.file != self.filename:
            return
        self.status.written = previous.written
        if previous.applied_boot == self.ctx.boot_id:
            self.status.applied = previous.applied
            self.status.applied_boot = previous.applied_boot

    # -- control from the daemon -------------------------------------------------------
    def kick(self, *, new_episode: bool = False, verify: bool = False) -> None:
        """Poll now (udev event, SIGHUP, scan); NEW_EPISODE: the NIC itself changed;
        VERIFY (SIGHUP): then re-verify the kernel and re-apply whatever it lacks."""
        self._new_episode = self._new_episode or new_episode
        self._verify = self._verify or verify
        self._kick.set()

    def set_link(self, ifname: str | None, ifindex: int | None = None) -> None:
        if ifname is None or ifindex is not None:
            self.ifindex = ifindex
        if ifname != self.ifname:
            self.ifname = ifname
            self.status.ifname = ifname
            self._log = self._log.bind(ifname=ifname)

    @property
    def kick_pending(self) -> bool:
        """Kicked since the current pass started (the next pass will answer the kick)."""
        return self._kick.is_set()

    @property
    def present(self) -> bool:
        return self.ifname is not None

    @property
    def converged(self) -> bool:
        return self.tracker.phase is not Phase.CONVERGING and self._synced and not self.forced

    @property
    def settled(self) -> bool:
        """Nothing left to do: written with every flag cleared, or not ours to manage."""
        if not self.converged:
            return False
        return self.tracker.phase is Phase.CONVERGED or self.status.managed is not Managed.MANAGED

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        probe: tuple[str, ...] = ()
        while True:
            if self._new_episode:
                self._new_episode = False
                self.tracker.start_episode(self.ctx.clock())
                self._episode_at = self.ctx.clock()
                probe = ()
            if probe and self.ctx.clock() >= self._next_full:
                # Probes watch one key; the rest of the NIC's data still needs its resync.
                probe = ()
            self._kick.clear()
            verify, self._verify = self._verify, False
            step = await self._poll(probe)
            self._step = step
            await self._handle(step)
            if verify:
                await self.verify_kernel(force=True, save=False)
            self._episode_end()
            self._save_status(step)
            self.ctx.on_pass(self.mac)
            if self.removed or (self.once and self._done_once(step)):
                return
            delay = self._delay(step)
            probe = () if step.idle else step.probe
            if await self._sleep(delay):
                probe = ()

    def _done_once(self, step: Step) -> bool:
        return step.phase is not Phase.CONVERGING and self._synced

    def _resync_delay(self) -> float:
        interval = self.ctx.resync_interval
        if self.ctx.long_poll_healthy():
            interval *= upstream.STRETCH
        if not getattr(self.ctx.source, "ONE_ANSWER", False):
            return interval * self.tracker.rng.uniform(0.8, 1.2)
        # One answer serves every NIC: re-check on the daemon-wide ticks, so that the NICs'
        # re-checks share a fetch; the next tick at least half an interval away.
        now = self.ctx.clock()
        phase = self.ctx.resync_phase * interval
        tick = phase + math.ceil((now - phase) / interval) * interval
        while tick - now < interval / 2:
            tick += interval
        return tick - now

    def _delay(self, step: Step) -> float:
        delay = self._resync_delay() if step.idle else step.delay
        if not self._synced:
            delay = min(delay, self._retry)
            self._retry = min(self._retry * 2, self.ctx.resync_interval)
        return delay

    async def _sleep(self, delay: float) -> bool:
        """Wait DELAY seconds or until kicked; True if kicked."""
        if self._kick.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)
            return True
        return False

    async def _poll(self, probe: tuple[str, ...]) -> Step:
        now = self.ctx.clock
        try:
            if probe:
                answers = await self.ctx.source.probe(probe)
                step = self.tracker.on_probe(now(), answers)
                predicted = None
                if step.moved and isinstance(self.ctx.source, Predicts):
                    # The awaited key moved: its sighting now, confirmed by the full fetch
                    # that comes at once (stability.py).
                    predicted = self.ctx.source.predict(self.mac, answers)
                    if predicted is not None:
                        self.tracker.on_prediction(now(), predicted)
                self._log.debug(
                    "probe", keys=len(probe), changed=step.moved, predicted=predicted is not None
                )
                return step
            self._next_full = now() + self._resync_delay()
            obs = self._adjust(await self.ctx.source.fetch(self.mac))
        except (FetchError, MetadataError) as exc:
            kind = "metadata_invalid" if isinstance(exc, MetadataError) else "fetch_failed"
            self._log.warning(kind, error=str(exc))
            self.status.last_error, self.status.last_error_at = str(exc), _now_iso()
            return self.tracker.on_failure(now(), str(exc))
        previous = self.tracker.last_fp
        step = self.tracker.on_observation(now(), obs)
        current = self.tracker.last_fp
        self.status.fingerprint = current
        if current != previous:
            if previous is not None and self._episode_at is None:
                self._episode_at = now()  # an upstream change: a new episode
            self._log.info(
                "fingerprint_changed",
                fingerprint=current,
                previous=previous,
                flags=[f.kind for f in obs.flags],
            )
        if self.tracker.phase is Phase.CONVERGING or current != previous:
            self._log.info(
                "poll",
                fingerprint=current,
                seen=self.tracker.seen,
                phase=step.phase.value,
                waiting_on=list(step.waiting_on),
            )
        else:
            self._log.debug("poll", fingerprint=current)
        return step

    def _adjust(self, obs: Observation) -> Observation:
        """Flags depend on whether the NIC is still attached here."""
        if self.present:
            return obs
        flags = tuple(f for f in obs.flags if f.kind != "not-listed")
        if obs.state is not None:
            # Detached locally but still listed upstream: the detach is propagating.
            flags += (RedFlag("still-listed", "NIC is gone but the metadata still lists it"),)
        return Observation(obs.mac, obs.state, flags, obs.probe)

    async def _handle(self, step: Step) -> None:
        if step.warning:
            self._log.warning("deadline_passed", detail=step.warning)
        if step.accept:
            self.forced = step.warning is not None or (
                self.forced and step.phase is not Phase.CONVERGED
            )
            if self._desired is _UNSET or fp.fingerprint(step.state) != fp.fingerprint(
                self._desired
            ):
                self._log.info(
                    "accepted",
                    fingerprint=fp.fingerprint(step.state),
                    phase=step.phase.value,
                    waiting_on=list(step.waiting_on),
                )
                self._desired = step.state
                self._synced = False
        if not self._synced:
            await self._sync()

    async def _sync(self) -> None:
        """Make disk and network stack match the accepted state; retried until it works."""
        state = self._desired
        try:
            if state is None or (state.primary and not self.ctx.manage_primary):
                self._promise(None)
            if state is None and not self.present:
                if fs.remove_file(self.ctx.output_dir, self.filename):
                    self._log.info("removed", file=self.filename)
                    # The stack may hold it (loaded by us, or by netplan at boot): unload.
                    self.status.applied = self.status.applied or _UNKNOWN
                self.status.written = None
                await self._apply_if_pending()
                self.status.managed, self.status.managed_detail = Managed.REMOVED, None
                self.removed = True
            elif state is None:
                # The metadata does not know this MAC: not ours to manage (file kept as is).
                self.status.managed = Managed.UNLISTED
                self.status.managed_detail = "the metadata does not list this MAC"
            elif state.primary and not self.ctx.manage_primary:
                self.status.managed = Managed.PRIMARY
                self.status.managed_detail = "manage_primary = false"
            elif rule := excluded_device_number(
                self.ctx.exclude_device_numbers, state.device_number
            ):
                self._promise(None)
                # Same as the primary: never written (a file from before is kept as is).
                self.status.managed = Managed.EXCLUDED
                self.status.managed_detail = f"exclude_device_numbers {rule}"
            else:
                text = self.ctx.renderer.render(state)
                digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                mode = self.ctx.renderer.mode
                if fs.write_if_changed(self.ctx.output_dir, self.filename, text, mode):
                    self.status.last_change = _now_iso()
                    if self.status.applied == digest:
                        # The file had changed under us: load it again to be sure.
                        self.status.applied = _UNKNOWN
                    self._log.info(
                        "rendered", file=self.filename, fingerprint=fp.fingerprint(state)
                    )
                self.status.written = digest
                self.status.managed, self.status.managed_detail = Managed.MANAGED, None
                self.status.rendered_fingerprint = fp.fingerprint(state)
                self._check_conflicts()
                if self.present:
                    loaded = await self._apply_if_pending()
                    if self.ctx.applier is not None and not self.status.apply_pending:
                        self._promise(promise(state, self.ctx.choices), loaded=loaded)
        except (OSError, UnsafePathError, ApplyError) as exc:
            # An OSError names the path ("/etc/netplan/90-….yaml: Read-only file system",
            # "/etc/netplan: Not a directory"), never the temp file's random name.
            reason = (
                fs.describe(exc, self.ctx.output_dir, self.filename)
                if isinstance(exc, OSError)
                else str(exc)
            )
            event = "apply_failed" if isinstance(exc, ApplyError) else "write_failed"
            self._log.error(event, error=reason, file=self.filename)
            self.status.last_error, self.status.last_error_at = reason, _now_iso()
            self._synced = False
            return
        self._synced = True
        self._retry = self.ctx.policy.initial_interval

    def _check_conflicts(self) -> None:
        """Warn (once per change) when another tool also configures this NIC."""
        found = conflicts.find_conflicts(self.mac, self.ifname, self.ctx.root)
        if found != self.status.conflicts:
            for line in found:
                self._log.warning(
                    "conflicting_config", conflict=line, advice=conflicts.advice(line)
                )
            self.status.conflicts = found

    async def _apply_if_pending(self) -> bool:
        """Load what is written; stays pending (saved, retried, redone after a restart)
        until it succeeds. True if it loaded something now."""
        if self.ctx.applier is None or not self.status.apply_pending:
            return False
        await self.ctx.applier.apply(
            mac=self.mac, path=self.ctx.output_dir / self.filename, ifname=self.ifname
        )
        self.status.applied, self.status.applied_boot = self.status.written, self.ctx.boot_id
        self._log.info("applied", file=self.filename)
        return True

    def _episode_end(self) -> None:
        """``converged`` (took: since the episode began) once the episode's state is
        complete in the network stack: settled, and with an applier, seen whole in the
        kernel (``kernel_complete`` calls this again). A NIC found not ours ends its episode
        without it."""
        if self._episode_at is None or not self.settled:
            return
        if self.status.managed is not Managed.MANAGED or not self.present:
            self._episode_at = None
            return
        promised = self.ctx.applier is not None and self.keeper.promise is not None
        if promised and not self.keeper.held:
            return
        took = round(self.ctx.clock() - self._episode_at, 3)
        self._episode_at = None
        self._log.info("converged", took=took)

    def _phase(self, step: Step) -> NicPhase:
        """The phase shown by ``status``; its STATUS= bucket follows from it alone."""
        if self.removed:
            return NicPhase.REMOVED
        if not self.converged and self.status.last_error:
            return NicPhase.FAILING
        if self.keeper.drifting:
            return NicPhase.DRIFTING
        if self.forced:
            return NicPhase.DEADLINE
        if self.settled:
            return NicPhase.CONVERGED  # also: accepted and found not ours, flags or not
        if step.phase is Phase.CONVERGING:
            return NicPhase.CONVERGING
        return NicPhase.WAITING

    def _save_status(self, step: Step) -> None:
        self.status.phase = self._phase(step)
        self.status.waiting_on = list(step.waiting_on)
        try:
            if self.removed:
                self.ctx.status.delete(self.mac)  # gone: no ghost left for `status`
            else:
                self.ctx.status.save(self.status)
        except (OSError, UnsafePathError) as exc:
            # Logged once per reason, retried at every pass; STATUS= says so meanwhile.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if reason != self._status_error:
                self._log.warning("status_write_failed", error=reason)
            self._status_error = reason
        else:
            if self._status_error is not None:
                self._log.info("status_write_recovered", previous_error=self._status_error)
            self._status_error = None

    @property
    def status_error(self) -> str | None:
        """Why this NIC's latest status could not be saved (None: it was)."""
        return self._status_error
