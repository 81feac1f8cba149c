"""A scratch stack for one benchmark: namespaces, the IMDS simulator, the daemon, its log.

Every benchmark gets its own network namespace (the simulator listens on its loopback and
the daemon runs in it) plus a second namespace that only holds the far ends of the veth
pairs, so the daemon sees exactly the NICs a benchmark plugs and needs no ignore pattern.

Cleanup is synchronous (``Stack.destroy``) so that it runs after ``asyncio.run`` has
returned or been interrupted: processes are killed by process group, namespaces deleted,
the scratch directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nicreconciled.sim import simulator_class
from nicreconciled.sim.client import SimClient

PYTHON = sys.executable
PORT = 8080
PRIMARY = "0a:b0:00:00:00:01"

_counter = itertools.count()
_T = TypeVar("_T")


class BenchError(Exception):
    """A benchmark could not produce its figures (daemon died, timeout, bad file)."""


def mono_to_wall_offset() -> float:
    """Add this to a CLOCK_MONOTONIC reading (the simulator's log) to get epoch seconds."""
    return time.time() - time.monotonic()


def netplan_file(mac: str) -> str:
    return f"90-nicreconciled-{mac.replace(':', '')}.yaml"


#: ``[polling]`` keys every benchmark's daemon gets instead of the defaults (``--polling``):
#: to measure a setting before it becomes the default.
POLLING: dict[str, float] = {}


def daemon_config(
    tmp: Path, *, resync_interval: float | None = None, cloud: str = "ec2", metrics: bool = False
) -> str:
    """The configuration every benchmark uses: defaults, save what a netns run needs (the
    CLOUD's table points at the simulator); METRICS: the textfile in tmp/metrics too."""
    lines = [
        f'cloud = "{cloud}"',
        'renderer = "netplan"',
        f'output_dir = "{tmp}/out"',
        f'state_dir = "{tmp}/state"',
        "apply = false",
    ]
    if resync_interval is not None:
        lines.append(f"resync_interval = {resync_interval}")
    lines += [
        "[interfaces]",
        "virtual = true",
        "[udev]",
        'source = "kernel"',
        f"[{cloud}]",
        f'endpoint = "http://127.0.0.1:{PORT}"',
    ]
    if cloud == "ec2":
        lines.append('fallback_endpoint = ""')
    if POLLING:
        lines += ["[polling]", *(f"{key} = {value}" for key, value in POLLING.items())]
    if metrics:
        (tmp / "metrics").mkdir(exist_ok=True)
        lines += ["[metrics]", f'textfile = "{tmp}/metrics/nicreconciled.prom"']
    return "\n".join(lines) + "\n"


@dataclass
class DaemonLog:
    """The daemon's JSON log, read incrementally from the file its stderr goes to."""

    path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def refresh(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; returns the new events."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new: list[dict[str, Any]] = []
        for line in lines:
            line = line.strip()
            if not line.startswith(b"{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                new.append(event)
        self.events.extend(new)
        return new

    def named(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    def first(self, name: str, **match: Any) -> dict[str, Any] | None:
        found = self.named(name, **match)
        return found[0] if found else None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def proc_rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from /proc/PID/status."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of PID in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [part.decode(errors="replace") for part in fh.read().split(b"\0") if part]


class Stack:
    """One benchmark's namespaces, simulator and daemon(s)."""

    def __init__(self, label: str, cloud: str = "ec2") -> None:
        n = next(_counter)
        #: Which simulator runs and which cloud the daemon is configured for.
        self.cloud = cloud
        self.ns = f"nicr-bench-{os.getpid()}-{n}"
        self.peer_ns = f"{self.ns}-peer"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"nicr-bench-{label}-"))
        self.out = self.tmp / "out"
        self.procs: list[asyncio.subprocess.Process] = []
        self.daemon: asyncio.subprocess.Process | None = None
        self.log: DaemonLog = DaemonLog(self.tmp / "daemon-0.log")
        self._sim: SimClient | None = None
        self._namespaces: list[str] = []
        self._daemon_runs = 0

    @property
    def sim(self) -> SimClient:
        if self._sim is None:
            raise BenchError("simulator not started")
        return self._sim

    # -- commands ------------------------------------------------------------------------
    async def _run(self, argv: Sequence[str], stdin: bytes | None = None) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")

    async def ip(self, *args: str) -> None:
        await self._run(["ip", "-n", self.ns, *args])

    async def tcp_active_opens(self) -> int:
        """TCP connections opened from inside the namespace so far (the daemon is the only
        TCP client there: ``ActiveOpens`` of the namespace's /proc/net/snmp)."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns, "cat", "/proc/net/snmp",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _err = await proc.communicate()
        lines = [line.split() for line in out.decode().splitlines() if line.startswith("Tcp:")]
        if len(lines) < 2:
            raise BenchError("no Tcp: lines in /proc/net/snmp")
        return int(dict(zip(lines[0], lines[1], strict=True))["ActiveOpens"])

    async def _spawn(self, argv: Sequence[str], log_path: Path) -> asyncio.subprocess.Process:
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.ns, *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def spawn_piped(self, argv: Sequence[str], stderr: Path) -> asyncio.subprocess.Process:
        """Start ARGV inside the namespace with stdin and stdout as pipes (its own session,
        killed with the stack)."""
        with stderr.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.ns, *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                limit=64 * 1024 * 1024,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    # -- set-up --------------------------------------------------------------------------
    async def setup(self) -> None:
        """Namespaces, loopback, the simulator (with a primary NIC that is never plugged)."""
        for name in (self.ns, self.peer_ns):
            await self._run(["ip", "netns", "add", name])
            self._namespaces.append(name)
        await self.ip("link", "set", "lo", "up")
        ctl = self.tmp / "sim.sock"
        await self._spawn(
            [PYTHON, "-m", "nicreconciled.sim", "--cloud", self.cloud,
             "--listen", f"127.0.0.1:{PORT}", "--control", str(ctl)],
            self.tmp / "sim.log",
        )  # fmt: skip
        self._sim = SimClient(str(ctl))
        await self._sim.wait_ready(15)
        if self.cloud != "ec2":  # a simulator that lists NICs from a cloud-neutral plan
            plan = {"mac": PRIMARY, "device_number": 0, "ipv4s": ["10.0.0.10"],
                    "subnet4": "10.0.0.0/24", "gateway4": "10.0.0.1", "primary": True}  # fmt: skip
            await self._sim.add_nic(simulator_class(self.cloud).lab_spec(plan))
            return
        await self._sim.add_nic(
            {"mac": PRIMARY, "device_number": 0, "local_ipv4s": ["10.0.0.10"],
             "subnet_ipv4_cidr": "10.0.0.0/24"}
        )  # fmt: skip
        await self._sim.set_primary(PRIMARY)

    def write_config(self, *, resync_interval: float | None = None, metrics: bool = False) -> Path:
        path = self.tmp / "nicreconciled.toml"
        path.write_text(
            daemon_config(
                self.tmp, resync_interval=resync_interval, cloud=self.cloud, metrics=metrics
            )
        )
        return path

    async def start_daemon(
        self, *, resync_interval: float | None = None, metrics: bool = False
    ) -> tuple[asyncio.subprocess.Process, float]:
        """Start a daemon with a fresh log; returns it and the wall-clock start time."""
        cfg = self.write_config(resync_interval=resync_interval, metrics=metrics)
        self.log = DaemonLog(self.tmp / f"daemon-{self._daemon_runs}.log")
        self._daemon_runs += 1
        argv = [PYTHON, "-m", "nicreconciled", "--config", str(cfg), "--log-format", "json"]
        started = time.time()
        self.daemon = await self._spawn([*argv, "run"], self.log.path)
        return self.daemon, started

    async def wait_ready(self, timeout: float = 20.0, step: float = 0.05) -> dict[str, Any]:
        return await self.wait_for(lambda: self.log.first("ready"), timeout, "daemon ready", step)

    async def stop_daemon(self, timeout: float = 10.0) -> int | None:
        proc = self.daemon
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return None

    def check_alive(self) -> None:
        if self.daemon is not None and self.daemon.returncode is not None:
            raise BenchError(
                f"daemon exited with status {self.daemon.returncode}:\n{self.log.tail()}"
            )

    async def wait_for(
        self, predicate: Callable[[], _T | None], timeout: float, what: str, step: float = 0.05
    ) -> _T:
        """Refresh the log and poll PREDICATE until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            self.log.refresh()
            value = predicate()
            if value:
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(step)

    # -- NICs ----------------------------------------------------------------------------
    def _link_add(self, ifname: str, mac: str, peer: str) -> list[str]:
        return ["link", "add", ifname, "address", mac, "type", "veth",
                "peer", "name", peer, "netns", self.peer_ns]  # fmt: skip

    async def plug(self, ifname: str, mac: str, peer: str) -> None:
        """Hot-plug a veth NIC (real kernel add uevent); its peer lives in the peer netns."""
        await self.ip(*self._link_add(ifname, mac, peer))

    async def plug_many(self, nics: Iterable[tuple[str, str, str]]) -> None:
        """Create many veths with one `ip -batch` process: as fast as ip can go."""
        script = "".join(" ".join(self._link_add(*nic)) + "\n" for nic in nics)
        await self._run(["ip", "-n", self.ns, "-batch", "-"], stdin=script.encode())

    async def unplug(self, ifname: str) -> None:
        await self.ip("link", "del", ifname)

    def file_text(self, mac: str) -> str | None:
        return read_text(self.out / netplan_file(mac))

    # -- tear-down -----------------------------------------------------------------------
    async def aclose(self) -> None:
        """The asynchronous part of the tear-down: stop the daemon, then the simulator."""
        with contextlib.suppress(Exception):
            await self.stop_daemon(5)
        if self._sim is not None:
            await self._sim.close()
            self._sim = None
        for proc in self.procs:
            if proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    def destroy(self) -> None:
        """Kill everything started here, delete the namespaces and the scratch directory."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for name in self._namespaces:
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_with_stack(label: str, body: Callable[[Stack], Awaitable[_T]], cloud: str = "ec2") -> _T:
    """Run BODY on a fresh stack of CLOUD; torn down whatever happens (Ctrl-C too)."""
    stack = Stack(label, cloud)

    async def main() -> _T:
        try:
            await stack.setup()
            return await body(stack)
        finally:
            await stack.aclose()

    try:
        return asyncio.run(main())
    finally:
        stack.destroy()


def run_with_stacks(labels: Sequence[str], body: Callable[[list[Stack]], Awaitable[_T]]) -> _T:
    """Like run_with_stack with several stacks at once (set up together, torn down all)."""
    stacks = [Stack(label) for label in labels]

    async def main() -> _T:
        try:
            for stack in stacks:
                await stack.setup()
            return await body(stacks)
        finally:
            for stack in stacks:
                await stack.aclose()

    try:
        return asyncio.run(main())
    finally:
        for stack in stacks:
            stack.destroy()
