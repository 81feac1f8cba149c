"""Wiring: udev events, the coldplug scan, signals and timers -> one reconciler per MAC."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import signal
from collections.abc import Callable
from pathlib import Path

import structlog

from nicreconciled import systemd
from nicreconciled.config import Config
from nicreconciled.model import key_to_mac
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.system import fs, sysfs
from nicreconciled.udev import NicEvent, UdevWatcher

log = structlog.get_logger(__name__)

#: A reconciler that crashed on a bug is restarted after this long, never left dead.
RESTART_DELAY = 5.0


class Daemon:
    def __init__(
        self,
        config: Config,
        ctx: Context,
        *,
        sys_root: Path = Path("/sys"),
        once: bool = False,
        notify: Callable[[str], bool] = systemd.notify,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.sys_root = sys_root
        self.once = once
        self._notify = notify
        self.reconcilers: dict[str, Reconciler] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._names: dict[str, str] = {}  # ifname -> mac, for remove events (no sysfs then)
        self._stop = asyncio.Event()

    # -- which NICs ----------------------------------------------------------------------
    def eligible(self, link: sysfs.Link) -> bool:
        if not link.ethernet:
            return False
        if link.virtual and not self.config.interfaces.virtual:
            return False
        return not any(fnmatch.fnmatchcase(link.name, p) for p in self.config.interfaces.ignore)

    def _ensure(self, mac: str, ifname: str | None) -> Reconciler:
        rec = self.reconcilers.get(mac)
        if rec is None:
            rec = Reconciler(self.ctx, mac, ifname, once=self.once)
            self.reconcilers[mac] = rec
            self.tasks[mac] = asyncio.create_task(self._supervise(rec), name=f"nic-{mac}")
            log.info("nic_tracked", mac=mac, ifname=ifname)
        else:
            rec.set_link(ifname)
        return rec

    async def _supervise(self, rec: Reconciler) -> None:
        try:
            while True:
                try:
                    await rec.run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A bug must cost one NIC a few seconds, not the daemon its life.
                    log.exception("reconciler_crashed", mac=rec.mac, ifname=rec.ifname)
                    await asyncio.sleep(RESTART_DELAY)
                    rec.kick(new_episode=True)
        finally:
            if self.reconcilers.get(rec.mac) is rec:
                del self.reconcilers[rec.mac]
                self.tasks.pop(rec.mac, None)

    # -- inputs ----------------------------------------------------------------------------
    def scan(self) -> None:
        """Reconcile what is present with what we track (coldplug, missed events)."""
        present: dict[str, sysfs.Link] = {}
        for link in sysfs.list_links(self.sys_root):
            if self.eligible(link):
                present[link.mac] = link
        self._names = {link.name: mac for mac, link in present.items()}
        for mac, link in present.items():
            known = self.reconcilers.get(mac)
            if known is None or not known.present:
                self._ensure(mac, link.name).kick(new_episode=True)
            else:
                known.set_link(link.name)
        for mac, rec in list(self.reconcilers.items()):
            if mac not in present and rec.present:
                log.info("nic_missing", mac=mac, ifname=rec.ifname)
                rec.set_link(None)
                rec.kick(new_episode=True)

    def adopt_orphans(self) -> None:
        """Our files for MACs not attached now (detached while we were stopped).

        Also removes temp files a killed writer left. Trouble with output_dir is logged, not
        fatal: each reconciler reports and retries its own writes.
        """
        renderer = self.ctx.renderer
        try:
            fs.remove_stale_temps(self.ctx.output_dir, renderer.prefix)
            names = fs.list_names(self.ctx.output_dir, renderer.prefix, renderer.suffix)
        except OSError as exc:
            log.error("output_dir_unreadable", path=str(self.ctx.output_dir), error=str(exc))
            return
        for name in names:
            key = name[len(renderer.prefix) : -len(renderer.suffix)]
            try:
                mac = key_to_mac(key)
            except ValueError:
                continue
            if mac not in self.reconcilers:
                self._ensure(mac, None)

    def on_event(self, event: NicEvent) -> None:
        log.debug("udev_event", action=event.action, ifname=event.ifname)
        if event.action == "remove":
            mac = self._names.pop(event.ifname, None)
            rec = self.reconcilers.get(mac) if mac else None
            if rec is not None:
                log.info("nic_removed", mac=mac, ifname=event.ifname)
                rec.set_link(None)
                rec.kick(new_episode=True)
            return
        if event.action == "move" and event.old_ifname:
            self._names.pop(event.old_ifname, None)
        link = sysfs.read_link(event.ifname, self.sys_root)
        if link is None or not self.eligible(link):
            return
        self._names[link.name] = link.mac
        if event.action == "add":
            log.info("nic_added", mac=link.mac, ifname=link.name)
            self._ensure(link.mac, link.name).kick(new_episode=True)
        elif event.action == "move":
            log.info("nic_renamed", mac=link.mac, ifname=link.name, old=event.old_ifname)
            self._ensure(link.mac, link.name)

    def resync_all(self) -> None:
        log.info("resync_requested", nics=len(self.reconcilers))
        for rec in self.reconcilers.values():
            rec.kick()

    def stop(self) -> None:
        self._stop.set()

    # -- main --------------------------------------------------------------------------------
    def _status_line(self) -> str:
        recs = list(self.reconcilers.values())
        converged = sum(r.converged for r in recs)
        failing = sum(1 for r in recs if not r.converged and r.status.last_error)
        return f"{len(recs)} NICs tracked, {converged} converged, {failing} with errors"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.resync_all)
        watcher = UdevWatcher(self.config.udev.source)
        watcher.start(self.on_event)  # before the scan: no attach falls between the two
        try:
            self.scan()
            self.adopt_orphans()
            self._notify("READY=1\nSTATUS=" + self._status_line())
            log.info("ready", nics=len(self.reconcilers), source=self.ctx.source.name)
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.config.resync_interval)
                if not self._stop.is_set():
                    self.scan()
                    self._notify("STATUS=" + self._status_line())
        finally:
            self._notify("STOPPING=1")
            watcher.stop()
            await self.shutdown()
        log.info("stopped")
        return 0

    async def shutdown(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_once(self, timeout: float) -> int:
        """Reconcile every NIC present now; 0 if each converged, 1 if any did not."""
        self.scan()
        self.adopt_orphans()
        recs = list(self.reconcilers.values())
        tasks = list(self.tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in recs if not (r.converged or r.removed)]
        for rec in failed:
            log.warning("not_converged", mac=rec.mac, ifname=rec.ifname, phase=rec.status.phase)
        return 1 if failed else 0
