"""Prometheus metrics in a file for node_exporter's textfile collector (``[metrics] textfile``).

A sink of the log (log.add_sink): every metric but the phase gauge counts events the code
logs anyway, so the log and the metrics cannot disagree:

========================================================  ====================================
metric                                                    fed by
========================================================  ====================================
``nicreconciled_metadata_requests_total{outcome}``        ``metadata_request`` (sources/http.py)
                                                          and ``metadata_invalid``: ``garbage``
``nicreconciled_applies_total{result}``                   ``applied`` / ``apply_failed``
``nicreconciled_kernel_heals_total``                      ``heal``
``nicreconciled_drift_detected_total``                    ``kernel_drift``
``nicreconciled_convergence_seconds`` (histogram)         ``converged`` (its ``took``)
``nicreconciled_last_converged_timestamp_seconds``        ``converged``
``nicreconciled_nics{phase}``                             the daemon's STATUS= rows (``phases``)
``nicreconciled_info{version,cloud,renderer}``            the cloud, once known (``info``)
========================================================  ====================================

The file is written with the project's own atomic write (fs.write_if_changed: a temp file
that does not end in ``.prom``, fsync, rename) with mode 0644, not prometheus_client's
``write_to_textfile``: under the unit's ``UMask=0077`` that one would leave a file that
node_exporter (user ``prometheus``) cannot read. It is written at start, when a value
changed (at most once per MIN_INTERVAL) and at stop. The directory is the collector's: it
is never created; while it is missing (node_exporter not installed yet) that is said once,
and every change tries again. With nothing to write, the file's mtime is renewed every
HEARTBEAT, so that its age (``node_textfile_mtime_seconds``) tells a running daemon from a
stopped one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as _metrics

from nicreconciled.errors import UnsafePathError
from nicreconciled.status import NicPhase
from nicreconciled.system import fs

log = structlog.get_logger(__name__)

#: Seconds between two writes at least (values change in bursts: a hot-plug is ten events).
MIN_INTERVAL = 1.0
#: With nothing to write, the file's mtime is renewed this often: a file older than a few
#: of these (node_textfile_mtime_seconds) means the daemon is gone (the stale alert).
HEARTBEAT = 60.0
OUTCOMES = ("ok", "http_error", "timeout", "garbage")
RESULTS = ("ok", "failed")
#: From a NIC's new episode (hot-plug, upstream change) to complete in the network stack:
#: tenths of a second with complete metadata, seconds when IPv6 is late, a minute at the
#: deadline.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """The registry, the sink that feeds it, and the file it is written to (None: no file,
    tests read ``text()``)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        # Counters' *_created series say when the process started counting: the file's own
        # mtime (node_textfile_mtime_seconds) and a restart's reset to 0 say it already.
        _metrics.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.path = path
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.nics = Gauge("nicreconciled_nics", "Managed NICs per phase", ["phase"], registry=r)
        self.convergence = Histogram(
            "nicreconciled_convergence_seconds",
            "From a NIC's new episode (hot-plug, upstream change) to complete in the stack",
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "nicreconciled_metadata_requests",
            "Metadata requests by outcome (garbage: answers rejected as metadata)",
            ["outcome"],
            registry=r,
        )
        self.applies = Counter(
            "nicreconciled_applies", "Loads of a NIC's file by result", ["result"], registry=r
        )
        self.heals = Counter(
            "nicreconciled_kernel_heals",
            "Re-applies of a NIC whose kernel state drifted",
            registry=r,
        )
        self.drift = Counter(
            "nicreconciled_drift_detected",
            "Times a NIC's applied state was found missing from the kernel",
            registry=r,
        )
        self.last_converged = Gauge(
            "nicreconciled_last_converged_timestamp_seconds",
            "When a NIC last became complete in the network stack (Unix time)",
            registry=r,
        )
        self.info_gauge = Gauge(
            "nicreconciled_info",
            "The daemon's version, cloud and renderer",
            ["version", "cloud", "renderer"],
            registry=r,
        )
        for phase in NicPhase:
            self.nics.labels(phase.value)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        for result in RESULTS:
            self.applies.labels(result)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "metadata_request": self._request,
            "metadata_invalid": lambda e: self.requests.labels("garbage").inc(),
            "applied": lambda e: self.applies.labels("ok").inc(),
            "apply_failed": lambda e: self.applies.labels("failed").inc(),
            "heal": lambda e: self.heals.inc(),
            "kernel_drift": lambda e: self.drift.inc(),
            "converged": self._converged,
        }
        self._phases: dict[NicPhase, int] = dict.fromkeys(NicPhase, 0)
        self._changed = asyncio.Event()
        self._error: str | None = None

    # -- feeding -----------------------------------------------------------------------------
    def sink(self, event: Mapping[str, Any]) -> None:
        """log.add_sink's end: count EVENT if it is one the metrics follow."""
        handler = self._handlers.get(str(event.get("event")))
        if handler is not None:
            handler(event)
            self._changed.set()

    def _request(self, event: Mapping[str, Any]) -> None:
        outcome = str(event.get("outcome"))
        self.requests.labels(outcome if outcome in OUTCOMES else "http_error").inc()

    def _converged(self, event: Mapping[str, Any]) -> None:
        took = event.get("took")
        if isinstance(took, int | float) and took >= 0:
            self.convergence.observe(took)
        self.last_converged.set(self._clock())

    def phases(self, phases: Iterable[NicPhase]) -> None:
        """The managed NICs' phases now (every phase is written, zeros included)."""
        counts = dict.fromkeys(NicPhase, 0)
        for phase in phases:
            counts[phase] += 1
        if counts != self._phases:
            for phase, count in counts.items():
                self.nics.labels(phase.value).set(count)
            self._phases = counts
            self._changed.set()

    def info(self, version: str, cloud: str, renderer: str) -> None:
        self.info_gauge.clear()
        self.info_gauge.labels(version, cloud, renderer).set(1)
        self._changed.set()

    # -- the file ----------------------------------------------------------------------------
    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def write(self, *, touch: bool = False) -> bool:
        """Write the file now (TOUCH: renew its mtime even if nothing changed); False (said
        once per reason) if it could not be written."""
        if self.path is None:
            return True
        self._changed.clear()
        directory, name = self.path.parent, self.path.name
        try:
            if not fs.write_if_changed(directory, name, self.text(), 0o644, create=False) and touch:
                os.utime(self.path, follow_symlinks=False)
        except (OSError, UnsafePathError) as exc:
            reason = (
                fs.describe(exc, self.path.parent, self.path.name)
                if isinstance(exc, OSError)
                else str(exc)
            )
            if reason != self._error:
                log.warning("metrics_write_failed", path=str(self.path), error=reason)
            self._error = reason
            return False
        if self._error is not None:
            log.info("metrics_write_recovered", path=str(self.path), previous_error=self._error)
            self._error = None
        return True

    async def run(self) -> None:
        """Write at every change, at most once per MIN_INTERVAL, and renew the file's mtime
        every HEARTBEAT (cancel to stop)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), HEARTBEAT)
            self.write(touch=not self._changed.is_set())
            await asyncio.sleep(MIN_INTERVAL)
