"""The lab's base: a real systemd-networkd or NetworkManager in throw-away namespaces, hot-plugged
veth NICs behind a router running dnsmasq, and the daemon and the IMDS simulator inside.

Layout. Two network namespaces: the *instance* and the *router*. The instance has a private
mount namespace held by a ``sleep`` (``ip netns exec`` would make a new one per call, so
everything enters the holder's with ``nsenter -t HOLDER -m -n``), with tmpfs over ``/run``
and the network configuration directories (nothing reaches the host) and ``/sys`` bind-mounted
read-only: with a writable ``/sys`` networkd waits for udevd forever and NetworkManager leaves
NICs unmanaged; read-only, both behave as in a container without udevd. A private system bus
(no activation) carries the manager's D-Bus API for ``networkctl``/``nmcli``.

The router forwards, drops by strict ``rp_filter`` a packet whose source does not belong
behind the port it came in on (like EC2's source/destination check), and holds the remote
peers on its ``lo``. A NIC is a veth made in the router, its NIC end born with the ENI's MAC,
moved into the instance: that move is the hot-plug (real uevent, real RTM_NEWLINK).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from nicreconciled import coexist
from nicreconciled.lab import kernel, texts, udevd
from nicreconciled.lab.daemon import Daemon
from nicreconciled.lab.kernel import Family
from nicreconciled.lab.nics import Nic
from nicreconciled.lab.procs import Proc, ProcSet, wait_until
from nicreconciled.lab.simctl import SimControl
from nicreconciled.lab.watch import PEER4, PEER6, AddressMonitor
from nicreconciled.system import sysfs

Manager = Literal["networkd", "nm"]
L = TypeVar("L", bound="LabBase")

BUS_NAME: dict[Manager, str] = {
    "networkd": "org.freedesktop.network1",
    "nm": "org.freedesktop.NetworkManager",
}
NETWORKD = "/lib/systemd/systemd-networkd"
NETWORK_MANAGER = "/usr/sbin/NetworkManager"
#: Private tmpfs in the instance's mount namespace, with their modes.
PRIVATE_DIRS = {
    "/run": "0755",
    "/etc/netplan": "0755",
    "/etc/NetworkManager/system-connections": "0700",
    "/var/lib/NetworkManager": "0700",
    "/etc/systemd/network": "0755",
}
#: Where the daemon writes (the product's defaults) and its renderer, per manager.
OUTPUT_DIR: dict[Manager, str] = {
    "networkd": "/run/netplan",
    "nm": "/run/NetworkManager/system-connections",
}
#: Where each renderer writes (its default output_dir), as the instance sees it.
RENDERER_DIR: dict[str, str] = {
    "netplan": "/run/netplan",
    "networkmanager": "/run/NetworkManager/system-connections",
    "networkd": "/run/systemd/network",
}
RENDERER: dict[Manager, str] = {"networkd": "netplan", "nm": "networkmanager"}
COMMON_TOOLS = ("ip", "nsenter", "unshare", "mount", "sysctl", "sleep", "sed")
LAB_TOOLS = (*COMMON_TOOLS, "dbus-daemon", "busctl", "dnsmasq", "tcpdump", "ping")
MANAGER_TOOLS: dict[Manager, tuple[str, ...]] = {
    "networkd": ("networkctl", texts.NETPLAN, NETWORKD),
    "nm": ("nmcli", NETWORK_MANAGER),
}
IMDS_PORT = 8080
#: The mount-namespace holder, run in the instance's network namespace.
HOLDER = ("unshare", "--mount", "--propagation", "private", "--", "sleep", "infinity")
BUS_FLAGS = ("--nofork", "--nopidfile", "--nosyslog")
_TAG = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
_counter = itertools.count(1)


class LabTimeout(AssertionError):
    """A lab condition was not met in time (the message carries the diagnostics)."""


class LabError(RuntimeError):
    """The lab could not be set up (or not cleaned up)."""


def missing_tools(manager: Manager, *, udev: bool = False) -> list[str]:
    """Tools the lab needs that are not installed (Debian: systemd netplan.io
    network-manager dbus-daemon dnsmasq-base iproute2 tcpdump iputils-ping util-linux; UDEV:
    udev)."""
    tools = (*LAB_TOOLS, *MANAGER_TOOLS[manager], *(udevd.TOOLS if udev else ()))
    return [t for t in tools if shutil.which(t) is None]


def check_binary(proc: Proc, path: str) -> None:
    """LabError unless PROC (running) executes PATH as this process sees it: the lab's
    processes must run the binaries of the root the tests run in (a chrooted lab entering
    the instance without the holder's root would run the host's, and pass unnoticed)."""
    if not proc.alive():
        return  # gone already (a crash test): its own failure says more
    try:
        running = os.stat(f"/proc/{proc.pid}/exe")
        wanted = os.stat(path)
    except OSError as exc:
        raise LabError(f"{proc.name}: cannot compare its binary with {path}: {exc}") from exc
    if (running.st_dev, running.st_ino) != (wanted.st_dev, wanted.st_ino):
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        raise LabError(f"{proc.name} runs {exe}, not this root's {path}")


class LabBase:
    """Namespaces, the mount-namespace holder, the bus and the manager; running commands
    inside; the instance's kernel state. ``Lab`` adds NICs, the daemon and the probes."""

    def __init__(
        self,
        manager: Manager,
        workdir: Path,
        tag: str = "lab",
        *,
        networkd_drop_in: bool = True,
        udev_rules: Mapping[str, str] | None = None,
    ) -> None:
        if manager not in BUS_NAME:
            raise ValueError(f"manager must be networkd or nm, not {manager!r}")
        if not _TAG.match(tag):
            raise ValueError(f"tag must match {_TAG.pattern}: {tag!r}")
        self.manager: Manager = manager
        self.workdir = workdir.resolve()
        #: The daemons' TMPDIR (netplan's scratch trees), inside workdir.
        self.tmp = self.workdir / "tmp"
        if any(self.workdir.is_relative_to(d) for d in (*PRIVATE_DIRS, *udevd.PRIVATE_DIRS)):
            raise ValueError(f"workdir {workdir} would be hidden inside the instance")
        base = f"nrl-{tag}-{os.getpid()}-{next(_counter)}"
        self.instance = f"{base}-i"
        self.router = f"{base}-r"
        self.procs = ProcSet()
        self.holder: Proc | None = None
        self.manager_proc: Proc | None = None
        self.nics: dict[str, Nic] = {}
        self.dnsmasq: dict[str, Proc] = {}
        self.sim: SimControl | None = None
        self.vrs: list[SimControl] = []
        #: The daemon's renderer: the manager's usual one; "networkd" (native .network files)
        #: is the other choice on systemd-networkd. Set before ``start_daemon``.
        self.renderer = RENDERER[manager]
        self._sim_port = IMDS_PORT
        self.daemon: Daemon | None = None
        self.daemons: list[Daemon] = []
        self.monitors: list[AddressMonitor] = []
        #: Set-up durations in seconds: "namespaces", "bus", "manager", "total".
        self.timings: dict[str, float] = {}
        #: time.monotonic() of each NIC's hot-plug, by MAC.
        self.plugged_at: dict[str, float] = {}
        self._ifindex = itertools.count(1)
        self._portindex = itertools.count(1)
        self._created: list[str] = []
        self._closed = False
        #: networkd reads the drop-in the package ships (it stops removing foreign rules);
        #: False: networkd's defaults, as on a host without our package.
        self.networkd_drop_in = networkd_drop_in
        self._manager_starts = 0
        #: Run a real systemd-udevd with these rules (file name -> text) only; None: no
        #: udevd, /sys read-only (see ``udevd``). The daemon then reads udev's properties.
        self.udev_rules = None if udev_rules is None else dict(udev_rules)
        if self.udev_rules is not None:
            udevd.check_rules(self.udev_rules)
        self.udevd: Proc | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self: L) -> L:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network and mount namespaces)")
        missing = missing_tools(self.manager, udev=self.udev_rules is not None)
        if missing:
            raise LabError(f"not installed: {', '.join(missing)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for ns in (self.instance, self.router):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._created.append(ns)
            kernel.ip(ns, "link", "set", "lo", "up")
        # No IPv6 duplicate address detection (1-7 s per address), set before NICs move in.
        no_dad = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        # The instance's own rp_filter off: a misrouted reply is dropped by the router only.
        self.sysctl(self.instance, *no_dad, "net.ipv4.conf.all.rp_filter=0")
        self.sysctl(self.instance, "net.ipv4.conf.default.rp_filter=0")
        self.sysctl(self.router, *no_dad, "net.ipv4.ip_forward=1")
        self.sysctl(
            self.router, "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1"
        )
        self.sysctl(self.router, "net.ipv6.conf.all.forwarding=1")
        kernel.ip_batch(
            self.router,
            [
                ["addr", "add", f"{PEER4}/32", "dev", "lo"],
                ["addr", "add", f"{PEER6}/128", "dev", "lo"],
            ],
        )
        self._start_holder()
        self.timings["namespaces"] = time.monotonic() - t0
        t1 = time.monotonic()
        self._start_bus()
        self.timings["bus"] = time.monotonic() - t1
        if self.udev_rules is not None:
            t_udev = time.monotonic()
            self._start_udevd(self.udev_rules)
            self.timings["udevd"] = time.monotonic() - t_udev
        t2 = time.monotonic()
        self._start_manager()
        self.timings["manager"] = time.monotonic() - t2
        self.timings["total"] = time.monotonic() - t0

    def _start_holder(self) -> None:
        self.holder = self.procs.spawn(
            "holder",
            [*self._enter_net(self.instance), *HOLDER],
            log=self.workdir / "holder.log",
        )
        comm = Path(f"/proc/{self.holder.pid}/comm")

        def execed() -> bool:
            with contextlib.suppress(OSError):
                return comm.read_text().strip() == "sleep"
            return False

        if not wait_until(execed, 20) or not self.holder.alive():
            raise LabError(f"mount namespace holder did not start: {self.holder.tail()}")
        steps: list[list[str]] = [
            # The copied /run/netns mounts would pin other namespaces: drop them first.
            ["sh", "-c", "umount -R -l /run/netns 2>/dev/null; true"],
        ]
        for target, mode in PRIVATE_DIRS.items():
            steps.append(["mount", "-t", "tmpfs", "-o", f"mode={mode}", "nrl", target])
        steps += [
            ["mkdir", "-p", "/run/dbus", "/run/systemd", "/run/NetworkManager"],
            # A sysfs of this network namespace, then read-only: "no udevd here".
            ["umount", "-l", "/sys"],
            ["mount", "-t", "sysfs", "sysfs", "/sys"],
        ]
        if self.udev_rules is None:
            steps.append(["mount", "-o", "remount,bind,ro", "/sys"])
        else:
            steps += udevd.holder_steps()
        script = " && ".join(shlex.join(step) for step in steps)
        self.run(["sh", "-ec", script])

    def _start_bus(self) -> None:
        conf = self.workdir / "bus.conf"
        conf.write_text(texts.bus_config())
        self.procs.spawn(
            "dbus-daemon",
            [*self.enter_instance(), "dbus-daemon", f"--config-file={conf}", *BUS_FLAGS],
            log=self.workdir / "dbus.log",
        )
        socket = self.path("/run/dbus/system_bus_socket")
        if not wait_until(socket.exists, 20):
            raise LabError(f"dbus-daemon did not start: {self.procs.procs[-1].tail()}")

    def _start_udevd(self, rules: Mapping[str, str]) -> None:
        self.udevd = udevd.start(self, rules)

    def udev_properties(self, ifname: str) -> dict[str, str] | None:
        """IFNAME's properties in the instance's udev database (None: not processed)."""
        (link,) = self.ip_json("link", "show", "dev", ifname)
        return sysfs.udev_properties(int(link["ifindex"]), self.path("/run"))

    def _start_manager(self) -> None:
        self._manager_starts += 1
        n = self._manager_starts
        log = self.workdir / f"{self.manager}{'' if n == 1 else f'-{n}'}.log"
        if self.manager == "networkd" and self.networkd_drop_in:
            name = Path(coexist.DROP_IN).name
            self.write(f"/run/systemd/networkd.conf.d/{name}", coexist.DROP_IN_TEXT, 0o644)
        if self.manager == "networkd":
            env = dict(os.environ)
            env.update(
                SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_TARGET="console", SYSTEMD_LOG_TIME="1"
            )
            argv = [*self.enter_instance(), NETWORKD]
        else:
            conf = self.workdir / "NetworkManager.conf"
            conf.write_text(texts.nm_config())
            for sub in ("nm-conf.d", "nm-system-conf.d"):
                (self.workdir / sub).mkdir(exist_ok=True)
            env = None
            argv = [*self.enter_instance(), NETWORK_MANAGER, "--debug", f"--config={conf}"]
            argv += [f"--config-dir={self.workdir / 'nm-conf.d'}"]
            argv += [f"--system-config-dir={self.workdir / 'nm-system-conf.d'}"]
        self.manager_proc = self.procs.spawn(self.manager, argv, log=log, env=env)
        name = BUS_NAME[self.manager]
        query = ["busctl", "--system", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus"]
        query += ["org.freedesktop.DBus", "NameHasOwner", "s", name]

        def owned() -> bool:
            assert self.manager_proc is not None
            if not self.manager_proc.alive():
                raise LabError(f"{self.manager} exited:\n{self.manager_proc.tail()}")
            return "true" in self.run(query, check=False).stdout

        if not wait_until(owned, 30):
            raise LabError(f"{name} not on the bus after 30 s:\n{self.manager_proc.tail()}")
        check_binary(self.manager_proc, NETWORKD if self.manager == "networkd" else NETWORK_MANAGER)

    def restart_manager(self) -> float:
        """Stop the manager (SIGTERM; its bus name goes), start it again and wait until its
        bus name is back; returns when (time.monotonic()) it was back."""
        assert self.manager_proc is not None
        self.procs.stop(self.manager_proc)
        self._start_manager()
        return time.monotonic()

    def close(self) -> None:
        """Stop everything by pid, kill what is left in both namespaces, delete them.
        Raises LabError at the end if something could not be removed."""
        if self._closed:
            return
        self._closed = True
        problems = []
        for monitor in self.monitors:
            with contextlib.suppress(Exception):
                monitor.stop()
        problems += self.procs.stop_all()
        for ns in self._created:
            for pid in self._netns_pids(ns):
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in self._created:
            if not wait_until(functools.partial(self._no_pids, ns), 10):
                problems.append(f"{ns}: processes left {self._netns_pids(ns)}")
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"ip netns del {ns}: {done.stderr.strip()}")
        self._created.clear()
        if problems:
            raise LabError("lab cleanup: " + "; ".join(problems))

    @staticmethod
    def _netns_pids(ns: str) -> list[str]:
        done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return done.stdout.split()

    @classmethod
    def _no_pids(cls, ns: str) -> bool:
        return not cls._netns_pids(ns)

    @staticmethod
    def _enter_net(netns: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{netns}", "--"]

    # --- running things ------------------------------------------------------------------

    def enter_instance(self) -> list[str]:
        """The argv prefix that runs a command in the instance's net + mount namespaces.

        ``-r``: with the holder's root too. Entering a mount namespace resets the root to
        that namespace's top; in a chrooted lab (tests/suitelab.py) that is the host's
        file system, and the manager, the bus and the daemon would silently be the host's.
        """
        assert self.holder is not None, "lab not started"
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "-r", "--"]

    def enter_router(self) -> list[str]:
        """The argv prefix that runs a command in the router's network namespace."""
        return self._enter_net(self.router)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside the instance; LabError with its output if CHECK and it fails."""
        done = subprocess.run(
            [*self.enter_instance(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
        )
        if check and done.returncode != 0:
            raise LabError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def run_router(
        self, argv: Sequence[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.enter_router(), *argv], capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise LabError(f"{shlex.join(argv)} (router) exited {done.returncode}: {done.stderr}")
        return done

    def sysctl(self, netns: str, *settings: str) -> None:
        subprocess.run(
            [*self._enter_net(netns), "sysctl", "-qw", *settings],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def path(self, inside: str) -> Path:
        """PATH as the instance sees it (its private /run, /etc/netplan, ...), from outside."""
        assert self.holder is not None, "lab not started"
        return Path(f"/proc/{self.holder.pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o600) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # --- kernel state of the instance ------------------------------------------------------

    def ip_json(self, *args: str) -> Any:
        return kernel.ip_json(self.instance, *args)

    def addresses(
        self, ifname: str | None = None, family: Family | None = None
    ) -> list[kernel.Address]:
        return kernel.addresses(self.instance, ifname, family)

    def kernel_primary_ipv4(self, ifname: str) -> str | None:
        return kernel.kernel_primary_ipv4(self.instance, ifname)

    def rules(self, family: Family, table: int | str | None = None) -> list[kernel.Rule]:
        return kernel.rules(self.instance, family, table)

    def rule_sources(self, family: Family, table: int | str) -> set[str]:
        return kernel.rule_sources(self.instance, family, table)

    def routes(self, family: Family, table: int | str = "main") -> list[dict[str, Any]]:
        return kernel.routes(self.instance, family, table)

    def route_destinations(self, family: Family, table: int | str) -> dict[str, str | None]:
        return kernel.route_destinations(self.instance, family, table)

    def describe(self) -> str:
        return kernel.describe(self.instance)
