"""OpenStack: network_data.json parsed, numbered, fetched (one request for N NICs) and
detected; garbage is a MetadataError naming the field, an unreachable service a FetchError."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from nicreconciled import config as config_mod
from nicreconciled.errors import ConfigError, FetchError, MetadataError
from nicreconciled.model import StaticRoute
from nicreconciled.sim.openstack import OpenStackSim
from nicreconciled.sources import select_source
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.leases import Lease, lease_key
from nicreconciled.sources.openstack import OpenStackConfig, OpenStackSource
from nicreconciled.sources.openstack_parse import (
    NETWORK_DATA,
    build_observation,
    numbering,
    parse_document,
)
from tests.unit.test_vr_discovery import Tree, nmcli_missing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openstack"
PRIMARY, SECOND, DHCP = "fa:16:3e:11:22:01", "fa:16:3e:11:22:02", "fa:16:3e:11:22:03"


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def observe(name: str, mac: str, number: int = 1) -> Any:
    raw = text(name)
    return build_observation(mac, parse_document(raw), PRIMARY, number, raw)


class TestParse:
    def test_static_dual_stack_port_with_a_second_fixed_ip(self) -> None:
        obs = observe("static_dual_stack.json", SECOND, number=3)
        state = obs.state
        assert obs.flags == ()
        assert state.primary is False
        assert state.device_number == 1  # position in links
        assert (state.route_table, state.route_metric) == numbering(3) == (10003, 515)
        assert state.ipv4_addresses == (IPv4Address("10.0.11.20"), IPv4Address("10.0.11.21"))
        assert str(state.ipv4_subnet) == "10.0.11.0/24"
        assert state.ipv4_gateway == IPv4Address("10.0.11.1")
        assert state.ipv6_addresses == (IPv6Address("2001:db8:11::10"),)
        assert state.ipv6_subnets == (IPv6Network("2001:db8:11::/64"),)
        assert state.ipv6_gateway == IPv6Address("2001:db8:11::1")  # its "::" route
        assert state.mtu == 1450  # links[].mtu
        # Host routes whose router is on the link; 172.16.0.0/12 via 10.9.9.9 is not.
        assert [(str(r.to), str(r.via)) for r in state.routes] == [
            ("192.168.77.0/24", "10.0.11.254"),
            ("2001:db8:77::/48", "fe80::f816:3eff:fe00:1"),
        ]
        (port,) = [
            p for m, p in parse_document(obs.probe[NETWORK_DATA]).ports.items() if m == SECOND
        ]
        assert any("172.16.0.0/12 via 10.9.9.9" in n for n in port.notes), port.notes
        assert state.interface_id == "tap2c1d8e3f-9b"
        assert obs.probe == {NETWORK_DATA: text("static_dual_stack.json")}

    def test_the_first_link_is_the_primary(self) -> None:
        state = observe("static_dual_stack.json", PRIMARY, number=0).state
        assert state.primary is True
        assert state.device_number == 0

    def test_a_dhcp_port_without_a_lease_is_dhcp_only_and_waits_for_the_lease(self) -> None:
        obs = observe("dhcp.json", DHCP)
        state = obs.state
        assert state.ipv4_addresses == ()
        assert state.ipv4_subnet is None
        assert not state.ipv6_only
        (flag,) = obs.flags
        key = lease_key(DHCP)
        assert (flag.kind, flag.keys, flag.grace) == ("incomplete", (key,), "lease")
        assert obs.probe[key] is None

    def test_the_lease_completes_a_dhcp_port_with_its_table_and_gateway(self) -> None:
        raw = text("dhcp.json")
        lease = Lease("eth1", "networkd", IPv4Address("10.0.13.7"), 24, IPv4Address("10.0.13.1"))
        obs = build_observation(DHCP, parse_document(raw), PRIMARY, 3, raw, lease)
        state = obs.state
        assert obs.flags == ()
        assert state.ipv4_addresses == (IPv4Address("10.0.13.7"),)
        assert str(state.ipv4_subnet) == "10.0.13.0/24"
        assert state.ipv4_gateway == IPv4Address("10.0.13.1")
        assert (state.route_table, state.route_metric) == numbering(3)

    def test_a_leased_router_outside_the_subnet_is_no_gateway(self) -> None:
        raw = text("dhcp.json")
        lease = Lease("eth1", "dhclient", IPv4Address("10.0.13.7"), 24, IPv4Address("10.9.9.1"))
        state = build_observation(DHCP, parse_document(raw), PRIMARY, 3, raw, lease).state
        assert state.ipv4_addresses == (IPv4Address("10.0.13.7"),)
        assert state.ipv4_gateway is None

    def test_an_ipv6_slaac_network_gives_its_address_and_subnet(self) -> None:
        state = observe("ipv6_slaac.json", SECOND).state
        assert state.ipv6_addresses == (IPv6Address("2001:db8:12:0:f816:3eff:fe11:2202"),)
        assert [str(s) for s in state.ipv6_subnets] == ["2001:db8:12::/64"]

    def test_a_vlan_link_is_skipped_not_an_error(self) -> None:
        document = parse_document(text("vlan_link.json"))
        assert list(document.ports) == [PRIMARY]
        assert any("vlan" in s for s in document.skipped)

    def test_the_config_drive_copy_parses(self) -> None:
        raw = text("config_drive/openstack/latest/network_data.json")
        assert list(parse_document(raw).ports) == [PRIMARY]

    def test_an_unknown_mac_is_not_listed_with_the_unlisted_grace(self) -> None:
        obs = observe("static_dual_stack.json", "fa:16:3e:99:99:99")
        assert obs.state is None
        (flag,) = obs.flags
        assert (flag.kind, flag.keys, flag.grace) == ("not-listed", (NETWORK_DATA,), "unlisted")

    def test_static_ipv6_is_dropped_beside_dhcpv4(self) -> None:
        doc = json.loads(text("dhcp.json"))
        doc["networks"].append(
            {
                "id": "network9",
                "type": "ipv6",
                "link": doc["links"][1]["id"],
                "ip_address": "2001:db8::5",
                "netmask": "ffff:ffff:ffff:ffff::",
            }
        )
        raw = json.dumps(doc)
        state = build_observation(DHCP, parse_document(raw), PRIMARY, 1, raw).state
        assert state.ipv6_addresses == ()  # until the lease comes
        assert not state.ipv6_only  # DHCPv4 keeps running
        lease = Lease("eth1", "networkd", IPv4Address("10.0.13.7"), 24, None)
        state = build_observation(DHCP, parse_document(raw), PRIMARY, 1, raw, lease).state
        assert state.ipv6_addresses == (IPv6Address("2001:db8::5"),)
        assert state.ipv4_addresses == (IPv4Address("10.0.13.7"),)

    def test_every_emitted_flag_kind_is_declared(self) -> None:
        kinds = set()
        for name in ("static_dual_stack.json", "dhcp.json", "ipv6_slaac.json"):
            for mac in (PRIMARY, SECOND, DHCP, "fa:16:3e:00:00:00"):
                kinds |= {f.kind for f in observe(name, mac).flags}
        assert kinds
        assert kinds <= OpenStackSource.FLAG_KINDS


def garbage(mutate: Any) -> str:
    doc = json.loads(text("static_dual_stack.json"))
    mutate(doc)
    return json.dumps(doc)


class TestGarbage:
    @pytest.mark.parametrize(
        ("raw", "field"),
        [
            ("not json", "network_data.json: not JSON"),
            ("[]", "expected a JSON dict"),
            ("x" * (1024 * 1024 + 1), "more than"),
            (garbage(lambda d: d.update(links={})), "links: expected a list"),
            (garbage(lambda d: d["links"][1].update(ethernet_mac_address="zz")), "ethernet_mac"),
            (garbage(lambda d: d["links"][1].update(id="a\x00b")), "links[1].id: control"),
            (garbage(lambda d: d["links"][1].update(mtu="1500")), "links[1].mtu"),
            (garbage(lambda d: d["links"][1].update(id=d["links"][0]["id"])), "duplicate id"),
            (garbage(lambda d: d["networks"][1].update(link="nope")), "networks[1].link: unknown"),
            (garbage(lambda d: d["networks"][1].pop("link")), "networks[1].link: expected"),
            (
                garbage(lambda d: d["networks"][1].update(ip_address="10.0.11.300")),
                "networks[1].ip_address: not an IPv4",
            ),
            (
                garbage(lambda d: d["networks"][2].update(netmask="ffff::ffff")),
                "networks[2].netmask: invalid",
            ),
            (
                garbage(lambda d: d["networks"][1]["routes"][0].update(gateway=5)),
                "networks[1].routes[0].gateway",
            ),
            (garbage(lambda d: d.update(links=[d["links"][0]] * 200)), "more than 128"),
            # Found by tests/fuzz: ipaddress reads "%..." as an IPv6 zone, which the
            # networkd and NetworkManager writers refuse (ValueError on a valid NicState).
            (
                garbage(lambda d: d["networks"][2].update(ip_address="2001:db8:11::10%eth0")),
                "networks[2].ip_address: not an IPv6 address",
            ),
            (
                garbage(lambda d: d["networks"][2]["routes"][0].update(gateway="fe80::1%eth1")),
                "networks[2].routes[0].gateway: not an IPv6 address",
            ),
            (
                garbage(lambda d: d["networks"][2]["routes"][1].update(network="2001:db8:77::%x")),
                "networks[2].routes[1].netmask: invalid netmask",
            ),
            (
                garbage(lambda d: d["networks"][2].update(netmask="ffff:ffff::%eth0")),
                "networks[2].netmask: invalid netmask",
            ),
            # Found by tests/fuzz: the unspecified address (networkd: any free address of
            # its pool) and a /0 subnet (netplan refuses an address with /0).
            (
                garbage(lambda d: d["networks"][1].update(ip_address="0.0.0.0")),
                "networks[1].ip_address: 0.0.0.0 is no address",
            ),
            (
                garbage(lambda d: d["networks"][1].update(netmask="0.0.0.0")),
                "networks[1].netmask: /0 is every address, not a subnet",
            ),
            (
                garbage(lambda d: d["networks"][2].update(netmask=0)),
                "networks[2].netmask: /0 is every address, not a subnet",
            ),
        ],
    )
    def test_is_a_metadata_error_naming_the_field(self, raw: str, field: str) -> None:
        with pytest.raises(MetadataError) as info:
            parse_document(raw)
        assert field in str(info.value)
        assert "\n" not in str(info.value)

    def test_deep_nesting_anywhere_is_a_metadata_error(self) -> None:
        # Found by tests/fuzz: a RecursionError escaped parse_document. Every depth around
        # the decoder's limit (wherever the stack stands), at the top and inside a field.
        for depth in range(800, 1100):
            deep = "[" * depth + "]" * depth
            for raw in (
                deep,
                garbage(lambda d: d["links"][1].update(mtu="@")).replace('"@"', deep),
            ):
                try:
                    parse_document(raw)
                except MetadataError:
                    continue
                pytest.fail(f"depth {depth}: accepted")


class TestConfig:
    def test_defaults(self) -> None:
        config = config_mod.parse({})
        section = config.section(OpenStackConfig)
        assert section.endpoint == "http://169.254.169.254"
        assert section.config_drive == ""

    def test_unknown_key(self) -> None:
        with pytest.raises(ConfigError, match=r"^openstack\.colour: unknown key$"):
            config_mod.parse({"openstack": {"colour": "red"}})

    def test_bad_endpoint_and_relative_drive(self) -> None:
        with pytest.raises(ConfigError, match=r"^openstack\.endpoint: "):
            config_mod.parse({"openstack": {"endpoint": "ftp://x"}})
        with pytest.raises(ConfigError, match=r"^openstack\.config_drive: "):
            config_mod.parse({"openstack": {"config_drive": "mnt/config"}})


def dmi(tmp_path: Path, **files: str) -> Path:
    base = tmp_path / "class" / "dmi" / "id"
    base.mkdir(parents=True)
    for name, value in files.items():
        (base / name).write_text(value + "\n")
    return tmp_path


class TestDetection:
    @pytest.mark.parametrize(
        "files",
        [
            {"sys_vendor": "OpenStack Foundation"},
            {"product_name": "OpenStack Nova"},
            {"product_name": "OpenStack Compute"},
        ],
    )
    def test_dmi_names_openstack(self, tmp_path: Path, files: dict[str, str]) -> None:
        assert OpenStackSource.dmi_says(dmi(tmp_path, **files)) is True

    def test_other_dmi_cannot_tell(self, tmp_path: Path) -> None:
        assert OpenStackSource.dmi_says(dmi(tmp_path, sys_vendor="QEMU")) is None
        assert OpenStackSource.dmi_says(tmp_path / "nothing") is None

    async def test_auto_picks_openstack_by_dmi_without_a_request(self, tmp_path: Path) -> None:
        http = HttpClient.from_polling(10, 0.2)
        try:
            root = dmi(tmp_path, sys_vendor="OpenStack Foundation", product_name="OpenStack Nova")
            source = await select_source(config_mod.Config(), http, sys_root=root)
            assert isinstance(source, OpenStackSource)
            assert http.requests_sent == 0
        finally:
            await http.close()


@pytest.fixture
async def sim() -> AsyncIterator[OpenStackSim]:
    server = OpenStackSim(slow_seconds=5)
    await server.start()
    yield server
    await server.stop()


def plan(mac: str, octet: int, **extra: Any) -> dict[str, Any]:
    return OpenStackSim.lab_spec(
        {
            "mac": mac,
            "ipv4s": [f"10.0.{octet}.20"],
            "subnet4": f"10.0.{octet}.0/24",
            "gateway4": f"10.0.{octet}.1",
            "ipv6s": [],
            "subnet6": None,
            **extra,
        }
    )


def source(url: str, tmp_path: Path, drive: str = "", timeout: float = 2.0) -> OpenStackSource:
    config = OpenStackConfig(endpoint=url, config_drive=drive)
    return OpenStackSource(config, HttpClient(timeout=timeout), root=tmp_path)


class TestAgainstTheSimulator:
    async def test_n_nics_polling_together_cost_one_request(
        self, sim: OpenStackSim, tmp_path: Path
    ) -> None:
        macs = [f"fa:16:3e:00:01:{i:02x}" for i in range(8)]
        for i, mac in enumerate(macs):
            sim.add_nic(plan(mac, 10 + i, primary=i == 0))
        src = source(sim.url, tmp_path)
        try:
            sim.reset_stats()
            observations = await asyncio.gather(*(src.fetch(m) for m in macs))
            assert all(o.state is not None for o in observations)
            assert sim.stats(False)["requests"] == 1
            assert observations[0].state.primary
            assert not observations[1].state.primary
        finally:
            await src.close()

    async def test_a_second_fixed_ip_patched_in_is_seen(
        self, sim: OpenStackSim, tmp_path: Path
    ) -> None:
        sim.add_nic(plan(PRIMARY, 10, primary=True))
        sim.add_nic(plan(SECOND, 11))
        src = source(sim.url, tmp_path)
        try:
            assert len((await src.fetch(SECOND)).state.ipv4_addresses) == 1
            sim.update_nic(SECOND, plan(SECOND, 11, ipv4s=["10.0.11.20", "10.0.11.30"]))
            src._document.forget()
            state = (await src.fetch(SECOND)).state
            assert [str(a) for a in state.ipv4_addresses] == ["10.0.11.20", "10.0.11.30"]
            assert (await src.probe([NETWORK_DATA]))[NETWORK_DATA] == json.dumps(sim.document())
        finally:
            await src.close()

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset"])
    async def test_no_answer_is_a_fetch_error(
        self, sim: OpenStackSim, tmp_path: Path, mode: str
    ) -> None:
        sim.add_nic(plan(PRIMARY, 10))
        sim.set_fault(mode)
        src = source(sim.url, tmp_path, timeout=0.3)
        try:
            with pytest.raises(FetchError):
                await src.fetch(PRIMARY)
        finally:
            sim.set_fault("none")
            await src.close()

    async def test_garbage_from_the_service_is_a_metadata_error(
        self, sim: OpenStackSim, tmp_path: Path
    ) -> None:
        sim.set_raw(f"/{NETWORK_DATA}", '{"links": 5}')
        src = source(sim.url, tmp_path)
        try:
            with pytest.raises(MetadataError, match=r"^links: expected a list"):
                await src.fetch(PRIMARY)
        finally:
            await src.close()

    async def test_the_config_drive_answers_when_the_service_does_not(
        self, sim: OpenStackSim, tmp_path: Path
    ) -> None:
        sim.add_nic(plan(PRIMARY, 10, primary=True))
        sim.add_nic(plan(SECOND, 11))
        sim.set_fault("5xx")
        src = source(sim.url, tmp_path, drive=str(FIXTURES / "config_drive"))
        try:
            assert (await src.fetch(PRIMARY)).state is not None
            # The drive was written at boot: a port attached later is not in it.
            obs = await src.fetch(SECOND)
            assert obs.state is None
            assert [f.kind for f in obs.flags] == ["not-listed"]
        finally:
            await src.close()

    async def test_detect(self, sim: OpenStackSim, tmp_path: Path) -> None:
        src = source(sim.url, tmp_path)
        try:
            assert await src.detect()
            sim.set_fault("hang")
            assert not await src.detect()
            assert src.detect_error == "timeout"
        finally:
            sim.set_fault("none")
            await src.close()


def machine(sim: OpenStackSim, tmp_path: Path) -> tuple[Tree, OpenStackSource]:
    """eth0 (PRIMARY, a static port) and eth1 (SECOND, an ipv4_dhcp port) under a fake
    root, listed by SIM; a source reading both (no nmcli: leases come from files)."""
    tree = Tree(tmp_path).link("eth0", PRIMARY, 2).link("eth1", SECOND, 3)
    sim.add_nic(plan(PRIMARY, 10, primary=True))
    sim.add_nic(plan(SECOND, 11, dhcp4=True))
    config = OpenStackConfig(endpoint=sim.url)
    src = OpenStackSource(config, HttpClient(timeout=2), root=tmp_path, runner=nmcli_missing())
    return tree, src


class TestDhcpPortsOnTheMachine:
    async def test_a_dhcp_port_is_completed_from_its_networkd_lease(
        self, sim: OpenStackSim, tmp_path: Path
    ) -> None:
        tree, src = machine(sim, tmp_path)
        tree.routes(("eth0", "10.0.10.1", 100))
        try:
            obs = await src.fetch(SECOND)
            assert obs.state is not None
            assert obs.state.ipv4_addresses == ()
            assert [f.kind for f in obs.flags] == ["incomplete"]
            key = lease_key(SECOND)
            assert await src.probe([key]) == {key: None}
            tree.networkd(3, address="10.0.11.57", netmask="255.255.255.0", router="10.0.11.1")
            (answer,) = (await src.probe([key])).values()
            assert answer is not None
            assert "10.0.11.57/24" in answer
            # A lease is not in the document: no prediction from a probe, a full fetch.
            assert src.predict(SECOND, {key: answer}) is None
            obs = await src.fetch(SECOND)
            assert obs.flags == ()
            assert obs.state is not None
            assert obs.state.ipv4_addresses == (IPv4Address("10.0.11.57"),)
            assert obs.state.ipv4_gateway == IPv4Address("10.0.11.1")
            assert not obs.state.primary
        finally:
            await src.close()

    async def test_its_own_dhcp_default_route_does_not_make_a_port_the_primary(
        self, sim: OpenStackSim, tmp_path: Path
    ) -> None:
        # The primary carries no IPv4 default route; the DHCP port's lease brings one with
        # the metric our file gave it: it stays a secondary (table, rules), never "primary".
        tree, src = machine(sim, tmp_path)
        tree.routes()
        try:
            first = await src.fetch(SECOND)
            assert first.state is not None
            assert not first.state.primary
            tree.networkd(3, address="10.0.11.57", netmask="255.255.255.0", router="10.0.11.1")
            tree.routes(("eth1", "10.0.11.1", first.state.route_metric))
            obs = await src.fetch(SECOND)
            assert obs.state is not None
            assert not obs.state.primary
            assert obs.state.route_table == first.state.route_table
            # Another metric on that port (not ours) is the primary's sign, as before.
            tree.routes(("eth1", "10.0.11.1", 100))
            last = (await src.fetch(SECOND)).state
            assert last is not None
            assert last.primary
        finally:
            await src.close()


class TestStaticRoute:
    def test_a_route_is_one_family_and_never_the_default(self) -> None:
        assert str(StaticRoute(to="192.168.77.0/24", via="10.0.11.254").to) == "192.168.77.0/24"
        with pytest.raises(ValidationError, match="families differ"):
            StaticRoute(to="192.168.77.0/24", via="fe80::1")
        with pytest.raises(ValidationError, match="default route"):
            StaticRoute(to="0.0.0.0/0", via="10.0.11.1")
