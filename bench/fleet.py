"""fleet: 1,000 reconcilers against one CloudStack virtual router through a VR outage.

A guest network's VR serves the metadata of every VM on it. Here one ``VrSim`` on 127.0.0.1
stands for that VR, and each of VMS simulated VMs, all in this process, runs what the
daemon runs for one NIC: a ``Reconciler`` (nicreconciled.reconciler) with a ``Context`` of
its own whose source is the real ``CloudStackSource`` with its own ``HttpClient`` (the
daemon's defaults: 2 s timeout, 300 req/s, 8 connections), a ``NetplanRenderer`` writing to
a scratch directory, no applier. Each VM has a scratch root with one NIC (``eth0`` in sysfs)
and its systemd-networkd lease (address, netmask, router; no server address), and the VR as
its configured ``cloudstack.endpoint``. The discovery chain's other steps find nothing: the
DNS resolver is injected and answers NXDOMAIN for ``data-server``, the nmcli runner is
injected and answers "not found", the scratch root has no /proc/net/route. No request
leaves 127.0.0.1.

The VR simulator runs in a process of its own (``VrProcess``; same class, same loopback):
on 2 cores one Python thread cannot serve the VR and run 1,000 clients at the fleet's
start-up rate without its event loop falling seconds behind, and a late loop makes client
timeouts and late phase changes that would be read as fleet behaviour. A monitor records
the loop's lag and both processes' CPU; the run says when the harness was overloaded.

``resync_interval`` is RESYNC (30 s instead of the default 60 s, so that a steady state is
reached and measured within a short run); the VMs start spread evenly over STAGGER s.

Outage: fault mode "hang" for OUTAGE s. A VR outage is the VR's VM being restarted or
re-created (network restart with cleanup, VR upgrade, host failure): its address then
answers nothing at all and clients wait for their timeouts. "hang" is that from the
client's side (the connection is accepted, no answer ever comes, the client times out);
"5xx" would need a live web server that fails, and a stopped server on loopback refuses at
once (a fast failure, which a dead VR never gives). Requests are counted when they ARRIVE at
the VR (a hung request is only logged by the simulator when the outage ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import multiprocessing
import re
import resource
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from bench.harness import BenchError, proc_cpu_seconds
from bench.report import RESULTS, percentile, sliding_peak, summary, table, verdict
from nicreconciled.metrics import OUTCOMES, Metrics
from nicreconciled.model import Cloud, Observation
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.sim.cloudstack import VrSim
from nicreconciled.sim.server import url_of
from nicreconciled.sources.cloudstack import CloudStackConfig, CloudStackSource
from nicreconciled.sources.http import RECOVERY_SPREAD, HttpClient
from nicreconciled.stability import Policy
from nicreconciled.status import StatusStore
from nicreconciled.system.proc import Completed

NAME = "fleet"
VMS = 1000
RESYNC = 30.0
OUTAGE = 60.0
FAULT = "hang"
#: After the last VM started, wait this long before the steady-state window, and at most
#: SETTLE_MAX more for every VM to have converged.
SETTLE = 5.0
SETTLE_MAX = 30.0
BEFORE = 30.0
AFTER = 45.0
#: The VMs start evenly spread over this long.
STAGGER = RESYNC
#: The monitor's period (event-loop lag, CPU shares).
TICK = 0.25
#: The VR's listen backlog (Apache's default ListenBacklog).
BACKLOG = 511
#: gc threshold of the oldest generation during the run (Python's default: 10).
GC_OLDEST = 1000
#: The daemon's default polling.request_timeout.
TIMEOUT = 2.0
#: A CloudStack full fetch: instance-id and local-ipv4 from the VR.
REQUESTS_PER_FETCH = 2
#: Issue 12: the highest second after recovery at most this many times the steady mean.
HERD_GOAL = 2.0


def saturated_guess(figures: dict[str, Any]) -> bool:
    """The harness, not the fleet, set the pace (see the "harness overloaded" line)."""
    measured = [f for k, f in figures.items() if not k.startswith("start-up")]
    lag = max(f["max_event_loop_lag_s"] for f in measured)
    busy = max(max(f["fleet_process_cpu_share"], f["vr_process_cpu_share"]) for f in measured)
    return bool(lag > 0.5 or busy > 0.9)


class ArrivalVr(VrSim):
    """The VR simulator, also noting when each request arrives (monotonic clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []
        #: When each TCP connection brought its first request.
        self.connections: list[float] = []
        self.arrival_paths: Counter[str] = Counter()
        self._seen: set[object] = set()  # strong references: no id() reuse

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """As VrSim.start, with Apache's default listen backlog (511) instead of aiohttp's
        128: 1,000 clients opening their connections in bursts overflow 128, and each SYN
        the kernel drops costs the client a 1 s retransmission."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=BACKLOG).start()
        self.url = url_of(self._runner)
        return self.url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        self.arrivals.append(now)
        transport = request.transport
        if transport is not None and transport not in self._seen:
            self._seen.add(transport)
            self.connections.append(now)
        if self.active_fault() != "none":
            self.arrival_paths[request.path] += 1
        return await super()._handle(request)


def _vr_process(conn: Connection) -> None:
    """The VR's own process: serves until told to stop, then sends back what it saw."""
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the parent cleans up
        asyncio.run(_vr_serve(conn))


async def _vr_serve(conn: Connection) -> None:
    vr = ArrivalVr()
    conn.send(await vr.start("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    try:
        while True:
            command, mode, duration = await loop.run_in_executor(None, conn.recv)
            if command != "fault":
                break
            vr.set_fault(mode, duration)
            conn.send(time.monotonic())
        conn.send(
            {
                "arrivals": vr.arrivals,
                "connections": vr.connections,
                "outage_paths": dict(vr.arrival_paths),
                "by_status": vr.stats(include_log=False)["by_status"],
            }
        )
    finally:
        await vr.stop()


class VrProcess:
    """Drives the VR process from the benchmark's event loop (blocking pipe I/O in a thread)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_vr_process, args=(child,), name="fleet-vr", daemon=True)
        self.url = ""

    async def _ask(self, message: tuple[str, str, float | None], timeout: float) -> Any:
        def call() -> Any:
            self._conn.send(message)
            if not self._conn.poll(timeout):
                raise BenchError(f"VR process: no answer to {message[0]} in {timeout:g} s")
            return self._conn.recv()

        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def start(self) -> str:
        self.proc.start()

        def ready() -> str:
            if not self._conn.poll(30):
                raise BenchError("VR process did not start within 30 s")
            return str(self._conn.recv())

        self.url = await asyncio.get_running_loop().run_in_executor(None, ready)
        return self.url

    async def set_fault(self, mode: str, duration: float | None = None) -> float:
        """Returns the VR's CLOCK_MONOTONIC reading when the fault took effect."""
        return float(await self._ask(("fault", mode, duration), 10))

    async def stop(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._ask(("stop", "", None), 30)
        self.proc.join(10)
        return result

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


class RecordingSource:
    """A CloudStackSource that notes when each full fetch began and ended, and whether it
    worked."""

    name: Cloud = "cloudstack"
    detect_error: str = "not detected"

    def __init__(self, inner: CloudStackSource) -> None:
        self.inner = inner
        self.fetches: list[tuple[float, float, bool]] = []
        #: (when, why) of each failed fetch, the VR's address left out.
        self.failures: list[tuple[float, str]] = []

    async def detect(self) -> bool:
        return await self.inner.detect()

    async def fetch(self, mac: str) -> Observation:
        began = time.monotonic()
        try:
            obs = await self.inner.fetch(mac)
        except Exception as exc:
            ended = time.monotonic()
            self.fetches.append((began, ended, False))
            self.failures.append((ended, re.sub(r"http://[^ ]+", "VR", str(exc))[:100]))
            raise
        self.fetches.append((began, time.monotonic(), True))
        return obs

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        return await self.inner.probe(keys)

    async def close(self) -> None:
        await self.inner.close()


async def _nxdomain(name: str) -> Sequence[str]:
    raise socket.gaierror(socket.EAI_NONAME, f"{name}: Name or service not known")


async def _no_nmcli(argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
    return Completed(tuple(argv), 127, "", "nmcli not found")


def _mac(i: int) -> str:
    return f"02:fe:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def _vm_root(base: Path, i: int) -> Path:
    """A scratch root: /sys/class/net/eth0 and its networkd lease (no VR named in it)."""
    root = base / f"vm{i}"
    net = root / "sys/class/net/eth0"
    net.mkdir(parents=True)
    (net / "address").write_text(_mac(i) + "\n")
    (net / "ifindex").write_text("2\n")
    (net / "type").write_text("1\n")
    leases = root / "run/systemd/netif/leases"
    leases.mkdir(parents=True)
    host = i + 10
    (leases / "2").write_text(
        f"ADDRESS=10.2.{host >> 8}.{host & 0xFF}\nNETMASK=255.255.240.0\nROUTER=10.2.0.1\n"
    )
    return root


def _quiet_logs(counts: Counter[str], metrics: Metrics) -> None:
    """Count the reconcilers' log events (INFO and up, as the daemon logs) instead of
    printing them, and feed every event (debug included) to METRICS, as the daemon's
    ``[metrics]`` sink is fed: one registry for the whole fleet is what a Prometheus summing
    the fleet's series sees (a counter's sum over daemons is the count of their events)."""

    def count(_logger: Any, method: str, event: Any) -> Any:
        metrics.sink(event)
        if method not in ("debug",):
            counts[f"{method}:{event.get('event')}"] += 1
        raise structlog.DropEvent

    structlog.configure(
        processors=[count],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def _requests_total(metrics: Metrics) -> dict[str, float]:
    """nicreconciled_metadata_requests_total by outcome, as a scrape would read it."""
    return {outcome: metrics.requests.value(outcome) or 0.0 for outcome in OUTCOMES}


def _at(scrapes: Sequence[tuple[float, dict[str, float]]], t: float) -> dict[str, float]:
    """The last scrape at or before T."""
    found = scrapes[0][1]
    for when, values in scrapes:
        if when > t:
            break
        found = values
    return found


def _raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or hard > soft):
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _monitor(
    samples: list[tuple[float, float, float, float]],
    vr_pid: int,
    metrics: Metrics,
    scrapes: list[tuple[float, dict[str, float]]],
) -> None:
    """Every TICK: (time, this process's CPU s, the VR's CPU s, event-loop lag s), and a
    "scrape" of the fleet's metadata request counters."""
    scrapes.append((time.monotonic(), _requests_total(metrics)))
    while True:
        due = time.monotonic() + TICK
        await asyncio.sleep(TICK)
        now = time.monotonic()
        try:
            vr_cpu = proc_cpu_seconds(vr_pid)
        except OSError:
            vr_cpu = math.nan
        samples.append((now, _cpu(), vr_cpu, now - due))
        scrapes.append((now, _requests_total(metrics)))


async def _bench(base: Path, vms: int, outage: float, metrics: Metrics) -> dict[str, Any]:
    vr = VrProcess()
    url = await vr.start()
    renderer = NetplanRenderer()
    policy = Policy()
    out = base / "out"
    status = StatusStore(base / "state")
    sources: list[RecordingSource] = []
    clients: list[HttpClient] = []
    tasks: list[asyncio.Task[None]] = []
    recs: list[Reconciler] = []
    samples: list[tuple[float, float, float, float]] = []
    assert vr.proc.pid is not None
    scrapes: list[tuple[float, dict[str, float]]] = []
    monitor = asyncio.create_task(_monitor(samples, vr.proc.pid, metrics, scrapes))
    stopped = False
    try:
        for i in range(vms):
            root = _vm_root(base, i)
            http = HttpClient(timeout=TIMEOUT)
            source = CloudStackSource(
                CloudStackConfig(endpoint=url), http, root=root, runner=_no_nmcli,
                resolver=_nxdomain,
            )  # fmt: skip
            recording = RecordingSource(source)
            ctx = Context(
                source=recording, renderer=renderer, applier=None, policy=policy,
                output_dir=out, status=status, resync_interval=RESYNC, root=root,
            )  # fmt: skip
            sources.append(recording)
            clients.append(http)
            recs.append(Reconciler(ctx, _mac(i), "eth0"))
        # One process holds 1,000 daemons' objects: full garbage collections of that heap
        # stall the event loop for 0.3-0.5 s (each real daemon's heap is a thousandth of it).
        # Freeze what is built and collect the oldest generation rarely.
        gc.freeze()
        t0 = time.monotonic()
        for i, rec in enumerate(recs):
            await asyncio.sleep(max(0.0, t0 + i * STAGGER / vms - time.monotonic()))
            tasks.append(asyncio.create_task(rec.run(), name=f"vm-{i}"))
        await asyncio.sleep(max(0.0, t0 + STAGGER + SETTLE - time.monotonic()))
        # The steady-state window starts once every VM converged (or SETTLE_MAX passed).
        for _ in range(int(SETTLE_MAX / 0.5)):
            if all(r.converged for r in recs):
                break
            await asyncio.sleep(0.5)
        window0 = time.monotonic()
        converged = sum(1 for r in recs if r.converged)
        why_not = Counter(
            f"{r.tracker.phase.value}, seen {r.tracker.seen}, "
            f"{(r.status.waiting_on or ['-'])[0][:60]}"
            for r in recs
            if not r.converged
        )
        gc.freeze()  # the sessions and connection pools made since
        await asyncio.sleep(max(0.0, window0 + BEFORE - time.monotonic()))
        # Phases run from when the VR applied each change (a late loop moves them).
        outage_start = await vr.set_fault(FAULT, outage + 30)
        await asyncio.sleep(max(0.0, outage_start + outage - time.monotonic()))
        outage_end = await vr.set_fault("none")
        await asyncio.sleep(max(0.0, outage_end + AFTER - time.monotonic()))
        end = time.monotonic()
        crashed = [t.get_name() for t in tasks if t.done() and t.exception() is not None]
        seen = await vr.stop()
        stopped = True
        return {
            **seen,
            "t0": t0,
            "window0": window0,
            "outage_start": outage_start,
            "outage_end": outage_end,
            "end": end,
            "fetches": [list(s.fetches) for s in sources],
            "failures": [f for s in sources for f in s.failures],
            "converged_before": converged,
            "not_converged_before": dict(why_not),
            "converged_end": sum(1 for r in recs if r.converged),
            "samples": samples,
            "scrapes": scrapes,
            "crashed": crashed,
            "http_requests_sent": sum(c.requests_sent for c in clients),
        }
    finally:
        monitor.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(monitor, *tasks, return_exceptions=True)
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        if not stopped:
            vr.kill()


def _share(samples: Sequence[tuple[float, float, float, float]], a: float, b: float,
           column: int) -> float:  # fmt: skip
    """CPU share of one core between A and B from the monitor's samples."""
    inside = [x for x in samples if a <= x[0] <= b]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return math.nan
    return (inside[-1][column] - inside[0][column]) / (inside[-1][0] - inside[0][0])


def _rate(times: Sequence[float], a: float, b: float) -> float:
    return sum(1 for t in times if a <= t < b) / (b - a) if b > a else math.nan


def _bucket_peak(times: Sequence[float], a: float, b: float) -> int:
    counts: Counter[int] = Counter(math.floor(t - a) for t in times if a <= t < b)
    return max(counts.values(), default=0)


def _timeline(times: Sequence[float], a: float, b: float) -> list[int]:
    """Arrivals in each whole second from A to B."""
    counts = [0] * math.ceil(b - a)
    for t in times:
        if a <= t < b:
            counts[math.floor(t - a)] += 1
    return counts


def _plot(counts: list[int], marks: dict[str, float], vms: int, path: Path) -> bool:
    """Requests per second at the VR over the run; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "   matplotlib is not installed: skipping the plot (bench/results/fleet.png). "
            "Install it with: pip install -e '.[bench]'"
        )
        return False
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.bar(range(len(counts)), counts, width=1.0, align="edge", color="#337ab7")
    ax.axvspan(marks["outage_start"], marks["outage_end"], color="#d9534f", alpha=0.15,
               label=f"VR outage (fault '{FAULT}')")  # fmt: skip
    ax.axvspan(marks["window0"], marks["outage_start"], color="#5cb85c", alpha=0.12,
               label="steady-state window")  # fmt: skip
    ax.axvline(STAGGER, color="grey", linestyle=":", label="last VM started")
    ax.set_xlabel("seconds since the first VM started")
    ax.set_ylabel("requests arriving at the VR per second")
    ax.set_title(
        f"fleet: {vms} reconcilers, resync_interval {RESYNC:g} s, one CloudStack VR simulator",
        fontsize=10,
    )
    ax.set_xlim(0, len(counts))
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(*, vms: int = VMS, outage: float = OUTAGE) -> dict[str, Any]:
    print(
        f"== fleet: {vms} reconcilers in one process (one Context, CloudStackSource and "
        f"HttpClient each) vs one VR simulator (its own process, 127.0.0.1); resync_interval "
        f"= {RESYNC:g} s, starts spread over {STAGGER:g} s; VR outage (fault '{FAULT}') "
        f"{outage:g} s",
        flush=True,
    )
    limit = _raise_fd_limit(16384)
    # 1,000 VMs write their files and status with fsync: on tmpfs when there is one.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="nicr-bench-fleet-", dir=shm if shm.is_dir() else None))
    counts: Counter[str] = Counter()
    saved = structlog.get_config()
    metrics = Metrics(None)
    _quiet_logs(counts, metrics)
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], GC_OLDEST)
    try:
        raw = asyncio.run(_bench(base, vms, outage, metrics))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        gc.collect()
        structlog.configure(**saved)
        shutil.rmtree(base, ignore_errors=True)
    t0, w0 = raw["t0"], raw["window0"]
    o0, o1, end = raw["outage_start"], raw["outage_end"], raw["end"]
    times: list[float] = raw["arrivals"]
    conns: list[float] = raw["connections"]
    samples: list[tuple[float, float, float, float]] = raw["samples"]
    phases = {
        "start-up (VMs starting)": (t0, w0),
        "before (steady state)": (w0, o0),
        "during the outage": (o0, o1),
        "after the outage": (o1, end),
    }
    rows = []
    figures: dict[str, Any] = {}
    for label, (a, b) in phases.items():
        rate = _rate(times, a, b)
        peak = _bucket_peak(times, a, b)
        sliding, sliding_at = sliding_peak(t for t in times if a <= t < b)
        fleet_cpu, vr_cpu = _share(samples, a, b, 1), _share(samples, a, b, 2)
        lag = max((x[3] for x in samples if a <= x[0] <= b), default=math.nan)
        figures[label] = {
            "from_s": a - t0,
            "to_s": b - t0,
            "mean_req_per_s": rate,
            "peak_1s_bucket": peak,
            "peak_1s_sliding": sliding,
            "peak_1s_sliding_starts_s": sliding_at - a,
            "new_connections_per_s": _rate(conns, a, b),
            "fleet_process_cpu_share": fleet_cpu,
            "vr_process_cpu_share": vr_cpu,
            "max_event_loop_lag_s": lag,
        }
        took = [t1 - t0_ for f in raw["fetches"] for t0_, t1, ok in f if ok and a <= t1 < b]
        figures[label]["good_fetch_s"] = summary(took)
        rows.append([label, f"{a - t0:.0f}-{b - t0:.0f}", rate, peak, sliding,
                     _rate(conns, a, b), percentile(took, 50), percentile(took, 99),
                     100 * fleet_cpu, 100 * vr_cpu, lag])  # fmt: skip
    first10 = _rate(times, o1, o1 + 10)
    steady = figures["before (steady state)"]
    after = figures["after the outage"]
    herd_ratio = after["peak_1s_sliding"] / steady["mean_req_per_s"]
    peak_ratio = after["peak_1s_sliding"] / max(1, steady["peak_1s_sliding"])
    # Per VM: the first successful fetch after the outage, and failed fetches during it.
    recovered: list[float] = []
    failed_during: list[float] = []
    in_flight = 0
    for fetches in raw["fetches"]:
        ok_after = [t1 for _t0, t1, ok in fetches if ok and t1 >= o1]
        if ok_after:
            recovered.append(min(ok_after) - o1)
        failed_during.append(
            float(sum(1 for _t0, t1, ok in fetches if not ok and o0 <= t1 < o1 + 3))
        )
        # A fetch that was waiting on the hung VR when it came back: it goes on (or fails
        # and rediscovers the VR) at once, so these VMs all send their requests together.
        in_flight += any(t0_ <= o1 < t1 and ok for t0_, t1, ok in fetches)
    first_seconds = sum(1 for t in times if o1 <= t < o1 + 3)
    print()
    print(
        table(["phase", "seconds", "mean req/s", "peak 1 s bucket", "peak 1 s sliding",
               "new conn/s", "fetch p50 s", "fetch p99 s", "fleet CPU %", "VR CPU %",
               "max loop lag s"], rows)
    )  # fmt: skip
    rec = summary(recovered)
    print()
    print(
        table(
            ["figure", "value"],
            [
                ["VMs converged before the outage", f"{raw['converged_before']}/{vms}"],
                [f"expected steady req/s (VMs x {REQUESTS_PER_FETCH} requests / resync)",
                 vms * REQUESTS_PER_FETCH / RESYNC],
                ["requests in the first 3 s after the outage", first_seconds],
                ["  the same at the steady mean rate", 3 * steady["mean_req_per_s"]],
                ["VMs whose fetch was waiting on the VR when it came back", in_flight],
                ["req/s in the first 10 s after the outage", first10],
                ["peak after / steady mean (sliding 1 s)", herd_ratio],
                ["peak after / peak before (sliding 1 s)", peak_ratio],
                ["failed fetches per VM during the outage, mean", summary(failed_during)["mean"]],
                ["VMs with a good fetch after the outage", f"{len(recovered)}/{vms}"],
                ["outage end -> VM's first good fetch, p50 s", rec["p50"]],
                ["outage end -> VM's first good fetch, max s", rec["max"]],
                ["VMs converged at the end", f"{raw['converged_end']}/{vms}"],
            ],
        )
    )  # fmt: skip
    # What the fleet's Prometheus sees: sum by (outcome) of every daemon's
    # nicreconciled_metadata_requests_total, its increase over each phase.
    scrapes: list[tuple[float, dict[str, float]]] = raw["scrapes"]
    seen_rows = []
    for label, (a, b) in phases.items():
        first, last = _at(scrapes, a), _at(scrapes, b)
        grew = {o: last[o] - first[o] for o in OUTCOMES}
        figures[label]["metrics_requests_increase"] = grew
        seen_rows.append([label, *(grew[o] for o in OUTCOMES), sum(grew.values()) / (b - a)])
    print()
    print("   what the fleet's Prometheus sees: sum by (outcome) "
          "(increase(nicreconciled_metadata_requests_total[phase]))")  # fmt: skip
    print(table(["phase", *OUTCOMES, "all /s"], seen_rows))
    events = {k: v for k, v in sorted(counts.items()) if not k.startswith("info:poll")}
    if raw["not_converged_before"]:
        print(f"   not converged at the steady window's start: {raw['not_converged_before']}")
    # Failures outside the outage (and the 3 s its last requests may take to fail) mean the
    # VR or the harness could not keep up: they are listed with their reasons.
    outside = Counter(why for t, why in raw["failures"] if t < end and not o0 <= t < o1 + 3)
    print(f"   failed fetches outside the outage: {sum(outside.values())} {dict(outside)}")
    print(f"   requests at the VR during the outage, by path: {raw['outage_paths']}")
    print(f"   log events (INFO and up) over the run: {events}")
    if raw["crashed"]:
        print(f"   !! reconciler tasks that crashed: {raw['crashed'][:5]}")
    # A herd is a surge that lasts: every VM retrying together keeps the rate up for a
    # good part of an interval. A one-second spike is judged apart, with its cause.
    first_interval = _rate(times, o1, min(end, o1 + RESYNC))
    herd = first_interval > 1.5 * steady["mean_req_per_s"]
    print(
        f"   thundering herd after recovery: {'YES' if herd else 'no'}: "
        f"{first_interval:.0f} req/s over the first {min(AFTER, RESYNC):g} s after the outage "
        f"vs {steady['mean_req_per_s']:.0f} req/s steady (a herd = over 1.5x).\n"
        f"   peak after the outage: {after['peak_1s_sliding']} req in a sliding 1 s window "
        f"starting {after['peak_1s_sliding_starts_s']:.1f} s after the VR came back "
        f"({herd_ratio:.1f}x the steady mean, {peak_ratio:.1f}x the steady peak of "
        f"{steady['peak_1s_sliding']}). {in_flight} VMs had a fetch waiting on the VR when it "
        f"came back and finished it; the VR drops what it held, and a client whose request "
        f"was dropped or slow waits a random 0-{TIMEOUT * RECOVERY_SPREAD:g} s "
        f"({RECOVERY_SPREAD:g} timeouts) before its next one "
        f"(sources/http.py), so those that go on (a liveness check and a read, "
        f"{REQUESTS_PER_FETCH} requests each) do not all go on at once."
    )
    timeline = _timeline(times, t0, end)
    marks = {"window0": w0 - t0, "outage_start": o0 - t0, "outage_end": o1 - t0}
    png = RESULTS / "fleet.png"
    if _plot(timeline, marks, vms, png):
        print(f"   timeline: {png}")
    herd_met = herd_ratio <= HERD_GOAL and not saturated_guess(figures)
    print(
        f"   goal highest 1 s after recovery <= {HERD_GOAL:g}x the steady mean: "
        f"{herd_ratio:.2f}x: {verdict(herd_met)}; new connections per second in steady state: "
        f"{steady['new_connections_per_s']:.1f} (requests {steady['mean_req_per_s']:.1f}/s)"
    )
    measured = [f for k, f in figures.items() if not k.startswith("start-up")]
    lag = max(f["max_event_loop_lag_s"] for f in measured)
    busy = max(max(f["fleet_process_cpu_share"], f["vr_process_cpu_share"]) for f in measured)
    saturated = lag > 0.5 or busy > 0.9
    if saturated:
        print(
            f"   !! harness overloaded (event loop up to {lag:.1f} s late, a process at "
            f"{busy:.0%} of a core): the figures show the harness, not the fleet"
        )
    return {
        "method": {
            "vms": vms,
            "resync_interval_s": RESYNC,
            "fault": FAULT,
            "outage_s": outage,
            "before_window_s": BEFORE,
            "after_window_s": AFTER,
            "per_vm": "Reconciler + Context + CloudStackSource + HttpClient(timeout 2 s, "
            "default rate) + NetplanRenderer; configured endpoint; NXDOMAIN resolver, no nmcli",
            "fd_limit": limit,
            "stagger_s": STAGGER,
            "vr": "VrSim subclass counting arrivals, in a process of its own (spawn) on 127.0.0.1",
        },
        "phases": figures,
        "first_10s_after_req_per_s": first10,
        "first_3s_after_requests": first_seconds,
        "vms_in_flight_at_recovery": in_flight,
        "herd_ratio_peak_after_over_steady_mean": herd_ratio,
        "peak_after_over_peak_before": peak_ratio,
        "thundering_herd": herd,
        "harness_saturated": saturated,
        "first_interval_after_req_per_s": first_interval,
        "recovery_s": rec,
        "recovery_p90_s": percentile(recovered, 90),
        "failed_fetches_per_vm_during_outage": summary(failed_during),
        "converged_before": raw["converged_before"],
        "converged_end": raw["converged_end"],
        "outage_request_paths": raw["outage_paths"],
        "requests_by_status": raw["by_status"],
        "log_events": dict(counts),
        "failures_outside_outage": dict(outside),
        "failure_times_s": sorted(round(t - t0, 1) for t, _why in raw["failures"]),
        "loop_lag_timeline": [(round(x[0] - t0, 2), round(x[3], 3)) for x in samples if x[3] > 0.1],
        "crashed_tasks": raw["crashed"],
        "targets": [
            {
                "name": f"fleet of {vms}, {outage:g} s VR outage: highest 1 s after recovery / "
                "steady mean",
                "value": herd_ratio,
                "limit": HERD_GOAL,
                "unit": "x",
                "met": herd_met and not saturated,
                "key": "fleet",
                "detail": {
                    "steady_new_connections_per_s": steady["new_connections_per_s"],
                    "steady_req_per_s": steady["mean_req_per_s"],
                    "peak_after": after["peak_1s_sliding"],
                },
            }
        ],
        "requests_per_second_timeline": timeline,
        "timeline_origin": f"first VM start; outage from {o0 - t0:.1f} s to {o1 - t0:.1f} s",
    }
