"""Issue 12's table: each figure before (as the issue measured it), now, and its goal.

Built from the JSON results of the benchmarks that measure them (convergence, burst, load,
fleet, footprint): ``python -m bench`` prints it after a run and writes
``bench/results/issue12.md``; the README's table is that file. A row whose benchmark has no
result yet says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench.report import RESULTS

#: (figure, before, goal, benchmark, how "now" and "met" are read from its targets)
Row = tuple[str, str, str, str, Callable[[dict[str, dict[str, Any]]], tuple[str, bool] | None]]


def _targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in result.get("targets", []) if "key" in t}


def _per_delay(q: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool] | None]:
    def read(targets: dict[str, dict[str, Any]]) -> tuple[str, bool] | None:
        found = [t for k, t in targets.items() if k.startswith(f"excess_{q}_")]
        if not found:
            return None
        found.sort(key=lambda t: float(t["key"].rsplit("_", 1)[1]))
        text = " / ".join(f"{t['value']:.2f}" for t in found) + " s"
        return text, all(t["met"] for t in found)

    return read


def _one(key: str, fmt: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool] | None]:
    def read(targets: dict[str, dict[str, Any]]) -> tuple[str, bool] | None:
        t = targets.get(key)
        return None if t is None else (fmt.format(**t, **t.get("detail", {})), bool(t["met"]))

    return read


def _requests(targets: dict[str, dict[str, Any]]) -> tuple[str, bool] | None:
    """Requests naming the NIC's MAC (p50), as issue 12's 34 was counted; its share of
    those naming none (macs/ listings, the token) beside it."""
    result = _load("convergence")
    figure = (result or {}).get("per_delay", {}).get("4")
    if not figure or "requests_d4" not in targets:
        return None
    mac = figure["requests_per_nic_mac_paths"]
    shared = figure["requests_per_nic_with_shared_share"]["p50"] - mac["p50"]
    text = f"{mac['p50']:.0f} naming the NIC (p50; max {mac['max']:.0f}) + {shared:.1f} shared"
    return text, mac["p50"] <= 24


ROWS: list[Row] = [
    ("excess after a late IPv6 appears (D = 1/4/10 s), p50", "0.53 / 0.57 / 0.60 s",
     "≤ 0.3 s", "convergence", _per_delay("p50")),
    ("same, p99", "0.65 / 0.69 / 0.70 s", "≤ 0.6 s", "convergence", _per_delay("p99")),
    ("IMDS requests per NIC until converged, D = 4 s", "34", "≤ 24", "convergence",
     _requests),
    ("20 ENIs hot-plugged within 1 s, IPv6 2 s late, 20 non-ENI NICs also present: last ENI "
     "converged", "7.1 s after its attach", "≤ D + 1.5 s (3.5 s)", "burst",
     _one("burst_late", "{value:.2f} s after its attach")),
    ("20 complete ENIs at once: all files written", "2.9 s", "≤ 1.5 s", "burst",
     _one("burst_complete", "{value:.2f} s")),
    ("steady state, every NIC converged, per NIC",
     "a probe every 5 s forever for NICs with a standing flag; ~8 new TCP connections per "
     "resync", "one full poll per resync_interval; connections reused", "load",
     _one("steady", "{polls_per_resync[0]:.2f}-{polls_per_resync[1]:.2f} full polls per "
          "resync, {probes} probes (a standing flag and a non-ENI NIC among them); "
          "{new_connections_per_resync:.2f} new TCP connections per resync")),
    ("fleet model: 1,000 reconcilers, 60 s VR outage: highest 1 s after recovery / steady "
     "mean", "3.2x", "≤ 2x", "fleet",
     _one("fleet", "{value:.2f}x ({peak_after} req/s; steady {steady_req_per_s:.0f} req/s, "
          "{steady_new_connections_per_s:.1f} new connections/s)")),
    ("idle RSS", "48.5 MiB; import floor ~47 MiB", "≤ floor + 2 MB, flat over a 10-minute soak",
     "footprint",
     _one("rss", "{rss_mib:.1f} MiB = floor {floor_mib:.1f} MiB + {value:.2f} MB; "
          "{growth_kib} KiB growth over {soak_s:.0f} s; {new_connections} new connections")),
]  # fmt: skip


def _load(name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def markdown() -> str:
    """The table from the results on disk, with when each benchmark ran."""
    results = {row[3]: _load(row[3]) for row in ROWS}
    lines = [
        "| figure | before | now | goal | |",
        "|---|---|---|---|---|",
    ]
    for figure, before, goal, bench, read in ROWS:
        result = results[bench]
        got = read(_targets(result)) if result is not None else None
        if got is None:
            lines.append(f"| {figure} | {before} | (no `{bench}` result) | {goal} | |")
            continue
        now, met = got
        lines.append(f"| {figure} | {before} | {now} | {goal} | {'met' if met else 'not met'} |")
    runs = ", ".join(
        f"{name} {data.get('finished_at', '?')}" for name, data in results.items() if data
    )
    lines.append("")
    lines.append(f"(`python -m bench`; results of: {runs}.)")
    return "\n".join(lines) + "\n"


def write() -> str:
    text = markdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "issue12.md").write_text(text)
    return text
