"""IPv6 as complete as IPv4: the daemon on the REAL network stacks (netplan on networkd,
our keyfiles on NetworkManager), with ENIs of IPv6-only subnets and remote IPv6 peers.

One lab per manager for the module (the daemon runs once; each test plugs its own ENIs,
device numbers 30-39, and detaches them at the end). What each combination can do with the
IPv6 default route, as seen here and asserted below:

* NetworkManager 1.42 (renderer ``networkmanager``): ``ipv6.route-table=T`` puts the RA's
  default route into T and none into main: a remote IPv6 peer is answered through the ENI.
* netplan >= 1.1 on networkd (``ra-overrides.table``, probed at run time; Debian 13): the
  same. ``test_netplan_ra_overrides_table_is_what_sends_ipv6_replies_out_by_the_eni`` turns
  the key off and on for one ENI, and holds the daemon's probe to the package's version.
* netplan 0.106 (Debian 12) on networkd: no way to put RA routes in T. T holds the IPv6
  subnet route only; the RA default routes are in main, with each ENI's metric, so a reply
  from a secondary ENI's IPv6 address to an off-subnet peer leaves by the ENI with the best
  metric: asserted as the documented limit (README, "Known limits"), so that a change of
  behaviour is noticed. The router's IPv6 forwarding has no rp_filter: the reply still
  arrives, on the wrong port, which is what the capture shows.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.apply import Change
from nicreconciled.apply_netplan import NetplanNetworkdApplier
from nicreconciled.errors import ApplyError
from nicreconciled.lab import PEER6, Eni, Lab, Manager, Nic, SimControl, missing_state
from nicreconciled.lab.base import missing_tools
from nicreconciled.lab.daemon import Daemon, write_bin_dir
from nicreconciled.lab.eni import plan_state
from nicreconciled.lab.texts import NETPLAN
from nicreconciled.lab.versions import package_version
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.system import fs, proc
from nicreconciled.system.netplan import supports_ra_table
from nicreconciled.system.proc import Completed
from tests.conftest import require_tool
from tests.integration.lab.conftest import MANAGERS, PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    lab: Lab
    sim: SimControl
    daemon: Daemon
    #: Whether this stack puts the RA's default route into the ENI's table.
    table_default: bool

    @property
    def tag(self) -> str:
        return f"[{self.lab.manager}, renderer {self.lab.renderer}]"

    def attach(self, *specs: dict[str, Any]) -> list[Nic]:
        """List the ENIs in the simulator, then hot-plug them all at once."""
        nics = []
        for spec in specs:
            octet = 10 + int(spec["device_number"])
            nic = self.lab.new_nic(spec["mac"], f"10.0.{octet}.20", 24, f"2001:db8:{octet}::/64")
            nics.append(self.lab.prepare(nic))
        for spec in specs:
            self.sim.add_nic(spec)
        self.lab.attach(*nics)
        return nics

    def detach(self, *nics: Nic) -> None:
        for nic in nics:
            self.sim.remove_nic(nic.mac)
            self.lab.unplug(nic)

    def wait_ipv6(self, eni: Eni, *, default: bool) -> None:
        """ENI's IPv6 address (not tentative), its rule and subnet route in T, and (DEFAULT)
        the RA's default route in T."""
        t, last = eni.table, list[str]()

        def complete() -> bool:
            present = {a.local for a in self.lab.addresses(eni.ifname, 6) if not a.tentative}
            sources = self.lab.rule_sources(6, t)
            last[:] = [f"address {a}" for a in eni.ipv6s if a not in present]
            last.extend(f"rule from {a}" for a in eni.ipv6s if a not in sources)
            routes = self.lab.route_destinations(6, t)
            if eni.subnet6 not in routes:
                last.append(f"route {eni.subnet6} table {t}")
            if default and "default" not in routes:
                last.append(f"IPv6 default route in table {t}")
            return not last

        self.lab.wait_for(complete, 30, f"{eni.mac} IPv6", describe=lambda: f"missing: {last}")


def ipv6_only(eni: Eni) -> dict[str, Any]:
    """The simulator spec of ENI as an ENI of an IPv6-only subnet: no IPv4 key at all."""
    spec = eni.spec()
    del spec["local_ipv4s"], spec["subnet_ipv4_cidr"]
    return spec


def ra_router(lab: Lab, eni: Eni) -> str | None:
    """The link-local address of the router that ENI's RA default route goes through."""
    for table in (eni.table, "main"):
        for route in lab.routes(6, table):
            if route.get("dst") == "default" and route.get("dev") == eni.ifname:
                return str(route["gateway"])
    return None


def main_ipv6_defaults(lab: Lab) -> list[dict[str, Any]]:
    return [r for r in lab.routes(6, "main") if r.get("dst") == "default"]


#: Each manager with its usual renderer, and systemd-networkd with the native renderer.
STACKS = [(m, None) for m in MANAGERS] + [("networkd", "networkd")]


@pytest.fixture(scope="module", params=STACKS, ids=lambda p: p[1] or p[0])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    manager: Manager = request.param[0]
    renderer: str | None = request.param[1]
    for tool in missing_tools(manager):
        require_tool(tool)
    started = time.monotonic()
    with Lab(manager, tmp_path_factory.mktemp(f"ipv6-{manager}"), tag="v6") as lab:
        if renderer is not None:
            lab.renderer = renderer
        lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        sim = lab.start_sim()
        primary = {
            "mac": PRIMARY_MAC,
            "device_number": 0,
            "local_ipv4s": [PRIMARY_IPV4],
            "subnet_ipv4_cidr": "10.0.0.0/24",
        }
        sim.add_nic(primary)
        sim.set_primary(PRIMARY_MAC)
        # No heals: the negative controls delete a rule on purpose and must see it gone
        # (healing is test_drift.py's subject).
        daemon = lab.start_daemon(kernel={"heal": False})
        # From the stack's version, not the daemon's probe of it (which the test of
        # ra-overrides below holds to the same answer).
        table_default = manager == "nm" or renderer == "networkd"
        table_default = table_default or package_version(lab, "netplan.io") >= (1, 1)
        record_timing(
            f"[{manager}] IPv6 lab with the daemon ready {time.monotonic() - started:.2f} s;"
            f" RA default route in the ENI's table: {table_default}"
        )
        yield Stack(lab, sim, daemon, table_default)


def test_an_ipv6_only_eni_is_configured_without_ipv4(stack: Stack) -> None:
    """An ENI of an IPv6-only subnet (no IPv4 key in its metadata) is managed: its IPv6
    address, rule and routes in T; no DHCPv4 request, no IPv4 address, rule or route.
    ``render --mac`` prints its file and does not call it incomplete."""
    lab = stack.lab
    eni = Eni.plan(33, secondaries=0)
    t0 = time.monotonic()
    (nic,) = stack.attach(ipv6_only(eni))
    eni.nic = nic
    stack.wait_ipv6(eni, default=stack.table_default)
    took = time.monotonic() - t0
    assert lab.addresses(eni.ifname, 4) == []
    assert lab.rule_sources(4, eni.table) == set()
    assert lab.route_destinations(4, eni.table) == {}
    assert lab.dhcp_acks(nic) == 0

    text = lab.path(lab.output_file(eni.mac)).read_text()
    if lab.renderer == "networkmanager":
        assert "[ipv4]\nmethod=disabled\n" in text
    elif lab.renderer == "networkd":
        assert "DHCP=ipv6\n" in text
    else:
        assert "dhcp4: false" in text

    argv = [sys.executable, "-m", "nicreconciled", "--config", str(stack.daemon.config)]
    done = lab.run([*argv, "render", "--mac", eni.mac], check=False)
    assert done.returncode == 0, done.stderr
    assert "incomplete" not in done.stderr, done.stderr
    assert "propagating" not in done.stderr, done.stderr
    assert text in done.stdout  # what the daemon wrote, exactly

    if stack.table_default:
        result = lab.ping_from_peer(eni.ipv6s[0], source=PEER6)
        assert result.received == result.sent == 3, f"{result}\n{lab.describe()}"
        assert result.ports == {nic.port}, str(result)
        record_timing(f"{stack.tag} IPv6-only ENI complete +{took:.2f} s; {result}")
    else:
        record_timing(f"{stack.tag} IPv6-only ENI complete +{took:.2f} s")
    stack.detach(nic)


def test_a_remote_ipv6_peer_is_answered_through_the_eni_that_owns_the_address(
    stack: Stack,
) -> None:
    """Two dual-stack ENIs A and B: where the stack can put the RA's default route into
    each ENI's table (NetworkManager; netplan >= 1.1), main gets no IPv6 default route from
    them and the remote peer's pings to each ENI's IPv6 address are answered through that
    ENI (negative control: without B's IPv6 rule, no reply leaves by B). On netplan 0.106
    the documented limit: no IPv6 default route in T, and B's replies leave by A."""
    lab = stack.lab
    a, b = Eni.plan(31, secondaries=0), Eni.plan(32, secondaries=0)
    a.nic, b.nic = stack.attach(a.spec(), b.spec())
    for eni in (a, b):
        lab.wait_for(lambda e=eni: not missing_state(lab, e), 30, f"{eni.mac} complete")
        stack.wait_ipv6(eni, default=stack.table_default)
    # Link-local traffic to the router works (fe80::/64 is in main on every stack).
    gateway = lab.wait_for(lambda: ra_router(lab, a), 30, f"an RA default route via {a.ifname}")
    lab.run(["ping", "-6", "-c", "1", "-W", "3", f"{gateway}%{a.ifname}"])
    shown = lab.run(["ip", "-6", "route", "show", "table", str(b.table)]).stdout.rstrip()
    record_timing(f"{stack.tag} ip -6 route show table {b.table}:\n{shown}")

    if not stack.table_default:
        # netplan 0.106: the limit, as documented.
        assert "default" not in lab.route_destinations(6, b.table), lab.describe()
        lab.wait_for(lambda: len(main_ipv6_defaults(lab)) == 2, 30, "both RA defaults in main")
        result = lab.ping_from_peer(b.ipv6s[0])
        record_timing(f"{stack.tag} known limit (no RA table), B's replies: {result}")
        assert result.received == result.sent == 3, str(result)
        assert result.ports == {a.nic.port}, f"{result}\n{lab.describe()}"
        stack.detach(a.nic, b.nic)
        return

    assert main_ipv6_defaults(lab) == [], lab.describe()
    for eni in (a, b):
        assert eni.nic is not None
        result = lab.ping_from_peer(eni.ipv6s[0])
        assert result.received == result.sent == 3, f"{result}\n{lab.describe()}"
        assert result.ports == {eni.nic.port}, str(result)
        record_timing(f"{stack.tag} remote IPv6 peer: {result}")

    lab.run(["ip", "-6", "rule", "del", "from", b.ipv6s[0], "table", str(b.table)])
    result = lab.ping_from_peer(b.ipv6s[0])
    record_timing(f"{stack.tag} negative control, B's IPv6 rule deleted: {result}")
    assert b.nic.port not in result.ports, str(result)
    stack.detach(a.nic, b.nic)


def test_netplan_ra_overrides_table_is_what_sends_ipv6_replies_out_by_the_eni(
    tmp_path: Path,
) -> None:
    """netplan's ``ra-overrides: {table: T}`` on the real netplan and networkd, off and then
    on for the same ENI B, next to an ENI A whose RA default route has the better metric in
    main. The daemon's netplan renderer with the key forced, loaded the daemon's way
    (``NetplanNetworkdApplier``: scratch generate, our files installed, one reload).

    Off (every netplan): no IPv6 default route in T_B; the remote peer's pings to B's IPv6
    address are answered, out by A (the negative control). On: with netplan >= 1.1 (told by
    the package's version; the daemon's probe must agree) T_B gets the RA's default route
    and the replies leave by B; without B's IPv6 rule they do not. (networkd 257 leaves the
    RA default route it had put in main before the reload where it is, as a foreign route
    under the package's drop-in, until the RA's lifetime ends: harmless, A's is better.) With
    netplan 0.106 the key is refused ("unknown key") and nothing changes: why the renderer
    writes it only when the probe says yes."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    for tool in missing_tools("networkd"):
        require_tool(tool)
    with Lab("networkd", tmp_path / "lab", tag="ra") as lab:
        netplan = package_version(lab, "netplan.io")
        expect_table = netplan >= (1, 1)
        assert supports_ra_table(NETPLAN) is expect_table, f"netplan {netplan}"
        lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        a, b = Eni.plan(36, secondaries=0), Eni.plan(37, secondaries=0)
        a.nic = lab.prepare(lab.new_nic(a.mac, a.ipv4s[0], 24, a.subnet6))
        b.nic = lab.prepare(lab.new_nic(b.mac, b.ipv4s[0], 24, b.subnet6))
        lab.attach(a.nic, b.nic)
        load = NetplanLoader(lab)
        load(a, b, ra_table=False)
        for eni in (a, b):
            lab.wait_for(lambda e=eni: not missing_state(lab, e), 30, f"{eni.mac} complete")
        lab.wait_for(lambda: len(main_ipv6_defaults(lab)) == 2, 30, "both RA defaults in main")
        assert "default" not in lab.route_destinations(6, b.table), lab.describe()
        off = lab.ping_from_peer(b.ipv6s[0])
        record_timing(f"[netplan {netplan}] ra-overrides off, B's replies: {off}")
        assert off.received == off.sent == 3, f"{off}\n{lab.describe()}"
        assert off.ports == {a.nic.port}, f"{off}\n{lab.describe()}"

        if not expect_table:
            with pytest.raises(ApplyError, match="ra-overrides"):
                load(b, ra_table=True)
            assert "default" not in lab.route_destinations(6, b.table), lab.describe()
            record_timing(f"[netplan {netplan}] ra-overrides refused; T_B unchanged")
            return

        t0 = time.monotonic()
        load(b, ra_table=True)
        generated = lab.path(
            f"/run/systemd/network/10-netplan-nicr-{b.mac.replace(':', '')}.network"
        )
        assert f"RouteTable={b.table}" in generated.read_text().splitlines()

        def in_table() -> bool:
            route = next((r for r in lab.routes(6, b.table) if r.get("dst") == "default"), {})
            return route.get("protocol") == "ra" and route.get("dev") == b.ifname

        lab.wait_for(in_table, 30, "B's RA default route in T_B")
        took = time.monotonic() - t0
        on = lab.ping_from_peer(b.ipv6s[0])
        record_timing(f"[netplan {netplan}] ra-overrides on (+{took:.2f} s), B's replies: {on}")
        assert on.received == on.sent == 3, f"{on}\n{lab.describe()}"
        assert on.ports == {b.nic.port}, f"{on}\n{lab.describe()}"

        lab.run(["ip", "-6", "rule", "del", "from", b.ipv6s[0], "table", str(b.table)])
        control = lab.ping_from_peer(b.ipv6s[0])
        record_timing(f"[netplan {netplan}] negative control, B's IPv6 rule deleted: {control}")
        assert b.nic.port not in control.ports, str(control)


class NetplanLoader:
    """Render ENIs with the daemon's netplan renderer into the instance's /run/netplan and
    load them with the daemon's applier (its netplan: the lab's wrapper, veths' MACs)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.path("/run/netplan")
        self.dir.mkdir(mode=0o755, exist_ok=True)
        wrapper = write_bin_dir(lab.workdir / "bin-loader", ()) / "netplan"
        self.applier = NetplanNetworkdApplier(self._run, root=lab.path("/"), netplan=str(wrapper))

    async def _run(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
        return await proc.run([*self.lab.enter_instance(), *argv], timeout=timeout)

    def __call__(self, *enis: Eni, ra_table: bool) -> None:
        renderer = NetplanRenderer("networkd", ra_table=ra_table)
        changes = []
        for eni in enis:
            name = renderer.filename(eni.mac)
            fs.write_if_changed(self.dir, name, renderer.render(plan_state(eni)), renderer.mode)
            changes.append(Change(eni.mac, self.dir / name, eni.ifname))
        outcome = asyncio.run(self.applier.apply_batch(changes))
        assert outcome == {c.mac: None for c in changes}
