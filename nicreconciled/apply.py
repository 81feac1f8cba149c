"""Load changed files into the network stack: one applier at a time, only the changed NICs.

Every reconciler hands its change to the one applier of the daemon and awaits the outcome
for its own NIC. Applies are serialized by one lock, and the changes that arrive while an
apply runs are merged into the next one (a burst of NICs at boot costs one ``netplan
generate`` and one ``networkctl reload``, not one per NIC). A failure is an ``ApplyError``
for the NICs it concerns: the reconciler logs it and retries later, and a half-applied
sequence is simply run again.

networkd: one ``networkctl reload`` per apply. networkd re-reads its files and reconfigures
exactly the links whose ``.network`` file changed on disk (a link it left unmanaged included),
so no per-NIC ``networkctl reconfigure`` is needed; ``reconfigure`` does not re-read files and
would restart the NIC's DHCP a second time.

Heals (``Applier.heal``, keeper.py). Neither manager restores an address, rule or route that
another program deleted (measured in the lab, networkd 252 and NetworkManager 1.42: not
within 5 s), and a reload does nothing for a link whose file did not change. What restores
exactly one link, without touching another: networkd ``networkctl reconfigure IFNAME``
(re-applies the link's ``.network``; measured 61 ms) and NetworkManager ``nmcli device
reapply IFNAME`` (re-applies the active profile's settings; 19 ms), when the profile active
on the device is ours, else ``nmcli connection up`` of our profile. A heal takes the same
lock as the applies: it never runs in the middle of a batch, and never for a link whose
apply is queued behind it (the batch then re-applies it anyway).

The appliers of netplan's output are in apply_netplan.py, the NetworkManager activation (of
our keyfiles and of netplan's) in apply_nm.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from nicreconciled.errors import ApplyError
from nicreconciled.system import proc

log = structlog.get_logger(__name__)

TIMEOUT = 30.0


@dataclass(frozen=True)
class Change:
    """One NIC's change: PATH was just written (or removed); IFNAME None = the NIC is gone."""

    mac: str
    path: Path
    ifname: str | None

    @property
    def written(self) -> bool:
        return self.path.exists()


class Applier(Protocol):
    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        """Load PATH, just written (or removed) for MAC; raises ApplyError on failure."""
        ...

    async def heal(self, *, mac: str, ifname: str) -> None:
        """Make the network stack re-apply MAC's loaded configuration to IFNAME (what another
        program deleted comes back); raises ApplyError on failure."""
        ...


#: Per NIC of a batch: None if applied, else why not.
Outcome = dict[str, ApplyError | None]


@dataclass
class _Pending:
    change: Change
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class BatchApplier:
    """Serializes applies and merges the changes that queue up behind a running one."""

    def __init__(self, runner: proc.Runner = proc.run) -> None:
        self._run = runner
        self._lock = asyncio.Lock()
        self._queue: dict[str, _Pending] = {}

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may be left awaiting it (a cancelled reconciler): never warn about that.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        pending = self._queue.setdefault(mac, _Pending(Change(mac, path, ifname)))
        pending.change = Change(mac, path, ifname)  # the latest request for a NIC wins
        pending.waiters.append(waiter)
        async with self._lock:
            if not waiter.done():
                batch, self._queue = self._queue, {}
                await self._process(batch)
        await waiter

    async def _process(self, batch: dict[str, _Pending]) -> None:
        changes = [p.change for p in batch.values()]
        try:
            outcome = await self.apply_batch(changes)
        except ApplyError as exc:
            outcome = dict.fromkeys(batch, exc)
        except BaseException:
            # Cancelled mid-apply (the daemon stops): the others retry, nothing is lost.
            _settle(batch, dict.fromkeys(batch, ApplyError("apply interrupted")))
            raise
        log.debug(
            "apply_batch", nics=len(changes), failed=sum(e is not None for e in outcome.values())
        )
        _settle(batch, outcome)

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        raise NotImplementedError

    async def heal(self, *, mac: str, ifname: str) -> None:
        async with self._lock:
            if mac in self._queue:
                return  # an apply of this NIC is queued: it reloads the NIC anyway
            await self._heal(mac, ifname)

    async def _heal(self, mac: str, ifname: str) -> None:
        raise NotImplementedError

    async def _step(self, *argv: str) -> None:
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())

    async def _each(self, changes: Iterable[Change], outcome: Outcome, *argv: str) -> None:
        """Run ARGV + selector for each NIC; a failure is that NIC's alone."""
        for change in changes:
            try:
                await self._step(*argv, *self._selector(change))
            except ApplyError as exc:
                outcome[change.mac] = exc

    def _selector(self, change: Change) -> tuple[str, ...]:
        raise NotImplementedError


def _settle(batch: dict[str, _Pending], outcome: Outcome) -> None:
    for mac, pending in batch.items():
        error = outcome.get(mac)
        for waiter in pending.waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class NetworkdApplier(BatchApplier):
    """Our own ``.network`` files (``NetworkdRenderer``): one ``networkctl reload`` per batch.

    The files are written straight into a directory networkd reads (``/run/systemd/network``
    by default), so there is nothing to generate or install: the reload makes networkd
    re-read its files and reconfigure exactly the links whose file changed; a link whose
    file was removed (its NIC detached) is dropped by the same reload. Always run, even when
    every change of the batch was a no-op: a file written by an apply that was interrupted
    before its reload is loaded now.
    """

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        await self._step("networkctl", "reload")
        return dict.fromkeys((c.mac for c in changes), None)

    async def _heal(self, mac: str, ifname: str) -> None:
        await self._step("networkctl", "reconfigure", ifname)
