"""`nicreconciled demo`: the daemon on a real network stack, shown in the kernel and on the wire.

Everything runs in the project's network lab (``nicreconciled.lab``): an instance network
namespace with its own mount namespace, D-Bus and the real systemd-networkd (EC2: netplan
renderer) or NetworkManager (CloudStack: keyfile renderer); a router namespace with dnsmasq
(DHCPv4, DHCPv6, router advertisements), strict rp_filter and a remote peer. A NIC is
hot-plugged by moving a veth, born with the ENI's MAC, into the instance. Everything is
removed at the end, also on failure.

* EC2: a simulated IMDSv2; an ENI whose IPv6 appears in the metadata D seconds after the
  attach; the daemon's timeline, then the NIC's addresses, rules and table as the kernel has
  them, and the remote peer's pings answered through that NIC; an upstream change (a new
  secondary IPv4) loaded after SIGHUP; another program's policy rule and table still there
  after our applies; then that program deletes the ENI's rules and flushes its table, and
  the daemon restores them without a signal (``check`` and a ping confirm).
* CloudStack: a simulated virtual router per guest network, found as CloudStack does (the
  default gateway; the DHCP server of the NIC's own lease); the hot-plugged NIC gets a
  DHCP-only profile at once, NetworkManager's DHCP client gets a real lease from dnsmasq, and
  the daemon completes the NIC with its table and rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nicreconciled.lab import PEER4, Eni, Lab, LabError, missing_state, missing_tools
from nicreconciled.lab.base import Manager
from nicreconciled.sim import simulator_class

PRIMARY = "0a:5e:7d:00:00:01"
CS_MAC = "02:c5:00:00:00:02"
SHOWN = {
    "ready": "daemon ready",
    "nic_added": "udev: NIC added",
    "fingerprint_changed": "metadata changed",
    "accepted": "stable: accepted",
    "rendered": "file written",
    "applied": "loaded into the network stack",
    "resync_requested": "SIGHUP: resync",
    "fetch_failed": "fetch failed",
    "deadline_passed": "deadline passed",
    "vr_discovered": "virtual router found",
    "kernel_complete": "complete in the kernel",
    "kernel_drift": "kernel drift",
    "heal": "heal: NIC re-applied",
    "kernel_healed": "healed in the kernel",
}
#: A container network plug-in's policy routing on the host: it must survive our hot-plugs.
FOREIGN_RULE = ("fwmark", "0x80", "lookup", "200", "priority", "100")


class Demo:
    def __init__(self, ipv6_delay: float) -> None:
        self.ipv6_delay = ipv6_delay
        self.t0 = time.monotonic()
        self.rendered: list[str] = []
        self._log_at = 0

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f} s] {text}", flush=True)

    def follow(self, log: Path) -> None:
        """Print the daemon's new JSON log lines as a timeline."""
        if not log.exists():
            return
        with log.open("rb") as stream:
            stream.seek(self._log_at)
            data = stream.read()
        end = data.rfind(b"\n") + 1
        self._log_at += end
        for line in data[:end].splitlines():
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            name = event.get("event", "")
            if name not in SHOWN:
                continue
            if name == "rendered":
                self.rendered.append(event.get("fingerprint", ""))
            details = [
                f"{key}={event[key]}"
                for key in ("ifname", "fingerprint", "phase", "file", "vr", "method", "took")
                if event.get(key)
            ]
            if event.get("missing"):
                missing = event["missing"]
                more = f"; and {len(missing) - 3} more" if len(missing) > 3 else ""
                details.append("missing: " + "; ".join(missing[:3]) + more)
            if event.get("waiting_on"):
                details.append("waiting on: " + "; ".join(event["waiting_on"]))
            self.say(f"{SHOWN[name]:<30} " + " ".join(details))

    def wait(self, lab: Lab, log: Path, done: Callable[[], bool], timeout: float) -> bool:
        """Follow the log until DONE (checked every 20 ms) or TIMEOUT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.follow(log)
            if done():
                self.follow(log)
                return True
            time.sleep(0.02)
        self.follow(log)
        self.say("gave up waiting:\n" + lab.describe())
        return False

    def show_kernel(self, lab: Lab, ifname: str, table: int) -> None:
        print()
        print(f"--- the kernel in the instance namespace: {ifname}, its rules, table {table}")
        for argv in (
            ["ip", "-br", "addr", "show", "dev", ifname],
            ["ip", "rule", "show", "table", str(table)],
            ["ip", "-6", "rule", "show", "table", str(table)],
            ["ip", "route", "show", "table", str(table)],
            ["ip", "-6", "route", "show", "table", str(table)],
        ):
            out = lab.run(argv, check=False).stdout.strip()
            print(f"$ {' '.join(argv)}\n{out or '(nothing)'}")
        print()

    def ping(self, lab: Lab, address: str, port: str) -> bool:
        result = lab.ping_from_peer(address, 3)
        through = result.replies_by_port.get(port, 0)
        self.say(f"{result}")
        return result.received == result.sent and through == result.sent

    # -- EC2 on systemd-networkd -----------------------------------------------------------
    def run_ec2(self, lab: Lab) -> bool:
        lab.plug_primary(PRIMARY, "10.0.0.10")
        self.say("primary NIC eth0 up, configured by a foreign /etc/netplan/50-cloud-init.yaml")
        lab.run(["ip", "route", "add", "default", "via", "10.0.0.1", "dev", "eth0", "table", "200"])
        lab.run(["ip", "rule", "add", *FOREIGN_RULE])
        self.say("another program's policy routing: rule 'fwmark 0x80 lookup 200', table 200")
        sim = lab.start_sim()
        sim.add_nic(
            {"mac": PRIMARY, "device_number": 0, "local_ipv4s": ["10.0.0.10"],
             "subnet_ipv4_cidr": "10.0.0.0/24"}
        )  # fmt: skip
        sim.set_primary(PRIMARY)
        self.say("IMDSv2 simulator on the instance's 127.0.0.1:8080")
        prom = lab.workdir / "node-exporter" / "nicreconciled.prom"
        prom.parent.mkdir(exist_ok=True)
        daemon = lab.start_daemon(polling={"ipv6_grace": 10, "deadline": 60}, metrics=str(prom))
        self.follow(daemon.log)
        eni = Eni.plan(1)
        late = eni.ipv6s[0]
        eni.extra = {"ipv6s": [], "schedule": {"ipv6s": [[self.ipv6_delay, late]]}}
        sim.add_nic(eni.spec())
        eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24, eni.subnet6)
        self.say(
            f"attach: ENI {eni.mac} hot-plugged as {eni.ifname} (IPv4 {', '.join(eni.ipv4s)});"
            f" its IPv6 {late} appears in IMDS {self.ipv6_delay:g} s later"
        )
        plugged = time.monotonic()
        if not self.wait(lab, daemon.log, lambda: not missing_state(lab, eni), 30):
            return False
        self.say(
            f"complete in the kernel {time.monotonic() - plugged:.2f} s after the hot-plug:"
            " every address, a rule from each to its table, the table's routes"
        )
        primary_ok = lab.kernel_primary_ipv4(eni.ifname) == eni.ipv4s[0]
        self.say(f"kernel's primary IPv4 on {eni.ifname}: {lab.kernel_primary_ipv4(eni.ifname)}")
        self.show_kernel(lab, eni.ifname, eni.table)
        self.say(f"the remote peer {PEER4} pings each address of the ENI (strict rp_filter):")
        pings_ok = all(self.ping(lab, a, eni.nic.port) for a in eni.ipv4s)
        self.say(f"upstream change: secondary {eni.ipv4s[0][:-2]}30 assigned in IMDS; SIGHUP")
        more = [*eni.ipv4s, f"{eni.ipv4s[0][:-2]}30"]
        sim.update_nic(eni.mac, {"local_ipv4s": more})
        daemon.hup()
        change_ok = self.wait(lab, daemon.log, lambda: not missing_state(lab, eni, ipv4s=more), 20)
        change_ok = change_ok and self.ping(lab, more[-1], eni.nic.port)
        foreign_ok = self.foreign_kept(lab)
        heal_ok = self.drift(lab, daemon.log, eni, more)
        code = lab.stop_daemon()
        self.say(f"SIGTERM: daemon exited with status {code}")
        self.show_file(lab.path(lab.output_file(eni.mac)))
        metrics_ok = self.show_metrics(prom)
        return (
            primary_ok and pings_ok and change_ok and foreign_ok and heal_ok and metrics_ok
            and code == 0
        )  # fmt: skip

    def show_metrics(self, prom: Path) -> bool:
        """The [metrics] textfile as the daemon left it (what node_exporter would serve)."""
        text = prom.read_text() if prom.exists() else ""
        lines = [
            line for line in text.splitlines()
            if line.startswith("nicreconciled_") and "_bucket{" not in line
        ]  # fmt: skip
        print()
        print(f"--- {prom.name} ([metrics] textfile; histogram buckets left out) ---")
        print("\n".join(lines) if lines else "(missing)")
        return 'nicreconciled_applies_total{result="ok"}' in text

    def foreign_kept(self, lab: Lab) -> bool:
        """The other program's rule and table are still there after our applies."""
        rule = lab.run(["ip", "rule", "show", "priority", "100"], check=False).stdout.strip()
        table = lab.run(["ip", "route", "show", "table", "200"], check=False).stdout.strip()
        kept = "fwmark 0x80 lookup 200" in rule and table.startswith("default via 10.0.0.1")
        self.say(
            f"the other program's rule and table 200 after our hot-plug and change: "
            f"{'still there' if kept else 'GONE'} ({rule or 'no rule'}; {table or 'no route'})"
        )
        return kept

    def drift(self, lab: Lab, log: Path, eni: Eni, ipv4s: list[str]) -> bool:
        """Another program deletes the ENI's rules and flushes its table: healed, no signal."""
        t = str(eni.table)
        self.say(f"another program: 'ip rule flush table {t}'-style deletion and table {t} flushed")
        deleted = time.monotonic()
        for family in ("-4", "-6"):
            for rule in lab.rules(4 if family == "-4" else 6, eni.table):
                lab.run(["ip", family, "rule", "del", "priority", str(rule.priority),
                         "from", str(rule.src), "lookup", t])  # fmt: skip
            lab.run(["ip", family, "route", "flush", "table", t])
        if not self.wait(lab, log, lambda: not missing_state(lab, eni, ipv4s=ipv4s), 20):
            return False
        self.say(f"restored in the kernel {time.monotonic() - deleted:.2f} s after the deletion")
        check = lab.run(
            [sys.executable, "-m", "nicreconciled", "--config", str(lab.daemon.config), "check"]
            if lab.daemon is not None
            else ["false"],
            check=False,
        )
        self.say(f"$ nicreconciled check  (exit {check.returncode})\n{check.stdout.strip()}")
        assert eni.nic is not None
        return check.returncode == 0 and self.ping(lab, ipv4s[1], eni.nic.port)

    # -- CloudStack on NetworkManager --------------------------------------------------------
    def run_cloudstack(self, lab: Lab) -> bool:
        lab.plug_primary(PRIMARY, "10.0.0.10")
        self.say("primary NIC eth0 up (a foreign keyfile): the default route via 10.0.0.1")
        vm = {"instance-id": "i-2-17-VM", "vm-id": "2a7c0f1e-1d2b-4e3f-9a8b-0c1d2e3f4a5b"}
        lab.start_vr("10.0.0.1", {**vm, "local-ipv4": "10.0.0.10"})
        nic = lab.prepare(lab.new_nic(CS_MAC, "10.1.1.23", 24))
        lab.start_vr("10.1.1.1", {**vm, "local-ipv4": "10.1.1.23"})
        self.say("a virtual router per guest network: 10.0.0.1 (default), 10.1.1.1 (the new NIC's)")
        daemon = lab.start_daemon(cloud="cloudstack", polling={"deadline": 60})
        self.follow(daemon.log)
        lab.attach(nic)
        self.say(f"attach: NIC {CS_MAC} hot-plugged as {nic.ifname}; no DHCP client runs for it")
        plugged = time.monotonic()

        def rule_table() -> int | None:
            for rule in lab.rules(4):
                if rule.src == nic.ipv4 and rule.table.isdigit():
                    return int(rule.table)
            return None

        def complete() -> bool:
            table = rule_table()
            if table is None or nic.ipv4 not in {a.local for a in lab.addresses(nic.ifname, 4)}:
                return False
            return "default" in lab.route_destinations(4, table)

        if not self.wait(lab, daemon.log, complete, 30):
            return False
        self.say(
            f"complete in the kernel {time.monotonic() - plugged:.2f} s after the hot-plug: the"
            f" lease's {nic.address4} from dnsmasq, a rule to its table, the table's routes"
        )
        table = rule_table()
        assert table is not None
        self.show_kernel(lab, nic.ifname, table)
        self.say(f"the remote peer {PEER4} pings the NIC's address (strict rp_filter):")
        ping_ok = self.ping(lab, nic.ipv4, nic.port)
        code = lab.stop_daemon()
        self.say(f"SIGTERM: daemon exited with status {code}")
        self.show_file(lab.path(lab.output_file(CS_MAC)))
        return ping_ok and code == 0

    # -- any other cloud: its simulator, on systemd-networkd --------------------------------
    def run_listed(self, lab: Lab, cloud: str) -> bool:
        """A cloud whose simulator lists NICs (``lab_spec``): hot-plug, converge, kernel and
        wire, then an upstream change after SIGHUP: a new secondary IPv4, or a second IPv6
        address where the cloud's metadata has no secondary IPv4 (``LAB_SECONDARIES = 0``), or
        a range routed to the NIC where the lab's IPv6 plan is not the cloud's either
        (``LAB_IPV6 = False``; ``LAB_RANGES``, its plan key: GCE's alias IP ranges)."""
        sim_class = simulator_class(cloud)
        to_spec = sim_class.lab_spec
        lab.plug_primary(PRIMARY, "10.0.0.10")
        self.say("primary NIC eth0 up, configured by a foreign /etc/netplan/50-cloud-init.yaml")
        sim = lab.start_sim(cloud=cloud)
        primary = Eni(0, PRIMARY, ["10.0.0.10"], "10.0.0.0/24", [], None)
        sim.add_nic(to_spec({**primary.plan_dict(), "primary": True}))
        self.say(f"{cloud} metadata simulator on the instance's 127.0.0.1:8080")
        daemon = lab.start_daemon(cloud=cloud, polling={"deadline": 60})
        self.follow(daemon.log)
        eni = Eni.plan(
            1,
            secondaries=getattr(sim_class, "LAB_SECONDARIES", 2),
            ipv6=getattr(sim_class, "LAB_IPV6", True),
        )
        ranges: list[str] = []
        sim.add_nic(to_spec(eni.plan_dict()))
        eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24, eni.subnet6)
        self.say(
            f"attach: NIC {eni.mac} hot-plugged as {eni.ifname} (IPv4 {', '.join(eni.ipv4s)},"
            f" IPv6 {', '.join(eni.ipv6s) or 'none'})"
        )
        plugged = time.monotonic()

        def complete() -> bool:
            # The table is the source's to number: learn it from the first address's rule.
            tables = [r.table for r in lab.rules(4) if r.src == eni.ipv4s[0]]
            if not tables or not tables[0].isdigit():
                return False
            eni.route_table = int(tables[0])
            # A range routed to the NIC: its rule (not a stale one) and its local route.
            rules = {f"{r.src}/{r.src_len}" for r in lab.rules(4, eni.table)}
            local = {r.get("dst") for r in lab.routes(4, "local") if r.get("dev") == eni.ifname}
            if any(r not in rules or r not in local for r in ranges):
                return False
            return not [m for m in missing_state(lab, eni) if not any(r in m for r in ranges)]

        if not self.wait(lab, daemon.log, complete, 30):
            return False
        self.say(
            f"complete in the kernel {time.monotonic() - plugged:.2f} s after the hot-plug:"
            " every address, a rule from each to its table, the table's routes"
        )
        self.show_kernel(lab, eni.ifname, eni.table)
        self.say("the remote peers ping each address of the NIC (strict rp_filter):")
        pings_ok = all(self.ping(lab, a, eni.nic.port) for a in [*eni.ipv4s, *eni.ipv6s])
        if eni.ipv4s[1:]:
            added = f"{eni.ipv4s[0][:-2]}30"
            eni.ipv4s.append(added)
            what = f"secondary {added}"
        elif eni.ipv6s:
            added = f"{eni.ipv6s[0][:-2]}11"
            eni.ipv6s.append(added)
            what = f"a second IPv6 address {added} (the metadata has no secondary IPv4s)"
        else:
            # Neither (GCE): a range the cloud routes to the NIC (LAB_RANGES: its plan key),
            # the router routing it there too; the instance must accept it and answer.
            ranges.append(f"{eni.ipv4s[0].rsplit('.', 1)[0]}.128/28")
            added = ranges[0].replace(".128/28", ".130")
            lab.route_to_nic(ranges[0], eni.nic)
            what = f"a range routed to the NIC, {ranges[0]} (no secondary IPv4s, no IPv6)"
        self.say(f"upstream change: {what} assigned in the metadata; SIGHUP")
        plan = eni.plan_dict()
        if ranges:
            plan[sim_class.LAB_RANGES] = ranges
        sim.update_nic(eni.mac, to_spec(plan))
        changed = time.monotonic()
        daemon.hup()
        change_ok = self.wait(lab, daemon.log, complete, 20)
        if change_ok:
            self.say(f"in the kernel {time.monotonic() - changed:.2f} s after the SIGHUP")
            change_ok = self.ping(lab, added, eni.nic.port)
        code = lab.stop_daemon()
        self.say(f"SIGTERM: daemon exited with status {code}")
        self.show_file(lab.path(lab.output_file(eni.mac)))
        return pings_ok and change_ok and code == 0

    def show_file(self, path: Path) -> None:
        print()
        if path.exists():
            print(f"--- {path.name} (mode {oct(path.stat().st_mode & 0o777)}) ---")
            print(path.read_text())
        print(f"files written for the NIC: {len(self.rendered)} (fingerprints {self.rendered})")


#: The network manager each demo runs on; every cloud not named here: networkd.
MANAGER: dict[str, Manager] = {"cloudstack": "nm"}


def run_demo(cloud: str = "ec2", ipv6_delay: float = 4.0) -> int:
    if os.geteuid() != 0:
        print("nicreconciled demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    manager = MANAGER.get(cloud, "networkd")
    missing = missing_tools(manager)
    if missing:
        print(f"nicreconciled demo: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    demo = Demo(ipv6_delay)
    workdir = Path(tempfile.mkdtemp(prefix="nicr-demo-"))
    ok = False
    try:
        with Lab(manager, workdir, tag="demo") as lab:
            demo.say(
                f"lab up: {manager} on a private D-Bus in namespace {lab.instance}, router"
                f" {lab.router} (dnsmasq: DHCPv4, DHCPv6, RA)"
            )
            if cloud == "ec2":
                ok = demo.run_ec2(lab)
            elif cloud == "cloudstack":
                ok = demo.run_cloudstack(lab)
            else:
                ok = demo.run_listed(lab, cloud)
    except (LabError, AssertionError, subprocess.SubprocessError, OSError) as exc:
        demo.say(f"FAILED: {exc}")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
        demo.say("namespaces, processes and temporary files removed")
    print(f"result: {'converged' if ok else 'FAILED'}")
    return 0 if ok else 1
