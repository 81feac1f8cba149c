"""The daemon's status board: the status it saves itself, and the STATUS= line.

Each reconciler saves its own NIC's status; the daemon saves its own phase (detecting,
running: key "") and that of the NICs attached here that are not ours (by MAC). A save that
fails (state_dir read-only, full, a file in its way) is kept and tried again after every
pass until it succeeds, its failure logged once per reason; while any status cannot be
saved, STATUS= says so. STATUS= is the summary ``nicreconciled status`` prints, sent when it
changes, only between READY=1 and STOPPING=1; the metrics' phases follow it.

A mixin of ``Daemon`` (daemon.py), which owns and sets up the state declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from nicreconciled import systemd
from nicreconciled.errors import UnsafePathError
from nicreconciled.status import DaemonPhase, DaemonStatus, Managed, NicStatus, StatusStore, summary

if TYPE_CHECKING:
    from nicreconciled.metrics import Metrics
    from nicreconciled.reconciler import Context, Reconciler

log = structlog.get_logger(__name__)


class StatusBoard:
    """What the daemon saves and says of itself and of the NICs it does not reconcile."""

    reconcilers: dict[str, Reconciler]
    ignored: dict[str, NicStatus]
    metrics: Metrics | None
    _daemon_status: StatusStore
    _unsaved: dict[str, NicStatus | DaemonStatus]
    _status_errors: dict[str, str]
    _announcing: bool
    _status_sent: str | None
    _notify: Callable[[str], bool]

    if TYPE_CHECKING:

        @property
        def ctx(self) -> Context:
            raise NotImplementedError

    def _save_status(self, status: NicStatus) -> None:
        self._unsaved[status.mac] = status
        self._save_unsaved(status.mac)

    def _save_unsaved(self, key: str) -> None:
        status = self._unsaved[key]
        where = {"mac": key} if key else {}
        try:
            if isinstance(status, DaemonStatus):
                self._daemon_status.save_daemon(status)
            else:
                self.ctx.status.save(status)
        except (OSError, UnsafePathError) as exc:
            if str(exc) != self._status_errors.get(key):
                log.warning("status_write_failed", **where, error=str(exc))
            self._status_errors[key] = str(exc)
            return
        del self._unsaved[key]
        previous = self._status_errors.pop(key, None)
        if previous is not None:
            log.info("status_write_recovered", **where, previous_error=previous)

    def _retry_unsaved(self) -> None:
        """Save again what the daemon could not save (a broken state_dir fixed since)."""
        for key in list(self._unsaved):
            if key and key not in self.ignored:
                # Forgotten, or ours again (its reconciler saves it now).
                del self._unsaved[key]
                self._status_errors.pop(key, None)
            else:
                self._save_unsaved(key)

    def _status_trouble(self) -> str | None:
        """Why some status could not be saved (None: all of it was)."""
        for rec in self.reconcilers.values():
            if rec.status_error is not None:
                return rec.status_error
        # The daemon's own phase (""), and NICs still not ours (a forgotten one is dropped).
        return next((e for k, e in self._status_errors.items() if not k or k in self.ignored), None)

    def _delete_status(self, mac: str) -> None:
        try:
            self.ctx.status.delete(mac)
        except OSError as exc:
            log.warning("status_write_failed", mac=mac, error=str(exc))

    def _status_line(self) -> str:
        """The STATUS= summary (``systemctl status`` shows it): status.summary() of the
        statuses saved, the same line ``nicreconciled status`` prints from the files.

        managed: NICs whose file we own; converged: nothing left to do (written with every
        red flag cleared, or found not to be ours); failing: not converged and an error
        recorded; waiting: the rest (converging, or accepted while a red flag such as late
        IPv6 still stands). converged + waiting + failing = NICs. While a status cannot be
        saved (state_dir read-only, full, a file in its way), ``; status not saved: <path>:
        <reason>`` follows: ``nicreconciled status`` then shows what was last saved.
        """
        rows = [r.status for r in self.reconcilers.values()]
        line = summary(rows + list(self.ignored.values()))
        # The status files cannot say that they are stale: this line does (and the log).
        trouble = self._status_trouble()
        return f"{line}; status not saved: {trouble}" if trouble else line

    def _update_status(self) -> None:
        """Send STATUS= if the summary changed (cheap: one pass over the reconcilers); the
        metrics' phases follow."""
        if self.metrics is not None:
            self.metrics.phases(
                r.status.phase
                for r in self.reconcilers.values()
                if r.status.managed is Managed.MANAGED
            )
        if not self._announcing:
            return
        line = self._status_line()
        if line != self._status_sent:
            self._notify(systemd.status(line))
            self._status_sent = line

    def _save_daemon_status(
        self, phase: DaemonPhase, detail: str, cloud: str | None = None
    ) -> None:
        self._unsaved[""] = DaemonStatus(phase=phase, detail=detail, cloud=cloud)
        self._save_unsaved("")
