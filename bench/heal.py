"""Deletion -> healed, and what the kernel watch costs on a busy host (issue 17).

In the project's network lab, per manager (the real systemd-networkd with the netplan
renderer, the real NetworkManager with the keyfile renderer): one ENI complete in the
kernel, then TRIALS times another program deletes every rule of the ENI (both families) and
flushes its table T (both families) in one ``ip -batch``; the time from just before that
command to the moment the kernel holds the ENI's whole promise again (``promise.py``: the
daemon's own definition, read from its status file, compared by ``system/kernelstate.py``
from inside the instance's network namespace every 5 ms).

Then the watch's cost: CHURN seconds of ROUTE_RATE route changes per second in a table that
is not ours (a container host's CNI adding and removing routes), against as long with no
churn; the daemon's CPU time (utime + stime of its process) in each window, as a share of
one core.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import BenchError
from bench.kernel import _setns
from bench.report import summary, table
from nicreconciled.lab import Eni, Lab, LabError, missing_state, missing_tools
from nicreconciled.lab.base import Manager
from nicreconciled.promise import Promise
from nicreconciled.system import kernelstate

TRIALS = 30
CHURN = 20.0
ROUTE_RATE = 1000
GOAL_P50, GOAL_P99, GOAL_CPU = 0.3, 1.0, 0.05
PRIMARY_MAC, PRIMARY_IPV4 = "0a:00:00:00:00:01", "10.0.0.10"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """This thread in network namespace NAME (sockets made meanwhile stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(own)
        os.close(own)
        os.close(target)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _promise(lab: Lab, eni: Eni) -> Promise:
    """The promise the daemon recorded for ENI (saved at the end of the pass that applied)."""
    path = lab.workdir / "state" / "nics" / f"{eni.mac.replace(':', '')}.json"

    def recorded() -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            found: dict[str, Any] | None = json.loads(path.read_text()).get("promise")
            return found
        return None

    return Promise.from_json(lab.wait_for(recorded, 10, f"{eni.mac}'s promise recorded"))


def _ifindex(lab: Lab, ifname: str) -> int:
    return int(lab.ip_json("link", "show", "dev", ifname)[0]["ifindex"])


def _trial(lab: Lab, eni: Eni, promise: Promise, index: int) -> float:
    t = str(promise.table)
    scripts = {}
    for family in ("-4", "-6"):
        rules = [r for r in promise.rules if (":" in r.source) == (family == "-6")]
        scripts[family] = (
            "".join(f"rule del from {r.source} lookup {t} priority {r.priority}\n" for r in rules)
            + f"route flush table {t}\n"
        )
    with in_netns(lab.instance):
        t0 = time.monotonic()
        for family, script in scripts.items():
            subprocess.run(["ip", family, "-batch", "-"], input=script, text=True, check=True)
        deadline = t0 + 20
        while True:
            if not promise.missing(kernelstate.read(index, promise)):
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise BenchError(f"not healed after 20 s:\n{lab.diagnostics()}")
            time.sleep(0.005)


def _churn(lab: Lab, seconds: float, rate: int) -> int:
    """ROUTE_RATE route changes a second in table 300 via the primary NIC (not ours)."""
    proc = subprocess.Popen(
        ["ip", "-n", lab.instance, "-force", "-batch", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    sent, began, tick = 0, time.monotonic(), 0.05
    n = 0
    try:
        while time.monotonic() - began < seconds:
            lines = []
            for _ in range(int(rate * tick) // 2):
                dst = f"198.18.{(n >> 8) & 255}.{n & 255}/32"
                lines.append(f"route add {dst} via 10.0.0.1 dev eth0 table 300\n")
                lines.append(f"route del {dst} table 300\n")
                n += 1
            proc.stdin.write("".join(lines))
            proc.stdin.flush()
            sent += len(lines)
            time.sleep(max(0.0, began + sent / rate - time.monotonic()))
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    return sent


def _run_lab(manager: Manager, trials: int, churn: float) -> dict[str, Any]:
    if missing_tools(manager):
        raise BenchError(f"{manager}: not installed: {', '.join(missing_tools(manager))}")
    work = Path(tempfile.mkdtemp(prefix="nicr-bench-heal-"))
    try:
        with Lab(manager, work / "lab", tag="bench-heal") as lab:
            lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
            sim = lab.start_sim()
            sim.add_nic(
                {
                    "mac": PRIMARY_MAC,
                    "device_number": 0,
                    "local_ipv4s": [PRIMARY_IPV4],
                    "subnet_ipv4_cidr": "10.0.0.0/24",
                }
            )
            sim.set_primary(PRIMARY_MAC)
            daemon = lab.start_daemon(kernel={"heal_limit": 1000})
            eni = Eni.plan(1)
            sim.add_nic(eni.spec())
            eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24, eni.subnet6)
            lab.wait_for(lambda: not missing_state(lab, eni), 30, "the ENI complete")
            lab.wait_for(lambda: lab.dhcp_acks(eni.nic) > 0, 30, "the ENI's lease")  # type: ignore[arg-type]
            promise = _promise(lab, eni)
            # Drift is what goes missing after the daemon saw the promise whole: from then on.
            lab.wait_for(lambda: daemon.events("kernel_complete", mac=eni.mac), 10, "complete")
            index = _ifindex(lab, eni.ifname)
            healed: list[float] = []
            for k in range(trials):
                t_start = time.time()
                healed.append(_trial(lab, eni, promise, index))
                if healed[-1] > 1 and os.environ.get("NICR_BENCH_KEEP"):
                    out = Path(os.environ["NICR_BENCH_KEEP"]) / f"slow-{manager}-{k}.log"
                    out.write_text(f"trial started {t_start}\n" + daemon.log.read_text())
                # The next deletion only once the heal is over (the daemon said so).
                lab.wait_for(
                    lambda k=k: len(daemon.events("kernel_healed")) > k, 10, "kernel_healed"
                )
            took = [float(e["took"]) for e in daemon.events("kernel_healed")]
            heals = len(daemon.events("heal"))
            pid = daemon.pid
            quiet0 = cpu_seconds(pid)
            t0 = time.monotonic()
            time.sleep(churn)  # the idle window: nothing happens, which is what is measured
            quiet = (cpu_seconds(pid) - quiet0) / (time.monotonic() - t0)
            busy0 = cpu_seconds(pid)
            t1 = time.monotonic()
            sent = _churn(lab, churn, ROUTE_RATE)
            elapsed = time.monotonic() - t1
            busy = (cpu_seconds(pid) - busy0) / elapsed
            lab.wait_for(lambda: not missing_state(lab, eni), 10, "the ENI still complete")
            return {
                "healed_s": summary(healed),
                "daemon_took_s": summary(took),
                "heals": heals,
                "trials": trials,
                "raw_healed_s": healed,
                "idle_cpu": quiet,
                "churn_cpu": busy,
                "churn_rate": sent / elapsed,
                "heals_during_churn": len(daemon.events("heal")) - heals,
            }
    except (LabError, AssertionError) as exc:  # LabTimeout is an AssertionError
        raise BenchError(f"{manager} lab: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def managers_to_run() -> tuple[Manager, ...]:
    """Both managers; NICR_BENCH_MANAGERS=nm (or networkd) narrows it when investigating."""
    chosen = os.environ.get("NICR_BENCH_MANAGERS", "networkd,nm").split(",")
    return tuple(m for m in ("networkd", "nm") if m in chosen)  # type: ignore[misc]


def run(*, trials: int = TRIALS, churn: float = CHURN) -> dict[str, Any]:
    managers: dict[str, Any] = {}
    for manager in managers_to_run():
        print(f"== heal: {manager}, {trials} trials, then {churn:g} s of churn", flush=True)
        managers[manager] = _run_lab(manager, trials, churn)
    rows = []
    targets = []
    for manager, r in managers.items():
        h = r["healed_s"]
        rows.append(
            [
                manager,
                h["n"],
                h["p50"],
                h["p99"],
                h["max"],
                r["heals"],
                f"{100 * r['idle_cpu']:.2f} %",
                f"{100 * r['churn_cpu']:.2f} % at {r['churn_rate']:.0f}/s",
            ]
        )
        targets += [
            {
                "name": f"heal p50 ({manager})",
                "value": h["p50"],
                "unit": "s",
                "limit": GOAL_P50,
                "met": h["p50"] <= GOAL_P50,
            },
            {
                "name": f"heal p99 ({manager})",
                "value": h["p99"],
                "unit": "s",
                "limit": GOAL_P99,
                "met": h["p99"] <= GOAL_P99,
            },
            {
                "name": f"watch CPU, {ROUTE_RATE} foreign route changes/s ({manager})",
                "value": r["churn_cpu"],
                "unit": "core",
                "limit": GOAL_CPU,
                "met": r["churn_cpu"] <= GOAL_CPU,
            },
        ]
    print(
        table(
            ["manager", "n", "p50 s", "p99 s", "max s", "heals", "idle CPU", "CPU under churn"],
            rows,
        )
    )
    print(
        f"   goals: p50 <= {GOAL_P50} s, p99 <= {GOAL_P99} s, "
        f"<= {100 * GOAL_CPU:.0f} % of a core under churn"
    )
    return {"managers": managers, "targets": targets}
