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
    "vr_discovered": "virtual router found",
}


def _config(tmp: Path, cloud: str) -> str:
    common = f"""
output_dir = "{tmp}/out"
state_dir = "{tmp}/state"
apply = false
resync_interval = 600
[interfaces]
virtual = true
ignore = ["nrp*"]
[udev]
source = "kernel"
"""
    if cloud == "ec2":
        return f"""cloud = "ec2"
renderer = "netplan"
{common}
[ec2]
endpoint = "http://127.0.0.1:{PORT}"
fallback_endpoint = ""
"""
    return f"""cloud = "cloudstack"
renderer = "networkmanager"
{common}"""


class Demo:
    def __init__(self, ipv6_delay: float) -> None:
        self.ipv6_delay = ipv6_delay
        self.ns = f"nicr-demo-{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix="nicreconciled-demo-"))
        self.t0 = time.monotonic()
        self.procs: list[asyncio.subprocess.Process] = []
        self.rendered: list[str] = []
        self.etc_netns = Path("/etc/netns") / self.ns
        self.follower: asyncio.Task[None]

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
            for key in ("ifname", "fingerprint", "phase", "file", "keys", "moved", "vr", "method"):
                if event.get(key):
                    details.append(f"{key}={event[key]}")
            if event.get("waiting_on"):
                details.append("waiting on: " + "; ".join(event["waiting_on"]))
            self.say(f"{SHOWN[name]:<22} " + " ".join(details))

    async def start_daemon(self, cfg: Path, *wrap: str) -> asyncio.subprocess.Process:
        daemon = await self.spawn(
            *wrap, sys.executable, "-m", "nicreconciled", "--config", str(cfg),
            "--log-format", "json", "run",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert daemon.stderr is not None
        self.follower = asyncio.create_task(self.follow(daemon.stderr))
        return daemon

    async def stop_daemon(self, daemon: asyncio.subprocess.Process) -> int:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(daemon.wait(), 5)
        except TimeoutError:
            code = -1
        self.follower.cancel()
        self.say(f"SIGTERM: daemon exited with status {code}")
        return code

    async def run(self, cloud: str) -> int:
        cfg = self.tmp / "nicreconciled.toml"
        cfg.write_text(_config(self.tmp, cloud))
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        self.say(f"network namespace {self.ns} created")
        if cloud == "ec2":
            ok, shown = await self.run_ec2(cfg)
        else:
            ok, shown = await self.run_cloudstack(cfg)
        print()
        if shown.exists():
            print(f"--- {shown} (mode {oct(shown.stat().st_mode & 0o777)}) ---")
            print(shown.read_text())
            print(self._validate(shown))
        print(f"files written for the NIC: {len(self.rendered)} (fingerprints {self.rendered})")
        verdict = "converged" if ok else "FAILED"
        print(f"result: {verdict}")
        return 0 if ok else 1

    async def run_ec2(self, cfg: Path) -> tuple[bool, Path]:
        out = self.tmp / "out"
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
        daemon = await self.start_daemon(cfg)
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
        path = out / f"90-nicreconciled-{MAC.replace(':', '')}.yaml"
        ok = await self._wait_file(path, "2001:db8:1::25", self.ipv6_delay + 15)
        if ok:
            self.say("upstream change: a secondary private IPv4 is assigned; sending SIGHUP")
            await sim.update_nic(MAC, {"local_ipv4s": ["10.0.1.25", "10.0.1.26"]})
            daemon.send_signal(signal.SIGHUP)
            ok = await self._wait_file(path, "10.0.1.26", 10)
        await asyncio.sleep(0.3)
        stats = await sim.stats()
        await sim.close()
        code = await self.stop_daemon(daemon)
        print(f"IMDS requests served in all: {stats.get('requests')}")
        return ok and code == 0, path

    async def run_cloudstack(self, cfg: Path) -> tuple[bool, Path]:
        out = self.tmp / "out"
        # `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: data-server
        # resolves to the VR simulator on the namespace's loopback.
        self.etc_netns.mkdir(parents=True)
        (self.etc_netns / "hosts").write_text("127.0.0.1 localhost\n127.0.0.1 data-server\n")
        # The primary NIC carries the default route (that is how CloudStack's is found).
        self.ip("link", "add", "eth0", "address", PRIMARY, "type", "veth", "peer", "name", "nrp0")
        self.ip("addr", "add", "10.1.0.10/24", "dev", "eth0")
        for dev in ("eth0", "nrp0"):
            self.ip("link", "set", dev, "up")
        self.ip("route", "add", "default", "via", "10.1.0.1", "dev", "eth0")
        ctl = self.tmp / "vr.sock"
        await self.spawn(
            sys.executable, "-m", "nicreconciled.sim", "--cloud", "cloudstack",
            "--listen", "127.0.0.1:80", "--control", str(ctl),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        vr = SimClient(str(ctl))
        await vr.wait_ready(10)
        await vr.set_vm({"instance-id": "i-2-17-VM", "local-ipv4": "10.1.1.23"})
        self.say("virtual router simulator on 127.0.0.1:80; data-server resolves to it")
        # The daemon gets its own /run (a private mount namespace), where this demo plays
        # systemd-networkd and writes the hot-plugged NIC's DHCP lease.
        leases = self.tmp / "run/systemd/netif/leases"
        leases.mkdir(parents=True)
        mount = 'mount --bind "$0" /run && exec "$@"'
        daemon = await self.start_daemon(
            cfg, "unshare", "--mount", "sh", "-c", mount, str(self.tmp / "run")
        )
        await asyncio.sleep(1.5)
        self.say(f"attach: NIC {MAC} hot-plugged as {IFNAME}; its DHCP lease comes 3 s later")
        self.ip(
            "link", "add", IFNAME, "address", MAC, "type", "veth", "peer", "name", "nrp1"
        )  # fmt: skip
        await asyncio.sleep(3.0)
        ifindex = (await asyncio.to_thread(self._ifindex, IFNAME)).strip()
        (leases / ifindex).write_text(
            "ADDRESS=10.1.1.23\nNETMASK=255.255.255.0\nROUTER=10.1.1.1\nSERVER_ADDRESS=127.0.0.1\n"
        )
        self.say("DHCP lease written: 10.1.1.23/24, router 10.1.1.1, server (VR) 127.0.0.1")
        path = out / f"nicreconciled-{MAC.replace(':', '')}.nmconnection"
        ok = await self._wait_file(path, "routing-rule1=", 15)
        await asyncio.sleep(0.3)
        await vr.close()
        code = await self.stop_daemon(daemon)
        return ok and code == 0, path

    def _ifindex(self, ifname: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, "cat", f"/sys/class/net/{ifname}/ifindex"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout

    async def _wait_file(self, path: Path, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if needle in path.read_text():
                    return True
            await asyncio.sleep(0.05)
        self.say(f"gave up waiting for {needle} in {path.name}")
        return False

    def _validate(self, path: Path) -> str:
        """Feed the file to its real consumer: netplan generate, or libnm's keyfile reader."""
        if path.suffix == ".nmconnection":
            return self._validate_keyfile(path)
        netplan = shutil.which("netplan")
        if netplan is None:
            return "netplan not installed: file not validated"
        root = self.tmp / "root"
        (root / "etc/netplan").mkdir(parents=True)
        dest = root / "etc/netplan" / path.name
        shutil.copy(path, dest)
        dest.chmod(0o600)
        done = subprocess.run(
            [netplan, "generate", "--root-dir", str(root)], capture_output=True, text=True
        )
        made = sorted(p.name for p in (root / "run/systemd/network").glob("*.network"))
        if done.returncode != 0:
            return f"netplan generate FAILED: {done.stderr.strip()}"
        return f"netplan generate --root-dir: ok, wrote {', '.join(made)}"

    def _validate_keyfile(self, path: Path) -> str:
        tool = Path(__file__).resolve().parents[1] / "tests/tools/nm_keyfile_check.py"
        if not tool.exists() or not Path("/usr/bin/python3").exists():
            return "libnm check tool not available here: keyfile not validated"
        done = subprocess.run(
            ["/usr/bin/python3", str(tool), str(path)], capture_output=True, text=True
        )
        try:
            (result,) = json.loads(done.stdout)
        except ValueError:
            return f"libnm check FAILED: {done.stderr.strip()[:300]}"
        if result.get("error") or result.get("warnings"):
            return f"libnm keyfile_read/verify FAILED: {result.get('error') or result['warnings']}"
        rules = result["ipv4"]["rules"]
        return f"libnm keyfile_read + verify(): ok; routing rules {rules}"

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.etc_netns, ignore_errors=True)
        self.say("namespace, processes and temporary files removed")


def run_demo(cloud: str = "ec2", ipv6_delay: float = 4.0) -> int:
    if os.geteuid() != 0:
        print("nicreconciled demo: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    demo = Demo(ipv6_delay)

    async def main() -> int:
        try:
            return await demo.run(cloud)
        finally:
            await demo.cleanup()

    return asyncio.run(main())
