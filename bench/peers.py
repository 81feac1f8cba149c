"""peers: late IPv6 against the same IMDS simulator, nicreconciled versus MODELS of two peers.

One run, one simulator: for each late-field delay D (``ipv6s`` appears D s after the NIC is
added, its subnet has the IPv6 block from the start) three NICs with distinct MACs are added
at once: one is hot-plugged as a veth for the real daemon, the two others are handed to the
schedule MODELS of cloud-init 26.2 hotplug and amazon-ec2-net-utils 2.7.7 (bench/peer_models.py,
run in the simulator's namespace). All D run concurrently; each NIC is observed for
D + WINDOW s after it was added.

"Complete" means the IPv6 address, its policy rule and the IPv6 subnet route in the NIC's
table: for nicreconciled the final file is checked for all three; cloud-init's model renders
complete from a crawl that saw the IPv6; ec2-net-utils' model is "partial" once a run added
the IPv6 rules, as its subnet route comes only with the next start (reboot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import peer_models
from bench.harness import PRIMARY, PYTHON, BenchError, Stack, mono_to_wall_offset, run_with_stack
from bench.report import RESULTS, fmt, table

NAME = "peers"
DELAYS = (1.0, 4.0, 10.0, 45.0, 120.0)
#: Each NIC is observed for D + WINDOW seconds after it was added.
WINDOW = 70.0
NICRECONCILED = "nicreconciled"
TOOLS = (NICRECONCILED, peer_models.CLOUD_INIT, peer_models.NET_UTILS)


@dataclass
class Case:
    n: int
    tool: str
    delay: float
    add_wall: float = math.nan
    #: (wall time, "incomplete" | "partial" | "complete") per render (model: application/run)
    renders: list[tuple[float, str]] = field(default_factory=list)
    #: wall times of this NIC's requests (models: all of them; daemon: paths naming the MAC)
    requests: list[float] = field(default_factory=list)
    final_ok: bool = False
    error: str = ""

    @property
    def mac(self) -> str:
        return f"0a:b4:00:00:00:{self.n:02x}"

    @property
    def ipv6(self) -> str:
        return f"2001:db8:4:{self.n:x}::25"

    @property
    def subnet6(self) -> str:
        return f"2001:db8:4:{self.n:x}::/64"

    @property
    def appeared(self) -> float:
        return self.add_wall + self.delay

    @property
    def end(self) -> float:
        return self.add_wall + self.delay + WINDOW

    def first(self, state: str) -> float:
        return next((t for t, s in self.renders if s == state), math.nan)

    @property
    def complete_at(self) -> float:
        return self.first("complete")

    @property
    def partial_at(self) -> float:
        return self.first("partial")

    @property
    def final_state(self) -> str:
        return self.renders[-1][1] if self.renders else "nothing"

    def requests_until(self, when: float) -> int:
        return sum(1 for t in self.requests if t <= when)

    def spec(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "device_number": self.n,
            "local_ipv4s": [f"10.4.{self.n}.25"],
            "subnet_ipv4_cidr": f"10.4.{self.n}.0/24",
            "subnet_ipv6_cidrs": [self.subnet6],
            "schedule": {"ipv6s": [[self.delay, self.ipv6]]},
        }


def _file_complete(text: str | None, case: Case) -> bool:
    """The daemon's file has the IPv6 address, its policy rule and the IPv6 subnet route."""
    if text is None:
        return False
    doc = yaml.safe_load(text)
    eth = next(iter(doc["network"]["ethernets"].values()))
    addresses = [str(a) for a in eth.get("addresses", [])]
    routes = [str(r.get("to")) for r in eth.get("routes", [])]
    rules = [str(r.get("from")) for r in eth.get("routing-policy", [])]
    return f"{case.ipv6}/64" in addresses and case.subnet6 in routes and f"{case.ipv6}/128" in rules


def _mac_of(path: str) -> str | None:
    parts = path.split("/")
    if "macs" in parts:
        i = parts.index("macs")
        if i + 1 < len(parts) and parts[i + 1]:
            return parts[i + 1]
    return None


async def _read_line(proc: asyncio.subprocess.Process, timeout: float, what: str) -> str:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        raise BenchError(f"peer models: no {what} after {timeout:g} s") from None
    if not line:
        raise BenchError(f"peer models exited (status {proc.returncode}) before {what}")
    return line.decode()


async def _bench(stack: Stack, delays: tuple[float, ...]) -> dict[str, Any]:
    await stack.start_daemon()
    await stack.wait_ready()
    models = await stack.spawn_piped(
        [PYTHON, "-m", "bench.peer_models"], stack.tmp / "peer-models.log"
    )
    await _read_line(models, 20, "ready line")
    cases = [Case(1 + i * len(TOOLS) + j, tool, d) for i, d in enumerate(delays)
             for j, tool in enumerate(TOOLS)]  # fmt: skip
    await stack.sim.reset_stats()
    for case in cases:
        case.add_wall = time.time()
        await stack.sim.add_nic(case.spec())
    ours = [c for c in cases if c.tool == NICRECONCILED]
    await stack.plug_many((f"pe{c.n}", c.mac, f"pep{c.n}") for c in ours)
    job = {
        "imds": "http://127.0.0.1:8080",
        "primary": PRIMARY,
        "seed": 1,
        "nics": [
            {"tool": c.tool, "mac": c.mac, "delay": c.delay, "t0": c.add_wall,
             "ipv6": c.ipv6, "end": c.end}
            for c in cases if c.tool != NICRECONCILED
        ],
    }  # fmt: skip
    assert models.stdin is not None
    models.stdin.write((json.dumps(job) + "\n").encode())
    await models.stdin.drain()
    last = max(c.end for c in cases)
    print(f"   observing until D + {WINDOW:g} s: {last - time.time():.0f} s", flush=True)
    while time.time() < last:
        await asyncio.sleep(min(1.0, max(0.0, last - time.time())))
        stack.log.refresh()
        stack.check_alive()
    result = json.loads(await _read_line(models, 30, "result"))
    stats = await stack.sim.stats(log=True)
    offset = mono_to_wall_offset()
    stack.log.refresh()
    texts = {c.mac: stack.file_text(c.mac) for c in ours}
    return {"cases": cases, "models": result, "log": stats["log"], "offset": offset,
            "texts": texts, "events": list(stack.log.events)}  # fmt: skip


def _analyse(raw: dict[str, Any]) -> dict[str, Any]:
    cases: list[Case] = raw["cases"]
    by_mac = {c.mac: c for c in cases}
    offset: float = raw["offset"]
    model_requests = 0
    for nic in raw["models"]:
        case = by_mac[nic["mac"]]
        case.renders = [(float(r["t"]), str(r["state"])) for r in nic["renders"]]
        case.requests = [float(r[0]) for r in nic["requests"]]
        model_requests += len(nic["requests"])
        case.final_ok = case.final_state == "complete"
    ours = [c for c in cases if c.tool == NICRECONCILED]
    daemon_macs = {c.mac: c for c in ours}
    per_mac_daemon = 0
    for entry in raw["log"]:
        mac = _mac_of(str(entry["path"]))
        if mac in daemon_macs:
            daemon_macs[mac].requests.append(float(entry["t"]) + offset)
            per_mac_daemon += 1
    shared = len(raw["log"]) - model_requests - per_mac_daemon
    events: list[dict[str, Any]] = raw["events"]
    for case in ours:
        flags: dict[str, list[str]] = {}
        for event in events:
            if event.get("mac") != case.mac:
                continue
            if event.get("event") == "fingerprint_changed":
                flags[str(event["fingerprint"])] = list(event.get("flags", []))
            elif event.get("event") == "rendered":
                pending = "ipv6-pending" in flags.get(str(event["fingerprint"]), ["?"])
                state = "incomplete" if pending else "complete"
                case.renders.append((float(event["timestamp"]), state))
        case.final_ok = _file_complete(raw["texts"][case.mac], case)
        if case.renders and case.final_state == "complete" and not case.final_ok:
            case.error = "last render judged complete but the file lacks the IPv6 parts"
    return {"shared_daemon_requests": shared, "model_requests": model_requests,
            "daemon_requests": len(raw["log"]) - model_requests}  # fmt: skip


def _row(case: Case, shared_per_nic: float) -> dict[str, Any]:
    extra = shared_per_nic if case.tool == NICRECONCILED else 0.0
    done = case.complete_at
    return {
        "tool": case.tool,
        "delay_s": case.delay,
        "mac": case.mac,
        "ends_complete": case.final_ok,
        "final_state": case.final_state,
        "complete_after_d_s": done - case.appeared,
        "partial_after_d_s": case.partial_at - case.appeared,
        "renders": len(case.renders),
        "renders_without_ipv6": sum(1 for _t, s in case.renders if s == "incomplete"),
        "requests_until_complete": (
            case.requests_until(done) + extra if not math.isnan(done) else math.nan
        ),
        "requests_in_window": case.requests_until(case.end) + extra,
        "window_s": case.delay + WINDOW,
        "renders_at_s": [(t - case.add_wall, s) for t, s in case.renders],
        "error": case.error,
    }


def _verdict(row: dict[str, Any]) -> str:
    if row["ends_complete"]:
        return "yes"
    if row["final_state"] == "partial":
        return "partial: no IPv6 subnet route until reboot"
    return "no"


def _markdown(rows: list[dict[str, Any]], shared: int) -> str:
    lines = [
        "# peers: late IPv6, nicreconciled versus schedule MODELS of two peers",
        "",
        "cloud-init and amazon-ec2-net-utils rows are **MODELS** (bench/peer_models.py) that",
        "poll the same IMDS simulator with the peers' documented cadence and request pattern;",
        "they are not the real tools. nicreconciled is the real daemon (default configuration).",
        f"Each NIC is observed for D + {WINDOW:g} s after it was added; all D run concurrently.",
        "",
        "| D s | tool | ends complete | complete after D, s | renders (w/o IPv6) "
        "| requests until complete | requests in window |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        after = r["complete_after_d_s"]
        done = fmt(after, 1) if not math.isnan(after) else "never"
        if math.isnan(after) and not math.isnan(r["partial_after_d_s"]):
            done = f"never (IPv6 rules +{r['partial_after_d_s']:.1f})"
        until = r["requests_until_complete"]
        lines.append(
            f"| {r['delay_s']:g} | {r['tool']} | {_verdict(r)} | {done} "
            f"| {r['renders']} ({r['renders_without_ipv6']}) "
            f"| {fmt(until, 1) if not math.isnan(until) else '-'} "
            f"| {r['requests_in_window']:.1f} |"
        )
    lines += [
        "",
        "- complete after D: first render that was complete (IPv6 address, its policy rule and "
        "the IPv6 subnet route) minus the moment the IPv6 appeared in IMDS.",
        "- renders: daemon `rendered` events (files written), model applications/runs.",
        "- requests: the models count their own (token PUTs and 404s included); nicreconciled "
        "counts simulator log entries naming the MAC, plus an equal share of its "
        f"{shared} shared requests (token, meta-data/mac) over the run.",
        "- amazon-ec2-net-utils (MODEL): IPv6 rules at the next refresh, the per-ENI IPv6 "
        "subnet route only at the next start (FACTS.md), so never complete after a late "
        "IPv6; the model assumes the kernel holds the IPv6 as soon as IMDS lists it.",
        "- cloud-init (MODEL): renders right after its crawl; the real tool needs another "
        "~0.1-0.8 s per application (FACTS.md measured +4.9/+1.8/+1.1 s for D = 1/4/10).",
        "",
    ]
    return "\n".join(lines)


def comparison(rows: list[dict[str, Any]]) -> str:
    """README's "Compared with the tools people use today" table: the measured rows from this
    run (late IPv6 per D, requests), the others from the peers' code and trackers (FACTS.md)
    and the daemon's configuration defaults."""
    from nicreconciled.config import PollingConfig

    polling = PollingConfig()
    tools = (peer_models.CLOUD_INIT, peer_models.NET_UTILS, NICRECONCILED)

    def late(tool: str) -> str:
        parts = []
        for r in sorted((r for r in rows if r["tool"] == tool), key=lambda r: r["delay_s"]):
            after, partial = r["complete_after_d_s"], r["partial_after_d_s"]
            if not math.isnan(after):
                parts.append(f"D={r['delay_s']:g}: +{after:.1f} s")
            elif not math.isnan(partial):
                parts.append(f"D={r['delay_s']:g}: never (rules +{partial:.0f} s)")
            else:
                parts.append(f"D={r['delay_s']:g}: never")
        return "; ".join(parts) or "-"

    def load(tool: str) -> str:
        mine = [r for r in rows if r["tool"] == tool]
        if not mine:
            return "-"
        window = [r["requests_in_window"] for r in mine]
        until = [r["requests_until_complete"] for r in mine]
        until = [v for v in until if not math.isnan(v)]
        text = f"{min(window):.0f}-{max(window):.0f} requests in D + {WINDOW:g} s"
        if until:
            text += f" ({min(until):.0f}-{max(until):.0f} until complete)"
        return text

    static = {
        "when it looks": (
            "at the udev event, then every 5 s for 30 s",
            "at the udev event, then a timer every ~60 s",
            f"until stable ({polling.initial_interval:g} s confirmations, "
            f"{polling.probe_interval:g} s probes), then every `resync_interval`, SIGHUP, udev",
        ),
        "what it rewrites": (
            "the whole netplan file, in place, then a global `netplan apply`",
            "networkd drop-ins on md5 change, reload if changed",
            "one file per NIC, atomically, only on change; reload of that NIC only",
        ),
        "transient IMDS errors": (
            "-",
            "once deleted a NIC's secondary-address config (#161)",
            "never change a file",
        ),
        "detach": (
            "nothing cleans up (the udev `remove` action was dropped in 26.2, PR #6152)",
            "config deliberately left behind (since 2.5.0)",
            "file removed once the NIC is gone and unlisted",
        ),
    }
    names = {
        peer_models.CLOUD_INIT: "cloud-init 26.2 hotplug (model)",
        peer_models.NET_UTILS: "amazon-ec2-net-utils 2.7.7 (model)",
        NICRECONCILED: "nicreconciled",
    }
    lines = ["| | " + " | ".join(names[t] for t in tools) + " |", "|---|---|---|---|"]
    lines.append("| when it looks | " + " | ".join(static["when it looks"]) + " |")
    lines.append(
        "| late IPv6: complete (address, rule, subnet route) after it appears, D s after attach "
        "(measured) | " + " | ".join(late(t) for t in tools) + " |"
    )
    lines.append(
        "| IMDS requests per hot-plug (measured) | " + " | ".join(load(t) for t in tools) + " |"
    )
    for key in ("what it rewrites", "transient IMDS errors", "detach"):
        lines.append(f"| {key} | " + " | ".join(static[key]) + " |")
    return "\n".join(lines) + "\n"


_COLOURS = {"incomplete": "#d9534f", "partial": "#f0ad4e", "complete": "#5cb85c"}


def plot(rows: list[dict[str, Any]], delays: tuple[float, ...], path: Path) -> bool:
    """The timeline PNG; False (and a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        print(
            "   matplotlib is not installed: skipping the plot (bench/results/peers.png). "
            "Install it with: pip install -e '.[bench]'"
        )
        return False
    fig, axes = plt.subplots(len(delays), 1, figsize=(12, 2.0 * len(delays) + 1.4))
    axes_list = list(axes) if len(delays) > 1 else [axes]
    labels = {NICRECONCILED: "nicreconciled (real daemon)",
              peer_models.CLOUD_INIT: "cloud-init 26.2 hotplug\n(MODEL)",
              peer_models.NET_UTILS: "amazon-ec2-net-utils 2.7.7\n(MODEL)"}  # fmt: skip
    for ax, delay in zip(axes_list, delays, strict=True):
        group = [r for r in rows if r["delay_s"] == delay]
        end = delay + WINDOW
        for y, row in enumerate(reversed(group)):
            renders = row["renders_at_s"]
            for k, (t, state) in enumerate(renders):
                until = renders[k + 1][0] if k + 1 < len(renders) else end
                ax.barh(y, until - t, left=t, height=0.5, color=_COLOURS[state], alpha=0.35,
                        linewidth=0)  # fmt: skip
                ax.plot([t], [y], marker="o", markersize=5, color=_COLOURS[state],
                        markeredgecolor="black", markeredgewidth=0.6, linestyle="none")  # fmt: skip
            after = row["complete_after_d_s"]
            if not math.isnan(after):
                note = f"complete +{after:.1f} s"
            elif not math.isnan(row["partial_after_d_s"]):
                note = f"rules +{row['partial_after_d_s']:.1f} s, route never"
            else:
                note = "never complete"
            note += f"\n{row['requests_in_window']:.0f} req"
            ax.text(end * 1.01, y, note, va="center", fontsize=8)
        ax.axvline(delay, color="#337ab7", linestyle="--", linewidth=1.2)
        ax.set_yticks(range(len(group)))
        ax.set_yticklabels([labels[r["tool"]] for r in reversed(group)], fontsize=8)
        ax.set_xlim(0, end)
        ax.set_ylim(-0.6, len(group) - 0.4)
        ax.set_title(f"ipv6s appears D = {delay:g} s after attach (window D + {WINDOW:g} s)",
                     fontsize=9, loc="left")  # fmt: skip
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes_list[-1].set_xlabel("seconds since the NIC was attached (added to IMDS)")
    handles = [
        Line2D([], [], marker="o", linestyle="none", color="grey", markeredgecolor="black",
               label="render / run (colour = what it left configured)"),
        Patch(color=_COLOURS["incomplete"], alpha=0.5, label="no IPv6 (white: nothing yet)"),
        Patch(color=_COLOURS["partial"], alpha=0.6, label="IPv6 rules, no IPv6 subnet route"),
        Patch(color=_COLOURS["complete"], alpha=0.5, label="complete"),
        Line2D([], [], color="#337ab7", linestyle="--", label="IPv6 appears in IMDS"),
    ]  # fmt: skip
    height = fig.get_figheight()
    fig.suptitle(
        "Late IPv6: nicreconciled vs schedule MODELS of cloud-init and amazon-ec2-net-utils "
        "(same IMDS simulator)", fontsize=10, y=1 - 0.12 / height,
    )  # fmt: skip
    fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.38 / height))  # fmt: skip
    fig.tight_layout(rect=(0, 0, 0.9, 1 - 0.75 / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(*, delays: tuple[float, ...] = DELAYS) -> dict[str, Any]:
    print(
        f"== peers: ipv6s appears D = {', '.join(f'{d:g}' for d in delays)} s after attach; "
        f"nicreconciled (real daemon) vs MODELS of cloud-init 26.2 hotplug and "
        f"amazon-ec2-net-utils 2.7.7; one simulator, all D concurrently, D + {WINDOW:g} s each",
        flush=True,
    )
    raw = run_with_stack(NAME, lambda stack: _bench(stack, delays))
    counts = _analyse(raw)
    cases: list[Case] = raw["cases"]
    ours = [c for c in cases if c.tool == NICRECONCILED]
    shared_per_nic = counts["shared_daemon_requests"] / max(1, len(ours))
    rows = [_row(c, shared_per_nic) for c in cases]
    print()
    print(
        table(
            ["D s", "tool", "ends complete", "complete after D s", "renders", "w/o IPv6",
             "req until complete", "req in window"],
            [[f"{r['delay_s']:g}", r["tool"], _verdict(r), r["complete_after_d_s"],
              r["renders"], r["renders_without_ipv6"], r["requests_until_complete"],
              r["requests_in_window"]] for r in rows],
        )
    )  # fmt: skip
    print(
        "   (MODEL) rows are schedule models of the peers, not the real tools "
        "(bench/peer_models.py); nicreconciled is the real daemon.\n"
        "   nicreconciled requests include an equal share of its "
        f"{counts['shared_daemon_requests']} shared requests (token, meta-data/mac)."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = RESULTS / "peers.md"
    md.write_text(_markdown(rows, counts["shared_daemon_requests"]))
    (RESULTS / "comparison.md").write_text(comparison(rows))
    png = RESULTS / "peers.png"
    plotted = plot(rows, delays, png)
    print(f"   table: {md}" + (f"; timeline: {png}" if plotted else ""))
    errors = [f"{r['tool']} D={r['delay_s']:g}: {r['error']}" for r in rows if r["error"]]
    for line in errors:
        print(f"   !! {line}")
    with contextlib.suppress(OSError):
        if not plotted and png.exists():
            png.unlink()  # a stale picture would not match this run's table
    return {
        "method": {
            "delays_s": list(delays),
            "window_after_d_s": WINDOW,
            "models": {
                peer_models.CLOUD_INIT: "full crawl of "
                f"{peer_models.CRAWL_REQUESTS} requests at the event, then "
                f"{peer_models.CI_RETRY_PAUSE:g} s after each application ended while the next "
                f"starts within {peer_models.CI_RETRY_WINDOW:g} s; renders what it saw",
                peer_models.NET_UTILS: f"run at the event; refresh at "
                f"{peer_models.NU_FIRST_REFRESH:g} s + U(0, {peer_models.NU_RANDOM_DELAY:g}) s, "
                f"then {peer_models.NU_REFRESH:g} s + U(0, {peer_models.NU_RANDOM_DELAY:g}) s "
                "after each refresh ended; IPv6 rules from a refresh, IPv6 subnet route only "
                "from the first run",
            },
            "nicreconciled": "real daemon, default configuration (as in convergence)",
        },
        "rows": rows,
        "requests": counts,
        "table_md": str(md),
        "plot_png": str(png) if plotted else None,
        "errors": errors,
    }
