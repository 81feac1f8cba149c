"""convergence: how long after a late IPv6 shows up in IMDS is it in the rendered file?

Each trial adds a NIC to the simulator whose subnet has an IPv6 block but whose ``ipv6s`` key
appears only D seconds later, and hot-plugs a veth with that MAC at once. The IPv6 is visible
in IMDS from ``add_time + D`` (``add_time`` = time.time() just before the simulator call, so
the figure errs on the long side by at most that call's round trip). The excess convergence
is the daemon's ``rendered`` log timestamp of the final file (the one holding the IPv6)
minus that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import BenchError, Stack, mono_to_wall_offset, run_with_stack
from bench.report import RESULTS, per_second, percentile, sliding_peak, summary, table, verdict

NAME = "convergence"
DELAYS = (1.0, 4.0, 10.0)
TRIALS_PER_DELAY = 20
CONCURRENCY = 5
STAGGER = 0.3
#: After the IPv6 file appears, wait this long and check nothing rewrote it.
HOLD = 1.0
#: A trial gives up this long after its IPv6 appeared.
TRIAL_TIMEOUT = 30.0
#: Issue 12's goals: excess p50 and p99 for every D, requests per NIC at REQUESTS_DELAY.
EXCESS_P50_GOAL = 0.3
EXCESS_P99_GOAL = 0.6
REQUESTS_GOAL = 24
REQUESTS_DELAY = 4.0
#: The daemon's default polling.request_rate (requests/s).
DEFAULT_RATE = 300.0


@dataclass
class Trial:
    index: int
    delay: float
    add_wall: float = math.nan
    add_rtt: float = math.nan
    plugged_wall: float = math.nan
    udev_seen: float = math.nan
    renders: list[tuple[float, str]] = field(default_factory=list)
    has_ipv6: bool = False
    detected: float = math.nan
    requests_mac: int = 0
    #: This NIC's share of the requests naming no MAC (token, meta-data/mac, the macs/
    #: listing) sent while it converged: each is shared by the NICs converging then.
    requests_shared: float = 0.0
    error: str = ""

    @property
    def n(self) -> int:
        return self.index + 1

    @property
    def mac(self) -> str:
        return f"0a:b1:00:00:{self.n >> 8:02x}:{self.n & 0xFF:02x}"

    @property
    def ifname(self) -> str:
        return f"cv{self.n}"

    @property
    def peer(self) -> str:
        return f"cvp{self.n}"

    @property
    def ipv6(self) -> str:
        return f"2001:db8:{self.n:x}::25"

    @property
    def appeared(self) -> float:
        return self.add_wall + self.delay

    @property
    def final_ts(self) -> float:
        return self.renders[-1][0] if self.renders else math.nan

    @property
    def excess(self) -> float:
        return self.final_ts - self.appeared

    @property
    def ok(self) -> bool:
        return not self.error and self.has_ipv6

    def spec(self) -> dict[str, Any]:
        octet = self.n % 250
        return {
            "mac": self.mac,
            "device_number": 1 + self.index % 98,
            "local_ipv4s": [f"10.1.{octet}.25"],
            "subnet_ipv4_cidr": f"10.1.{octet}.0/24",
            "subnet_ipv6_cidrs": [f"2001:db8:{self.n:x}::/64"],
            "schedule": {"ipv6s": [[self.delay, self.ipv6]]},
        }


async def _trial(stack: Stack, trial: Trial) -> None:
    plugged = False
    added = False
    try:
        trial.add_wall = time.time()
        await stack.sim.add_nic(trial.spec())
        trial.add_rtt = time.time() - trial.add_wall
        added = True
        await stack.plug(trial.ifname, trial.mac, trial.peer)
        plugged = True
        trial.plugged_wall = time.time()

        def ipv6_written() -> bool:
            if not stack.log.named("rendered", mac=trial.mac):
                return False
            text = stack.file_text(trial.mac)
            return text is not None and trial.ipv6 in text

        await stack.wait_for(
            ipv6_written, trial.delay + TRIAL_TIMEOUT, f"{trial.mac}: file with {trial.ipv6}"
        )
        await asyncio.sleep(HOLD)
        stack.log.refresh()
        trial.renders = [
            (float(e["timestamp"]), str(e.get("fingerprint")))
            for e in stack.log.named("rendered", mac=trial.mac)
        ]
        text = stack.file_text(trial.mac)
        trial.has_ipv6 = text is not None and trial.ipv6 in text
        seen = stack.log.first("nic_added", mac=trial.mac)
        if seen is not None:
            trial.udev_seen = float(seen["timestamp"])
    except BenchError as exc:
        trial.error = str(exc).splitlines()[0]
    finally:
        # Upstream first, then the link: the daemon then removes the file and forgets it.
        if added:
            with contextlib.suppress(Exception):
                await stack.sim.remove_nic(trial.mac)
        if plugged:
            with contextlib.suppress(BenchError):
                await stack.unplug(trial.ifname)


async def _run_trials(stack: Stack, trials: list[Trial]) -> float:
    """Start trials STAGGER apart, at most CONCURRENCY in flight; returns the wall time."""
    slots = asyncio.Semaphore(CONCURRENCY)
    tasks: list[asyncio.Task[None]] = []
    last = -math.inf
    started = time.monotonic()

    async def one(trial: Trial) -> None:
        try:
            await _trial(stack, trial)
        finally:
            slots.release()

    for trial in trials:
        await slots.acquire()
        pause = last + STAGGER - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        last = time.monotonic()
        tasks.append(asyncio.create_task(one(trial)))
    await asyncio.gather(*tasks)
    return time.monotonic() - started


def _mac_of(path: str) -> str | None:
    """The MAC a request path is about (.../macs/MAC/...), None for other paths."""
    parts = path.split("/")
    if "macs" in parts:
        i = parts.index("macs")
        if i + 1 < len(parts) and parts[i + 1]:
            return parts[i + 1]
    return None


def _count_requests(trials: list[Trial], log: list[dict[str, Any]], offset: float) -> int:
    """Per trial: requests naming its MAC up to its final render.

    Returns the number of shared requests: those about no MAC (token PUT, meta-data/mac).
    """
    by_mac: dict[str, list[dict[str, Any]]] = {t.mac: [] for t in trials}
    shared = 0
    spans = [(t, t.add_wall - offset, t.final_ts - offset) for t in trials if t.renders and t.ok]
    for entry in log:
        mac = _mac_of(str(entry["path"]))
        if mac in by_mac:
            by_mac[mac].append(entry)
        elif mac is None:
            shared += 1
            when = float(entry["t"])
            converging = [t for t, a, b in spans if a <= when <= b]
            for t in converging:
                t.requests_shared += 1 / len(converging)
    for trial in trials:
        entries = by_mac[trial.mac]
        if trial.renders:
            cutoff = trial.final_ts - offset
            trial.requests_mac = sum(1 for e in entries if float(e["t"]) <= cutoff)
        visible = trial.appeared - offset
        hits = [
            float(e["t"])
            for e in entries
            if str(e["path"]).endswith("/ipv6s") and e["status"] == 200 and float(e["t"]) >= visible
        ]
        if hits:
            trial.detected = min(hits) + offset
    return shared


async def _bench(stack: Stack, delays: tuple[float, ...], per_delay: int) -> dict[str, Any]:
    await stack.start_daemon()
    await stack.wait_ready()
    await stack.sim.reset_stats()
    trials = [Trial(i, delays[i % len(delays)]) for i in range(per_delay * len(delays))]
    wall = await _run_trials(stack, trials)
    stats = await stack.sim.stats(log=True)
    offset = mono_to_wall_offset()
    shared = _count_requests(trials, stats["log"], offset)
    times = [float(e["t"]) for e in stats["log"]]
    peak, _ = sliding_peak(times)
    return {
        "timeline": per_second(times),
        "trials": trials,
        "wall": wall,
        "shared": shared,
        "peak": peak,
        "total_requests": stats["requests"],
    }


#: The figures issue 12 started from (2 cores, 2026-12-02), for the old/new table.
OLD = {
    "excess_p50": {"1": 0.53, "4": 0.57, "10": 0.60},
    "excess_p99": {"1": 0.65, "4": 0.69, "10": 0.70},
    "requests": 34.0,
}


def _plot(runs: list[Trial], delays: tuple[float, ...], path: Path) -> bool:
    """Excess per D: every trial as a dot over a box, with the goals."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "   matplotlib is not installed: skipping the plot (bench/results/convergence.png). "
            "Install it with: pip install -e '.[bench]'"
        )
        return False
    groups = [[t.excess for t in runs if t.delay == d and t.ok] for d in delays]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot(groups, widths=0.5, showfliers=False)
    for i, group in enumerate(groups, start=1):
        xs = [i + 0.18 * ((j % 7) / 6 - 0.5) for j in range(len(group))]
        ax.scatter(xs, group, s=12, color="#337ab7", alpha=0.7, zorder=3)
    ax.axhline(EXCESS_P50_GOAL, color="#f0ad4e", linestyle="--", label="goal p50")
    ax.axhline(EXCESS_P99_GOAL, color="#d9534f", linestyle="--", label="goal p99")
    for i, d in enumerate(delays, start=1):
        old = OLD["excess_p50"].get(f"{d:g}")
        if old is not None:
            ax.scatter([i], [old], marker="_", s=400, color="grey", zorder=2,
                       label="p50 before (issue 12)" if i == 1 else None)  # fmt: skip
    ax.set_xticks(range(1, len(delays) + 1), [f"D = {d:g} s" for d in delays])
    ax.set_ylabel("file with IPv6 written - IPv6 listed, s")
    ax.set_ylim(0, max(0.8, *(max(g, default=0) + 0.05 for g in groups)))
    ax.set_title("convergence after a late IPv6 (one dot per NIC)", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncols=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(*, trials: int = TRIALS_PER_DELAY, delays: tuple[float, ...] = DELAYS) -> dict[str, Any]:
    """Run the benchmark, print its tables, return its JSON result."""
    total = trials * len(delays)
    print(
        f"== convergence: IPv6 visible in IMDS D s after hot-plug; {trials} trials per D, "
        f"{total} in all"
    )
    print(
        f"   one daemon (default polling, resync_interval default), up to {CONCURRENCY} NICs "
        f"in flight with distinct MACs and device numbers, starts >= {STAGGER:g} s apart, "
        f"D interleaved {', '.join(f'{d:g}' for d in delays)}; a NIC is removed (IMDS, then "
        f"link) {HOLD:g} s after its IPv6 file appeared",
        flush=True,
    )
    raw = run_with_stack(NAME, lambda stack: _bench(stack, delays, trials))
    runs: list[Trial] = raw["trials"]
    shared_per_nic = raw["shared"] / len(runs)

    rows = []
    per_delay: dict[str, Any] = {}
    for delay in delays:
        group = [t for t in runs if t.delay == delay]
        good = [t for t in group if t.ok]
        excess = [t.excess for t in good]
        detect = [t.detected - t.appeared for t in good if not math.isnan(t.detected)]
        files = [len(t.renders) for t in good]
        early = sum(1 for t in good for _ts, fp in t.renders[:-1] if fp != t.renders[-1][1])
        requests = [float(t.requests_mac) for t in good]
        with_shared = [t.requests_mac + t.requests_shared for t in good]
        udev = [t.udev_seen - t.add_wall for t in good if not math.isnan(t.udev_seen)]
        ex = summary(excess)
        rq = summary(requests)
        rs = summary(with_shared)
        per_delay[f"{delay:g}"] = {
            "trials": len(group),
            "ok": len(good),
            "failed": [t.error or "file lacks the IPv6" for t in group if not t.ok],
            "excess_s": ex,
            "detect_lag_s": summary(detect),
            "attach_to_nic_added_s": summary(udev),
            "files_written_per_nic": summary([float(f) for f in files]),
            "files_without_ipv6": early,
            "requests_per_nic_mac_paths": rq,
            "requests_per_nic_with_shared_share": rs,
        }
        rows.append(
            [
                f"{delay:g}", f"{len(good)}/{len(group)}", ex["p50"], ex["p99"], ex["max"],
                percentile(detect, 50), max(files, default=0), early,
                rq["p50"], rq["max"], rs["p50"], rs["max"],
            ]
        )  # fmt: skip
    print()
    print(
        table(
            ["D s", "ok", "excess p50 s", "p99 s", "max s", "detect p50 s", "files/NIC max",
             "files w/o IPv6", "req/NIC p50", "max", "+shared p50", "max"],
            rows,
        )
    )  # fmt: skip
    print()
    print(
        "   excess = 'rendered' timestamp of the final file - (time.time() before the sim add "
        "+ D); percentiles by linear interpolation.\n"
        "   detect = first 200 answer on the NIC's .../ipv6s path after D - appearance.\n"
        "   req/NIC = simulator log entries whose path holds the NIC's MAC, up to its final "
        "render;\n"
        "   +shared = the same plus its share of the requests naming no MAC (token, "
        "meta-data/mac, the macs/ listing) sent while it converged, each split between the "
        "NICs converging then;\n"
        f"   requests naming no MAC over the whole run (removals included): {raw['shared']} "
        f"= {shared_per_nic:.3f} per NIC."
    )
    rtt = [t.add_rtt for t in runs if not math.isnan(t.add_rtt)]
    print(
        f"   the excess errs long by at most the sim add round trip: p50 "
        f"{percentile(rtt, 50) * 1000:.1f} ms, max {max(rtt, default=math.nan) * 1000:.1f} ms."
    )
    peak = raw["peak"]
    mean_rate = raw["total_requests"] / raw["wall"] if raw["wall"] else math.nan
    print(
        f"   run: {raw['wall']:.1f} s, {raw['total_requests']} IMDS requests, peak {peak} "
        f"req in a 1 s window, mean {mean_rate:.1f} req/s (default limit "
        f"{DEFAULT_RATE:g} req/s)"
    )
    targets = []
    for delay in delays:
        key = f"{delay:g}"
        figure = per_delay[key]
        clean = not figure["failed"] and figure["ok"] > 0
        for q, goal in (("p50", EXCESS_P50_GOAL), ("p99", EXCESS_P99_GOAL)):
            value = figure["excess_s"][q]
            targets.append(
                {
                    "name": f"excess after a late IPv6, D = {key} s, {q}",
                    "value": value,
                    "limit": goal,
                    "unit": "s",
                    "met": clean and value <= goal,
                    "key": f"excess_{q}_{key}",
                    "old": OLD[f"excess_{q}"].get(key),
                }
            )
    key = f"{REQUESTS_DELAY:g}"
    if key in per_delay:
        # Judged as issue 12's 34 was measured: requests naming the NIC's MAC, p50. Those
        # naming none (mostly macs/ listings: one per attach and one per detach of any NIC)
        # are printed beside it.
        figure = per_delay[key]
        mac_paths = figure["requests_per_nic_mac_paths"]
        shared = figure["requests_per_nic_with_shared_share"]["p50"] - mac_paths["p50"]
        targets.append(
            {
                "name": f"IMDS requests per NIC until converged, D = {key} s (naming the MAC, "
                f"p50; max {mac_paths['max']:.0f}; + {shared:.1f} shared)",
                "value": mac_paths["p50"],
                "limit": REQUESTS_GOAL,
                "unit": "requests",
                "met": mac_paths["p50"] <= REQUESTS_GOAL,
                "key": "requests_d4",
                "old": OLD["requests"],
                "detail": {"max": mac_paths["max"], "shared": shared},
            }
        )
    for target in targets:
        print(
            f"   goal {target['name']}: {target['value']:.3f} <= {target['limit']} "
            f"{target['unit']}: {verdict(target['met'])}"
        )
    png = RESULTS / "convergence.png"
    if _plot(runs, delays, png):
        print(f"   distribution per D: {png}")
    return {
        "method": {
            "delays_s": list(delays),
            "trials_per_delay": trials,
            "concurrency": CONCURRENCY,
            "stagger_s": STAGGER,
            "hold_s": HOLD,
            "config": "defaults; interfaces.virtual=true, udev.source=kernel, apply=false, "
            "ec2.endpoint on the netns loopback, ec2.fallback_endpoint=''",
            "excess": "rendered timestamp of final file - (time.time() before sim add + D)",
            "requests": "sim log entries whose path contains the MAC, up to the final render, "
            "plus a share of those naming no MAC sent while the NIC converged",
        },
        "per_delay": per_delay,
        "sim_add_rtt_s": summary(rtt),
        "shared_requests": raw["shared"],
        "shared_per_nic": shared_per_nic,
        "run_seconds": raw["wall"],
        "total_requests": raw["total_requests"],
        "peak_requests_per_1s": peak,
        "requests_per_second_timeline": raw["timeline"],
        "targets": targets,
        "trials": [
            {
                "index": t.index,
                "delay": t.delay,
                "mac": t.mac,
                "add_wall": t.add_wall,
                "add_rtt": t.add_rtt,
                "plugged_wall": t.plugged_wall,
                "nic_added": t.udev_seen,
                "renders": t.renders,
                "has_ipv6": t.has_ipv6,
                "excess": t.excess,
                "detected": t.detected,
                "requests_mac": t.requests_mac,
                "requests_shared": t.requests_shared,
                "error": t.error,
            }
            for t in runs
        ],
    }
