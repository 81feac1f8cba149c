"""``Lab``: the base plus hot-plugged NICs, the primary NIC, the simulator and the daemon
inside the instance, pings from the remote peer and address monitoring."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Interface
from pathlib import Path
from typing import TypeVar

from nicreconciled.lab import kernel, texts
from nicreconciled.lab.base import (
    IMDS_PORT,
    RENDERER_DIR,
    LabBase,
    LabError,
    LabTimeout,
    check_binary,
)
from nicreconciled.lab.daemon import DEFAULT_POLLING, GENERATOR, Crash, Daemon, write_bin_dir
from nicreconciled.lab.nics import Nic, check_subnet6
from nicreconciled.lab.procs import wait_until
from nicreconciled.lab.simctl import SimControl
from nicreconciled.lab.watch import AddressMonitor, AddressSampler, PingResult, ping_from_peer

T = TypeVar("T")
#: Routers' ports are named rp-<NIC name>: never seen by the instance, ignored by the daemon.
PORT_PREFIX = "rp-"
PRIMARY_NETPLAN = "/etc/netplan/50-cloud-init.yaml"
PRIMARY_KEYFILE_DIR = "/etc/NetworkManager/system-connections"


class Lab(LabBase):
    """A real network stack for hot-plugged NICs; see ``nicreconciled.lab``."""

    # --- NICs ----------------------------------------------------------------------------

    def new_nic(
        self,
        mac: str,
        ipv4: str,
        prefix: int = 24,
        ipv6_subnet: str | None = None,
        *,
        ifname: str | None = None,
        primary: bool = False,
    ) -> Nic:
        """Describe a NIC (nothing is created yet): IPV4 is its primary private address."""
        name = ifname or f"eth{next(self._ifindex)}"
        if len(PORT_PREFIX + name) > 15 or not re.fullmatch(r"[a-z][a-z0-9]*", name):
            raise ValueError(f"interface name {name!r}: lowercase, at most 12 characters")
        if name.startswith(("ve", "vb", "vz", "vt", "host")):
            raise ValueError(f"{name!r} would match systemd's stock container .network files")
        address = IPv4Interface(f"{ipv4}/{prefix}")
        n = next(self._portindex)
        return Nic(
            mac=mac.lower(),
            ifname=name,
            port=PORT_PREFIX + name,
            port_mac=f"02:52:00:00:{n >> 8:02x}:{n & 0xFF:02x}",
            address4=str(address),
            subnet6=check_subnet6(ipv6_subnet),
            primary=primary,
        )

    def prepare(self, nic: Nic, *, dhcp: bool = True) -> Nic:
        """Make NIC's veth pair and router port (and its dnsmasq); the NIC end stays in the
        router until ``attach``."""
        if nic.mac in self.nics:
            raise ValueError(f"{nic.mac} is plugged already")
        kernel.ip_batch(self.router, nic.router_commands())
        self.sysctl(self.router, f"net.ipv4.conf.{nic.port}.rp_filter=1")
        if dhcp:
            log = self.workdir / f"dnsmasq-{nic.port}.log"
            proc = self.procs.spawn(
                f"dnsmasq {nic.port}",
                [*self.enter_router(), *nic.dnsmasq_argv(self.workdir)],
                log=log,
            )
            self.dnsmasq[nic.port] = proc

            def listening() -> bool:
                if not proc.alive():
                    raise LabError(f"dnsmasq for {nic.port} exited:\n{proc.tail()}")
                return log.exists() and "sockets bound exclusively" in log.read_text()

            if not wait_until(listening, 20):
                raise LabError(f"dnsmasq for {nic.port} not ready:\n{proc.tail()}")
        self.nics[nic.mac] = nic
        return nic

    def attach(self, *nics: Nic) -> None:
        """Hot-plug: move the NIC ends into the instance (one ``ip`` process for all)."""
        kernel.ip_batch(
            self.router, [["link", "set", nic.ifname, "netns", self.instance] for nic in nics]
        )
        now = time.monotonic()
        for nic in nics:
            self.plugged_at[nic.mac] = now

    def plug(
        self,
        mac: str,
        ipv4: str,
        prefix: int = 24,
        ipv6_subnet: str | None = None,
        *,
        ifname: str | None = None,
    ) -> Nic:
        """Hot-plug a NIC with MAC whose DHCPv4 lease is IPV4/PREFIX (gateway: network + 1),
        with DHCPv6 and router advertisements for IPV6_SUBNET when given."""
        nic = self.prepare(self.new_nic(mac, ipv4, prefix, ipv6_subnet, ifname=ifname))
        self.attach(nic)
        return nic

    def unplug(self, nic: Nic) -> None:
        """Detach: the pair is deleted from the router side (remove uevent in the instance)."""
        kernel.ip(self.router, "link", "del", nic.port)
        proc = self.dnsmasq.pop(nic.port, None)
        if proc is not None:
            self.procs.stop(proc)
        self.nics.pop(nic.mac, None)
        self.plugged_at.pop(nic.mac, None)

    def plug_primary(
        self, mac: str, ipv4: str = "10.0.0.10", prefix: int = 24, *, ifname: str = "eth0"
    ) -> Nic:
        """The instance's primary NIC, configured statically by a FOREIGN file (cloud-init's
        ``50-cloud-init.yaml``, or a ``cloud-init <ifname>`` keyfile) with its default route
        via the router; returns once the address and the default route are in the kernel."""
        nic = self.prepare(self.new_nic(mac, ipv4, prefix, ifname=ifname, primary=True), dhcp=False)
        if self.manager == "networkd":
            self.write(
                PRIMARY_NETPLAN, texts.primary_netplan(ifname, nic.mac, nic.address4, nic.gateway4)
            )
            self.run([str(write_bin_dir(self.workdir / "bin", ())) + "/netplan", "generate"])
            self.run(["networkctl", "reload"])
        else:
            _, text = texts.primary_keyfile(ifname, nic.mac, nic.address4, nic.gateway4)
            path = f"{PRIMARY_KEYFILE_DIR}/cloud-init-{ifname}.nmconnection"
            self.write(path, text)
            self.run(["nmcli", "connection", "load", path])
        self.attach(nic)

        def configured() -> bool:
            has_addr = nic.ipv4 in {a.local for a in self.addresses(ifname, 4)}
            return has_addr and self.route_destinations(4, "main").get("default") == nic.gateway4

        self.wait_for(configured, 30, f"primary NIC {ifname} configured by its foreign file")
        return nic

    def nic_by_port(self, port: str) -> Nic | None:
        return next((n for n in self.nics.values() if n.port == port), None)

    def route_to_nic(self, destination: str, nic: Nic) -> None:
        """Route DESTINATION (an address or a network) in the router to NIC's address, as a
        cloud's network does for a range it delivers to a NIC without assigning it (GCE alias
        IP ranges, forwarded IPs); the router's strict rp_filter then takes replies from it
        only through NIC's port."""
        kernel.ip(self.router, "route", "replace", destination, "via", nic.ipv4, "dev", nic.port)

    def dhcp_acks(self, nic: Nic) -> int:
        """DHCPv4 ACKs dnsmasq sent to NIC (a second one means its DHCP client restarted)."""
        log = self.workdir / f"dnsmasq-{nic.port}.log"
        if not log.exists():
            return 0
        pattern = re.compile(rf"DHCPACK\({re.escape(nic.port)}\) \S+ {re.escape(nic.mac)}\b", re.I)
        return len(pattern.findall(log.read_text(errors="replace")))

    # --- the simulator and the daemon ------------------------------------------------------

    def start_sim(self, port: int = IMDS_PORT, *, cloud: str = "ec2") -> SimControl:
        """CLOUD's metadata simulator (IMDS by default) on the instance's 127.0.0.1:PORT,
        control socket in workdir; ``start_daemon(cloud=CLOUD)`` points the daemon at it."""
        control = self.workdir / "sim.sock"
        if len(str(control)) > 100:
            raise ValueError(f"workdir path too long for a unix socket: {control}")
        argv = [sys.executable, "-m", "nicreconciled.sim", "--cloud", cloud]
        argv += ["--listen", f"127.0.0.1:{port}", "--control", str(control)]
        self.procs.spawn("sim", [*self.enter_instance(), *argv], log=self.workdir / "sim.log")
        self.sim = SimControl(str(control))
        self.sim.wait_ready(30)
        self._sim_port = port
        return self.sim

    def start_vr(self, address: str, vm: Mapping[str, str]) -> SimControl:
        """A CloudStack virtual router simulator in the router namespace on ADDRESS:80 (a
        router port's address: each guest network has its own VR), answering VM's metadata.
        The daemon finds it as CloudStack does: the DHCP server of the NIC's lease, or the
        default gateway."""
        n = len(self.vrs) + 1
        control = self.workdir / f"vr-{n}.sock"
        argv = [sys.executable, "-m", "nicreconciled.sim", "--cloud", "cloudstack"]
        argv += ["--listen", f"{address}:80", "--control", str(control)]
        self.procs.spawn(f"vr-{n}", [*self.enter_router(), *argv], log=self.workdir / f"vr-{n}.log")
        vr = SimControl(str(control))
        vr.wait_ready(30)
        vr.set_vm(vm)
        self.vrs.append(vr)
        return vr

    @property
    def output_dir(self) -> str:
        """Where the daemon writes, as the instance sees it."""
        return RENDERER_DIR[self.renderer]

    def output_file(self, mac: str) -> str:
        key = mac.lower().replace(":", "")
        name = {
            "networkmanager": f"nicreconciled-{key}.nmconnection",
            "networkd": f"05-nicreconciled-{key}.network",
        }.get(self.renderer, f"90-nicreconciled-{key}.yaml")
        return f"{self.output_dir}/{name}"

    def start_daemon(
        self,
        *,
        polling: Mapping[str, float] | None = None,
        failing: Iterable[str] = (),
        resync_interval: float = 600,
        wait_ready: bool = True,
        cloud: str = "ec2",
        kernel: Mapping[str, bool | int] | None = None,
        crash: Crash | None = None,
        metrics: str = "",
        settings: Mapping[str, str | int | float | bool] | None = None,
    ) -> Daemon:
        """``nicreconciled run`` in the instance, JSON log in workdir; FAILING: tools whose
        stand-ins fail (e.g. ``("networkctl",)``). Call ``start_sim`` (EC2) or ``start_vr``
        (``cloud = "cloudstack"``) first. KERNEL: the ``[kernel]`` table (heal, heal_limit).
        METRICS: ``[metrics] textfile``. SETTINGS: more keys of the cloud's table
        (``{"token_ttl": 5}``). CRASH: where ``Daemon.arm_crash`` makes it die
        (SIGKILL) in an apply. Its netplan generator is the lab's wrapper. Its TMPDIR
        (netplan's scratch trees) is the lab's own ``tmp``."""
        if self.sim is None and cloud != "cloudstack":
            raise LabError("start_sim() first")
        if self.daemon is not None and self.daemon.alive():
            raise LabError("a daemon is running already")
        n = len(self.daemons) + 1
        self.path(self.output_dir).mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"daemon-{n}.toml"
        config.write_text(
            texts.daemon_config(
                renderer=self.renderer,
                output_dir=Path(self.output_dir),
                state_dir=self.workdir / "state",
                endpoint=f"http://127.0.0.1:{self._sim_port}",
                ignore=[f"{PORT_PREFIX}*"],
                polling={**DEFAULT_POLLING, **(polling or {})},
                resync_interval=resync_interval,
                cloud=cloud,
                kernel=kernel,
                # A lab with udevd: the daemon reads udev's events and database, as on a host.
                udev_source="kernel" if self.udev_rules is None else "udev",
                generator=str(self.workdir / f"bin-daemon-{n}" / GENERATOR),
                metrics=metrics,
                settings=settings,
            )
        )
        bin_dir = write_bin_dir(self.workdir / f"bin-daemon-{n}", failing, crash)
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        env = dict(os.environ)
        env["TMPDIR"] = str(self.tmp)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        log = self.workdir / f"daemon-{n}.log"
        argv = [sys.executable, "-m", "nicreconciled", "--config", str(config)]
        argv += [
            "--log-format",
            "json",
            *(["-v"] if os.environ.get("NICR_LAB_VERBOSE") else []),
            "run",
        ]
        proc = self.procs.spawn(f"daemon-{n}", [*self.enter_instance(), *argv], log=log, env=env)
        self.daemon = Daemon(proc, log, config, bin_dir)
        self.daemons.append(self.daemon)
        if wait_ready:
            self.daemon.wait_ready(30)
            check_binary(proc, sys.executable)
        return self.daemon

    def stop_daemon(self, grace: float = 10.0) -> int:
        if self.daemon is None:
            raise LabError("no daemon started")
        code = self.daemon.stop(grace)
        self.procs.stop(self.daemon.proc)
        return code

    def stop_manager(self) -> None:
        """Stop the manager (SIGTERM; its bus name goes) until ``start_manager``."""
        if self.manager_proc is None or not self.manager_proc.alive():
            raise LabError(f"{self.manager} is not running")
        self.procs.stop(self.manager_proc)

    def start_manager(self) -> float:
        """Start the manager again after ``stop_manager`` and wait until its bus name is
        back; returns when (time.monotonic()) it was back."""
        if self.manager_proc is not None and self.manager_proc.alive():
            raise LabError(f"{self.manager} is running already")
        self._start_manager()
        return time.monotonic()

    # --- probes --------------------------------------------------------------------------

    def ping_from_peer(
        self, address: str, count: int = 3, *, source: str | None = None
    ) -> PingResult:
        """The router pings ADDRESS from the remote peer (or SOURCE); replies per router port."""
        return ping_from_peer(self.enter_router(), address, count=count, source=source)

    def monitor_addresses(self) -> AddressMonitor:
        """A running ``ip monitor address`` of the instance (stopped by ``close`` at the
        latest); use as a context manager."""
        probe = "127.0.0.254/32"

        def poke() -> None:
            kernel.ip_batch(
                self.instance,
                [["addr", "add", probe, "dev", "lo"], ["addr", "del", probe, "dev", "lo"]],
            )

        monitor = AddressMonitor(["ip", "-n", self.instance, "-o", "monitor", "address"])
        self.monitors.append(monitor)
        return monitor.start(poke)

    def sample_address(self, ifname: str, address: str, interval: float = 0.02) -> AddressSampler:
        """A context manager sampling every INTERVAL s whether IFNAME has ADDRESS."""
        return AddressSampler(self.instance, ifname, address, interval)

    # --- waiting and diagnostics -----------------------------------------------------------

    def diagnostics(self, daemon_lines: int = 40, manager_lines: int = 15) -> str:
        parts = []
        for daemon in self.daemons:
            parts.append(f"--- daemon log {daemon.log.name} (last {daemon_lines} lines)")
            parts.append(daemon.tail(daemon_lines))
        if self.manager_proc is not None:
            parts.append(f"--- {self.manager} log (last {manager_lines} lines)")
            parts.append(self.manager_proc.tail(manager_lines))
        try:
            parts.append(self.describe())
        except Exception as exc:  # diagnostics must never hide the real failure
            parts.append(f"(kernel state unavailable: {exc})")
        return "\n".join(parts)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float,
        what: str,
        step: float = 0.05,
        describe: Callable[[], str] | None = None,
    ) -> T:
        """Poll PREDICATE until it returns something true; LabTimeout with DESCRIBE() (or
        WHAT), the daemon's log tail and the kernel state on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                detail = describe() if describe is not None else ""
                raise LabTimeout(
                    f"timed out after {timeout:g} s waiting for {what}\n{detail}\n"
                    + self.diagnostics()
                )
            time.sleep(step)

    def elapsed_since_plug(self, mac: str) -> float:
        return time.monotonic() - self.plugged_at[mac.lower()]
