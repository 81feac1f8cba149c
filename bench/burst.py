"""burst: 20 NICs attached within a second; time to all files, and the peak IMDS request rate.

All 20 NICs are put in the simulator first (complete, dual-stack metadata), then the 20
veths are created by one ``ip -batch`` process, as fast as the kernel takes them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from bench.harness import Stack, mono_to_wall_offset, run_with_stack
from bench.report import bucket_peak, sliding_peak, summary, table, verdict

NAME = "burst"
NICS = 20
PEAK_TARGET = 200
TIMEOUT = 60.0


def _mac(n: int) -> str:
    return f"0a:b2:00:00:00:{n:02x}"


def _spec(n: int) -> dict[str, Any]:
    return {
        "mac": _mac(n),
        "device_number": n,
        "local_ipv4s": [f"10.2.{n}.25"],
        "subnet_ipv4_cidr": f"10.2.{n}.0/24",
        "ipv6s": [f"2001:db8:2:{n:x}::25"],
        "subnet_ipv6_cidrs": [f"2001:db8:2:{n:x}::/64"],
    }


async def _bench(stack: Stack, count: int) -> dict[str, Any]:
    await stack.start_daemon()
    await stack.wait_ready()
    numbers = range(1, count + 1)
    for n in numbers:
        await stack.sim.add_nic(_spec(n))
    await stack.sim.reset_stats()
    macs = [_mac(n) for n in numbers]
    first_attach = time.time()
    await stack.plug_many((f"bu{n}", _mac(n), f"bup{n}") for n in numbers)
    all_created = time.time()

    def all_written() -> bool:
        return all(stack.log.named("rendered", mac=mac) for mac in macs)

    await stack.wait_for(all_written, TIMEOUT, f"files for all {count} NICs")
    written = {mac: float(stack.log.named("rendered", mac=mac)[0]["timestamp"]) for mac in macs}
    added = {
        mac: float(e["timestamp"])
        for mac in macs
        if (e := stack.log.first("nic_added", mac=mac)) is not None
    }
    bad = [
        mac
        for n, mac in zip(numbers, macs, strict=True)
        if f"10.2.{n}.25" not in (stack.file_text(mac) or "")
    ]
    stats = await stack.sim.stats(log=True)
    offset = mono_to_wall_offset()
    times = [float(e["t"]) + offset for e in stats["log"]]
    return {
        "first_attach": first_attach,
        "all_created": all_created,
        "written": written,
        "added": added,
        "bad_files": bad,
        "request_times": times,
        "by_status": stats["by_status"],
    }


def run(*, count: int = NICS) -> dict[str, Any]:
    print(f"== burst: {count} NICs in IMDS first, then {count} veths created by one ip -batch")
    raw = run_with_stack(NAME, lambda stack: _bench(stack, count))
    first = raw["first_attach"]
    written: dict[str, float] = raw["written"]
    added: dict[str, float] = raw["added"]
    times: list[float] = raw["request_times"]
    last_file = max(written.values())
    all_files = last_file - first
    attach_span = raw["all_created"] - first
    udev_span = max(added.values()) - min(added.values()) if added else math.nan
    per_nic = summary([written[m] - added[m] for m in written if m in added])
    peak, peak_start = sliding_peak(times)
    bucketed = bucket_peak(times)
    busy = max(times) - min(times) if times else math.nan
    requests_to_last = sum(1 for t in times if t <= last_file)
    print()
    print(
        table(
            ["figure", "value"],
            [
                ["veths created (first attach -> ip -batch done), s", attach_span],
                ["kernel add events seen by the daemon, spread s", udev_span],
                ["first attach -> all 20 files written, s", all_files],
                ["per NIC: nic_added -> file written, p50 s", per_nic["p50"]],
                ["per NIC: nic_added -> file written, max s", per_nic["max"]],
                ["IMDS requests until the last file", requests_to_last],
                ["IMDS requests per NIC until the last file", requests_to_last / len(written)],
                ["peak IMDS requests in any 1 s window (sliding)", peak],
                ["peak IMDS requests in a 1 s bucket", bucketed],
                ["span of all IMDS requests, s", busy],
            ],
        )
    )
    if raw["bad_files"]:
        print(f"   files missing their IPv4: {', '.join(raw['bad_files'])}")
    print(f"   answers by status: {raw['by_status']}")
    met = peak <= PEAK_TARGET and not raw["bad_files"]
    print(f"   target peak <= {PEAK_TARGET} req/s: {peak} req/s: {verdict(met)}")
    return {
        "nics": count,
        "attach_span_s": attach_span,
        "udev_span_s": udev_span,
        "first_attach_to_all_files_s": all_files,
        "per_nic_added_to_file_s": per_nic,
        "requests_until_last_file": requests_to_last,
        "peak_requests_1s_sliding": peak,
        "peak_window_start_offset_s": peak_start - first,
        "peak_requests_1s_bucket": bucketed,
        "requests_by_status": raw["by_status"],
        "bad_files": raw["bad_files"],
        "targets": [
            {
                "name": "burst peak IMDS requests per second",
                "value": float(peak),
                "limit": PEAK_TARGET,
                "unit": "req/s",
                "met": met,
            }
        ],
    }
