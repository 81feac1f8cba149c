"""footprint: start -> ready time, idle RSS, and CPU time per idle hour.

``ip netns exec`` execs the command, so the pid of the process started here is the daemon's
Python process; this is checked against /proc/PID/cmdline before anything is measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.harness import (
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


async def _bench(stack: Stack, runs: int, nics: int, idle: float) -> dict[str, Any]:
    starts = await _startups(stack, runs)
    return {"starts": starts, "idle": await _idle(stack, nics, idle)}


def run(*, runs: int = START_RUNS, nics: int = NICS, idle: float = IDLE) -> dict[str, Any]:
    print(
        f"== footprint: start -> ready ({runs} runs), then {nics} NICs converged and "
        f"{idle:g} s idle with resync_interval = {RESYNC:g} s"
    )
    raw = run_with_stack(NAME, lambda stack: _bench(stack, runs, nics, idle))
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
    return {
        "method": {
            "start_runs": runs,
            "nics": nics,
            "resync_interval_s": RESYNC,
            "idle_window_s": window,
        },
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
            }
        ],
    }
