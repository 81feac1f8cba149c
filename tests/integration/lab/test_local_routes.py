"""Local routes (type local, table local) on the real stack, through every renderer.

A NIC's ``local_routes`` (GCE's alias IP ranges and forwarded IPs, whatever the cloud) are
rendered, loaded by the real manager, promised, watched and healed by the real daemon
(``nicreconciled run``, its own command line) in the lab. Its metadata comes from the lab-only
``lrlab`` cloud (local_source.py: a file of NicStates the test writes), since no simulated
cloud of the lab delivers local routes yet; nothing else is a stand-in.

Per renderer (networkd's own files, netplan on networkd, NetworkManager keyfiles, netplan on
NetworkManager, whose keyfile routes come through netplan's passthrough), in the kernel:
every local route of type local in table local out of the NIC, scope host for IPv4, with the
protocol the renderer can give (ours, 110, on networkd's files; ``static`` elsewhere); a
deleted one seen by the kernel watch and healed by the daemon (the times are recorded), or,
with ``kernel.heal = false``, named by ``nicreconciled check`` until SIGHUP heals it; the
instance taking traffic to an address of an alias range; table local's churn from other
links' addresses never a look at the NIC; systemd-networkd restarted without losing them for
good. Seen here (systemd 252, NetworkManager 1.42, netplan 0.106): networkd stopping takes the
DHCP address of a NIC with one IPv4 address (the static copy is the same address), and with
the last IPv4 address of a link the kernel flushes every IPv4 route out of it, local routes
included; networkd puts them back when it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.kernelside import DEBOUNCE_MAX
from nicreconciled.lab import Eni, Lab, Manager
from nicreconciled.lab.base import missing_tools
from nicreconciled.lab.daemon import DEFAULT_POLLING, GENERATOR, Daemon, write_bin_dir
from nicreconciled.lab.eni import kernel_snapshot, plan_state
from nicreconciled.lab.lab import PORT_PREFIX
from nicreconciled.lab.texts import daemon_config
from nicreconciled.lab.versions import systemd_major
from nicreconciled.model import NicState
from nicreconciled.promise import Choices, promise
from nicreconciled.status import StatusStore
from tests.conftest import require_tool
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing
from tests.integration.lab.local_source import NAME

pytestmark = pytest.mark.integration

LAUNCHER = Path(__file__).resolve().parent / "local_daemon.py"
#: An alias IP range, a forwarded IP, an IPv6 forwarded address (documentation ranges).
LOCAL = ("198.51.100.0/24", "203.0.113.9/32", "2001:db8:ff::9/128")

#: Case -> (manager, renderer, netplan backend, the protocol the kernel shows).
CASES: dict[str, tuple[Manager, str, str, str]] = {
    "networkd": ("networkd", "networkd", "networkd", "110"),
    "netplan-networkd": ("networkd", "netplan", "networkd", "static"),
    "networkmanager": ("nm", "networkmanager", "networkd", "static"),
    "netplan-networkmanager": ("nm", "netplan", "NetworkManager", "static"),
}


class Stack:
    """A lab, the primary NIC (foreign file), one ENI with local routes, the daemon."""

    def __init__(self, lab: Lab, case: str) -> None:
        self.lab, self.case = lab, case
        _manager, lab.renderer, self.backend, self.protocol = CASES[case]
        lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        self.document = lab.workdir / "states.json"
        self.plan(secondaries=1)
        self.daemon: Daemon | None = None
        self.config: Path | None = None

    def plan(self, secondaries: int, *, ipv6: bool = True) -> None:
        """The ENI (device 4, SECONDARIES secondary IPv4s, IPv6 addresses or none) and its
        local routes (IPv6's too) in the metadata file."""
        self.eni = Eni.plan(4, secondaries=secondaries, ipv6=ipv6)
        fields = plan_state(self.eni).model_dump(mode="json")
        self.state = NicState.model_validate({**fields, "cloud": NAME, "local_routes": LOCAL})
        primary = {
            "primary": True,
            "device_number": 0,
            "route_table": 10000,
            "route_metric": 512,
            "ipv4_addresses": [PRIMARY_IPV4],
            "ipv4_subnet": "10.0.0.0/24",
            "ipv4_gateway": "10.0.0.1",
        }
        states = {PRIMARY_MAC: primary, self.eni.mac: self.state.model_dump(mode="json")}
        self.document.write_text(json.dumps(states))

    def start(self, kernel: dict[str, bool | int] | None = None) -> Daemon:
        """``nicreconciled run`` with the ``lrlab`` cloud, in the instance, JSON log, -v."""
        lab = self.lab
        n = len(lab.daemons) + 1
        lab.path(lab.output_dir).mkdir(parents=True, exist_ok=True)
        bin_dir = write_bin_dir(lab.workdir / f"bin-daemon-{n}", ())
        text = daemon_config(
            renderer=lab.renderer,
            output_dir=Path(lab.output_dir),
            state_dir=lab.workdir / "state",
            endpoint=str(self.document),
            ignore=[f"{PORT_PREFIX}*"],
            polling=DEFAULT_POLLING,
            resync_interval=600,
            cloud=NAME,
            kernel=kernel,
            generator=str(bin_dir / GENERATOR),
        )
        text = text.replace("[netplan]\n", f'[netplan]\nbackend = "{self.backend}"\n')
        self.config = lab.workdir / f"daemon-{n}.toml"
        self.config.write_text(text)
        lab.tmp.mkdir(mode=0o700, exist_ok=True)
        env = dict(os.environ, TMPDIR=str(lab.tmp))
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        log = lab.workdir / f"daemon-{n}.log"
        argv = [sys.executable, str(LAUNCHER), "--config", str(self.config)]
        argv += ["--log-format", "json", "-v", "run"]
        proc = lab.procs.spawn(f"daemon-{n}", [*lab.enter_instance(), *argv], log=log, env=env)
        self.daemon = lab.daemon = Daemon(proc, log, self.config, bin_dir)
        lab.daemons.append(self.daemon)
        self.daemon.wait_ready(30)
        return self.daemon

    def plug(self) -> None:
        eni, lab = self.eni, self.lab
        eni.nic = lab.prepare(lab.new_nic(eni.mac, eni.ipv4s[0], 24, eni.subnet6))
        lab.attach(eni.nic)

    def missing_local(self) -> list[str]:
        """What of the ENI's promised local routes the kernel lacks (the lab's own reading,
        ``ip -j``, against the product's promise)."""
        choices = Choices(rules=not (self.lab.renderer == "netplan" and self.backend != "networkd"))
        kernel = kernel_snapshot(self.lab, self.eni.ifname, self.eni.table)
        return [m for m in promise(self.state, choices).missing(kernel) if "route local" in m]

    def wait_complete(self, timeout: float = 30) -> None:
        assert self.daemon is not None
        daemon, last = self.daemon, []

        def complete() -> bool:
            last[:] = self.missing_local()
            return not last and bool(daemon.events("kernel_complete", mac=self.eni.mac))

        self.lab.wait_for(complete, timeout, "local routes", describe=lambda: f"missing {last}")

    def kernel_routes(self) -> dict[str, dict[str, Any]]:
        """The ENI's routes of type local in table local, by destination (``addr/len``)."""
        found: dict[str, dict[str, Any]] = {}
        for family in ("-4", "-6"):
            shown = self.lab.ip_json(
                family, "-d", "route", "show", "table", "local", "type", "local"
            )
            for route in shown:
                if route.get("dev") != self.eni.ifname:
                    continue
                dst = ip_network(route["dst"], strict=False)
                found[dst.compressed] = route
        return found

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nicreconciled check`` (the product's), in the instance."""
        assert self.config is not None
        argv = [sys.executable, str(LAUNCHER), "--config", str(self.config), "check"]
        return self.lab.run(argv, check=False)


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    # "CASE" or "CASE/no-drop-in": networkd without the drop-in the package ships, with its
    # defaults (it removes routes it did not make).
    case, _, variant = str(request.param).partition("/")
    manager = CASES[case][0]
    for tool in missing_tools(manager):
        require_tool(tool)
    drop_in = variant != "no-drop-in"
    with Lab(manager, tmp_path / "lab", tag="lr", networkd_drop_in=drop_in) as lab:
        yield Stack(lab, case)


def deletion_healed(stack: Stack, destination: str) -> tuple[float, float]:
    """Delete the local route to DESTINATION; (seconds until it is back in the kernel, the
    daemon's own "kernel_healed" figure), once the daemon said it healed it."""
    lab, eni, daemon = stack.lab, stack.eni, stack.daemon
    assert daemon is not None
    family = "-6" if ":" in destination else "-4"
    heals = len(daemon.events("heal", mac=eni.mac))
    healed = len(daemon.events("kernel_healed", mac=eni.mac))
    t0 = time.monotonic()
    lab.run(
        ["ip", family, "route", "del", "local", destination, "dev", eni.ifname, "table", "local"]
    )
    lab.wait_for(
        lambda: destination in stack.kernel_routes(),
        20,
        f"{destination} back",
        describe=lab.describe,
    )
    took = time.monotonic() - t0
    lab.wait_for(
        lambda: len(daemon.events("kernel_healed", mac=eni.mac)) > healed,
        20,
        "the daemon's kernel_healed",
        describe=daemon.tail,
    )
    heal = daemon.events("heal", mac=eni.mac)[heals:]
    assert len(heal) == 1, daemon.tail()
    assert heal[0]["missing"] == [f"route local {destination} table local"], heal[0]
    return took, daemon.events("kernel_healed", mac=eni.mac)[-1]["took"]


@pytest.mark.parametrize("stack", sorted(CASES), indirect=True)
def test_local_routes_reach_the_kernel_and_a_deleted_one_is_healed(stack: Stack) -> None:
    """Every local route in table local, type local, out of the ENI, scope host (IPv4), with
    the renderer's protocol; the status file promises them; a deleted one (IPv4, IPv6) is
    healed by the daemon, which named it."""
    daemon = stack.start()
    t0 = time.monotonic()
    stack.plug()
    stack.wait_complete()
    record_timing(f"[local routes, {stack.case}] complete {time.monotonic() - t0:.2f} s")

    routes = stack.kernel_routes()
    assert set(LOCAL) <= set(routes), routes
    for destination in LOCAL:
        route = routes[destination]
        assert route["type"] == "local", route
        assert route.get("protocol") == stack.protocol, route
        if ":" not in destination:
            assert route.get("scope") == "host", route
    shown = stack.lab.run(["ip", "route", "show", "table", "local", "dev", stack.eni.ifname])
    record_timing(f"[local routes, {stack.case}] ip route show table local:\n{shown.stdout}")

    assert stack.check().returncode == 0
    saved = StatusStore(stack.lab.workdir / "state").load(stack.eni.mac)
    assert saved is not None
    assert saved.promise is not None
    assert saved.promise["local_routes"] == list(LOCAL)

    for destination in (LOCAL[0], LOCAL[2]):
        took, daemon_took = deletion_healed(stack, destination)
        record_timing(
            f"[local routes, {stack.case}] {destination} deleted: back in the kernel after"
            f" {took:.3f} s (daemon: healed {daemon_took:.3f} s after its heal began)"
        )
    assert stack.check().returncode == 0
    assert len(daemon.events("heal", mac=stack.eni.mac)) == 2


#: networkd with the drop-in the package ships and with networkd's defaults (no drop-in:
#: ManageForeignRoutes=yes, it removes routes it did not make when it configures a link).
NETWORKD_CASES = [
    f"{case}{variant}"
    for case in ("networkd", "netplan-networkd")
    for variant in ("", "/no-drop-in")
]


@pytest.mark.parametrize("stack", NETWORKD_CASES, indirect=True)
def test_a_networkd_restart_does_not_lose_them_for_good(stack: Stack) -> None:
    """An ENI with one IPv4 address: networkd 252 stopped takes its DHCP address, which is
    the link's only IPv4 address (the static copy is the same), and with it the kernel
    flushes every IPv4 route out of the link, our local routes included. Started again, networkd
    puts them back (the daemon, told by the bus name, has nothing to heal); ``check`` then
    finds everything promised."""
    lab = stack.lab
    stack.plan(secondaries=0)
    daemon = stack.start()
    stack.plug()
    stack.wait_complete()
    lab.stop_manager()
    lab.wait_for(lambda: daemon.events("network_manager_gone"), 20, "the daemon to see it go")

    def gone_now() -> list[str]:
        return sorted(set(LOCAL) - set(stack.kernel_routes()))

    if systemd_major(lab) == 252:  # as measured there; other releases' are recorded only
        # networkd drops the lease's address as it stops, not before its bus name goes.
        lab.wait_for(
            lambda: gone_now() == sorted(LOCAL[:2]),
            20,
            "the IPv4 local routes flushed with the lease's address",
            describe=lambda: f"gone: {gone_now()}\n{lab.describe()}",
        )
    gone = gone_now()
    t0 = time.monotonic()
    lab.start_manager()
    lab.wait_for(
        lambda: set(LOCAL) <= set(stack.kernel_routes()),
        30,
        "local routes back",
        describe=lab.describe,
    )
    took = time.monotonic() - t0
    lab.wait_for(lambda: stack.check().returncode == 0, 30, "check: everything promised")
    heals = len(daemon.events("heal", mac=stack.eni.mac))
    record_timing(
        f"[local routes, {stack.case}, drop-in {lab.networkd_drop_in}] networkd stopped: gone"
        f" {gone}; started: all back after {took:.3f} s; daemon heals {heals}"
    )
    assert daemon.events("network_manager_back")


@pytest.mark.parametrize("stack", ["networkd", "networkmanager"], indirect=True)
def test_with_heal_off_a_deletion_is_reported_and_sighup_heals_it(stack: Stack) -> None:
    """``kernel.heal = false``: the deleted local route is the daemon's kernel_drift and a line
    of ``nicreconciled check`` (exit 1), and stays deleted; SIGHUP heals it."""
    lab, eni = stack.lab, stack.eni
    daemon = stack.start(kernel={"heal": False})
    stack.plug()
    stack.wait_complete()
    destination = LOCAL[1]
    wanted = [f"route local {destination} table local"]
    lab.run(["ip", "route", "del", "local", destination, "dev", eni.ifname, "table", "local"])
    lab.wait_for(
        lambda: daemon.events("kernel_drift", mac=eni.mac, missing=wanted),
        20,
        "the daemon's kernel_drift",
        describe=daemon.tail,
    )
    done = stack.check()
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{eni.mac} {eni.ifname}: missing {wanted[0]}" in done.stdout, done.stdout
    assert destination not in stack.kernel_routes()
    assert daemon.events("heal", mac=eni.mac) == []
    daemon.hup()
    lab.wait_for(lambda: destination in stack.kernel_routes(), 20, f"{destination} back")
    lab.wait_for(lambda: stack.check().returncode == 0, 20, "check: everything promised")


def echoes(lab: Lab) -> tuple[int, int]:
    """The instance's ICMP echo requests received and replies sent (/proc/net/snmp)."""
    lines = [line.split() for line in lab.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = [row for row in lines if row[0] == "Icmp:"][:2]
    counters = dict(zip(names[1:], map(int, values[1:]), strict=True))
    return counters["InEchos"], counters["OutEchoReps"]


@pytest.mark.parametrize("stack", ["networkd", "networkmanager"], indirect=True)
def test_the_instance_accepts_an_alias_range_it_never_assigned(stack: Stack) -> None:
    """The router sends the alias range to the ENI, as a VPC routes an alias range to its
    NIC: the instance takes pings to an address of the range, which no link has, and
    answers each. Negative control: a range routed to the ENI the same way but without a
    local route is not taken. (Which NIC the answer leaves by is recorded: no policy rule
    names the range, so main routes it, out of the primary NIC.)"""
    lab, eni = stack.lab, stack.eni
    stack.start()
    stack.plug()
    stack.wait_complete()
    target, stranger = "198.51.100.5", "198.51.101.5"
    assert all(a.local != target for a in lab.addresses(eni.ifname, 4))
    lab.run_router(["ip", "route", "add", LOCAL[0], "via", eni.ipv4s[0]])
    lab.run_router(["ip", "route", "add", "198.51.101.0/24", "via", eni.ipv4s[0]])
    before = echoes(lab)
    result = lab.ping_from_peer(target)
    after = echoes(lab)
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3), f"{result}\n{lab.describe()}"
    lab.ping_from_peer(stranger)
    assert echoes(lab)[0] == after[0]
    reply = lab.run(["ip", "route", "get", "192.168.50.1", "from", target]).stdout.split("\n")[0]
    record_timing(f"[local routes, {stack.case}] {target}: {result}; the reply: {reply}")


@pytest.mark.parametrize("stack", ["networkd", "networkmanager"], indirect=True)
def test_table_local_churn_elsewhere_is_no_look_at_the_nic(stack: Stack) -> None:
    """Addresses added and removed on other links for a while: each brings and takes the
    kernel's own local and broadcast routes in table local, which the ENI's promise now
    names; the daemon looks at the ENI not once for them (a look would come within
    DEBOUNCE_MAX of the first notification, well inside the churn). Positive control: a
    local route of the ENI deleted right after is looked at and healed. The ENI has no IPv6
    address (its IPv6 local route still lands: IPv6 stays on on the link)."""
    lab = stack.lab
    stack.plan(secondaries=1, ipv6=False)  # no router advertisements: a quiet link
    eni, daemon = stack.eni, stack.start()
    stack.plug()
    stack.wait_complete()
    assert eni.nic is not None
    nic = eni.nic

    def quiet() -> bool:  # the lease is there and the ENI's own changes are over
        looks = daemon.events("kernel_look", mac=eni.mac)
        last = looks[-1]["timestamp"] if looks else 0.0
        return lab.dhcp_acks(nic) >= 1 and time.time() - last >= 4 * DEBOUNCE_MAX

    lab.wait_for(quiet, 30, f"{eni.ifname} quiet", describe=daemon.tail)
    start, pairs = time.time(), 0
    while time.time() - start < 4 * DEBOUNCE_MAX:
        lab.run(["ip", "addr", "add", f"10.0.0.{100 + pairs % 50}/24", "dev", "eth0"])
        lab.run(["ip", "-6", "addr", "add", f"fd00:77::{pairs + 1}/128", "dev", "lo"])
        lab.run(["ip", "addr", "del", f"10.0.0.{100 + pairs % 50}/24", "dev", "eth0"])
        lab.run(["ip", "-6", "addr", "del", f"fd00:77::{pairs + 1}/128", "dev", "lo"])
        pairs += 1
    end = time.time()
    took, _ = deletion_healed(stack, LOCAL[1])
    looks = daemon.events("kernel_look", mac=eni.mac)
    during = [e for e in looks if start <= e["timestamp"] < end]
    record_timing(
        f"[local routes, {stack.case}] {pairs} address pairs added and removed elsewhere in"
        f" {end - start:.2f} s: {len(during)} looks at {eni.ifname}; then a deletion healed"
        f" in {took:.3f} s"
    )
    assert during == [], (start, end, during)
