"""CloudStack: pure parsing and state building from fixtures, and CloudStackSource against the
real VR simulator served on loopback addresses."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.config import Config
from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.model import NicState
from nicreconciled.sim.cloudstack import VrSim
from nicreconciled.sim.imds import LISTED_404
from nicreconciled.sources import AUTO_ORDER, make_source, select_source
from nicreconciled.sources.cloudstack import CloudStackConfig, CloudStackSource
from nicreconciled.sources.cloudstack_parse import (
    VrMetadata,
    build_state,
    link_key,
    metadata_url,
    parse_metadata,
)
from nicreconciled.sources.common import device_numbers
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.leases import lease_key
from nicreconciled.sources.vr_discovery import Lease, Resolver
from nicreconciled.system.sysfs import Link
from tests.states import cloudstack_state
from tests.unit.test_vr_discovery import MAC0, MAC1, NXDOMAIN, Tree, nmcli_missing, resolver

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cloudstack" / "metadata"
VR = "http://10.1.1.1"
#: Nothing listens here: connections are refused at once (all of 127/8 is local).
DEAD = "127.43.0.254"
LEASE0 = Lease(
    "eth0",
    "networkd",
    IPv4Address("10.1.1.23"),
    24,
    IPv4Address("10.1.1.1"),
    IPv4Address("10.1.1.1"),
)

StartVr = Callable[..., Awaitable[VrSim]]


def answers(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def raw(name: str) -> dict[str, str | None]:
    return {k: v for k, v in answers(name)["answers"].items() if k != "meta-data/"}


def state(**fields: Any) -> NicState:
    number = fields.pop("device_number")
    return cloudstack_state(number, {"mac": MAC0, **fields})


@pytest.fixture
async def start_vr() -> AsyncIterator[StartVr]:
    """start_vr(host="127.0.0.1", port=0, **keys) -> a running VrSim; stopped afterwards."""
    sims: list[VrSim] = []

    async def start(host: str = "127.0.0.1", port: int = 0, **keys: str | None) -> VrSim:
        sim = VrSim(slow_seconds=2.0)
        sim.set_vm({k.replace("_", "-"): v for k, v in keys.items()})
        await sim.start(host, port)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.stop()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """eth0 (default route, networkd lease without a server) and eth1 (no lease)."""
    tree = Tree(tmp_path).link("eth0", MAC0, 2).link("eth1", MAC1, 3)
    tree.routes(("eth0", DEAD, 100))
    tree.networkd(2, address="10.1.1.23", netmask="255.255.255.0", router="10.1.1.1")
    return tree


def source(
    tree: Tree, http: HttpClient, endpoint: str = "", *, resolve: Resolver | None = None
) -> CloudStackSource:
    return CloudStackSource(
        CloudStackConfig(endpoint=endpoint),
        http,
        root=tree.root,
        runner=nmcli_missing(),
        resolver=resolve or resolver(error=NXDOMAIN),
    )


# --- pure ---------------------------------------------------------------------------------


class TestParseMetadata:
    def test_a_complete_vr(self) -> None:
        meta = parse_metadata(raw("complete"))
        assert meta.instance_id == "0d4d6ae8-1b6c-4a3e-9a51-6f4f2b7c9e01"
        assert (meta.local_ipv4, meta.public_ipv4) == (
            IPv4Address("10.1.1.23"),
            IPv4Address("203.0.113.10"),
        )
        assert meta.texts["service-offering"] == "Small Instance"
        assert meta.texts["local-hostname"] == "vm-1"

    def test_old_instance_names_and_trailing_newlines(self) -> None:
        assert parse_metadata(raw("minimal")) == VrMetadata(
            "i-2-10-VM", IPv4Address("10.1.1.23"), None, {}
        )

    def test_an_empty_value_is_not_populated_yet_not_garbage(self) -> None:
        assert parse_metadata(raw("empty_local_ipv4")).local_ipv4 is None

    @pytest.mark.parametrize(
        "name", sorted(p.stem for p in FIXTURES.glob("garbage_*.json")), ids=str
    )
    def test_garbage_is_a_metadata_error_naming_the_key(self, name: str) -> None:
        with pytest.raises(MetadataError, match=rf"^{answers(name)['bad_key']}: ") as info:
            parse_metadata(raw(name))
        assert "\n" not in str(info.value)

    def test_instance_id_is_required(self) -> None:
        with pytest.raises(MetadataError, match=r"^instance-id: missing$"):
            parse_metadata({"local-ipv4": "10.1.1.23"})


class TestBuildState:
    def test_the_lease_gives_address_subnet_and_gateway(self) -> None:
        obs = build_state(
            MAC0, raw("complete"), LEASE0, vr=VR, own_vr=True, primary=True, device_number=0
        )
        assert obs.flags == ()
        assert obs.state == state(
            primary=True,
            device_number=0,
            ipv4_addresses=(IPv4Address("10.1.1.23"),),
            ipv4_subnet=IPv4Network("10.1.1.0/24"),
            ipv4_gateway=IPv4Address("10.1.1.1"),
        )

    def test_a_half_populated_vr_is_incomplete_and_waits_on_local_ipv4(self) -> None:
        obs = build_state(
            MAC0, raw("half_populated"), LEASE0, vr=VR, own_vr=True, primary=True, device_number=0
        )
        url = "http://10.1.1.1/latest/meta-data/local-ipv4"
        assert [(f.kind, f.keys, f.grace) for f in obs.flags] == [
            ("incomplete", (url,), "deadline")
        ]
        assert obs.probe == {url: None}
        assert obs.state is not None
        assert obs.state.ipv4_addresses == (IPv4Address("10.1.1.23"),)

    def test_without_a_lease_the_own_vrs_local_ipv4_is_the_address(self) -> None:
        obs = build_state(
            MAC0, raw("complete"), None, vr=VR, own_vr=True, primary=True, device_number=0
        )
        assert obs.flags == ()
        assert obs.state == state(
            primary=True, device_number=0, ipv4_addresses=(IPv4Address("10.1.1.23"),)
        )

    def test_without_a_lease_and_without_its_own_vr_the_address_is_unknown(self) -> None:
        obs = build_state(
            MAC1, raw("complete"), None, vr=VR, own_vr=False, primary=False, device_number=2
        )
        assert [(f.kind, f.keys, f.grace) for f in obs.flags] == [
            ("incomplete", (lease_key(MAC1),), "lease")
        ]
        assert obs.probe == {lease_key(MAC1): None}
        assert obs.state is not None
        assert obs.state.ipv4_addresses == ()

    def test_a_lease_the_vr_disagrees_with_waits(self) -> None:
        stale = Lease("eth0", "dhclient", IPv4Address("10.1.1.50"), 24, IPv4Address("10.1.1.1"))
        obs = build_state(
            MAC0, raw("complete"), stale, vr=VR, own_vr=True, primary=True, device_number=0
        )
        (flag,) = obs.flags
        assert flag.detail == "lease address 10.1.1.50 is not the VR's local-ipv4 10.1.1.23"
        assert flag.keys == (lease_key(MAC0), metadata_url(VR, "local-ipv4"))
        assert obs.probe == {lease_key(MAC0): stale.describe(), flag.keys[1]: "10.1.1.23"}

    def test_another_networks_vr_is_not_compared_with_the_lease(self) -> None:
        lease = Lease("eth1", "networkd", IPv4Address("10.2.2.17"), 24)
        obs = build_state(
            MAC1, raw("complete"), lease, vr=VR, own_vr=False, primary=False, device_number=2
        )
        assert obs.flags == ()

    def test_a_router_outside_the_subnet_is_no_gateway(self) -> None:
        lease = Lease("eth0", "networkd", IPv4Address("10.1.1.23"), 24, IPv4Address("10.9.9.9"))
        obs = build_state(
            MAC0, raw("complete"), lease, vr=VR, own_vr=False, primary=False, device_number=1
        )
        assert obs.state is not None
        assert obs.state.ipv4_gateway is None

    def test_an_unspecified_local_ipv4_is_no_address(self) -> None:
        # Found by tests/fuzz: "0.0.0.0" became the NIC's address, which networkd reads as
        # "any free address of its pool". The lease readers already read it as none.
        answers = raw("complete") | {"local-ipv4": "0.0.0.0"}
        obs = build_state(MAC0, answers, None, vr=VR, own_vr=True, primary=True, device_number=0)
        assert obs.state is not None
        assert obs.state.ipv4_addresses == ()
        assert [f.kind for f in obs.flags] == ["incomplete", "incomplete"]
        assert parse_metadata(raw("complete") | {"public-ipv4": "0.0.0.0"}).public_ipv4 is None

    def test_a_lease_with_netmask_0_0_0_0_gives_no_subnet(self) -> None:
        # Found by tests/fuzz: the /0 "subnet" of such a lease put its address as "/0" in
        # the file, which netplan generate refuses.
        lease = Lease("eth0", "networkd", IPv4Address("10.1.1.23"), 0, IPv4Address("10.1.1.1"))
        assert lease.network is None
        obs = build_state(
            MAC0, raw("complete"), lease, vr=VR, own_vr=True, primary=True, device_number=0
        )
        assert obs.state is not None
        assert (obs.state.ipv4_subnet, obs.state.ipv4_gateway) == (None, None)
        assert obs.state.ipv4_addresses == (IPv4Address("10.1.1.23"),)

    def test_garbage_raises(self) -> None:
        with pytest.raises(MetadataError, match=r"^local-ipv4: not an IPv4 address"):
            build_state(
                MAC0,
                raw("garbage_bad_address"),
                LEASE0,
                vr=VR,
                own_vr=True,
                primary=True,
                device_number=0,
            )


def link(name: str, index: int, *, virtual: bool = False) -> Link:
    return Link(name, f"52:54:00:00:01:{index:02x}", index, virtual, True)


class TestDeviceNumbers:
    def test_primary_is_zero_and_the_others_follow_their_ifindex(self) -> None:
        links = [link("eth0", 2), link("eth1", 3), link("eth2", 7)]
        assert device_numbers(links, links[0].mac) == {
            links[0].mac: 0,
            links[1].mac: 2,
            links[2].mac: 6,
        }

    def test_a_nic_keeps_its_number_when_another_detaches(self) -> None:
        links = [link("eth0", 2), link("eth1", 3), link("eth2", 4), link("eth3", 5)]
        before = device_numbers(links, links[0].mac)
        after = device_numbers([links[0], links[1], links[3]], links[0].mac)
        assert after[links[3].mac] == before[links[3].mac]

    def test_a_collision_takes_the_next_free_number(self) -> None:
        # ifindex 101 folds onto 1 like ifindex 2; 2 is taken by ifindex 3.
        a, b, c = link("eth0", 2), link("eth1", 3), link("eth9", 101)
        assert device_numbers([c, b, a], None) == {a.mac: 1, b.mac: 2, c.mac: 3}

    def test_numbers_never_exceed_99(self) -> None:
        links = [link(f"eth{i}", i + 2) for i in range(150)]
        numbers = device_numbers(links, None)
        assert sorted(numbers.values()) == list(range(1, 100))  # the rest get none

    def test_a_vlan_sharing_its_parents_mac_does_not_hide_the_parent(self) -> None:
        parent = link("eth1", 3)
        vlan = Link("eth1.100", parent.mac, 9, True, True)
        assert device_numbers([vlan, parent], None) == {parent.mac: 2}


# --- the source against the simulator -----------------------------------------------------


class TestFetch:
    async def test_primary_nic_from_lease_and_vr(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        obs = await cs.fetch(MAC0)
        assert obs.flags == ()
        assert obs.state == state(
            primary=True,
            device_number=0,
            ipv4_addresses=(IPv4Address("10.1.1.23"),),
            ipv4_subnet=IPv4Network("10.1.1.0/24"),
            ipv4_gateway=IPv4Address("10.1.1.1"),
        )
        assert cs.default_vr == sim.url
        # Liveness (1), then only the keys the state uses: instance-id and local-ipv4.
        assert sim.requests == 3
        assert sorted(e[2] for e in sim.log) == [
            "/latest/meta-data/instance-id",
            "/latest/meta-data/instance-id",
            "/latest/meta-data/local-ipv4",
        ]
        sim.reset_stats()
        await cs.fetch(MAC0)
        assert sim.requests == 2  # the VR is cached: no discovery

    async def test_secondary_nic(self, start_vr: StartVr, tree: Tree, http: HttpClient) -> None:
        tree.networkd(3, address="10.2.2.17", netmask="255.255.255.0")
        sim = await start_vr()
        obs = await source(tree, http, sim.url).fetch(MAC1)
        assert obs.flags == ()
        assert obs.state == NicState(
            mac=MAC1,
            cloud="cloudstack",
            primary=False,
            route_table=10002,
            route_metric=514,
            ipv4_addresses=(IPv4Address("10.2.2.17"),),
            ipv4_subnet=IPv4Network("10.2.2.0/24"),
        )

    @pytest.mark.parametrize("missing", [None, LISTED_404, ""], ids=["absent", "404", "empty"])
    async def test_half_populated_vr_is_incomplete_until_local_ipv4_appears(
        self, start_vr: StartVr, tree: Tree, http: HttpClient, missing: str | None
    ) -> None:
        sim = await start_vr(local_ipv4=missing)
        cs = source(tree, http, sim.url)
        obs = await cs.fetch(MAC0)
        url = metadata_url(sim.url, "local-ipv4")
        assert [(f.kind, f.keys) for f in obs.flags] == [("incomplete", (url,))]
        assert obs.probe == {url: "" if missing == "" else None}
        assert await cs.probe([url]) == obs.probe
        sim.set_vm({"local-ipv4": "10.1.1.23"})
        assert await cs.probe([url]) == {url: "10.1.1.23"}
        assert (await cs.fetch(MAC0)).flags == ()

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("local-ipv4", "10.1.1.300", "local-ipv4: not an IPv4 address: '10.1.1.300'"),
            ("instance-id", "0d4d\x00", "instance-id: control character '\\x00' in value"),
        ],
    )
    async def test_garbage_is_a_metadata_error(
        self, start_vr: StartVr, tree: Tree, http: HttpClient, key: str, value: str, message: str
    ) -> None:
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        await cs.fetch(MAC0)
        sim.set_vm({key: value})
        with pytest.raises(MetadataError) as info:
            await cs.fetch(MAC0)
        assert str(info.value) == message

    async def test_vr_down_is_a_fetch_error_naming_every_method(
        self, tree: Tree, http: HttpClient, closed_port: int
    ) -> None:
        cs = source(tree, http, f"http://127.0.0.1:{closed_port}")
        with pytest.raises(FetchError) as info:
            await cs.fetch(MAC0)
        assert str(info.value) == (
            f"no virtual router found: endpoint: http://127.0.0.1:{closed_port} did not answer"
            " (cannot connect (Connection refused)); data-server: NXDOMAIN; networkd leases:"
            " none; dhclient leases: none; NetworkManager: nmcli not found; default route:"
            f" {DEAD} did not answer (cannot connect (Connection refused))"
        )

    async def test_vr_down_at_start_is_found_later(
        self, start_vr: StartVr, tree: Tree, http: HttpClient, closed_port: int
    ) -> None:
        cs = source(tree, http, f"http://127.0.0.1:{closed_port}")
        with pytest.raises(FetchError):
            await cs.fetch(MAC0)
        await start_vr("127.0.0.1", closed_port)
        assert (await cs.fetch(MAC0)).state is not None

    async def test_a_vr_that_moved_is_rediscovered(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        where = ["127.43.0.1"]

        async def data_server(_name: str) -> list[str]:
            return list(where)

        old = await start_vr("127.43.0.1", 80)
        cs = source(tree, http, resolve=data_server)
        await cs.fetch(MAC0)
        assert cs.default_vr == "http://127.43.0.1"
        await old.stop()
        new = await start_vr("127.43.0.3", 80)
        where[:] = ["127.43.0.3"]
        assert (await cs.fetch(MAC0)).state is not None
        assert cs.default_vr == "http://127.43.0.3"
        assert new.requests == 3

    @pytest.mark.parametrize(("fault", "reason"), [("5xx", "HTTP 503"), ("hang", "timeout")])
    async def test_a_failing_vr_is_a_fetch_error(
        self, start_vr: StartVr, tree: Tree, http: HttpClient, fault: str, reason: str
    ) -> None:
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        await cs.fetch(MAC0)
        sim.set_fault(fault)
        started = time.monotonic()
        with pytest.raises(FetchError, match=reason):
            await cs.fetch(MAC0)
        assert time.monotonic() - started < 5
        sim.set_fault("none")
        assert (await cs.fetch(MAC0)).state is not None

    async def test_a_mac_not_on_this_machine_is_not_listed(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        mac = "52:54:00:00:ab:09"
        obs = await cs.fetch(mac)
        key = link_key(mac)
        assert obs.state is None
        assert [(f.kind, f.keys) for f in obs.flags] == [("not-listed", (key,))]
        assert obs.probe == {key: None}
        assert sim.requests == 0  # nothing to ask the VR
        assert await cs.probe([key]) == {key: None}
        tree.link("eth9", mac, 11)
        assert await cs.probe([key]) == {key: "eth9"}

    async def test_a_nic_without_a_lease_waits_for_one(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        obs = await cs.fetch(MAC1)
        key = lease_key(MAC1)
        # Written DHCP-only at once (grace "lease": none), completed when the lease comes.
        assert [(f.kind, f.keys, f.grace) for f in obs.flags] == [("incomplete", (key,), "lease")]
        assert obs.state is not None
        assert obs.state.ipv4_addresses == ()
        assert await cs.probe([key]) == {key: None}
        tree.networkd(3, address="10.2.2.17", netmask="255.255.255.0")
        described = (await cs.probe([key]))[key]
        assert described == "networkd eth1 address=10.2.2.17/24 router=None server=None"
        assert (await cs.fetch(MAC1)).flags == ()

    async def test_a_nic_asks_the_vr_its_own_lease_names(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        default = await start_vr()
        own = await start_vr("127.43.0.2", 80, local_ipv4="10.2.2.17")
        tree.networkd(3, address="10.2.2.17", netmask="255.255.255.0", server_address="127.43.0.2")
        cs = source(tree, http, default.url)
        obs = await cs.fetch(MAC1)
        assert obs.flags == ()
        assert own.requests == 2
        assert default.requests == 0
        # Its VR goes away: the default VR answers instead, the lease still gives the state.
        await own.stop()
        fallback = await cs.fetch(MAC1)
        assert fallback.state == obs.state
        assert default.requests > 0

    async def test_no_default_route_primary_is_the_nic_the_default_vr_knows(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        tree.routes()
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        primary = (await cs.fetch(MAC0)).state
        assert primary is not None
        assert (primary.primary, primary.route_table) == (True, 10000)
        sim.set_vm({"local-ipv4": "10.1.1.99"})
        other = (await cs.fetch(MAC0)).state
        assert other is not None
        assert (other.primary, other.route_table) == (False, 10001)

    async def test_a_nics_own_dhcp_default_route_does_not_make_it_the_primary(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        # eth1's lease brought a default route with the metric our file gave eth1 (512 + n):
        # not the primary's sign. The primary stays the NIC the default VR knows.
        tree.networkd(3, address="10.2.2.17", netmask="255.255.255.0", router="10.2.2.1")
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        metric = (await cs.fetch(MAC1)).state
        assert metric is not None
        tree.routes(("eth1", "10.2.2.1", metric.route_metric))
        state = (await cs.fetch(MAC1)).state
        assert state is not None
        assert (state.primary, state.route_table) == (False, metric.route_table)
        tree.routes(("eth1", "10.2.2.1", 100))  # any other metric: the primary's route
        again = (await cs.fetch(MAC1)).state
        assert again is not None
        assert again.primary

    async def test_probe_refuses_keys_it_did_not_hand_out(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        await cs.fetch(MAC0)
        for key in ("http://192.0.2.1/latest/meta-data/x", f"{sim.url}/latest/meta-data/../x"):
            with pytest.raises(ValueError, match="not a CloudStack probe key"):
                await cs.probe([key])


class TestDetect:
    async def test_dmi_product_name_says_cloudstack(self, tree: Tree, http: HttpClient) -> None:
        tree.write("sys/class/dmi/id/product_name", "CloudStack KVM Hypervisor\n")
        assert await source(tree, http).detect()
        assert http.requests_sent == 0

    async def test_without_dmi_a_vr_that_answers_is_enough(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        tree.write("sys/class/dmi/id/product_name", "Standard PC (Q35 + ICH9, 2009)\n")
        sim = await start_vr()
        cs = source(tree, http, sim.url)
        assert await cs.detect()
        assert cs.default_vr == sim.url

    async def test_no_vr_is_false_quickly_and_never_raises(
        self, tree: Tree, http: HttpClient
    ) -> None:
        started = time.monotonic()
        assert not await source(tree, http).detect()
        assert time.monotonic() - started < 4

    async def test_a_web_page_is_not_a_vr(
        self, start_vr: StartVr, tree: Tree, http: HttpClient
    ) -> None:
        sim = await start_vr(instance_id="<html>Router login</html>")
        assert not await source(tree, http, sim.url).detect()


class TestRegistry:
    def test_cloudstack_is_registered_and_probed_after_ec2(self, http: HttpClient) -> None:
        config = Config().with_sections(cloudstack=CloudStackConfig(endpoint="http://192.0.2.10"))
        assert isinstance(make_source("cloudstack", config, http), CloudStackSource)
        # Cheap fixed-address probes first; the VR discovery chain is the slowest, so last.
        assert AUTO_ORDER[0] == "ec2"
        assert AUTO_ORDER[-1] == "cloudstack"

    async def test_auto_selects_cloudstack_when_only_a_vr_answers(
        self, start_vr: StartVr, http: HttpClient, closed_port: int
    ) -> None:
        sim = await start_vr()
        config = Config.model_validate(
            {
                "cloud": "auto",
                "ec2": {"endpoint": f"http://127.0.0.1:{closed_port}", "fallback_endpoint": ""},
                "cloudstack": {"endpoint": sim.url},
            }
        )
        chosen = await select_source(config, http, max_wait=1)
        assert chosen.name == "cloudstack"
