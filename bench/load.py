"""load: IMDS requests per NIC until convergence, and the steady-state request rate.

For each NIC count (1, 8, 32 by default) a daemon of its own (its own namespace and
simulator; the counts run concurrently) gets that many complete dual-stack NICs, plugged by
one ``ip -batch``. Until convergence: requests naming a NIC's MAC up to its first file, plus
an equal share of the requests naming no MAC (token PUT, ``meta-data/mac``). Steady state:
with ``resync_interval = RESYNC`` (the default 60 s would need many minutes per figure),
every request in a window that starts once every NIC's first resync is due (1.2 x RESYNC,
the top of the jitter, after the last file) and lasts WINDOW s. Background checks are one
full fetch per NIC per resync_interval (jittered +-20 %), so the rate scales as
RESYNC / resync_interval: the table also gives the figure for the default 60 s.

The burst peak (20 NICs at once) is the burst benchmark's figure; this one reports the peak
during its own batch attach, and the burst figure from bench/results/burst.json when present.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from typing import Any

from bench.harness import Stack, mono_to_wall_offset, run_with_stacks
from bench.report import RESULTS, sliding_peak, summary, table, verdict

NAME = "load"
COUNTS = (1, 8, 32)
RESYNC = 10.0
DEFAULT_RESYNC = 60.0
WINDOW = 40.0
TIMEOUT = 60.0


def _mac(group: int, n: int) -> str:
    return f"0a:b5:00:00:{group:02x}:{n:02x}"


def _spec(group: int, n: int) -> dict[str, Any]:
    return {
        "mac": _mac(group, n),
        "device_number": n,
        "local_ipv4s": [f"10.5.{n}.25"],
        "subnet_ipv4_cidr": f"10.5.{n}.0/24",
        "ipv6s": [f"2001:db8:5:{n:x}::25"],
        "subnet_ipv6_cidrs": [f"2001:db8:5:{n:x}::/64"],
    }


def _mac_of(path: str) -> str | None:
    parts = path.split("/")
    if "macs" in parts:
        i = parts.index("macs")
        if i + 1 < len(parts) and parts[i + 1]:
            return parts[i + 1]
    return None


async def _one(stack: Stack, group: int, count: int) -> dict[str, Any]:
    await stack.start_daemon(resync_interval=RESYNC)
    await stack.wait_ready()
    numbers = range(1, count + 1)
    macs = [_mac(group, n) for n in numbers]
    for n in numbers:
        await stack.sim.add_nic(_spec(group, n))
    await stack.sim.reset_stats()
    attach = time.time()
    await stack.plug_many((f"ld{n}", _mac(group, n), f"ldp{n}") for n in numbers)

    def all_written() -> bool:
        return all(stack.log.named("rendered", mac=mac) for mac in macs)

    await stack.wait_for(all_written, TIMEOUT, f"files for all {count} NICs")
    first_file = {m: float(stack.log.named("rendered", mac=m)[0]["timestamp"]) for m in macs}
    converged = max(first_file.values())
    w0 = converged + 1.2 * RESYNC
    w1 = w0 + WINDOW
    while time.time() < w1:
        await asyncio.sleep(min(1.0, max(0.0, w1 - time.time())))
        stack.check_alive()
    stats = await stack.sim.stats(log=True)
    offset = mono_to_wall_offset()
    stack.log.refresh()
    log = [(float(e["t"]) + offset, str(e["path"]), int(e["status"])) for e in stats["log"]]

    # Until convergence.
    until: dict[str, int] = dict.fromkeys(macs, 0)
    shared_until = 0
    for t, path, _status in log:
        mac = _mac_of(path)
        if mac in until and t <= first_file[mac]:
            until[mac] += 1
        elif mac is None and t <= converged:
            shared_until += 1
    attach_peak, _ = sliding_peak(t for t, _p, _s in log if t <= converged)

    # Steady state. Full fetches (a MAC's directory listing) after its first file, over the
    # whole run: their spacing is the background cadence (only the last gap is censored).
    steady = [(t, p) for t, p, _s in log if w0 <= t < w1]
    fetches: dict[str, list[float]] = {m: [] for m in macs}
    per_mac = dict.fromkeys(macs, 0)
    for t, path, _status in log:
        mac = _mac_of(path)
        if mac in per_mac and t > first_file[mac]:
            per_mac[mac] += 1
            if path.endswith(f"/macs/{mac}/"):
                fetches[mac].append(t)
    all_fetches = sum(len(v) for v in fetches.values())
    gaps = [b - a for v in fetches.values() for a, b in itertools.pairwise(v)]
    rewritten = len(stack.log.named("rendered")) - count
    return {
        "nics": count,
        "attach_to_all_files_s": converged - attach,
        "requests_until_converged": until,
        "shared_until_converged": shared_until,
        "attach_peak_1s": attach_peak,
        "window_s": w1 - w0,
        "window_requests": len(steady),
        "window_requests_naming_no_mac": sum(1 for _t, p in steady if _mac_of(p) is None),
        "full_fetches": all_fetches,
        "requests_per_fetch": sum(per_mac.values()) / all_fetches if all_fetches else math.nan,
        "fetch_interval_s": summary(gaps),
        "files_rewritten_in_steady_state": rewritten,
        "by_status": stats["by_status"],
    }


#: The steady-state stack: complete ENIs, one whose IPv6 never comes (a flag that stands
#: for ever) and one NIC the metadata does not list.
STEADY_COMPLETE = 4
#: The daemon's default polling.deadline and max_interval: after a flag stood this long it
#: is only looked at with the resync.
DEADLINE = 60.0
MAX_INTERVAL = 5.0
STEADY_GROUP = 9
#: The key reads of a full poll come within this long after its directory read.
FULL_POLL_SPAN = 0.5


def _steady_specs() -> list[dict[str, Any]]:
    specs = [_spec(STEADY_GROUP, n) for n in range(1, STEADY_COMPLETE + 1)]
    n = STEADY_COMPLETE + 1
    specs.append(
        {
            "mac": _mac(STEADY_GROUP, n),
            "device_number": n,
            "local_ipv4s": [f"10.5.{n}.25"],
            "subnet_ipv4_cidr": f"10.5.{n}.0/24",
            "subnet_ipv6_cidrs": [f"2001:db8:5:{n:x}::/64"],  # ipv6s never comes
        }
    )
    return specs


async def _steady(stack: Stack) -> dict[str, Any]:
    """Every NIC converged or settled, each flag past the deadline: what does a resync cost?"""
    await stack.start_daemon(resync_interval=RESYNC)
    await stack.wait_ready()
    specs = _steady_specs()
    enis = [str(s["mac"]) for s in specs]
    flagged = enis[-1]
    foreign = _mac(STEADY_GROUP, 0x99)
    for spec in specs:
        await stack.sim.add_nic(spec)
    nics = [(f"sd{i}", mac, f"sdp{i}") for i, mac in enumerate([*enis, foreign], start=1)]
    attach = time.time()
    await stack.plug_many(nics)

    def all_written() -> bool:
        return all(stack.log.named("rendered", mac=mac) for mac in enis)

    await stack.wait_for(all_written, TIMEOUT + 15, f"files for all {len(enis)} ENIs")
    # Every flag has stood for the deadline (plus the last backoff step), and every NIC has
    # had its first resync since.
    w0 = max(time.time() + 1.2 * RESYNC, attach + DEADLINE + MAX_INTERVAL + 1.2 * RESYNC)
    while time.time() < w0:
        await asyncio.sleep(min(1.0, max(0.0, w0 - time.time())))
        stack.check_alive()
    await stack.sim.reset_stats()
    opens0 = await stack.tcp_active_opens()
    started = time.time()
    w1 = started + WINDOW
    while time.time() < w1:
        await asyncio.sleep(min(1.0, max(0.0, w1 - time.time())))
        stack.check_alive()
    opens1 = await stack.tcp_active_opens()
    window = time.time() - started
    stats = await stack.sim.stats(log=True)
    log = [(float(e["t"]), str(e["path"])) for e in stats["log"]]
    paths = [p for _t, p in log]
    per_nic: dict[str, dict[str, float]] = {}
    resyncs = window / RESYNC
    for mac in enis:
        mine = [(t, p) for t, p in log if _mac_of(p) == mac]
        polls = [t for t, p in mine if p.endswith(f"/macs/{mac}/")]
        # A probe: a key read that follows no read of the MAC's directory (a full poll
        # reads the directory, then its keys at once).
        probes = [
            p for t, p in mine
            if not p.endswith("/") and not any(0 <= t - d < FULL_POLL_SPAN for d in polls)
        ]  # fmt: skip
        per_nic[mac] = {
            "requests": len(mine),
            "full_polls": len(polls),
            "full_polls_per_resync": len(polls) / resyncs,
            "requests_per_resync": len(mine) / resyncs,
            "probes": len(probes),
        }
    listings = sum(1 for p in paths if p.endswith("/macs/"))
    stack.log.refresh()
    return {
        "enis": enis,
        "flagged": flagged,
        "foreign": foreign,
        "window_s": window,
        "resync_interval_s": RESYNC,
        "per_nic": per_nic,
        "foreign_listings": listings,
        "foreign_listings_per_resync": listings / resyncs,
        "requests_naming_no_mac": sum(1 for p in paths if _mac_of(p) is None),
        "new_connections": opens1 - opens0,
        "new_connections_per_resync": (opens1 - opens0) / resyncs,
        "requests": len(paths),
        "files_rewritten": len(stack.log.named("rendered")) - len(enis),
    }


async def _bench(stacks: list[Stack], counts: tuple[int, ...]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(
        *(_one(s, i, c) for i, (s, c) in enumerate(zip(stacks, counts, strict=False))),
        _steady(stacks[-1]),
    ))  # fmt: skip


def _burst_reference() -> dict[str, Any] | None:
    try:
        data = json.loads((RESULTS / "burst.json").read_text())
    except (OSError, ValueError):
        return None
    return {
        "finished_at": data.get("finished_at"),
        "nics": data.get("nics"),
        "peak_requests_1s_sliding": data.get("peak_requests_1s_sliding"),
        "peak_requests_1s_bucket": data.get("peak_requests_1s_bucket"),
    }


def run(*, counts: tuple[int, ...] = COUNTS) -> dict[str, Any]:
    print(
        f"== load: {', '.join(map(str, counts))} NICs (one daemon each, concurrently), "
        f"resync_interval = {RESYNC:g} s; steady window {WINDOW:g} s starting "
        f"{1.2 * RESYNC:g} s after the last file",
        flush=True,
    )
    labels = [f"{NAME}{c}" for c in counts] + [f"{NAME}-steady"]
    *results, steady = run_with_stacks(labels, lambda stacks: _bench(stacks, counts))
    rows = []
    figures: list[dict[str, Any]] = []
    for r in results:
        n = r["nics"]
        share = r["shared_until_converged"] / n
        per_nic = [float(v) + share for v in r["requests_until_converged"].values()]
        conv = summary(per_nic)
        rate = r["window_requests"] / r["window_s"]
        interval = r["fetch_interval_s"]["mean"]
        derived = n * r["requests_per_fetch"] / interval if interval else math.nan
        at_default = rate * RESYNC / DEFAULT_RESYNC
        fig = {
            **r,
            "requests_per_nic_until_converged": conv,
            "steady_requests_per_s": rate,
            "steady_requests_per_s_derived": derived,
            "requests_per_nic_per_resync": rate * RESYNC / n,
            "steady_requests_per_s_at_60s": at_default,
            "requests_per_nic_per_hour_at_60s": at_default * 3600 / n,
        }
        figures.append(fig)
        rows.append([
            n, conv["p50"], conv["max"], r["attach_to_all_files_s"], r["attach_peak_1s"],
            rate, derived, r["requests_per_fetch"], interval, at_default,
            at_default * 3600 / n,
        ])  # fmt: skip
    print()
    print(
        table(
            ["NICs", "req/NIC to converge p50", "max", "attach->all files s",
             "peak req/s attach", f"steady req/s (resync {RESYNC:g})", "derived req/s",
             "req/fetch", "fetch every s", "req/s at resync 60", "req/NIC/h at 60"],
            rows,
        )
    )  # fmt: skip
    print(
        "   req/NIC to converge: requests naming the MAC up to its first file + an equal share "
        "of those naming none.\n"
        "   steady: all simulator requests in the window / its length; derived = NICs x "
        "requests per full fetch / mean interval between a NIC's fetches (all fetches after "
        "its first file).\n"
        f"   at resync 60 = steady x {RESYNC:g}/60 (one full fetch per NIC per interval; "
        "the token lasts 6 h)."
    )
    rewrites = [f["files_rewritten_in_steady_state"] for f in figures]
    if any(rewrites):
        print(f"   !! files rewritten in steady state: {rewrites}")
    steady_fig = _print_steady(steady)
    burst = _burst_reference()
    if burst is not None:
        print(
            f"   20-NIC burst peak (burst benchmark, {burst['finished_at']}): "
            f"{burst['peak_requests_1s_sliding']} req in a sliding 1 s window, "
            f"{burst['peak_requests_1s_bucket']} in a 1 s bucket."
        )
    else:
        print("   20-NIC burst peak: run `python -m bench burst` (bench/results/burst.json).")
    return {
        "method": {
            "counts": list(counts),
            "resync_interval_s": RESYNC,
            "window_s": WINDOW,
            "window_start": "1.2 x resync_interval after the last NIC's first file",
            "scaling": f"rate x {RESYNC:g} / {DEFAULT_RESYNC:g} for the default interval",
        },
        "per_count": figures,
        "steady": steady,
        "burst_reference": burst,
        "targets": steady_fig,
    }


def _print_steady(steady: dict[str, Any]) -> list[dict[str, Any]]:
    per_nic = steady["per_nic"]
    flagged = steady["flagged"]
    rows = [
        [mac + (" (IPv6 never comes)" if mac == flagged else ""), f["full_polls_per_resync"],
         f["requests_per_resync"], f["probes"]]
        for mac, f in per_nic.items()
    ]  # fmt: skip
    print()
    print(
        f"-- steady state: {len(per_nic)} ENIs (one with a flag that stands for ever) and one "
        f"NIC the metadata does not list; resync_interval = {RESYNC:g} s, a "
        f"{steady['window_s']:.0f} s window once every flag stood for the deadline "
        f"({DEADLINE:g} s)"
    )
    print(table(["NIC", "full polls per resync", "requests per resync", "probes"], rows))
    polls = [f["full_polls_per_resync"] for f in per_nic.values()]
    probes = sum(f["probes"] for f in per_nic.values())
    conns = steady["new_connections_per_resync"]
    polls.append(steady["foreign_listings_per_resync"])  # the non-ENI NIC's look: a listing
    print(
        f"   the non-ENI NIC: {steady['foreign_listings_per_resync']:.2f} macs/ listings per "
        f"resync; new TCP connections: {steady['new_connections']} in the window = "
        f"{conns:.2f} per resync_interval; files rewritten: {steady['files_rewritten']}"
    )
    one_poll = all(0.7 <= p <= 1.4 for p in polls) and probes == 0
    met = one_poll and conns < 1.0
    print(
        f"   goal one full poll per NIC per resync_interval, no probes, connections reused: "
        f"polls per resync {min(polls):.2f}-{max(polls):.2f}, {probes} probes, "
        f"{conns:.2f} new connections per resync: {verdict(met)}"
    )
    return [
        {
            "name": "steady state: full polls per NIC per resync (worst NIC), probes, new "
            "TCP connections per resync",
            "value": max(polls),
            "limit": 1,
            "unit": "polls",
            "met": met,
            "key": "steady",
            "detail": {
                "polls_per_resync": [min(polls), max(polls)],
                "probes": probes,
                "new_connections_per_resync": conns,
            },
        }
    ]
