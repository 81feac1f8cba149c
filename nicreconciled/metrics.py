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

The text is the exposition format 0.0.4 (what node_exporter's textfile collector reads), made
here: prometheus_client's package imports its HTTP servers, gzip and collectors with it, 1.4
MiB of the daemon's resident memory (issue 22) for eight series.

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
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

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


def _number(value: float) -> str:
    """A sample value as Prometheus' Go clients print it (their exponent comes sooner than
    Python's repr: 1.8e+09, not 1800000000.0)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Family:
    """One metric family: a counter, gauge or histogram and its series by label values.
    Counters are exposed as NAME_total, without *_created series (the file's own mtime,
    node_textfile_mtime_seconds, and a restart's reset to 0 say when counting began)."""

    def __init__(
        self,
        name: str,
        help_text: str,
        kind: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.name = f"{name}_total" if kind == "counter" else name
        self.help, self.kind, self.labels, self.buckets = help_text, kind, labels, buckets
        #: Label values -> value (histogram: counts per bucket, then +Inf, then the sum).
        self.series: dict[tuple[str, ...], list[float]] = {}
        if not labels:
            self._get(())

    def _get(self, values: tuple[str, ...]) -> list[float]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values, not {len(values)}")
        width = len(self.buckets) + 2 if self.kind == "histogram" else 1
        return self.series.setdefault(values, [0.0] * width)

    def touch(self, *values: str) -> None:
        """Expose the series of VALUES from now on, at 0 until it counts."""
        self._get(values)

    def inc(self, *values: str) -> None:
        self._get(values)[0] += 1

    def set(self, value: float, *values: str) -> None:
        self._get(values)[0] = float(value)

    def observe(self, value: float, *values: str) -> None:
        series = self._get(values)
        for i, bound in enumerate((*self.buckets, math.inf)):
            if value <= bound:
                series[i] += 1
        series[-1] += value

    def clear(self) -> None:
        self.series.clear()

    def value(self, *values: str) -> float | None:
        """A counter's or gauge's value (None: no such series)."""
        series = self.series.get(values)
        return None if series is None else series[0]

    def lines(self) -> list[str]:
        helptext = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        out = [f"# HELP {self.name} {helptext}", f"# TYPE {self.name} {self.kind}"]
        for values, series in self.series.items():
            pairs = sorted(zip(self.labels, values, strict=True))
            if self.kind != "histogram":
                out.append(f"{self.name}{_labels(pairs)} {_number(series[0])}")
                continue
            bounds = (*self.buckets, math.inf)
            for bound, count in zip(bounds, series, strict=False):
                le = sorted([*pairs, ("le", _number(bound))])
                out.append(f"{self.name}_bucket{_labels(le)} {_number(count)}")
            out.append(f"{self.name}_count{_labels(pairs)} {_number(series[-2])}")
            out.append(f"{self.name}_sum{_labels(pairs)} {_number(series[-1])}")
        return out


def _labels(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs) + "}"


class Metrics:
    """The families, the sink that feeds them, and the file they are written to (None: no
    file, tests read ``text()``)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self.nics = Family("nicreconciled_nics", "Managed NICs per phase", "gauge", ("phase",))
        self.convergence = Family(
            "nicreconciled_convergence_seconds",
            "From a NIC's new episode (hot-plug, upstream change) to complete in the stack",
            "histogram",
            buckets=BUCKETS,
        )
        self.requests = Family(
            "nicreconciled_metadata_requests",
            "Metadata requests by outcome (garbage: answers rejected as metadata)",
            "counter",
            ("outcome",),
        )
        self.applies = Family(
            "nicreconciled_applies", "Loads of a NIC's file by result", "counter", ("result",)
        )
        self.heals = Family(
            "nicreconciled_kernel_heals",
            "Re-applies of a NIC whose kernel state drifted",
            "counter",
        )
        self.drift = Family(
            "nicreconciled_drift_detected",
            "Times a NIC's applied state was found missing from the kernel",
            "counter",
        )
        self.last_converged = Family(
            "nicreconciled_last_converged_timestamp_seconds",
            "When a NIC last became complete in the network stack (Unix time)",
            "gauge",
        )
        self.info_gauge = Family(
            "nicreconciled_info",
            "The daemon's version, cloud and renderer",
            "gauge",
            ("version", "cloud", "renderer"),
        )
        self.families = (self.nics, self.convergence, self.requests, self.applies, self.heals,
                         self.drift, self.last_converged, self.info_gauge)  # fmt: skip
        for phase in NicPhase:
            self.nics.touch(phase.value)
        for outcome in OUTCOMES:
            self.requests.touch(outcome)
        for result in RESULTS:
            self.applies.touch(result)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "metadata_request": self._request,
            "metadata_invalid": lambda e: self.requests.inc("garbage"),
            "applied": lambda e: self.applies.inc("ok"),
            "apply_failed": lambda e: self.applies.inc("failed"),
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
        self.requests.inc(outcome if outcome in OUTCOMES else "http_error")

    def _converged(self, event: Mapping[str, Any]) -> None:
        took = event.get("took")
        if isinstance(took, int | float) and took >= 0:
            self.convergence.observe(float(took))
        self.last_converged.set(self._clock())

    def phases(self, phases: Iterable[NicPhase]) -> None:
        """The managed NICs' phases now (every phase is written, zeros included)."""
        counts = dict.fromkeys(NicPhase, 0)
        for phase in phases:
            counts[phase] += 1
        if counts != self._phases:
            for phase, count in counts.items():
                self.nics.set(count, phase.value)
            self._phases = counts
            self._changed.set()

    def info(self, version: str, cloud: str, renderer: str) -> None:
        self.info_gauge.clear()
        self.info_gauge.set(1, version, cloud, renderer)
        self._changed.set()

    # -- the file ----------------------------------------------------------------------------
    def text(self) -> str:
        return "".join(line + "\n" for family in self.families for line in family.lines())

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
