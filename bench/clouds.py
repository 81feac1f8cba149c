"""clouds: the same burst on every cloud whose simulator answers for many NICs.

Per cloud (EC2, OCI, OpenStack), a daemon of its own with the default polling
configuration: NICS complete dual-stack NICs put in the simulator, then their veths created
by one ``ip -batch``. Figures: time from the first attach until every file is written (each
checked for its IPv4 and IPv6 address), and the metadata requests it took, in all and per
NIC. EC2 asks per NIC (a few keys per poll); OCI and OpenStack answer every NIC with one
document, which a burst shares (``sources/common.py`` SharedAnswer).

Then the steady state: with a 2 s ``resync_interval``, the requests over STEADY seconds
after convergence, per NIC re-check (NICS x STEADY / RESYNC of them): EC2 asks a few keys
per NIC; the listed clouds' NICs re-check on one daemon-wide schedule and share a document.
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import BenchError, Stack, run_with_stack
from bench.report import table, verdict
from nicreconciled.sim import simulator_class

NAME = "clouds"
CLOUDS = ("ec2", "oci", "openstack")
NICS = 20
TIMEOUT = 60.0
#: Goal: every file of the burst written within this many seconds of the first attach.
ALL_FILES_GOAL = 1.5
#: Goal for the clouds that list every NIC in one document: requests until all 20 files are
#: written, at most this many per NIC (EC2 needs several per NIC, one per key).
SHARED_PER_NIC_GOAL = 1.0
#: Goal for the same clouds once converged: their NICs re-check on one schedule
#: (Source.ONE_ANSWER), so a re-check costs well under one request per NIC.
SHARED_STEADY_GOAL = 0.2
RESYNC = 2.0
STEADY = 10.0


def _mac(n: int) -> str:
    return f"02:00:17:b1:00:{n:02x}"


def _plan(n: int) -> dict[str, Any]:
    return {
        "mac": _mac(n),
        "device_number": n,
        "ipv4s": [f"10.2.{n}.25"],
        "subnet4": f"10.2.{n}.0/24",
        "gateway4": f"10.2.{n}.1",
        "ipv6s": [f"2001:db8:2:{n:x}::25"],
        "subnet6": f"2001:db8:2:{n:x}::/64",
        "gateway6": f"2001:db8:2:{n:x}::1",
    }


def _spec(cloud: str, n: int) -> dict[str, Any]:
    plan = _plan(n)
    if cloud == "ec2":
        return {
            "mac": plan["mac"],
            "device_number": n,
            "local_ipv4s": plan["ipv4s"],
            "subnet_ipv4_cidr": plan["subnet4"],
            "ipv6s": plan["ipv6s"],
            "subnet_ipv6_cidrs": [plan["subnet6"]],
        }
    spec: dict[str, Any] = simulator_class(cloud).lab_spec(plan)
    return spec


async def _burst(stack: Stack) -> dict[str, Any]:
    await stack.start_daemon(resync_interval=RESYNC)
    await stack.wait_ready()
    numbers = range(1, NICS + 1)
    for n in numbers:
        await stack.sim.add_nic(_spec(stack.cloud, n))
    await stack.sim.reset_stats()
    first_attach = time.time()
    await stack.plug_many((f"cb{n}", _mac(n), f"cbp{n}") for n in numbers)

    def complete(n: int) -> bool:
        text = stack.file_text(_mac(n)) or ""
        plan = _plan(n)
        return f"{plan['ipv4s'][0]}/24" in text and f"{plan['ipv6s'][0]}/64" in text

    await stack.wait_for(lambda: all(map(complete, numbers)), TIMEOUT, f"{NICS} files")
    written = max(float(stack.log.named("rendered", mac=_mac(n))[-1]["timestamp"]) for n in numbers)
    burst_requests = int((await stack.sim.stats(log=False))["requests"])

    # Steady state: every NIC converged; count what the resyncs cost.
    def converged() -> bool:
        return all(
            any(e.get("phase") == "converged" for e in stack.log.named("accepted", mac=_mac(n)))
            for n in numbers
        )

    await stack.wait_for(converged, TIMEOUT, "every NIC converged")
    await stack.sim.reset_stats()
    started = time.monotonic()
    await stack.wait_for(lambda: time.monotonic() - started >= STEADY, STEADY + 5, "steady")
    steady = int((await stack.sim.stats(log=False))["requests"])
    # Each NIC re-checks every RESYNC s (+-20 % jitter): NICS * STEADY / RESYNC full polls.
    polls = NICS * STEADY / RESYNC
    return {
        "cloud": stack.cloud,
        "all_files_s": written - first_attach,
        "burst_requests": burst_requests,
        "burst_requests_per_nic": burst_requests / NICS,
        "steady_requests": steady,
        "steady_requests_per_nic_resync": steady / polls,
    }


def run() -> dict[str, Any]:
    results = [run_with_stack(f"clouds-{c}", _burst, cloud=c) for c in CLOUDS]
    rows = []
    for r in results:
        rows.append(
            [
                r["cloud"],
                f"{r['all_files_s']:.2f} s",
                f"{r['burst_requests']} ({r['burst_requests_per_nic']:.2f}/NIC)",
                f"{r['steady_requests_per_nic_resync']:.2f}",
            ]
        )
    print(f"\n{NICS} dual-stack NICs hot-plugged at once, per cloud (default polling):")
    print(
        table(
            ["cloud", "all files written", "requests until then", "requests per NIC re-check"],
            rows,
        )
    )
    targets: list[dict[str, Any]] = []
    for r in results:
        targets.append(
            {
                "name": f"clouds: {r['cloud']}, {NICS} NICs at once, all files written",
                "value": r["all_files_s"],
                "limit": ALL_FILES_GOAL,
                "unit": "s",
                "met": r["all_files_s"] <= ALL_FILES_GOAL,
            }
        )
        if r["cloud"] != "ec2":
            targets.append(
                {
                    "name": f"clouds: {r['cloud']}, requests per NIC until all written (shared)",
                    "value": r["burst_requests_per_nic"],
                    "limit": SHARED_PER_NIC_GOAL,
                    "unit": "req",
                    "met": r["burst_requests_per_nic"] <= SHARED_PER_NIC_GOAL,
                }
            )
            targets.append(
                {
                    "name": f"clouds: {r['cloud']}, steady requests per NIC re-check (shared)",
                    "value": r["steady_requests_per_nic_resync"],
                    "limit": SHARED_STEADY_GOAL,
                    "unit": "req",
                    "met": r["steady_requests_per_nic_resync"] <= SHARED_STEADY_GOAL,
                }
            )
    for t in targets:
        print(f"   {t['name']}: {t['value']:.2f} {t['unit']} (goal <= {t['limit']:g}): "
              f"{verdict(t['met'])}")  # fmt: skip
    if not results:
        raise BenchError("no cloud ran")
    return {"nics": NICS, "resync_interval": RESYNC, "results": results, "targets": targets}
