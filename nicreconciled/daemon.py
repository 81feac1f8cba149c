"""Wiring: udev events, the coldplug scan, signals and timers -> one reconciler per MAC.

Which NICs are ours, and the inputs that tell (scan, udev), are daemon_nics.py's; the status
the daemon saves itself and STATUS= are daemon_status.py's (both mixins of Daemon); what
the kernel and the network manager say, kernelside.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

import structlog

from nicreconciled import __version__, coexist, systemd, upstream
from nicreconciled import log as logsetup
from nicreconciled.config import Config
from nicreconciled.daemon_nics import NicTracking
from nicreconciled.daemon_status import StatusBoard
from nicreconciled.kernelside import MANAGER_BUS_NAMES, KernelSide
from nicreconciled.kernelwatch import KernelWatch
from nicreconciled.ownership import Ownership
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.status import DaemonPhase, DaemonStatus, NicStatus, StatusStore
from nicreconciled.system import rtnl
from nicreconciled.system.busname import NameWatch
from nicreconciled.udev import UdevWatcher

if TYPE_CHECKING:
    from nicreconciled.metrics import Metrics

log = structlog.get_logger(__name__)

#: A reconciler that crashed on a bug is restarted after this long, never left dead.
RESTART_DELAY = 5.0
#: A SIGHUP resync reports READY=1 at the latest this long after it started, even if some
#: NIC's poll is still stuck (a metadata service timing out must not hold systemctl reload).
RELOAD_BOUND = 10.0


#: Finds the cloud (``cloud = "auto"`` may take long) and builds the reconcilers' context.
#: Gets a callback for one-line progress and an event that cuts a retry wait short.
Detect = Callable[[Callable[[str], object], asyncio.Event], Awaitable[Context]]


class Daemon(NicTracking, StatusBoard):
    def __init__(
        self,
        config: Config,
        ctx: Context | None = None,
        *,
        detect: Detect | None = None,
        sys_root: Path = Path("/sys"),
        run_root: Path = Path("/run"),
        once: bool = False,
        notify: Callable[[str], bool] = systemd.notify,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if (ctx is None) == (detect is None):
            raise ValueError("a Daemon needs either a context or a way to detect one")
        self.config = config
        self._ctx = ctx
        self._detect = detect
        self._retry_detect = asyncio.Event()
        self._daemon_status = StatusStore(config.state_dir)
        self.sys_root = sys_root
        self.once = once
        self._notify = notify
        self.reconcilers: dict[str, Reconciler] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: NICs attached here that are not ours (excluded, or udev gives them to another
        #: manager): never polled; their status says why.
        self.ignored: dict[str, NicStatus] = {}
        #: Status the daemon saves itself (its phase under "", NICs not ours by MAC) that
        #: could not be saved: saved again after every pass until it is (reconcilers retry
        #: their own), its failure logged once per reason and shown in STATUS=.
        self._unsaved: dict[str, NicStatus | DaemonStatus] = {}
        self._status_errors: dict[str, str] = {}
        self.ownership = Ownership(config, run_root)
        self._names: dict[str, str] = {}  # ifname -> mac, for remove events (no sysfs then)
        self._stop = asyncio.Event()
        self._env = env  # WATCHDOG_USEC/WATCHDOG_PID; None: os.environ
        if ctx is not None:
            self._take(ctx)
        #: STATUS= lines go out only between READY=1 and STOPPING=1, and only when changed.
        self._announcing = False
        self._status_sent: str | None = None
        #: MACs kicked by the running SIGHUP resync that have not finished a pass since.
        self._reload_pending: set[str] = set()
        self._reloaded = asyncio.Event()
        self._reload_task: asyncio.Task[None] | None = None
        self.reload_bound = RELOAD_BOUND
        self.kernel = KernelSide(self.reconcilers, self._stop.is_set)
        #: [metrics] textfile: started by run() (None: off).
        self.metrics: Metrics | None = None
        self.kernel_watch: KernelWatch | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            raise RuntimeError("no context before the cloud is detected")
        return self._ctx

    def _take(self, ctx: Context) -> None:
        """What the reconcilers need from the daemon and its configuration."""
        ctx.on_pass = self._pass_done
        ctx.exclude_device_numbers = self.config.interfaces.exclude_device_numbers
        if not self.once:
            # ``once`` loads and leaves: keeping the kernel true is the daemon's job.
            ctx.recheck = self.recheck

    # -- one reconciler per MAC -----------------------------------------------------------
    def _ensure(self, mac: str, ifname: str | None, ifindex: int | None = None) -> Reconciler:
        rec = self.reconcilers.get(mac)
        if rec is None:
            rec = Reconciler(self.ctx, mac, ifname, once=self.once)
            rec.set_link(ifname, ifindex)
            self.reconcilers[mac] = rec
            self.tasks[mac] = asyncio.create_task(self._supervise(rec), name=f"nic-{mac}")
            log.info("nic_tracked", mac=mac, ifname=ifname)
            self._update_status()
        else:
            rec.set_link(ifname, ifindex)
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
                self._reload_progress(rec.mac)
                self._update_status()

    # -- SIGHUP: a resync, RELOADING=1 until it is done -------------------------------------
    def resync_all(self) -> None:
        """SIGHUP: re-poll every NIC now; RELOADING=1 until each has finished that poll."""
        log.info("resync_requested", nics=len(self.reconcilers))
        if self._ctx is None:
            self._retry_detect.set()  # still detecting: try again now
        if not self._announcing:
            # Before READY=1 or after STOPPING=1 there is no reload to report to systemd.
            for rec in self.reconcilers.values():
                rec.kick(verify=True)
            return
        self._notify(systemd.reloading())
        self._reload_pending = set(self.reconcilers)
        self._reloaded.clear()
        for rec in self.reconcilers.values():
            rec.kick(verify=True)
        if self._reload_task is not None:
            # A second SIGHUP during a resync restarts it: READY=1 answers the latest one.
            self._reload_task.cancel()
        self._reload_task = asyncio.create_task(self._finish_reload(), name="reload")

    async def _finish_reload(self) -> None:
        if self._reload_pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reloaded.wait(), self.reload_bound)
        late = sorted(self._reload_pending)
        self._reload_pending.clear()
        line = self._status_line()
        self._notify(systemd.ready(line))
        self._status_sent = line
        log.info("resync_done", nics=len(self.reconcilers), late=late)

    def _reload_progress(self, mac: str) -> None:
        if mac in self._reload_pending:
            self._reload_pending.discard(mac)
            if not self._reload_pending:
                self._reloaded.set()

    def _pass_done(self, mac: str) -> None:
        """A reconciler finished a pass (its status was just saved)."""
        rec = self.reconcilers.get(mac)
        # A pass that was already running when SIGHUP came ends with the kick still
        # pending: only the pass after it counts.
        if rec is None or not rec.kick_pending:
            self._reload_progress(mac)
        if self._unsaved:
            self._retry_unsaved()
        self._update_status()

    # -- the kernel (kernelside.py) ---------------------------------------------------------
    def recheck(self, mac: str, delay: float) -> None:
        self.kernel.recheck(mac, delay)

    def recheck_all(self) -> None:
        self.kernel.recheck_all()

    def on_kernel_events(self, events: list[rtnl.Event]) -> None:
        self.kernel.on_events(events)

    def on_manager(self, name: str, owned: bool) -> None:
        self.kernel.on_manager(name, owned, self.ctx)

    def stop(self) -> None:
        self._stop.set()

    # -- main --------------------------------------------------------------------------------
    async def _watchdog(self, interval: float) -> None:
        """Pet systemd's watchdog from the event loop itself: a stalled loop stops petting."""
        while True:
            self._notify(systemd.WATCHDOG)
            await asyncio.sleep(interval)

    async def run(self) -> int:
        """Signals, watchdog and READY=1 first; then the cloud (which may take long), then NICs."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.resync_all)
        interval = systemd.watchdog_interval(self._env)
        # Started first: it pets from the first await on, while the scan's NICs get going.
        watchdog = (
            asyncio.create_task(self._watchdog(interval), name="watchdog") if interval else None
        )
        writer = self._start_metrics()
        watcher = UdevWatcher(self.config.udev.source)
        # Before the scan: no attach falls between the two. Lost events: rescan at once.
        watcher.start(self.on_event, on_lost=self._events_lost)
        bus = None
        long_poll: asyncio.Task[None] | None = None
        if self.config.apply:
            self.kernel_watch = KernelWatch(self.on_kernel_events, self.recheck_all)
            self.kernel_watch.start()
            bus = await self._watch_manager()
        try:
            if self._ctx is None:
                line = "detecting the cloud"
                self._notify(systemd.ready(line))
                self._status_sent, self._announcing = line, True
                self._save_daemon_status(DaemonPhase.DETECTING, line)
                if not await self._detect_cloud():
                    return 0  # stopped while detecting
            self._take(self.ctx)
            if self.metrics is not None:
                self.metrics.info(__version__, self.ctx.source.name, self.config.renderer)
            if self.config.apply and self._backend() == "networkd":
                coexist.warn_if_at_risk()
            self.scan()
            self.adopt_orphans()
            line = self._status_line()
            if self._announcing:
                self._notify(systemd.status(line))
            else:
                self._notify(systemd.ready(line))
            self._status_sent, self._announcing = line, True
            cloud = self.ctx.source.name
            detail = f"cloud {cloud}, renderer {self.config.renderer}"
            self._save_daemon_status(DaemonPhase.RUNNING, detail, cloud)
            log.info(
                "ready", nics=len(self.reconcilers), source=cloud, cloud=cloud, watchdog=interval
            )
            long_poll = self._start_long_poll()
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.config.resync_interval)
                if not self._stop.is_set():
                    self.scan()
                    if self._unsaved:
                        self._retry_unsaved()
                    self._update_status()
                    # Never trust the notification stream alone.
                    self.recheck_all()
        finally:
            self._announcing = False
            self._notify(systemd.STOPPING)
            if long_poll is not None:
                long_poll.cancel()
                await asyncio.gather(long_poll, return_exceptions=True)
            if self._reload_task is not None:
                self._reload_task.cancel()  # no READY=1 after STOPPING=1
            watcher.stop()
            if self.kernel_watch is not None:
                self.kernel_watch.stop()
            if bus is not None:
                await bus.close()
            if writer is not None:
                # Before the reconcilers go: the file keeps the NICs' last phases.
                await self._stop_metrics(writer)
            await self.shutdown()
            if watchdog is not None:
                # Last: systemd still expects pets until we are gone.
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
        log.info("stopped")
        return 0

    def _start_long_poll(self) -> asyncio.Task[None] | None:
        """A source that long-polls (GCE) tells of changes itself: every NIC looks at once,
        and the periodic re-checks stretch while it answers (upstream.py)."""
        source = self.ctx.source
        if not upstream.long_polls(source):
            return None
        watch = upstream.ChangeWatch(
            cast("upstream.LongPolling", source),
            self._upstream_changed,
            resync_interval=self.config.resync_interval,
        )
        self.ctx.long_poll_healthy = lambda: watch.healthy
        return asyncio.create_task(watch.run(), name="long-poll")

    def _upstream_changed(self) -> None:
        for rec in self.reconcilers.values():
            rec.kick()

    def _start_metrics(self) -> asyncio.Task[None] | None:
        """[metrics] textfile: the sink on the log, the file written now and at changes."""
        if not self.config.metrics.textfile or self.once:
            return None
        from nicreconciled.metrics import Metrics  # prometheus_client: only when asked for

        self.metrics = Metrics(Path(self.config.metrics.textfile))
        logsetup.add_sink(self.metrics.sink)
        self._update_status()
        self.metrics.write()
        return asyncio.create_task(self.metrics.run(), name="metrics")

    async def _stop_metrics(self, writer: asyncio.Task[None]) -> None:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        assert self.metrics is not None
        logsetup.remove_sink(self.metrics.sink)
        self._update_status()
        self.metrics.write()

    async def _detect_cloud(self) -> bool:
        """Run detection until it finds the cloud (True) or the daemon is stopped (False)."""
        assert self._detect is not None

        def progress(line: str) -> None:
            self._notify(systemd.status(line))
            self._status_sent = line
            self._save_daemon_status(DaemonPhase.DETECTING, line)

        detect = asyncio.ensure_future(self._detect(progress, self._retry_detect))
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((detect, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not detect.done():
            detect.cancel()
            await asyncio.gather(detect, return_exceptions=True)
            return False
        self._ctx = detect.result()
        return True

    def _backend(self) -> str:
        """The manager our files are loaded by: networkd or NetworkManager."""
        return {"networkd": "networkd", "networkmanager": "NetworkManager"}.get(
            self.config.renderer, self.config.netplan.backend
        )

    async def _watch_manager(self) -> NameWatch | None:
        """Follow the bus name of the manager our files are loaded by (a restart re-checks
        every NIC); None when the bus cannot be reached (logged by NameWatch)."""
        watch = NameWatch([MANAGER_BUS_NAMES[self._backend()]], self.on_manager)
        return watch if await watch.start() else None

    async def shutdown(self) -> None:
        await self.kernel.shutdown()
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
