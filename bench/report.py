"""Figures and their presentation: percentiles, request-rate peaks, tables, JSON results."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def sliding_peak(times: Iterable[float], window: float = 1.0) -> tuple[int, float]:
    """Most events in any window of WINDOW seconds (starting at an event), and its start."""
    ts = sorted(times)
    best, start, j = 0, math.nan, 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window:
            j += 1
        if i - j + 1 > best:
            best, start = i - j + 1, ts[j]
    return best, start


def bucket_peak(times: Iterable[float], width: float = 1.0) -> int:
    """Most events in one fixed bucket [k*width, (k+1)*width) of the timeline."""
    counts: dict[int, int] = {}
    for t in times:
        k = math.floor(t / width)
        counts[k] = counts.get(k, 0) + 1
    return max(counts.values(), default=0)


def per_second(times: Iterable[float]) -> list[int]:
    """Events in each whole second from the first event on (a request-rate timeline)."""
    ts = sorted(times)
    if not ts:
        return []
    counts = [0] * (math.floor(ts[-1] - ts[0]) + 1)
    for t in ts:
        counts[math.floor(t - ts[0])] += 1
    return counts


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Text cells left-aligned, numbers right-aligned, a rule under the header."""
    body = [list(row) for row in rows]
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for raw, row in zip(body, cells[1:], strict=True):
        padded = (
            c.ljust(w) if isinstance(v, str) else c.rjust(w)
            for v, c, w in zip(raw, row, widths, strict=True)
        )
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    envelope = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "kernel": platform.release()},
        **data,
    }
    path.write_text(json.dumps(_clean(envelope), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    """JSON-ready copy: NaN becomes null, paths and tuples become strings and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
