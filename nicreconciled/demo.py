"""`nicreconciled demo`: a simulated IMDSv2 and a hot-plugged ENI whose IPv6 arrives late.

Everything happens inside a scratch network namespace made for the demo (the simulator listens
on that namespace's loopback, the NIC is a veth pair), and everything is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nicreconciled.sim.client import SimClient

MAC = "0a:5e:7d:00:00:02"
PRIMARY = "0a:5e:7d:00:00:01"
IFNAME = "eth1"
PORT = 8080
SHOWN = {
    "ready": "daemon ready",
    "nic_added": "udev: NIC added",
    "nic_tracked": "tracking NIC",
    "fingerprint_changed": "metadata changed",
    "poll": "poll",
    "probe": "probe",
    "accepted": "stable: accepted",
    "rendered": "file written",
    "resync_requested": "SIGHUP: resync",
    "fetch_failed": "fetch failed",
    "deadline_passed": "deadline passed",
}


def _config(tmp: Path) -> str:
    return f"""
cloud = "ec2"
renderer = "netplan"
output_dir = "{tmp}/out"
state_dir = "{tmp}/state"
apply = false
resync_interval = 600
[interfaces]
virtual = true
ignore = ["nrp*"]
[udev]
source = "kernel"
[ec2]
endpoint = "http://127.0.0.1:{PORT}"
fallback_endpoint = ""
"""


class Demo:
    def __init__(self, ipv6_delay: float) -> None:
        self.ipv6_delay = ipv6_delay
        self.ns = f"nicr-demo-{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix="nicreconciled-demo-"))
        self.t0 = time.monotonic()
        self.procs: list[asyncio.subprocess.Process] = []
        self.rendered: list[str] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f} s] {text}", flush=True)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True, capture_output=True)

    async def spawn(self, *argv: str, **kw: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns, *argv, start_new_session=True, **kw
        )
        self.procs.append(proc)
        return proc

    async def follow(self, stream: asyncio.StreamReader) -> None:
        """Print the daemon's JSON log as a timeline."""
        while line := await stream.readline():
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            name = event.get("event", "")
            if name not in SHOWN:
                continue
            if name == "rendered":
                self.rendered.append(event.get("fingerprint", ""))
            details = []
            for key in ("ifname", "fingerprint", "phase", "file", "keys", "moved"):
                if event.get(key):
                    details.append(f"{key}={event[key]}")
            if event.get("waiting_on"):
                details.append("waiting on: " + "; ".join(event["waiting_on"]))
            self.say(f"{SHOWN[name]:<22} " + " ".join(details))

    async def run(self) -> int:
        out = self.tmp / "out"
        cfg = self.tmp / "nicreconciled.toml"
        cfg.write_text(_config(self.tmp))
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        self.say(f"network namespace {self.ns} created")
        ctl = self.tmp / "sim.sock"
        await self.spawn(
            sys.executable, "-m", "nicreconciled.sim",
            "--listen", f"127.0.0.1:{PORT}", "--control", str(ctl),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        sim = SimClient(str(ctl))
        await sim.wait_ready(10)
        await sim.add_nic(
            {"mac": PRIMARY, "device_number": 0, "local_ipv4s": ["10.0.0.10"],
             "subnet_ipv4_cidr": "10.0.0.0/24"}
        )  # fmt: skip
        await sim.set_primary(PRIMARY)
        self.say(f"IMDSv2 simulator listening on 127.0.0.1:{PORT} inside the namespace")
        daemon = await self.spawn(
            sys.executable, "-m", "nicreconciled", "--config", str(cfg),
            "--log-format", "json", "run",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert daemon.stderr is not None
        follower = asyncio.create_task(self.follow(daemon.stderr))
        await asyncio.sleep(1.0)
        self.say(f"attach: ENI {MAC} listed in IMDS; its IPv6 appears {self.ipv6_delay:g} s later")
        await sim.add_nic(
            {
                "mac": MAC,
                "device_number": 1,
                "local_ipv4s": ["10.0.1.25"],
                "subnet_ipv4_cidr": "10.0.1.0/24",
                "subnet_ipv6_cidrs": ["2001:db8:1::/64"],
                "schedule": {"ipv6s": [[self.ipv6_delay, "2001:db8:1::25"]]},
            }
        )
        self.ip(
            "link", "add", IFNAME, "address", MAC, "type", "veth", "peer", "name", "nrp1"
        )  # fmt: skip
        name = f"90-nicreconciled-{MAC.replace(':', '')}.yaml"
        ok = await self._wait_file(out / name, "2001:db8:1::25", self.ipv6_delay + 15)
        if ok:
            self.say("upstream change: a secondary private IPv4 is assigned; sending SIGHUP")
            await sim.update_nic(MAC, {"local_ipv4s": ["10.0.1.25", "10.0.1.26"]})
            daemon.send_signal(signal.SIGHUP)
            ok = await self._wait_file(out / name, "10.0.1.26", 10)
        await asyncio.sleep(0.3)
        stats = await sim.stats()
        await sim.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(daemon.wait(), 5)
        except TimeoutError:
            code = -1
        follower.cancel()
        self.say(f"SIGTERM: daemon exited with status {code}")
        print()
        if (out / name).exists():
            print(f"--- {out / name} (mode {oct((out / name).stat().st_mode & 0o777)}) ---")
            print((out / name).read_text())
            print(self._validate(out))
        print(f"IMDS requests served in all: {stats.get('requests')}")
        print(f"files written for the ENI: {len(self.rendered)} (fingerprints {self.rendered})")
        verdict = "converged" if ok and code == 0 else "FAILED"
        print(f"result: {verdict}")
        return 0 if verdict == "converged" else 1

    async def _wait_file(self, path: Path, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if needle in path.read_text():
                    return True
            await asyncio.sleep(0.05)
        self.say(f"gave up waiting for {needle} in {path.name}")
        return False

    def _validate(self, out: Path) -> str:
        netplan = shutil.which("netplan")
        if netplan is None:
            return "netplan not installed: file not validated"
        root = self.tmp / "root"
        (root / "etc/netplan").mkdir(parents=True)
        for f in out.glob("*.yaml"):
            dest = root / "etc/netplan" / f.name
            shutil.copy(f, dest)
            dest.chmod(0o600)
        done = subprocess.run(
            [netplan, "generate", "--root-dir", str(root)], capture_output=True, text=True
        )
        made = sorted(p.name for p in (root / "run/systemd/network").glob("*.network"))
        if done.returncode != 0:
            return f"netplan generate FAILED: {done.stderr.strip()}"
        return f"netplan generate --root-dir: ok, wrote {', '.join(made)}"

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.say("namespace, processes and temporary files removed")


def run_demo(ipv6_delay: float = 4.0) -> int:
    if os.geteuid() != 0:
        print("nicreconciled demo: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    demo = Demo(ipv6_delay)

    async def main() -> int:
        try:
            return await demo.run()
        finally:
            await demo.cleanup()

    return asyncio.run(main())
