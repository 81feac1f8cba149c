"""OCI: the pure parser on captured-shape documents, the [oci] table, DMI detection, the
renderers' golden files of OCI states, and OciSource against the in-process OciSim."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nicreconciled import config as config_mod
from nicreconciled import sources
from nicreconciled.errors import ConfigError, FetchError, MetadataError
from nicreconciled.model import MAX_TABLE, MIN_TABLE, NicState
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.render.networkmanager import NetworkManagerRenderer
from nicreconciled.sim.oci import OciSim
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.oci import (
    VNICS_PATH,
    OciConfig,
    OciSource,
    numbering,
    parse_nic,
    parse_vnics,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "oci"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE_GOLDEN = os.environ.get("NICR_UPDATE_GOLDEN") == "1"
PRIMARY = "02:00:17:00:00:01"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def document(name: str) -> str:
    return json.dumps(fixture(name)["document"], indent=2)


def vnic(mac: str, n: int, **extra: Any) -> dict[str, Any]:
    """A VNIC spec of the simulator: subnet 10.0.(10+n).0/24, tag 100 + n."""
    spec = {
        "mac": mac,
        "private_ip": f"10.0.{10 + n}.25",
        "subnet_cidr": f"10.0.{10 + n}.0/24",
        "virtual_router_ip": f"10.0.{10 + n}.1",
        "vlan_tag": 100 + n,
    }
    return spec | extra


class TestParseFixtures:
    def test_vm_primary_and_ipv4_secondary(self) -> None:
        data = fixture("vm_secondary_ipv4")
        text = document("vm_secondary_ipv4")
        primary = parse_nic(data["primary"], text)
        assert primary.state is not None
        assert primary.state.primary
        assert not primary.flags
        obs = parse_nic(data["secondary"], text)
        state = obs.state
        assert state is not None
        assert not obs.flags
        assert state.cloud == "oci"
        assert not state.primary
        assert state.device_number is None  # a VM numbers nothing
        assert state.ipv4_addresses == (ip_address("10.0.1.231"),)
        assert state.ipv4_subnet == ip_network("10.0.1.0/24")
        assert state.ipv4_gateway == ip_address("10.0.1.1")
        assert (state.route_table, state.route_metric) == (10000 + 1041, 512 + 1041)
        assert state.interface_id is not None
        assert state.interface_id.startswith("ocid1.vnic.")
        assert obs.probe == {VNICS_PATH: text}

    def test_upper_case_macs_match_any_spelling(self) -> None:
        text = document("vm_secondary_ipv4")
        assert parse_nic("02:00:17:02:2B:B1", text).state is not None
        assert parse_nic("02-00-17-02-2b-b1", text).state is not None

    def test_dual_stack_secondary(self) -> None:
        data = fixture("vm_dual_stack")
        obs = parse_nic(data["secondary"], document("vm_dual_stack"))
        state = obs.state
        assert state is not None
        assert not obs.flags
        assert state.ipv4_addresses == (ip_address("10.0.2.25"),)
        assert state.ipv6_addresses == (ip_address("2603:c020:400d:5dbc::1:25"),)
        assert state.ipv6_subnets == (ip_network("2603:c020:400d:5dbc::/64"),)
        assert state.ipv6_gateway == ip_address("fe80::200:17ff:fe40:8972")
        assert state.route_table == 10931

    def test_ipv6_only_secondary_reads_null_as_no_ipv4(self) -> None:
        data = fixture("vm_dual_stack")
        obs = parse_nic(data["ipv6_only"], document("vm_dual_stack"))
        state = obs.state
        assert state is not None
        assert not obs.flags
        assert state.ipv6_only
        assert state.ipv4_subnet is None
        assert state.ipv4_gateway is None
        assert state.ipv6_gateway == ip_address("fe80::200:17ff:fe40:8972")
        assert state.route_table == 10000 + 2659

    def test_ipv6_subnet_without_address_is_pending(self) -> None:
        data = fixture("vm_ipv6_pending")
        obs = parse_nic(data["secondary"], document("vm_ipv6_pending"))
        assert obs.state is not None  # IPv4 is complete: written after the IPv6 grace
        (flag,) = obs.flags
        assert (flag.kind, flag.grace, flag.keys) == ("ipv6-pending", "ipv6", (VNICS_PATH,))

    def test_bare_metal_numbers_by_nic_index(self) -> None:
        data = fixture("bare_metal")
        text = document("bare_metal")
        primary = parse_nic(data["primary"], text).state
        vlan = parse_nic(data["secondary"], text).state
        assert primary is not None
        assert vlan is not None
        assert (primary.device_number, primary.route_table) == (0, 10000)
        assert (vlan.device_number, vlan.route_table) == (0, 10001)

    def test_a_mac_not_in_the_document_is_not_listed(self) -> None:
        text = document("vm_secondary_ipv4")
        obs = parse_nic("0a:00:00:00:00:99", text)
        assert obs.state is None
        (flag,) = obs.flags
        assert (flag.kind, flag.grace, flag.keys) == ("not-listed", "unlisted", (VNICS_PATH,))
        assert obs.probe == {VNICS_PATH: text}

    def test_missing_ipv4_fields_are_incomplete(self) -> None:
        text = json.dumps([{"macAddr": "02:00:17:00:00:01", "privateIp": "10.0.0.5"}])
        obs = parse_nic("02:00:17:00:00:01", text)
        assert obs.state is None
        (flag,) = obs.flags
        assert flag.kind == "incomplete"
        assert "subnetCidrBlock" in flag.detail
        assert "virtualRouterIp" in flag.detail

    @pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
    def test_every_emitted_flag_kind_is_declared(self, name: str) -> None:
        text = document(name)
        for entry in parse_vnics(text):
            for flag in parse_nic(entry.mac, text).flags:
                assert flag.kind in OciSource.FLAG_KINDS
        for flag in parse_nic("0a:00:00:00:00:99", text).flags:
            assert flag.kind in OciSource.FLAG_KINDS


def entry(**fields: Any) -> str:
    base: dict[str, Any] = {
        "macAddr": "02:00:17:00:00:01",
        "privateIp": "10.0.0.5",
        "subnetCidrBlock": "10.0.0.0/24",
        "virtualRouterIp": "10.0.0.1",
        "vlanTag": 7,
        "vnicId": "ocid1.vnic.oc1.phx.abc",
    }
    base.update(fields)
    return json.dumps([{k: v for k, v in base.items() if v is not ...}])


class TestGarbage:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("<html>502</html>", r"^opc/v2/vnics/: not JSON"),
            ('{"vnics": []}', r"^opc/v2/vnics/: expected a JSON list, got dict"),
            ("[1]", r"^vnics\[0\]: expected a JSON object$"),
            (entry(macAddr=...), r"^vnics\[0\]\.macAddr: missing$"),
            (entry(macAddr="../../etc"), r"^vnics\[0\]\.macAddr: not a MAC"),
            (entry(privateIp=5), r"^vnics\[0\]\.privateIp: expected a string, got int$"),
            (entry(privateIp="10.0.0.300"), r"^vnics\[0\]\.privateIp: invalid entry"),
            (entry(privateIp="10.0.9.5"), r"^vnics\[0\]\.privateIp: 10\.0\.9\.5 not in"),
            (entry(virtualRouterIp="10.9.0.1"), r"^vnics\[0\]\.virtualRouterIp: .* not in"),
            (entry(subnetCidrBlock="10.0.0.5"), r"^vnics\[0\]\.subnetCidrBlock: invalid"),
            (entry(subnetCidrBlock="10.0.0.4/31"), r"^vnics\[0\]\.subnetCidrBlock: /31"),
            (entry(vnicId="ocid1.vnic\u0000x"), r"^vnics\[0\]\.vnicId: control character"),
            (entry(vnicId="eni-123"), r"^vnics\[0\]\.vnicId: not a VNIC OCID"),
            (entry(privateIp="10.0.0.5\n10.0.0.6"), r"^vnics\[0\]\.privateIp: more than one"),
            (entry(vlanTag=True), r"^vnics\[0\]\.vlanTag: not an integer 0\.\.4095"),
            (entry(vlanTag=5000), r"^vnics\[0\]\.vlanTag: not an integer"),
            (entry(nicIndex="0"), r"^vnics\[0\]\.nicIndex: not an integer 0\.\.3"),
            (entry(ipv6Addresses="2001:db8::1"), r"^vnics\[0\]\.ipv6Addresses: expected a list"),
            (entry(ipv6Addresses=["fe80::1%eth0"]), r"^vnics\[0\]\.ipv6Addresses: invalid"),
            (entry(ipv6Addresses=[f"2001:db8::{i:x}" for i in range(33)]), r"33 entries"),
            (entry(ipv6SubnetCidrBlock="2001:db8::/64x"), r"ipv6SubnetCidrBlock: invalid"),
            (entry(ipv6VirtualRouterIp="10.0.0.1"), r"ipv6VirtualRouterIp: invalid"),
            # Found by tests/fuzz: a /0 "subnet" (netplan refuses its addresses) and the
            # unspecified address (networkd reads it as "any free address of its pool").
            (
                entry(subnetCidrBlock="0.0.0.0/0", privateIp="0.0.0.51", virtualRouterIp=...),
                r"^vnics\[0\]\.subnetCidrBlock: invalid entry '0\.0\.0\.0/0': every address$",
            ),
            (
                entry(subnetCidrBlock="0.0.0.0/24", privateIp="0.0.0.0"),
                r"^vnics\[0\]\.privateIp: invalid entry '0\.0\.0\.0': no address$",
            ),
            (entry(ipv6Addresses=["::"]), r"^vnics\[0\]\.ipv6Addresses: invalid entry '::'"),
            (entry(ipv6SubnetCidrBlock="::/0"), r"ipv6SubnetCidrBlock: invalid entry '::/0'"),
            ("[" + ",".join([entry()[1:-1]] * 2) + "]", r"^vnics\[1\]\.macAddr: .* twice$"),
            (json.dumps([{}] * 300), r"^opc/v2/vnics/: 300 VNICs, more than 256$"),
            ("[" + " " * (1024 * 1024) + "]", r"^opc/v2/vnics/: \d+ bytes, more than"),
        ],
    )
    def test_is_a_one_line_metadata_error_naming_the_field(self, text: str, message: str) -> None:
        with pytest.raises(MetadataError, match=message) as caught:
            parse_nic("02:00:17:00:00:01", text)
        assert "\n" not in str(caught.value)

    def test_deep_nesting_anywhere_is_a_metadata_error(self) -> None:
        # Found by tests/fuzz: a RecursionError escaped parse_nic. Every depth around the
        # decoder's limit (wherever the stack stands), at the top and inside a field.
        for depth in range(800, 1100):
            deep = "[" * depth + "]" * depth
            for text in (deep, entry(vlanTag=...)[:-2] + f', "vlanTag": {deep}}}]'):
                try:
                    parse_nic("02:00:17:00:00:01", text)
                except MetadataError:
                    continue
                pytest.fail(f"depth {depth}: accepted")

    def test_garbage_in_another_vnic_fails_the_whole_document(self) -> None:
        good = json.loads(entry())[0]
        text = json.dumps([good, {"macAddr": "02:00:17:00:00:02", "privateIp": []}])
        with pytest.raises(MetadataError, match=r"^vnics\[1\]\.privateIp"):
            parse_nic("02:00:17:00:00:01", text)

    def test_predict_never_raises(self) -> None:
        source = OciSource(OciConfig(), HttpClient())
        assert source.predict(PRIMARY, {VNICS_PATH: "not json"}) is None
        assert source.predict(PRIMARY, {VNICS_PATH: None}) is None
        predicted = source.predict("02:00:17:00:00:01", {VNICS_PATH: entry()})
        assert predicted is not None
        assert predicted.state is not None


class TestNumbering:
    def test_a_vnic_keeps_its_table_when_an_earlier_one_detaches(self) -> None:
        data = fixture("vm_dual_stack")
        text = document("vm_dual_stack")
        before = parse_nic(data["ipv6_only"], text).state
        doc = fixture("vm_dual_stack")["document"]
        del doc[1]  # the dual-stack secondary detaches: the IPv6-only one moves up
        after = parse_nic(data["ipv6_only"], json.dumps(doc)).state
        assert before is not None
        assert after is not None
        assert (before.route_table, before.route_metric) == (after.route_table, after.route_metric)
        assert before == after

    def test_every_table_is_in_the_allowed_range(self) -> None:
        vnics = parse_vnics(json.dumps([json.loads(entry(vlanTag=4095, nicIndex=3))[0]]))
        table, metric = numbering(vnics[0], vnics)
        assert table == 10000 + 3 * 4096 + 4095 <= MAX_TABLE
        assert metric <= 65535

    def test_a_shared_or_missing_tag_falls_back_to_the_position(self) -> None:
        first = json.loads(entry())[0]
        second = json.loads(entry(macAddr="02:00:17:00:00:02"))[0]
        third = json.loads(entry(macAddr="02:00:17:00:00:03", vlanTag=...))[0]
        vnics = parse_vnics(json.dumps([first, second, third]))
        tables = [numbering(v, vnics)[0] for v in vnics]
        assert tables == [10007, 30001, 30002]
        assert all(MIN_TABLE <= t <= MAX_TABLE for t in tables)


class TestConfig:
    def test_defaults_and_a_custom_endpoint(self) -> None:
        assert config_mod.Config().section(OciConfig).endpoint == "http://169.254.169.254"
        config = config_mod.parse({"cloud": "oci", "oci": {"endpoint": "http://127.0.0.1:8/"}})
        assert config.cloud == "oci"
        assert config.section(OciConfig).endpoint == "http://127.0.0.1:8"

    def test_an_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"^oci\.colour: unknown key$"):
            config_mod.parse({"oci": {"colour": "red"}})

    @pytest.mark.parametrize("bad", ["ftp://x", "http://", "http://h/path", 5])
    def test_a_bad_endpoint_is_named(self, bad: object) -> None:
        with pytest.raises(ConfigError, match=r"^oci\.endpoint: "):
            config_mod.parse({"oci": {"endpoint": bad}})

    def test_it_is_registered_and_probed_right_after_ec2(self) -> None:
        assert sources.source_class("oci") is OciSource
        order = sources.AUTO_ORDER
        assert order.index("oci") == order.index("ec2") + 1


def dmi_tree(root: Path, tag: str) -> Path:
    dmi = root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "chassis_asset_tag").write_text(tag)
    return root


class TestDmi:
    def test_the_chassis_asset_tag_names_oci(self, tmp_path: Path) -> None:
        assert OciSource.dmi_says(dmi_tree(tmp_path, "OracleCloud.com\n")) is True

    @pytest.mark.parametrize("tag", ["", "Default string", "OracleCloud.com.evil"])
    def test_anything_else_cannot_tell(self, tmp_path: Path, tag: str) -> None:
        assert OciSource.dmi_says(dmi_tree(tmp_path, tag)) is None

    def test_no_dmi_at_all_cannot_tell(self, tmp_path: Path) -> None:
        assert OciSource.dmi_says(tmp_path) is None

    async def test_auto_selects_oci_by_dmi_without_a_request(self, tmp_path: Path) -> None:
        http = HttpClient.from_polling(10, 0.2)
        try:
            source = await sources.select_source(
                config_mod.Config(), http, sys_root=dmi_tree(tmp_path, "OracleCloud.com\n")
            )
            assert isinstance(source, OciSource)
            assert http.requests_sent == 0
        finally:
            await http.close()


GOLDEN_CASES = {
    "secondary-ipv4": ("vm_secondary_ipv4", "secondary"),
    "secondary-dualstack": ("vm_dual_stack", "secondary"),
}
RENDERERS = {
    "netplan": (NetplanRenderer(), "yaml"),
    "networkd": (NetworkdRenderer(), "network"),
    "networkmanager": (NetworkManagerRenderer(), "nmconnection"),
}


def golden_state(case: str) -> NicState:
    name, role = GOLDEN_CASES[case]
    state = parse_nic(fixture(name)[role], document(name)).state
    assert state is not None
    return state


def golden_path(renderer: str, case: str) -> Path:
    """tests/golden/<renderer>/oci-vnics/<case>.<ext>: a folder of its own, so that the
    renderers' own tests (which own every file directly in their folder) stay unaffected."""
    return GOLDEN / renderer / "oci-vnics" / f"{case}.{RENDERERS[renderer][1]}"


class TestGoldenFiles:
    @pytest.mark.parametrize("renderer", sorted(RENDERERS))
    @pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
    def test_rendering_matches_the_golden_file(self, renderer: str, case: str) -> None:
        state = golden_state(case)
        text = RENDERERS[renderer][0].render(state)
        assert str(state.route_table) in text
        path = golden_path(renderer, case)
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    @pytest.mark.parametrize("renderer", sorted(RENDERERS))
    def test_every_golden_file_has_a_case(self, renderer: str) -> None:
        on_disk = {p.stem for p in (GOLDEN / renderer / "oci-vnics").glob("*")}
        assert on_disk <= set(GOLDEN_CASES)


@pytest.fixture
async def oci_sim() -> AsyncIterator[OciSim]:
    simulator = OciSim(slow_seconds=3.0)
    await simulator.start()
    simulator.add_nic(vnic(PRIMARY, 0))
    yield simulator
    await simulator.stop()


def oci(sim: OciSim, http: HttpClient) -> OciSource:
    return OciSource(OciConfig(endpoint=sim.url), http)


class TestAgainstTheSimulator:
    async def test_n_nics_polling_together_cost_one_request(
        self, oci_sim: OciSim, http: HttpClient
    ) -> None:
        macs = [f"02:00:17:00:01:{n:02x}" for n in range(1, 9)]
        for n, mac in enumerate(macs, 1):
            oci_sim.add_nic(vnic(mac, n))
        source = oci(oci_sim, http)
        oci_sim.reset_stats()
        observations = await asyncio.gather(*(source.fetch(mac) for mac in macs))
        assert oci_sim.requests == 1
        assert [o.state.route_table for o in observations if o.state] == [
            10100 + n for n in range(1, 9)
        ]
        # The next poll asks again: an answer from before it began proves nothing new.
        await source.fetch(macs[0])
        assert oci_sim.requests == 2

    async def test_the_header_is_sent_and_required(self, oci_sim: OciSim, http: HttpClient) -> None:
        source = oci(oci_sim, http)
        obs = await source.fetch(PRIMARY)
        assert obs.state is not None
        assert obs.state.primary
        assert oci_sim.by_status == {200: 1}
        bare = await http.request("GET", f"{oci_sim.url}/{VNICS_PATH}")
        assert bare.status == 401
        v1 = await http.request("GET", f"{oci_sim.url}/opc/v1/vnics/")
        assert v1.status == 404

    async def test_a_refused_header_is_a_fetch_error(
        self, oci_sim: OciSim, http: HttpClient
    ) -> None:
        oci_sim.set_fault("401")
        with pytest.raises(FetchError, match=r"HTTP 401 \(Authorization header refused\?\)"):
            await oci(oci_sim, http).fetch(PRIMARY)

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "slow", "oversize"])
    async def test_a_failing_service_is_a_fetch_error_never_absent(
        self, oci_sim: OciSim, http: HttpClient, mode: str
    ) -> None:
        oci_sim.set_fault(mode)
        source = oci(oci_sim, http)
        with pytest.raises(FetchError):
            await source.fetch(PRIMARY)
        oci_sim.set_fault("none")
        assert (await source.fetch(PRIMARY)).state is not None

    async def test_garbage_is_a_metadata_error(self, oci_sim: OciSim, http: HttpClient) -> None:
        oci_sim.set_raw(VNICS_PATH, '[{"macAddr": "02:00:17:00:00:01", "privateIp": 1}]')
        with pytest.raises(MetadataError, match=r"vnics\[0\]\.privateIp"):
            await oci(oci_sim, http).fetch(PRIMARY)

    async def test_probe_answers_the_document_the_observation_holds(
        self, oci_sim: OciSim, http: HttpClient
    ) -> None:
        source = oci(oci_sim, http)
        obs = await source.fetch("02:00:17:00:01:01")
        assert obs.state is None
        assert await source.probe([VNICS_PATH]) == obs.probe
        oci_sim.add_nic(vnic("02:00:17:00:01:01", 1))
        (answer,) = (await source.probe([VNICS_PATH])).values()
        assert answer != obs.probe[VNICS_PATH]
        predicted = source.predict("02:00:17:00:01:01", {VNICS_PATH: answer})
        assert predicted is not None
        assert predicted.state is not None
        with pytest.raises(ValueError, match="not a metadata probe key"):
            await source.probe(["opc/v2/instance/"])

    async def test_a_late_ipv6_address_shows_up(self, oci_sim: OciSim, http: HttpClient) -> None:
        mac = "02:00:17:00:01:02"
        spec = vnic(mac, 2, ipv6_subnet_cidr="2001:db8:12::/64", ipv6_addresses=[])
        oci_sim.add_nic(spec | {"schedule": {"ipv6Addresses": [[0.3, ["2001:db8:12::10"]]]}})
        source = oci(oci_sim, http)
        first = await source.fetch(mac)
        assert [f.kind for f in first.flags] == ["ipv6-pending"]
        deadline = asyncio.get_running_loop().time() + 5
        while (await source.fetch(mac)).flags:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        state = (await source.fetch(mac)).state
        assert state is not None
        assert [str(a) for a in state.ipv6_addresses] == ["2001:db8:12::10"]

    async def test_detect(self, oci_sim: OciSim, http: HttpClient) -> None:
        assert await oci(oci_sim, http).detect()
        oci_sim.set_fault("401")
        source = oci(oci_sim, http)
        assert not await source.detect()
        assert "401" in source.detect_error

    async def test_the_simulator_serves_the_real_shape(self, oci_sim: OciSim) -> None:
        oci_sim.add_nic(vnic("02:00:17:00:01:03", 3, primary=True))
        served = json.loads(oci_sim.document())
        assert [v["macAddr"] for v in served] == ["02:00:17:00:01:03", PRIMARY.upper()]
        assert set(served[0]) == {
            "macAddr",
            "vnicId",
            "privateIp",
            "subnetCidrBlock",
            "virtualRouterIp",
            "vlanTag",
        }
        plan = {"mac": "0a:00:00:00:01:01", "device_number": 1, "ipv4s": ["10.0.11.20"]}
        spec = OciSim.lab_spec(plan | {"subnet4": "10.0.11.0/24", "gateway4": "10.0.11.1"})
        oci_sim.add_nic(spec)
        state = parse_nic(spec["mac"], oci_sim.document()).state
        assert state is not None
        assert state.route_table == 10101
