"""Which NICs the daemon reconciles: the coldplug scan, udev's events, and the NICs not ours.

A NIC is ours when it is eligible (ownership.py: Ethernet, not ignored, virtual only if
asked) and neither excluded nor given by udev to another manager; an eligible NIC that is
not ours gets no reconciler (a running one stops) and a status that says why. The scan (at
start, after lost events, on every resync timer) reconciles what is attached with what is
tracked; at start, our files of NICs detached while the daemon was stopped get a reconciler
each (which removes what is gone), and the status files of NICs no longer here are pruned.

A mixin of ``Daemon`` (daemon.py), which owns the state declared here and the reconcilers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from nicreconciled.apply_netplan import remove_stale_scratch
from nicreconciled.config import Config
from nicreconciled.model import key_to_mac
from nicreconciled.ownership import NOT_READY, NotOurs, Ownership
from nicreconciled.render import owned_names
from nicreconciled.status import PRUNE_AFTER, Managed, NicPhase, NicStatus
from nicreconciled.system import fs, sysfs
from nicreconciled.udev import NicEvent

if TYPE_CHECKING:
    import asyncio

    from nicreconciled.reconciler import Context, Reconciler

log = structlog.get_logger(__name__)


class NicTracking:
    """The NICs attached, those tracked (a reconciler each) and those not ours."""

    config: Config
    sys_root: Path
    ownership: Ownership
    reconcilers: dict[str, Reconciler]
    tasks: dict[str, asyncio.Task[None]]
    ignored: dict[str, NicStatus]
    _ctx: Context | None
    _names: dict[str, str]

    if TYPE_CHECKING:

        @property
        def ctx(self) -> Context:
            raise NotImplementedError

        def _ensure(self, mac: str, ifname: str | None, ifindex: int | None = None) -> Reconciler:
            raise NotImplementedError

        def _reload_progress(self, mac: str) -> None:
            raise NotImplementedError

        def _save_status(self, status: NicStatus) -> None:
            raise NotImplementedError

        def _delete_status(self, mac: str) -> None:
            raise NotImplementedError

        def _update_status(self) -> None:
            raise NotImplementedError

    # -- which NICs ----------------------------------------------------------------------
    def eligible(self, link: sysfs.Link) -> bool:
        return self.ownership.eligible(link)

    def not_ours(
        self, link: sysfs.Link, properties: Mapping[str, str] | None = None
    ) -> NotOurs | str | None:
        return self.ownership.not_ours(link, properties)

    def _owned(self, link: sysfs.Link, properties: Mapping[str, str] | None = None) -> bool:
        """Whether LINK is ours to reconcile now; if not, it is recorded as not ours."""
        verdict = self.not_ours(link, properties)
        if verdict == NOT_READY:
            # Keep what we know; a NIC new to us waits for udev's event.
            if link.mac not in self.reconcilers and link.mac not in self.ignored:
                log.debug("nic_not_ready", mac=link.mac, ifname=link.name, reason=NOT_READY)
            return link.mac in self.reconcilers
        if isinstance(verdict, tuple):
            self._ignore(link, *verdict)
            return False
        if self.ignored.pop(link.mac, None) is not None:
            log.info("nic_ours_again", mac=link.mac, ifname=link.name)
        return True

    def _ignore(self, link: sysfs.Link, managed: Managed, reason: str) -> None:
        """LINK is not ours: no reconciler (a running one stops), a status that says why."""
        mac = link.mac
        handed_over = mac in self.reconcilers
        if handed_over:
            # Our file, if written, stays: it is ours, but the NIC is no longer ours to load
            # or unload; the log says so, the operator decides.
            del self.reconcilers[mac]
            task = self.tasks.pop(mac, None)
            if task is not None:
                task.cancel()
            self._reload_progress(mac)
        previous = self.ignored.get(mac)
        status = NicStatus(
            mac=mac,
            ifname=link.name,
            file=self.ctx.renderer.filename(mac),
            phase=NicPhase.CONVERGED,
            managed=managed,
            managed_detail=reason,
        )
        self.ignored[mac] = status
        if previous is None or previous.managed_text != status.managed_text:
            path = self.ctx.output_dir / self.ctx.renderer.filename(mac)
            kept = path.is_file()
            (log.warning if kept else log.info)(
                "nic_not_ours",
                mac=mac,
                ifname=link.name,
                managed=str(managed),
                reason=reason,
                stopped=handed_over,
                **({"file_kept": str(path)} if kept else {}),
            )
        elif previous.ifname == link.name:
            return
        self._save_status(status)
        self._update_status()

    def _forget(self, mac: str) -> None:
        """A NIC that was not ours is gone: so is its status."""
        if self.ignored.pop(mac, None) is not None:
            self._delete_status(mac)
            self._update_status()

    # -- inputs ----------------------------------------------------------------------------
    def scan(self) -> None:
        """Reconcile what is present with what we track (coldplug, missed events)."""
        present: dict[str, sysfs.Link] = {}
        for link in sysfs.list_links(self.sys_root):
            if self.eligible(link):
                held = present.get(link.mac)
                if held is None or self._prefer(link, held):
                    present[link.mac] = link
        self._names = {link.name: mac for mac, link in present.items()}
        for mac, link in present.items():
            if not self._owned(link):
                continue
            known = self.reconcilers.get(mac)
            if known is None or not known.present:
                self._ensure(mac, link.name, link.ifindex).kick(new_episode=True)
            else:
                known.set_link(link.name, link.ifindex)
        for mac, rec in list(self.reconcilers.items()):
            if mac not in present and rec.present:
                log.info("nic_missing", mac=mac, ifname=rec.ifname)
                rec.set_link(None)
                rec.kick(new_episode=True)
        for mac in [m for m in self.ignored if m not in present]:
            self._forget(mac)

    def adopt_orphans(self) -> None:
        """Our files for MACs not attached now (detached while we were stopped).

        Also removes the temp files and netplan scratch trees a killed run left. Trouble with
        output_dir is logged, not fatal: each reconciler reports and retries its own writes.
        """
        renderer = self.ctx.renderer
        owned = owned_names(renderer)
        if self.config.apply:
            for path in remove_stale_scratch():
                log.info("scratch_removed", path=str(path))
        try:
            self.ctx.status.sweep()
        except OSError as exc:
            # state_dir's trouble (each status write reports it) must not keep output_dir's
            # temps and orphans from being handled, nor be reported as output_dir's.
            log.warning("status_sweep_failed", path=str(self.ctx.status.directory), error=str(exc))
        try:
            fs.remove_stale_temps(self.ctx.output_dir, owned)
            names = [
                n
                for n in fs.list_names(self.ctx.output_dir, renderer.prefix, renderer.suffix)
                if owned.fullmatch(n)
            ]
        except OSError as exc:
            log.error("output_dir_unreadable", path=str(self.ctx.output_dir), error=str(exc))
            return
        attached = set(self._names.values())  # eligible; not ours, or not processed by udev yet
        for name in names:
            key = name[len(renderer.prefix) : -len(renderer.suffix)]
            try:
                mac = key_to_mac(key)
            except ValueError:
                continue
            if mac not in self.reconcilers and mac not in self.ignored and mac not in attached:
                self._ensure(mac, None)
        self.prune_status()

    def prune_status(self) -> None:
        """Status files of NICs we do not track (after the scan and the orphans).

        Of a NIC attached but no longer eligible: deleted. Of one neither attached nor with
        our file (detached while we were stopped): deleted when older than PRUNE_AFTER, else
        looked at once more, like an orphan file (deleted once the metadata says it is gone).
        """
        eligible = set(self._names.values())
        attached = {link.mac for link in sysfs.list_links(self.sys_root)}
        for mac, age in list(self.ctx.status.ages()):
            if mac in self.reconcilers or mac in self.ignored or mac in eligible:
                continue
            if mac in attached or age > PRUNE_AFTER:
                why = "not eligible" if mac in attached else "gone"
                log.info("status_pruned", mac=mac, reason=why, age_hours=round(age / 3600, 1))
                self._delete_status(mac)
            else:
                self._ensure(mac, None)

    def on_event(self, event: NicEvent) -> None:
        log.debug("udev_event", action=event.action, ifname=event.ifname)
        if self._ctx is None:
            return  # still detecting the cloud: the scan that follows sees every NIC
        if event.action == "remove":
            mac = self._names.pop(event.ifname, None)
            rec = self.reconcilers.get(mac) if mac else None
            if rec is not None:
                log.info("nic_removed", mac=mac, ifname=event.ifname)
                rec.set_link(None)
                rec.kick(new_episode=True)
            elif mac in self.ignored:
                log.info("nic_removed", mac=mac, ifname=event.ifname)
                self._forget(mac)
            return
        if event.action == "move" and event.old_ifname:
            self._names.pop(event.old_ifname, None)
        link = sysfs.read_link(event.ifname, self.sys_root)
        if link is None or not self.eligible(link):
            return
        if self._held_by_another(link):
            # A second device with a NIC's MAC (a VF before its synthetic NIC enslaves it):
            # the NIC stays on its link, and this device's udev verdict is not the NIC's.
            log.info("nic_duplicate_mac", mac=link.mac, ifname=link.name)
            return
        self._names[link.name] = link.mac
        # A udev event carries the properties its rules set (the kernel's: none we read).
        if not self._owned(link, dict(event.properties)):
            return
        if event.action == "add":
            log.info("nic_added", mac=link.mac, ifname=link.name)
            self._ensure(link.mac, link.name, link.ifindex).kick(new_episode=True)
        elif event.action == "move":
            log.info("nic_renamed", mac=link.mac, ifname=link.name, old=event.old_ifname)
            self._ensure(link.mac, link.name, link.ifindex)
        elif link.mac not in self.reconcilers:
            # "change": udev's rules may just have stopped giving the NIC to someone else.
            self._ensure(link.mac, link.name, link.ifindex).kick(new_episode=True)

    def _prefer(self, link: sysfs.Link, held: sysfs.Link) -> bool:
        """Of two eligible links with one MAC, whether LINK rather than HELD stands for the
        NIC: the one its reconciler follows, else the older (lower ifindex)."""
        rec = self.reconcilers.get(link.mac)
        if rec is not None and rec.ifindex in (link.ifindex, held.ifindex):
            return rec.ifindex == link.ifindex
        return link.ifindex < held.ifindex

    def _held_by_another(self, link: sysfs.Link) -> bool:
        """LINK's MAC is tracked on another link that is still there."""
        rec = self.reconcilers.get(link.mac)
        if rec is None or rec.ifname is None or rec.ifname == link.name:
            return False
        other = sysfs.read_link(rec.ifname, self.sys_root)
        return other is not None and other.mac == link.mac and other.ifindex != link.ifindex

    def _events_lost(self) -> None:
        if self._ctx is None:
            return  # still detecting the cloud: the scan that follows sees every NIC
        self.scan()
        self._update_status()
