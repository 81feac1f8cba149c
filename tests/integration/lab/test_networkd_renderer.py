"""The networkd renderer on the REAL systemd-networkd: what lands in the kernel, and packets.

The renderer's files are written exactly as the daemon writes them (``fs.write_if_changed``
with the renderer's mode, into the instance's /run/systemd/network) and loaded by the real
``NetworkdApplier`` (its ``networkctl reload`` run inside the instance). The states come from
``parse_nic`` fed with the ENI's metadata, as the daemon gets them. The daemon itself drives
this renderer once the configuration accepts ``renderer = "networkd"`` (see the README).

One lab for the module (the NICs of each test are its own: device numbers 21-29); every
test removes what it configured. Seen here (systemd 252), and relied on:

* ``[IPv6AcceptRA] RouteTable=T`` puts the router advertisement's default route into T
  (``default via fe80::... proto ra metric M``) and none into main;
* a ``.network`` file readable only by root is skipped by networkd ("Permission denied"):
  the renderer's files are 0644;
* a removed file, after ``networkctl reload``, leaves its link unmanaged with its addresses,
  rules and table-T routes gone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.apply import Change, NetworkdApplier
from nicreconciled.lab import PEER6, Eni, Lab, missing_state, missing_tools
from nicreconciled.model import NicState
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.sources.ec2_parse import parse_nic
from nicreconciled.system import fs, proc
from nicreconciled.system.proc import Completed
from tests.conftest import require_tool
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration

NETWORK_DIR = "/run/systemd/network"
GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden" / "networkd"
RENDERER = NetworkdRenderer()


class Networkd:
    """The renderer and the applier of the daemon, against the lab's networkd."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.path(NETWORK_DIR)
        self.applier = NetworkdApplier(self._run)
        self.reloads = 0

    async def _run(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
        self.reloads += list(argv) == ["networkctl", "reload"]
        return await proc.run([*self.lab.enter_instance(), *argv], timeout=timeout)

    def apply(self, *states: NicState, removed: Sequence[str] = ()) -> None:
        """Write STATES' files (and remove those of REMOVED MACs), then one apply batch."""
        changes = []
        for state in states:
            name = RENDERER.filename(state.mac)
            fs.write_if_changed(self.dir, name, RENDERER.render(state), RENDERER.mode)
            changes.append(Change(state.mac, self.dir / name, "present"))
        for mac in removed:
            fs.remove_file(self.dir, RENDERER.filename(mac))
            changes.append(Change(mac, self.dir / RENDERER.filename(mac), None))
        outcome = asyncio.run(self.applier.apply_batch(changes))
        assert outcome == {c.mac: None for c in changes}


def observe(spec: dict[str, Any]) -> NicState:
    """What the daemon would render for the simulator spec SPEC: ``parse_nic`` on its keys."""
    raw: dict[str, str | None] = {"device-number": str(spec["device_number"])}
    if spec.get("local_ipv4s"):
        raw["local-ipv4s"] = "\n".join(spec["local_ipv4s"])
        raw["subnet-ipv4-cidr-block"] = spec["subnet_ipv4_cidr"]
    if spec.get("ipv6s"):
        raw["ipv6s"] = "\n".join(spec["ipv6s"])
        raw["subnet-ipv6-cidr-blocks"] = "\n".join(spec["subnet_ipv6_cidrs"])
    obs = parse_nic(spec["mac"], "\n".join(raw), raw, PRIMARY_MAC)
    assert obs.flags == (), obs.flags
    assert obs.state is not None
    return obs.state


def ipv6_only_spec(eni: Eni) -> dict[str, Any]:
    """ENI as an ENI of an IPv6-only subnet: no IPv4 key at all."""
    spec = eni.spec()
    for key in ("local_ipv4s", "subnet_ipv4_cidr"):
        spec.pop(key)
    return spec


def plug(lab: Lab, *enis: Eni) -> None:
    """Hot-plug the ENIs (the router serves DHCPv4, DHCPv6 and RAs on each port)."""
    for eni in enis:
        eni.nic = lab.prepare(lab.new_nic(eni.mac, eni.ipv4s[0], 24, eni.subnet6))
    lab.attach(*[e.nic for e in enis if e.nic is not None])


def ipv6_default(lab: Lab, table: int | str) -> dict[str, Any] | None:
    return next((r for r in lab.routes(6, table) if r.get("dst") == "default"), None)


def wait_complete(lab: Lab, eni: Eni, *, ipv6_default_route: bool = False) -> None:
    """ENI's promised kernel state (``missing_state``), and the RA's default route in T."""
    last: list[str] = []

    def complete() -> bool:
        last[:] = missing_state(lab, eni, ipv6=bool(eni.ipv6s))
        if ipv6_default_route and ipv6_default(lab, eni.table) is None:
            last.append(f"IPv6 default route in table {eni.table}")
        return not last

    lab.wait_for(complete, 30, f"{eni.mac} complete", describe=lambda: f"missing: {last}")


def unplug(lab: Lab, *enis: Eni) -> None:
    for eni in enis:
        if eni.nic is not None:
            lab.unplug(eni.nic)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    for tool in missing_tools("networkd"):
        require_tool(tool)
    started = time.monotonic()
    with Lab("networkd", tmp_path_factory.mktemp("lab"), tag="nd") as the_lab:
        the_lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        took = time.monotonic() - started
        record_timing(f"[networkd renderer] lab set-up with the primary NIC {took:.3f} s")
        yield the_lab


@pytest.fixture
def networkd(lab: Lab) -> Iterator[Networkd]:
    """The renderer + applier; every file a test left is removed (and unloaded) after it."""
    stack = Networkd(lab)
    yield stack
    left = [p.name for p in stack.dir.glob(f"{RENDERER.prefix}*{RENDERER.suffix}")]
    for name in left:
        (stack.dir / name).unlink()
    if left:
        asyncio.run(stack.applier.apply_batch([]))


#: How networkd 257 logs a file it reads: "PATH: Found new .network file." (252: "Found new
#: .network file: PATH"), then "PATH: Successfully loaded."; the file's name first, as in
#: its complaints, so these two are not complaints.
FOUND_NEW_257 = ": Found new .network file."
NEUTRAL_257 = (FOUND_NEW_257, ": Successfully loaded.")


def found_new(log: str, path: str) -> bool:
    """Whether networkd's LOG says it read the .network file PATH (252's or 257's words)."""
    return f"Found new .network file: {path}\n" in log or f"{path}{FOUND_NEW_257}\n" in log


def test_every_golden_file_is_read_by_networkd_without_a_warning(lab: Lab) -> None:
    """networkd's own parser on every golden file (a positive control first: a file with an
    unknown key and a bad address is reported in networkd's log, by file and line)."""
    log = lab.workdir / "networkd.log"
    directory = lab.path(NETWORK_DIR)
    goldens = sorted(GOLDEN_DIR.rglob("*.network"))  # each cloud's subfolder too
    assert len(goldens) >= 10
    assert any(g.parent != GOLDEN_DIR for g in goldens)
    control = "03-nicr-control.network"
    (directory / control).write_text("[Match]\nName=nomatch\n[Network]\nFoo=1\nAddress=bad\n")
    copies = [f"04-golden-{'-'.join(g.relative_to(GOLDEN_DIR).parts)}" for g in goldens]
    for golden, copy in zip(goldens, copies, strict=True):
        shutil.copyfile(golden, directory / copy)
    for name in (control, *copies):
        (directory / name).chmod(0o644)
    try:
        lab.run(["networkctl", "reload"])

        def read_all() -> bool:
            text = log.read_text(errors="replace")
            return all(found_new(text, f"{NETWORK_DIR}/{n}") for n in copies)

        lab.wait_for(read_all, 20, "networkd to read every golden file")
        lines = log.read_text(errors="replace").splitlines()
        lines = [line for line in lines if not line.endswith(NEUTRAL_257)]
        complaints = [line for line in lines if f"{NETWORK_DIR}/{control}:" in line]
        assert any("Unknown key 'Foo'" in line for line in complaints), complaints
        # 252: "Invalid address 'bad'"; 257: "Failed to parse Address=bad, ignoring: ...".
        assert any(
            "Invalid address 'bad'" in line or "Failed to parse Address=bad" in line
            for line in complaints
        ), complaints
        for copy in copies:
            found = [line for line in lines if f"{NETWORK_DIR}/{copy}:" in line]
            assert found == [], f"networkd complained about {copy}: {found}"
    finally:
        for name in (control, *copies):
            (directory / name).unlink(missing_ok=True)
        lab.run(["networkctl", "reload"])


def test_two_dual_stack_enis_complete_with_the_ipv6_default_route_in_their_tables(
    lab: Lab, networkd: Networkd
) -> None:
    """Two ENIs, one apply (one reload): every address, rule and table-T route; the RA's
    default route in each T and none in main; the ENI's primary IPv4 is the kernel's
    primary. A remote peer's pings to every address are answered through the ENI that owns
    it (IPv6 included). Negative control: without B's IPv6 rule, no reply leaves by B."""
    a, b = Eni.plan(21, secondaries=2), Eni.plan(22, secondaries=1)
    states = [observe(a.spec()), observe(b.spec())]
    plug(lab, a, b)
    t0 = time.monotonic()
    networkd.apply(*states)
    assert networkd.reloads == 1

    for eni in (a, b):
        wait_complete(lab, eni, ipv6_default_route=True)
    record_timing(f"[networkd renderer] two ENIs: complete {time.monotonic() - t0:.2f} s")

    for eni in (a, b):
        assert eni.nic is not None
        route = ipv6_default(lab, eni.table)
        assert route is not None
        assert (route["dev"], route["protocol"], route["metric"]) == (
            eni.ifname,
            "ra",
            512 + eni.device_number,
        ), route
        assert lab.kernel_primary_ipv4(eni.ifname) == eni.ipv4s[0]
    main6 = [r for r in lab.routes(6, "main") if r.get("dst") == "default"]
    assert main6 == [], f"an ENI's RA default route reached main: {main6}"
    assert lab.route_destinations(4, "main").get("default") == "10.0.0.1"
    shown = lab.run(["ip", "-6", "route", "show", "table", str(a.table)]).stdout
    record_timing(f"[networkd renderer] ip -6 route show table {a.table}:\n{shown.rstrip()}")

    for eni in (a, b):
        assert eni.nic is not None
        for address in [*eni.ipv4s, *eni.ipv6s]:
            result = lab.ping_from_peer(address)
            assert result.received == result.sent == 3, f"{result}\n{lab.describe()}"
            assert result.ports == {eni.nic.port}, str(result)
            if address in eni.ipv6s:
                record_timing(f"[networkd renderer] {result}")

    assert b.nic is not None
    lab.run(["ip", "-6", "rule", "del", "from", b.ipv6s[0], "table", str(b.table)])
    result = lab.ping_from_peer(b.ipv6s[0])
    record_timing(
        f"[networkd renderer] negative control, IPv6 rule of {b.ifname} deleted: {result}"
    )
    assert b.nic.port not in result.ports, str(result)
    assert result.received == 0, str(result)  # main has no IPv6 default route at all

    networkd.apply(removed=[a.mac, b.mac])
    unplug(lab, a, b)


def test_an_ipv6_only_eni_gets_no_ipv4_and_answers_through_its_own_table(
    lab: Lab, networkd: Networkd
) -> None:
    """An ENI of an IPv6-only subnet: no DHCPv4 client (no request reaches the router's
    DHCP server), no IPv4 address, rule or route; its IPv6 address, rule, subnet route and
    the RA's default route in T; a remote peer's pings answered through it."""
    eni = Eni.plan(23, secondaries=0)
    state = observe(ipv6_only_spec(eni))
    assert state.ipv6_only
    plug(lab, eni)
    networkd.apply(state)
    assert eni.nic is not None
    t = eni.table

    def complete() -> bool:
        present = {a.local for a in lab.addresses(eni.ifname, 6) if not a.tentative}
        return (
            eni.ipv6s[0] in present
            and lab.rule_sources(6, t) == {eni.ipv6s[0]}
            and eni.subnet6 in lab.route_destinations(6, t)
            and ipv6_default(lab, t) is not None
            and any(a.dynamic for a in lab.addresses(eni.ifname, 6))  # the DHCPv6 lease
        )

    lab.wait_for(complete, 30, f"{eni.ifname} IPv6 complete")
    assert lab.addresses(eni.ifname, 4) == []
    assert lab.rule_sources(4, t) == set()
    assert lab.route_destinations(4, t) == {}
    assert lab.dhcp_acks(eni.nic) == 0
    result = lab.ping_from_peer(eni.ipv6s[0], source=PEER6)
    assert result.received == result.sent == 3, f"{result}\n{lab.describe()}"
    assert result.ports == {eni.nic.port}, str(result)
    record_timing(f"[networkd renderer] IPv6-only ENI: {result}")

    networkd.apply(removed=[eni.mac])
    unplug(lab, eni)


def test_a_device_that_shares_the_enis_mac_is_left_alone(lab: Lab, networkd: Networkd) -> None:
    """A passthru macvlan on the ENI carries the ENI's MAC and has type ether: our file
    (MACAddress= + Type=ether + Kind=!macvlan ...) must not configure it."""
    eni = Eni.plan(24, secondaries=0, ipv6=False)
    plug(lab, eni)
    networkd.apply(observe(eni.spec()))
    wait_complete(lab, eni)
    stacked = "mv24"
    add = ["ip", "link", "add", "link", eni.ifname, "name", stacked, "type", "macvlan"]
    lab.run([*add, "mode", "passthru"])
    lab.run(["ip", "link", "set", stacked, "up"])
    mac = lab.ip_json("link", "show", "dev", stacked)[0]["address"]
    assert mac == eni.mac  # passthru: the lower device's MAC
    try:
        networkd.apply(observe(eni.spec()))

        def listed() -> str | None:
            out = lab.run(["networkctl", "list", "--no-legend", "--no-pager"]).stdout
            rows = [line.split() for line in out.splitlines()]
            return next((row[-1] for row in rows if len(row) > 1 and row[1] == stacked), None)

        setup = lab.wait_for(listed, 20, f"networkd to list {stacked}")
        assert setup == "unmanaged", f"{stacked} ({mac}) is {setup}"
        assert lab.addresses(stacked, 4) == []
    finally:
        lab.run(["ip", "link", "del", stacked], check=False)
    record_timing(f"[networkd renderer] passthru macvlan {stacked} ({mac}): unmanaged")
    networkd.apply(removed=[eni.mac])
    unplug(lab, eni)


def test_a_change_reconfigures_only_its_nic_and_a_removal_unloads_it(
    lab: Lab, networkd: Networkd
) -> None:
    """One ENI gains a secondary IPv4: its address and rule arrive, while the other ENI and
    the primary keep every address and their DHCP leases (one reload, only the changed link
    reconfigured). Removing the first ENI's file unloads it: addresses, rules and table-T
    routes gone, the link unmanaged."""
    a, b = Eni.plan(25, secondaries=1), Eni.plan(26, secondaries=1)
    plug(lab, a, b)
    networkd.apply(observe(a.spec()), observe(b.spec()))
    for eni in (a, b):
        wait_complete(lab, eni)
    nic_b = b.nic
    assert nic_b is not None
    lab.wait_for(lambda: lab.dhcp_acks(nic_b) >= 1, 20, f"{b.ifname} DHCPACK")
    acks = lab.dhcp_acks(nic_b)
    with lab.monitor_addresses() as monitor:
        added = "10.0.35.30"
        networkd.apply(observe(a.spec(local_ipv4s=[*a.ipv4s, added])))
        lab.wait_for(
            lambda: not missing_state(lab, a, ipv4s=[*a.ipv4s, added]), 30, f"{added} on {a.ifname}"
        )
    touched = [e for e in monitor.deleted() if e.ifname in (b.ifname, "eth0")]
    assert touched == [], [e.line for e in touched]
    assert lab.dhcp_acks(nic_b) == acks
    assert not missing_state(lab, b)

    networkd.apply(removed=[a.mac])
    t = a.table
    lab.wait_for(
        lambda: (
            not lab.addresses(a.ifname, 4)
            and not lab.rule_sources(4, t)
            and not lab.rule_sources(6, t)
            and not lab.route_destinations(4, t)
            and not lab.route_destinations(6, t)
        ),
        20,
        f"{a.ifname} unloaded",
        describe=lab.describe,
    )
    assert not missing_state(lab, b)
    networkd.apply(removed=[b.mac])
    unplug(lab, a, b)
