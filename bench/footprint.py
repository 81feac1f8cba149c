"""footprint: start -> ready time, idle RSS, and CPU time per idle hour; then a soak.

The soak restarts the daemon with the default ``resync_interval`` (60 s) on the same 8 NICs
(found by its start-up scan), waits until each is accepted, and leaves it alone for SOAK
seconds (``--soak``; the issue asks for 10 minutes, the default run uses 120 s): idle RSS and
CPU per idle hour at the end, and RSS growth over the soak (last - first sample, and a
least-squares slope over every sample).

``ip netns exec`` execs the command, so the pid of the process started here is the daemon's
Python process; this is checked against /proc/PID/cmdline before anything is measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.harness import (
    PYTHON,
    BenchError,
    Stack,
    mono_to_wall_offset,
    proc_cmdline,
    proc_cpu_seconds,
    proc_rss_kib,
    run_with_stack,
)
from bench.report import summary, table, verdict

NAME = "footprint"
START_RUNS = 5
NICS = 8
RESYNC = 5.0
IDLE = 20.0
RSS_TARGET_MB = 45.0
#: Issue 12: idle RSS at most the import floor plus this, and flat over a 10-minute soak.
FLOOR_SLACK_MB = 2.0
#: "Flat": RSS growth over the soak at most this (sampling noise is a few pages).
FLAT_KIB = 256
SOAK = 600.0
SOAK_SAMPLE = 5.0
#: Then the same soak this long with ``[metrics] textfile`` set (issue 22: idle RSS with the
#: metrics on <= RSS_METRICS_MIB).
METRICS_SOAK = 120.0
RSS_METRICS_MIB = 52.0
FLOOR_RUNS = 3
#: What the daemon imports by the time it is ready (and the config models it builds): the
#: floor no daemon built on these dependencies can go under.
FLOOR_CODE = """
import asyncio, ssl
import aiohttp, pydantic, structlog, yaml, pyudev
import nicreconciled.cli, nicreconciled.daemon, nicreconciled.wiring
import nicreconciled.sources.ec2, nicreconciled.sources.cloudstack
import nicreconciled.render.netplan, nicreconciled.render.networkmanager
from nicreconciled.config import Config
Config()
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(line.split()[1])
"""


def _mac(n: int) -> str:
    return f"0a:b3:00:00:00:{n:02x}"


def _spec(n: int) -> dict[str, Any]:
    return {
        "mac": _mac(n),
        "device_number": n,
        "local_ipv4s": [f"10.3.{n}.25"],
        "subnet_ipv4_cidr": f"10.3.{n}.0/24",
        "ipv6s": [f"2001:db8:3:{n:x}::25"],
        "subnet_ipv6_cidrs": [f"2001:db8:3:{n:x}::/64"],
    }


def _check_pid(pid: int) -> None:
    argv = proc_cmdline(pid)
    if "nicreconciled" not in argv or "run" not in argv:
        raise BenchError(f"pid {pid} is not the daemon: {' '.join(argv)}")


async def _startups(stack: Stack, runs: int) -> list[dict[str, float]]:
    out = []
    for _ in range(runs):
        proc, started = await stack.start_daemon()
        ready = await stack.wait_ready(step=0.01)
        _check_pid(proc.pid)
        rss, _hwm = proc_rss_kib(proc.pid)
        out.append({"start_to_ready_s": float(ready["timestamp"]) - started, "rss_kib": rss})
        code = await stack.stop_daemon()
        if code != 0:
            raise BenchError(f"daemon exited with status {code} on SIGTERM")
    return out


async def _idle(stack: Stack, nics: int, idle: float) -> dict[str, Any]:
    proc, started = await stack.start_daemon(resync_interval=RESYNC)
    await stack.wait_ready()
    pid = proc.pid
    _check_pid(pid)
    ready_rss, _ = proc_rss_kib(pid)
    macs = [_mac(n) for n in range(1, nics + 1)]
    attach = time.time()
    for n in range(1, nics + 1):
        await stack.sim.add_nic(_spec(n))
        await stack.plug(f"fp{n}", _mac(n), f"fpp{n}")

    def all_written() -> bool:
        return all(stack.log.named("rendered", mac=mac) for mac in macs)

    await stack.wait_for(all_written, 60, f"files for all {nics} NICs")
    converged = max(float(stack.log.named("rendered", mac=m)[0]["timestamp"]) for m in macs)
    converged_rss, _ = proc_rss_kib(pid)
    await asyncio.sleep(0.5)
    stack.check_alive()
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    await stack.sim.reset_stats()
    samples: list[int] = []
    while time.monotonic() - t0 < idle:
        await asyncio.sleep(1.0)
        stack.check_alive()
        samples.append(proc_rss_kib(pid)[0])
    cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
    rss, hwm = proc_rss_kib(pid)
    stats = await stack.sim.stats(log=False)
    stack.log.refresh()
    files_rewritten = len(stack.log.named("rendered")) - nics
    return {
        "attach_to_all_files_s": converged - attach,
        "rss_at_ready_kib": ready_rss,
        "rss_after_converged_kib": converged_rss,
        "idle_window_s": t1 - t0,
        "idle_cpu_s": cpu1 - cpu0,
        "idle_rss_kib": rss,
        "idle_rss_samples_kib": samples,
        "vmhwm_kib": hwm,
        "idle_requests": stats["requests"],
        "files_rewritten_while_idle": files_rewritten,
        "since_start_s": time.time() - started,
        "clock_offset": mono_to_wall_offset(),
    }


def _slope_per_hour(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in KiB per hour."""
    if len(points) < 2:
        return float("nan")
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 3600 if sxx else float("nan")


async def _soak(stack: Stack, nics: int, soak: float, *, metrics: bool = False) -> dict[str, Any]:
    """A fresh daemon with the default resync_interval on the NICs plugged by _idle
    (METRICS: writing its textfile too)."""
    code = await stack.stop_daemon()
    if code != 0:
        raise BenchError(f"daemon exited with status {code} on SIGTERM")
    proc, _started = await stack.start_daemon(metrics=metrics)
    await stack.wait_ready()
    pid = proc.pid
    _check_pid(pid)
    macs = [_mac(n) for n in range(1, nics + 1)]

    def all_accepted() -> bool:
        return all(stack.log.named("accepted", mac=mac) for mac in macs)

    await stack.wait_for(all_accepted, 60, f"all {nics} NICs accepted after the restart")
    await asyncio.sleep(1.0)
    stack.check_alive()
    await stack.sim.reset_stats()
    opens0 = await stack.tcp_active_opens()
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    samples: list[tuple[float, int]] = [(0.0, proc_rss_kib(pid)[0])]
    while (elapsed := time.monotonic() - t0) < soak:
        await asyncio.sleep(min(SOAK_SAMPLE, soak - elapsed))
        stack.check_alive()
        samples.append((time.monotonic() - t0, proc_rss_kib(pid)[0]))
    cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
    rss, hwm = proc_rss_kib(pid)
    opens1 = await stack.tcp_active_opens()
    stats = await stack.sim.stats(log=True)
    stack.log.refresh()
    polls = sum(1 for e in stats["log"] if str(e["path"]).endswith(tuple(f"{m}/" for m in macs)))
    return {
        "new_connections": opens1 - opens0,
        "full_polls": polls,
        "soak_s": t1 - t0,
        "resync_interval_s": "default (60)",
        "cpu_s": cpu1 - cpu0,
        "rss_kib": rss,
        "vmhwm_kib": hwm,
        "rss_samples": samples,
        "rss_growth_kib": samples[-1][1] - samples[0][1],
        "rss_slope_kib_per_h": _slope_per_hour(samples),
        "requests": stats["requests"],
        "files_rewritten": len(stack.log.named("rendered")),
    }


async def _floor(runs: int) -> list[int]:
    """VmRSS (KiB) of a Python that imports what the daemon imports, and nothing more."""
    out = []
    for _ in range(runs):
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-c", FLOOR_CODE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        data, err = await proc.communicate()
        if proc.returncode != 0:
            raise BenchError(f"import floor: {err.decode(errors='replace').strip()[-300:]}")
        out.append(int(data.split()[-1]))
    return out


async def _bench(
    stack: Stack, runs: int, nics: int, idle: float, soak: float, metrics_soak: float
) -> dict[str, Any]:
    floor = await _floor(FLOOR_RUNS)
    starts = await _startups(stack, runs)
    out = {"floor_kib": floor, "starts": starts, "idle": await _idle(stack, nics, idle)}
    if soak > 0:
        out["soak"] = await _soak(stack, nics, soak)
    if metrics_soak > 0:
        out["metrics_soak"] = await _soak(stack, nics, metrics_soak, metrics=True)
    return out


def _print_soak(soak: dict[str, Any], nics: int) -> dict[str, float]:
    window = soak["soak_s"]
    cpu_hour = soak["cpu_s"] / window * 3600
    first = soak["rss_samples"][0][1]
    print()
    print(
        table(
            ["soak figure (default resync_interval 60 s)", "value"],
            [
                ["NICs, soak length s", f"{nics}, {window:.0f}"],
                ["idle RSS at the end, MiB", soak["rss_kib"] / 1024],
                ["idle RSS at the end, MB (10^6 B)", soak["rss_kib"] * 1024 / 1e6],
                ["RSS at the start of the soak, MiB", first / 1024],
                ["RSS growth over the soak, KiB", soak["rss_growth_kib"]],
                ["RSS trend (least squares), KiB per hour", soak["rss_slope_kib_per_h"]],
                ["VmHWM (peak RSS), MiB", soak["vmhwm_kib"] / 1024],
                ["CPU (utime+stime) over the soak, s", soak["cpu_s"]],
                ["CPU per idle hour, s", cpu_hour],
                ["IMDS requests per second", soak["requests"] / window],
                ["full polls per NIC per 60 s", soak["full_polls"] / nics / (window / 60)],
                ["new TCP connections over the soak", soak["new_connections"]],
                ["files rewritten during the soak", soak["files_rewritten"]],
            ],
        )
    )  # fmt: skip
    print(
        f"   RSS sampled every {SOAK_SAMPLE:g} s from 1 s after all {nics} NICs were accepted "
        "by the restarted daemon."
    )
    return {"cpu_seconds_per_idle_hour": cpu_hour, "rss_mb": soak["rss_kib"] * 1024 / 1e6}


def run(
    *,
    runs: int = START_RUNS,
    nics: int = NICS,
    idle: float = IDLE,
    soak: float = SOAK,
    metrics_soak: float = METRICS_SOAK,
) -> dict[str, Any]:
    print(
        f"== footprint: start -> ready ({runs} runs), then {nics} NICs converged and "
        f"{idle:g} s idle with resync_interval = {RESYNC:g} s"
        + (f"; then a {soak:g} s soak with the default resync_interval" if soak > 0 else "")
    )
    raw = run_with_stack(NAME, lambda stack: _bench(stack, runs, nics, idle, soak, metrics_soak))
    starts = raw["starts"]
    ready = summary([s["start_to_ready_s"] for s in starts])
    idle_fig = raw["idle"]
    window = idle_fig["idle_window_s"]
    cpu_hour = idle_fig["idle_cpu_s"] / window * 3600
    rss_mib = idle_fig["idle_rss_kib"] / 1024
    rss_mb = idle_fig["idle_rss_kib"] * 1024 / 1e6
    req_rate = idle_fig["idle_requests"] / window
    print()
    print(
        table(
            ["figure", "value"],
            [
                ["start -> ready, median of runs, s", ready["p50"]],
                ["start -> ready, min / max, s", f"{ready['min']:.3f} / {ready['max']:.3f}"],
                ["RSS at ready (no NICs), median, MiB",
                 statistics.median(s["rss_kib"] for s in starts) / 1024],
                [f"attach of {nics} NICs -> all files written, s",
                 idle_fig["attach_to_all_files_s"]],
                ["RSS right after convergence, MiB", idle_fig["rss_after_converged_kib"] / 1024],
                [f"idle RSS after {window:.1f} s idle, MiB", rss_mib],
                [f"idle RSS after {window:.1f} s idle, MB (10^6 B)", rss_mb],
                ["VmHWM (peak RSS), MiB", idle_fig["vmhwm_kib"] / 1024],
                [f"CPU (utime+stime) in the {window:.1f} s idle window, s",
                 idle_fig["idle_cpu_s"]],
                ["CPU per idle hour (extrapolated), s", cpu_hour],
                ["CPU share of one core while idle, %", cpu_hour / 36],
                ["IMDS requests per second while idle", req_rate],
                ["files rewritten while idle", idle_fig["files_rewritten_while_idle"]],
            ],
        )
    )  # fmt: skip
    print(
        "   start = time.time() before spawning `ip netns exec NS python -m nicreconciled "
        "run`;\n   ready = timestamp of the daemon's 'ready' log event. RSS = VmRSS of the "
        "daemon pid (checked via /proc/PID/cmdline)."
    )
    # Judged on the stricter reading of "MB" (10^6 bytes).
    met = rss_mb <= RSS_TARGET_MB
    print(
        f"   target idle RSS <= {RSS_TARGET_MB:g} MB: {rss_mb:.1f} MB ({rss_mib:.1f} MiB): "
        f"{verdict(met)}"
    )
    floor_kib = statistics.median(raw["floor_kib"])
    print(
        f"   import floor (a Python importing what the daemon imports, config built; median of "
        f"{len(raw['floor_kib'])}): {floor_kib / 1024:.1f} MiB"
    )
    soak_fig: dict[str, float] = {}
    soak_targets: list[dict[str, Any]] = []
    if "soak" in raw:
        soak_fig = _print_soak(raw["soak"], nics)
        soak_mb = soak_fig["rss_mb"]
        soak = raw["soak"]
        over_mb = (soak["rss_kib"] - floor_kib) * 1024 / 1e6
        flat = soak["rss_growth_kib"] <= FLAT_KIB
        floor_met = over_mb <= FLOOR_SLACK_MB and flat
        print(
            f"   goal idle RSS <= import floor + {FLOOR_SLACK_MB:g} MB and flat over the soak: "
            f"floor + {over_mb:.2f} MB ({soak['rss_kib'] / 1024:.1f} MiB), growth "
            f"{soak['rss_growth_kib']} KiB over {soak['soak_s']:.0f} s (flat: <= {FLAT_KIB} "
            f"KiB): {verdict(floor_met)}"
        )
        soak_targets.append(
            {
                "name": f"idle RSS over the import floor after the {soak['soak_s']:.0f} s soak "
                f"(growth {soak['rss_growth_kib']} KiB)",
                "value": over_mb,
                "limit": FLOOR_SLACK_MB,
                "unit": "MB",
                "met": floor_met,
                "key": "rss",
                "detail": {
                    "rss_mib": soak["rss_kib"] / 1024,
                    "floor_mib": floor_kib / 1024,
                    "growth_kib": soak["rss_growth_kib"],
                    "soak_s": soak["soak_s"],
                    "new_connections": soak["new_connections"],
                },
            }
        )
        soak_targets.append(
            {
                "name": f"idle RSS after the {raw['soak']['soak_s']:.0f} s soak (10^6 bytes)",
                "value": soak_mb,
                "limit": RSS_TARGET_MB,
                "unit": "MB",
                "met": soak_mb <= RSS_TARGET_MB,
            }
        )
    for label, key in (("soak", "rss_metrics_off"), ("metrics_soak", "rss_metrics_on")):
        fig = raw.get(label)
        if fig is None:
            continue
        mib = fig["rss_kib"] / 1024
        met = mib <= RSS_METRICS_MIB
        what = "on" if label == "metrics_soak" else "off"
        print(
            f"   idle RSS, metrics {what}, after {fig['soak_s']:.0f} s (default resync_interval): "
            f"{mib:.2f} MiB (goal, issue 22: <= {RSS_METRICS_MIB:g} MiB with metrics on): "
            f"{verdict(met)}"
        )
        soak_targets.append(
            {
                "name": f"idle RSS, metrics {what}, after a {fig['soak_s']:.0f} s soak (MiB)",
                "value": mib,
                "limit": RSS_METRICS_MIB,
                "unit": "MiB",
                "met": met,
                "key": key,
                "detail": {"soak_s": fig["soak_s"], "growth_kib": fig["rss_growth_kib"]},
            }
        )
    return {
        "method": {
            "start_runs": runs,
            "nics": nics,
            "resync_interval_s": RESYNC,
            "idle_window_s": window,
            "soak_s": soak,
            "soak_resync_interval_s": 60.0,
        },
        "soak": raw.get("soak"),
        "metrics_soak": raw.get("metrics_soak"),
        "import_floor_kib": raw["floor_kib"],
        "soak_cpu_seconds_per_idle_hour": soak_fig.get("cpu_seconds_per_idle_hour"),
        "soak_idle_rss_mb": soak_fig.get("rss_mb"),
        "start_to_ready_s": ready,
        "starts": starts,
        "idle": idle_fig,
        "cpu_seconds_per_idle_hour": cpu_hour,
        "idle_requests_per_s": req_rate,
        "targets": [
            {
                "name": "idle RSS (VmRSS, 10^6 bytes)",
                "value": rss_mb,
                "limit": RSS_TARGET_MB,
                "unit": "MB",
                "met": met,
            },
            *soak_targets,
        ],
    }
