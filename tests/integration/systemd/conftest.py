"""A booted Debian per release and test module, with that release's .deb installed and the unit
exactly as shipped.

* ``suite`` (session, parametrized): the Debian releases the package is built for, Debian 12
  "bookworm" (systemd 252, NetworkManager 1.42, netplan 0.106, Python 3.11) and Debian 13
  "trixie" (systemd 257, NetworkManager 1.52, netplan 1.1, Python 3.13): the host's own in
  ``make test``, the ones NICR_SUITES names in ``make matrix`` (CI runs both);
* ``deb`` (session): dist/'s .deb for the suite, rebuilt with ``SUITE=<suite>
  packaging/build-deb`` when it is missing or older than a source (the rule
  packaging/check-deb applies);
* ``rootfs`` (session): the suite's cached mmdebstrap tree (tests/sdcontainer.py builds it on
  first use, about 40 s, and keeps it under /var/cache/nicreconciled-tests);
* ``booted`` (module): systemd as PID 1 in its own fresh network namespace, the package
  installed with dpkg, the IMDS simulator running inside on 127.0.0.1:8080, and a "router"
  namespace where each NIC is born (a veth, its end carrying the ENI's MAC, moved into the
  container: the hot-plug) with a dnsmasq answering DHCPv4 on its peer.

Nothing skips: a missing tool fails (``require_tool``). Everything is removed afterwards, also
on failure: the container is halted, its cgroups, namespaces and nspawn state removed,
dnsmasq and helper processes killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nicreconciled.sim.client import SimClient
from tests import sdcontainer
from tests.conftest import require_tool, wait_for
from tests.sdcontainer import CONFIG, SIM_SOCKET, UNIT, Container

T = TypeVar("T")

PRIMARY = "0a:00:00:00:00:01"
_names = itertools.count()

#: TEST-ONLY, installed as /usr/local/sbin/netplan inside the container (first on the
#: unit's PATH). netplan 0.106 renders `match: macaddress` as PermanentMACAddress=, which a
#: veth (it has no permanent MAC) never matches, so networkd would never configure a test
#: NIC. Real ENIs and virtio NICs have a permanent MAC: the product needs no such thing.
#: It runs the real netplan, then rewrites that one key in the 10-netplan-*.network files
#: netplan wrote: under <root-dir>/run/systemd/network with --root-dir (the daemon generates
#: into a scratch tree and installs only its own NICs' files), else /run/systemd/network.
NETPLAN_WRAPPER = """#!/bin/sh
# TEST-ONLY (tests/integration/systemd/conftest.py): veths have no permanent MAC, netplan
# 0.106 matches on PermanentMACAddress=; see the comment there.
root=
prev=
for arg in "$@"; do
  case $prev in --root-dir) root=$arg ;; esac
  case $arg in --root-dir=*) root=${arg#--root-dir=} ;; esac
  prev=$arg
done
/usr/sbin/netplan "$@" || exit
for file in "$root"/run/systemd/network/10-netplan-*.network; do
  [ -f "$file" ] || continue
  sed -i 's/^PermanentMACAddress=/MACAddress=/' "$file"
done
"""


#: TEST-ONLY, installed in place of netplan's generator (/usr/libexec/netplan/generate, the
#: real one moved to generate.real; the container's /usr is an overlay): the same fix for the
#: daemon, which calls the generator itself from where it finds it (system/netplan.py), as
#: shipped, with no configuration for it; netplan's own front end calls it too.
GENERATOR_WRAPPER = """#!/bin/sh
# TEST-ONLY (tests/integration/systemd/conftest.py): netplan's generator, then MACAddress=
# for veths (no permanent MAC); see NETPLAN_WRAPPER.
root=
prev=
for arg in "$@"; do
  case $prev in --root-dir) root=$arg ;; esac
  case $arg in --root-dir=*) root=${arg#--root-dir=} ;; esac
  prev=$arg
done
/usr/libexec/netplan/generate.real "$@" || exit
for file in "$root"/run/systemd/network/10-netplan-*.network; do
  [ -f "$file" ] || continue
  sed -i 's/^PermanentMACAddress=/MACAddress=/' "$file"
done
"""
GENERATOR_PATH = "/usr/libexec/netplan/generate"


@dataclass(frozen=True)
class Nic:
    """One ENI: subnet 10.0.<10+n>.0/24 (gateway .1, DHCP gives .25, .26 is a secondary),
    2001:db8:<10+n>::/64; table and rule priority 10000 + n (card 0)."""

    mac: str
    device_number: int

    @property
    def ifname(self) -> str:
        return f"eth{self.device_number}"

    @property
    def peer(self) -> str:
        return f"nrp{self.device_number}"

    @property
    def octet(self) -> int:
        return 10 + self.device_number

    @property
    def table(self) -> int:
        return 10000 + self.device_number

    @property
    def gateway(self) -> str:
        return f"10.0.{self.octet}.1"

    @property
    def ipv4s(self) -> list[str]:
        return [f"10.0.{self.octet}.25", f"10.0.{self.octet}.26"]

    @property
    def ipv6(self) -> str:
        return f"2001:db8:{self.octet}::25"

    @property
    def key(self) -> str:
        return self.mac.replace(":", "")

    def spec(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "device_number": self.device_number,
            "local_ipv4s": self.ipv4s,
            "subnet_ipv4_cidr": f"10.0.{self.octet}.0/24",
            "ipv6s": [self.ipv6],
            "subnet_ipv6_cidrs": [f"2001:db8:{self.octet}::/64"],
        }


@dataclass
class Booted:
    """The running container and what the tests do to it."""

    box: Container
    router: str
    workdir: Path
    #: The Debian release booted (``sdcontainer.SUITES``).
    suite: str = sdcontainer.SUITE
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    router_made: bool = False
    config: str = ""
    #: When each NIC was plugged (time.monotonic()), by MAC.
    plugged_at: dict[str, float] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return self.box.netns

    # -- the simulator (inside; its control socket reached through PID 1's root)

    def sim(self, call: Callable[[SimClient], Awaitable[T]]) -> T:
        async def go() -> T:
            async with SimClient(self.box.path(SIM_SOCKET)) as client:
                return await call(client)

        return asyncio.run(go())

    # -- the daemon and its network stack

    def configure(self, renderer: str) -> bool:
        """Run only the network stack RENDERER drives; write the daemon's configuration.
        True when the configuration changed (a running daemon reads it only at start)."""
        if renderer == "netplan":
            self.box.systemctl("stop", "NetworkManager.service")
            self.box.systemctl("start", "systemd-networkd.service")
        else:
            self.box.systemctl("stop", "systemd-networkd.socket", "systemd-networkd.service")
            self.box.systemctl("start", "NetworkManager.service")
        text = sdcontainer.daemon_config(renderer)
        if text == self.config:
            return False
        self.box.write(CONFIG, text)
        self.config = text
        return True

    def ensure(self, renderer: str) -> dict[str, str]:
        """The daemon running with RENDERER (restarted only if needed); its properties."""
        changed = self.configure(renderer)
        if changed or self.prop("ActiveState") != "active":
            # The tests restart the unit more often than its start limit (5 in 5 minutes)
            # allows a real host; systemd 257 counts the watchdog's restart too.
            self.box.systemctl("reset-failed", UNIT, check=False)
            self.box.systemctl("restart", UNIT)
        return self.service()

    def service(self) -> dict[str, str]:
        return self.box.show(
            UNIT,
            "ActiveState",
            "SubState",
            "MainPID",
            "StatusText",
            "NRestarts",
            "Result",
            "WatchdogUSec",
            "WatchdogTimestampMonotonic",
            "ExecMainCode",
            "ExecMainStatus",
        )

    def prop(self, name: str) -> str:
        return self.box.show(UNIT, name)[name]

    def host_main_pid(self) -> int:
        return self.box.host_pid(int(self.prop("MainPID")))

    def service_cgroup(self) -> Path:
        """The unit's cgroup in the host's cgroup2 hierarchy (where IPAddressDeny's BPF
        programs are attached)."""
        for line in Path(f"/proc/{self.host_main_pid()}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return sdcontainer.cgroup2_root() / line[3:].lstrip("/")
        raise AssertionError("the service has no cgroup2 path")

    @contextlib.contextmanager
    def pid1_debug(self) -> Iterator[None]:
        """PID 1 logs at debug level, so the journal shows each sd_notify message it got."""
        self.box.run(["systemd-analyze", "log-level", "debug"])
        try:
            yield
        finally:
            self.box.run(["systemd-analyze", "log-level", "info"])

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """journalctl's entries (after --sync: every message sent so far is in)."""
        self.box.run(["journalctl", "--sync"])
        done = self.box.run(["journalctl", "--no-pager", "-o", "json", *args], check=False)
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def diagnose(self) -> str:
        status = self.box.systemctl("status", UNIT, "--no-pager", "--lines=0", check=False)
        log = self.box.run(
            ["journalctl", "--no-pager", "-u", UNIT, "-n", "40", "-o", "short-monotonic"],
            check=False,
        ).stdout
        return f"{status}\n--- journal of {UNIT}\n{log}"

    # -- NICs

    def plug(self, nic: Nic) -> float:
        """List NIC in the metadata, then hot-plug it; the monotonic time of the plug."""
        self.sim(lambda s: s.add_nic(nic.spec()))
        ip = ["ip", "-n", self.router]
        run = _run
        run(*ip, "link", "add", nic.peer, "type", "veth", "peer", "name", nic.ifname,
            "address", nic.mac)  # fmt: skip
        run(*ip, "addr", "add", f"{nic.gateway}/24", "dev", nic.peer)
        run(*ip, "link", "set", nic.peer, "up")
        dnsmasq = [
            "ip", "netns", "exec", self.router, "dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--port=0", "--user=root", "--group=root", "--pid-file=",
            f"--dhcp-leasefile={self.workdir / f'{nic.peer}.leases'}",
            f"--interface={nic.peer}", "--bind-interfaces",
            f"--dhcp-range=10.0.{nic.octet}.100,10.0.{nic.octet}.199,255.255.255.0,1h",
            f"--dhcp-host={nic.mac},{nic.ipv4s[0]}", f"--dhcp-option=option:router,{nic.gateway}",
            f"--log-facility={self.workdir / f'dnsmasq-{nic.peer}.log'}", "--log-dhcp",
        ]  # fmt: skip
        self.procs.append(subprocess.Popen(dnsmasq, start_new_session=True))
        plugged = time.monotonic()
        run(*ip, "link", "set", nic.ifname, "netns", self.netns)
        self.plugged_at[nic.mac] = plugged
        return plugged

    def ip_json(self, *args: str) -> Any:
        """``ip -j`` in the container's namespace; [] when there is nothing (ip fails on a
        route table that does not exist yet)."""
        done = subprocess.run(["ip", "-n", self.netns, "-j", *args], capture_output=True, text=True)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []

    def kernel_state(self, nic: Nic) -> dict[str, set[str]]:
        """What the kernel holds for NIC in the container's namespace."""
        links = self.ip_json("addr", "show", "dev", nic.ifname)
        addresses = {
            f"{a['local']}/{a['prefixlen']}"
            for link in links
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        }
        rules = {
            f"{r['priority']} from {r['src']} table {r['table']}"
            for family in ("-4", "-6")
            for r in self.ip_json(family, "rule", "show")
            if r.get("priority") == nic.table
        }
        routes = {
            f"{r['dst']} via {r.get('gateway', '-')} dev {r.get('dev')}"
            for family in ("-4", "-6")
            for r in self.ip_json(family, "route", "show", "table", str(nic.table))
        }
        return {"addresses": addresses, "rules": rules, "routes": routes}

    def wait_applied(self, nic: Nic, timeout: float = 20) -> dict[str, set[str]]:
        """Until the kernel holds NIC's complete configuration (every address, every rule,
        the table's default route); the state."""
        want_addresses = {f"{a}/24" for a in nic.ipv4s} | {f"{nic.ipv6}/64"}
        want_rules = {f"{nic.table} from {a} table {nic.table}" for a in [*nic.ipv4s, nic.ipv6]}
        want_default = f"default via {nic.gateway} dev {nic.ifname}"

        def done() -> dict[str, set[str]] | None:
            state = self.kernel_state(nic)
            complete = (
                want_addresses <= state["addresses"]
                and want_rules <= state["rules"]
                and want_default in state["routes"]
            )
            return state if complete else None

        try:
            state: dict[str, set[str]] = wait_for(done, timeout, f"{nic.ifname} applied")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.kernel_state(nic)}\n{self.diagnose()}") from None
        return state

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.router_made:
            subprocess.run(["ip", "netns", "del", self.router], capture_output=True)
            self.router_made = False
        self.box.halt()


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


def _suites() -> list[str]:
    """NICR_SUITES (comma-separated; ``make matrix`` sets it), else the host's own release
    (``make test``: the release CI runs on; its other release runs in ``make matrix``)."""
    names = os.environ.get("NICR_SUITES", "").split(",") if os.environ.get("NICR_SUITES") else []
    names = names or [sdcontainer.host_suite() or sdcontainer.SUITE]
    unknown = [n for n in names if n not in sdcontainer.SUITES]
    if unknown:
        raise pytest.UsageError(
            f"NICR_SUITES: unknown {unknown}; known {sorted(sdcontainer.SUITES)}"
        )
    return names


@pytest.fixture(scope="session", params=_suites())
def suite(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def deb(suite: str) -> Path:
    if os.geteuid() != 0:
        _fail("the systemd container tests need root (nspawn, cgroups, dpkg)")
    require_tool("dpkg-deb")
    try:
        return sdcontainer.ensure_deb(suite, log=lambda line: print(line, file=sys.stderr))
    except sdcontainer.ContainerError as exc:
        _fail(str(exc))
        raise


@pytest.fixture(scope="session")
def rootfs(suite: str) -> Path:
    for tool in ("mmdebstrap", "zstd", "systemd-nspawn", "nsenter", "ip", "dnsmasq"):
        require_tool(tool)
    try:
        return sdcontainer.ensure_rootfs(suite, log=lambda line: print(line, file=sys.stderr))
    except sdcontainer.ContainerError as exc:
        _fail(str(exc))
        raise


@pytest.fixture(scope="module")
def booted(
    suite: str, deb: Path, rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Booted]:
    missing = sdcontainer.missing_depends(deb, rootfs)
    if missing:
        _fail(f"the cached rootfs lacks Depends of {deb.name}: {missing}; add to PACKAGES")
    name = f"nicr-sd{os.getpid() % 100000}-{next(_names)}"
    workdir = tmp_path_factory.mktemp(name)
    box = Container(name, rootfs, workdir, {str(deb.parent): "/mnt/debs"})
    booted = Booted(box, f"{name}-r", workdir, suite)
    try:
        box.boot()
        # Before any NIC moves in: no IPv6 duplicate address detection (1-7 s per address).
        _run("ip", "netns", "exec", box.netns, "sysctl", "-qw",
             "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")  # fmt: skip
        box.install_deb(f"/mnt/debs/{deb.name}")
        box.write("/usr/local/sbin/netplan", NETPLAN_WRAPPER, 0o755)
        box.run(["mv", GENERATOR_PATH, f"{GENERATOR_PATH}.real"])
        box.write(GENERATOR_PATH, GENERATOR_WRAPPER, 0o755)
        sdcontainer.start_sim(box)

        async def primary(sim: SimClient) -> None:
            await sim.wait_ready(20)
            await sim.add_nic(
                {
                    "mac": PRIMARY,
                    "device_number": 0,
                    "local_ipv4s": ["10.0.10.10"],
                    "subnet_ipv4_cidr": "10.0.10.0/24",
                }
            )
            await sim.set_primary(PRIMARY)

        booted.sim(primary)
        _run("ip", "netns", "add", booted.router)
        booted.router_made = True
        _run("ip", "-n", booted.router, "link", "set", "lo", "up")
        print(f"{name}: {box.timings}", file=sys.stderr)
        yield booted
    except sdcontainer.ContainerError as exc:
        _fail(f"{exc}\n{box.tail_log()}")
    finally:
        booted.cleanup()
