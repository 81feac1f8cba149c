"""Azure: the pure parser on captured-shape answers, garbage, the numbering, the [azure] table,
DMI detection and the registry. The source against the simulator: test_azure_source.py."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nicreconciled import config as config_mod
from nicreconciled import sources
from nicreconciled.errors import ConfigError, MetadataError
from nicreconciled.model import MAX_TABLE, MIN_TABLE
from nicreconciled.sim import SIMULATORS, simulator_class
from nicreconciled.sim.azure import AzureSim
from nicreconciled.sources.azure import CHASSIS_ASSET_TAG, AzureConfig, AzureSource
from nicreconciled.sources.azure_parse import (
    NETWORK_PATH,
    build_observation,
    numbering,
    parse_document,
    parse_nic,
)
from nicreconciled.sources.http import HttpClient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
PRIMARY = "00:0d:3a:04:75:98"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def document(name: str) -> str:
    return json.dumps(fixture(name)["document"], indent=2)


class TestParseFixtures:
    def test_two_nics_with_a_secondary_ip_configuration(self) -> None:
        data, text = fixture("two_nics_secondary_ip"), document("two_nics_secondary_ip")
        primary = parse_nic(data["primary"], text)
        assert primary.state is not None
        assert primary.state.primary
        assert (primary.state.device_number, primary.state.route_table) == (0, 10000)
        assert not primary.flags
        obs = parse_nic(data["secondary"], text, number=3)
        state = obs.state
        assert state is not None
        assert not obs.flags
        assert state.cloud == "azure"
        assert not state.primary
        assert state.device_number == 3
        assert (state.route_table, state.route_metric) == (10003, 515)
        # The primary IP configuration first (DHCP's), the secondary one static after it.
        assert state.ipv4_addresses == (ip_address("10.0.1.5"), ip_address("10.0.1.6"))
        assert state.ipv4_subnet == ip_network("10.0.1.0/24")
        assert state.ipv4_gateway == ip_address("10.0.1.1")  # the subnet's first address + 1
        assert state.ipv6_addresses == ()
        assert state.ipv6_gateway is None
        assert state.mtu is None
        assert obs.probe == {NETWORK_PATH: text}

    def test_the_docs_sample_ipv6_without_a_subnet_is_its_64(self) -> None:
        data, text = fixture("dual_stack_docs_sample"), document("dual_stack_docs_sample")
        state = parse_nic(data["secondary"], text).state
        assert state is not None
        assert state.ipv4_subnet == ip_network("10.144.133.192/26")
        assert state.ipv4_gateway == ip_address("10.144.133.193")
        assert state.ipv6_addresses == (ip_address("b4bc:8fce:f33b:4991::c4"),)
        assert state.ipv6_subnets == (ip_network("b4bc:8fce:f33b:4991::/64"),)
        # No IPv6 router in the metadata: the router advertisement gives it (table T).
        assert state.ipv6_gateway is None

    def test_ipv6_subnet_and_secondaries_of_both_families(self) -> None:
        data, text = fixture("ipv6_subnet_secondaries"), document("ipv6_subnet_secondaries")
        state = parse_nic(data["secondary"], text).state
        assert state is not None
        assert [str(a) for a in state.ipv4_addresses] == ["10.0.2.4", "10.0.2.5", "10.0.2.6"]
        assert [str(a) for a in state.ipv6_addresses] == [
            "2001:db8:dead:beef::1",
            "2001:db8:dead:beef::2",
        ]
        assert state.ipv6_subnets == (ip_network("2001:db8:dead:beef::/64"),)

    def test_a_nic_without_an_ip_configuration_is_incomplete(self) -> None:
        data, text = fixture("secondary_no_ip"), document("secondary_no_ip")
        obs = parse_nic(data["secondary"], text)
        assert obs.state is None
        (flag,) = obs.flags
        assert (flag.kind, flag.keys) == ("incomplete", (NETWORK_PATH,))
        assert "ipv4.ipAddress" in flag.detail

    def test_macs_match_in_any_spelling(self) -> None:
        text = document("two_nics_secondary_ip")
        for spelling in ("22:0D:3A:04:75:98", "22-0d-3a-04-75-98"):
            assert parse_nic(spelling, text).state is not None

    def test_a_mac_not_in_the_document_is_not_listed(self) -> None:
        text = document("two_nics_secondary_ip")
        obs = parse_nic("0a:00:00:00:00:99", text)
        assert obs.state is None
        (flag,) = obs.flags
        assert (flag.kind, flag.grace, flag.keys) == ("not-listed", "unlisted", (NETWORK_PATH,))

    def test_the_primary_is_whichever_nic_the_source_names(self) -> None:
        # IMDS does not promise the order: the source names the primary (kernel routes).
        data, text = fixture("two_nics_secondary_ip"), document("two_nics_secondary_ip")
        doc = parse_document(text)
        first = build_observation(data["primary"], doc, text, data["secondary"], 1).state
        second = build_observation(data["secondary"], doc, text, data["secondary"], 0).state
        assert first is not None
        assert second is not None
        assert (first.primary, second.primary) == (False, True)

    @pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
    def test_every_emitted_flag_kind_is_declared(self, name: str) -> None:
        text = document(name)
        for interface in parse_document(text).interfaces:
            for flag in parse_nic(interface.mac, text).flags:
                assert flag.kind in AzureSource.FLAG_KINDS
        for flag in parse_nic("0a:00:00:00:00:99", text).flags:
            assert flag.kind in AzureSource.FLAG_KINDS


def nic(**fields: Any) -> dict[str, Any]:
    """One interface entry; a field set to ... is left out."""
    base: dict[str, Any] = {
        "macAddress": "000D3A047598",
        "ipv4": {
            "ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}],
            "subnet": [{"address": "10.0.0.0", "prefix": "24"}],
        },
        "ipv6": {"ipAddress": []},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def ipv4(ips: list[Any] | None = None, subnets: list[Any] | None = None) -> dict[str, Any]:
    return {
        "ipAddress": ips if ips is not None else [{"privateIpAddress": "10.0.0.4"}],
        "subnet": subnets if subnets is not None else [{"address": "10.0.0.0", "prefix": "24"}],
    }


def doc(*interfaces: Any) -> str:
    return json.dumps({"interface": list(interfaces)})


class TestGarbage:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("<html>502</html>", r"^metadata/instance/network: not JSON"),
            ("[]", r"^metadata/instance/network: expected a JSON dict, got list$"),
            ("{}", r"^interface: missing$"),
            ('{"interface": {}}', r"^interface: expected a JSON list, got dict$"),
            (doc(1), r"^interface\[0\]: expected a JSON object, got int$"),
            (doc(nic(macAddress=...)), r"^interface\[0\]\.macAddress: missing$"),
            (doc(nic(macAddress="../../etc")), r"^interface\[0\]\.macAddress: not a MAC"),
            (doc(nic(macAddress=7)), r"^interface\[0\]\.macAddress: expected a string, got int"),
            (doc(nic(ipv4=[])), r"^interface\[0\]\.ipv4: expected a JSON object, got list$"),
            (
                doc(nic(ipv4={"ipAddress": "10.0.0.4"})),
                r"^interface\[0\]\.ipv4\.ipAddress: expected a JSON list, got str$",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "10.0.0.300"}]))),
                r"^interface\[0\]\.ipv4\.ipAddress\[0\]\.privateIpAddress: invalid entry",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": 167772164}]))),
                r"^interface\[0\]\.ipv4\.ipAddress\[0\]\.privateIpAddress: expected a string",
            ),
            (
                doc(nic(ipv4=ipv4([{"publicIpAddress": "1.2.3.4"}]))),
                r"^interface\[0\]\.ipv4\.ipAddress\[0\]\.privateIpAddress: missing$",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "10.0.0.4", "publicIpAddress": "x"}]))),
                r"^interface\[0\]\.ipv4\.ipAddress\[0\]\.publicIpAddress: invalid entry 'x'$",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "10.9.0.4"}]))),
                r"^interface\[0\]\.ipv4\.ipAddress\[0\]\.privateIpAddress: 10\.9\.0\.4 in no",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "10.0.0.4\n10.0.0.5"}]))),
                r"privateIpAddress: more than one line$",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "10.0.0.4\u0000"}]))),
                r"privateIpAddress: control character",
            ),
            (
                doc(nic(ipv4=ipv4(subnets=[{"address": "10.0.0.0", "prefix": 24}]))),
                r"^interface\[0\]\.ipv4\.subnet\[0\]\.prefix: expected a string, got int$",
            ),
            (
                doc(nic(ipv4=ipv4(subnets=[{"address": "10.0.0.0", "prefix": "24a"}]))),
                r"^interface\[0\]\.ipv4\.subnet\[0\]\.prefix: not a prefix length: '24a'$",
            ),
            (
                doc(nic(ipv4=ipv4(subnets=[{"address": "10.0.0.5", "prefix": "24"}]))),
                r"^interface\[0\]\.ipv4\.subnet\[0\]\.address: invalid entry '10\.0\.0\.5/24'$",
            ),
            (
                doc(nic(ipv4=ipv4(subnets=[{"address": "10.0.0.4", "prefix": "30"}]))),
                r"^interface\[0\]\.ipv4\.subnet\[0\]\.prefix: /30, longer than /29$",
            ),
            (
                doc(nic(ipv4=ipv4(subnets=[{"address": "0.0.0.0", "prefix": "0"}]))),
                r"^interface\[0\]\.ipv4\.subnet\[0\]\.address: invalid entry .*every address$",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "0.0.0.0"}]))),
                r"privateIpAddress: invalid entry '0\.0\.0\.0': no address$",
            ),
            (
                doc(nic(ipv6={"ipAddress": [{"privateIpAddress": "fe80::1%eth0"}]})),
                r"^interface\[0\]\.ipv6\.ipAddress\[0\]\.privateIpAddress: invalid entry",
            ),
            (
                doc(nic(ipv6={"ipAddress": [{"privateIpAddress": "10.0.0.9"}]})),
                r"^interface\[0\]\.ipv6\.ipAddress\[0\]\.privateIpAddress: invalid entry",
            ),
            (
                doc(
                    nic(
                        ipv6={
                            "ipAddress": [{"privateIpAddress": "2001:db8:1::5"}],
                            "subnet": [{"address": "2001:db8:2::", "prefix": "64"}],
                        }
                    )
                ),
                r"^interface\[0\]\.ipv6\.ipAddress\[0\]\.privateIpAddress: .* in no listed",
            ),
            (
                doc(nic(ipv4=ipv4([{"privateIpAddress": "10.0.0.4"}] * 300))),
                r"^interface\[0\]\.ipv4\.ipAddress: 300 entries, more than 256$",
            ),
            (doc(nic(), nic()), r"^interface\[1\]\.macAddress: 00:0d:3a:04:75:98 listed twice$"),
            (doc(*[{}] * 70), r"^interface: 70 entries, more than 64$"),
            ('{"interface": [' + " " * (1024 * 1024) + "]}", r"^metadata/instance/network: \d+"),
        ],
    )
    def test_is_a_one_line_metadata_error_naming_the_field(self, text: str, message: str) -> None:
        with pytest.raises(MetadataError, match=message) as caught:
            parse_nic(PRIMARY, text)
        assert "\n" not in str(caught.value)

    def test_garbage_in_another_nic_fails_the_whole_document(self) -> None:
        bad = nic(macAddress="220D3A047598", ipv4=ipv4([{"privateIpAddress": []}]))
        with pytest.raises(MetadataError, match=r"^interface\[1\]\.ipv4\.ipAddress\[0\]"):
            parse_nic(PRIMARY, doc(nic(), bad))

    def test_deep_nesting_is_a_metadata_error(self) -> None:
        for depth in (900, 1000, 5000):
            deep = "[" * depth + "]" * depth
            for text in (deep, doc(nic(ipv6="@")).replace('"@"', deep)):
                with pytest.raises(MetadataError):
                    parse_nic(PRIMARY, text)

    def test_empty_values_are_what_imds_writes_for_nothing(self) -> None:
        # "missing or inapplicable values are always included but ... an empty string"
        entry = nic(
            ipv4=ipv4(
                subnets=[{"address": "", "prefix": ""}, {"address": "10.0.0.0", "prefix": "24"}]
            )
        )
        state = parse_nic(PRIMARY, doc(entry)).state
        assert state is not None
        assert state.ipv4_subnet == ip_network("10.0.0.0/24")

    def test_predict_never_raises(self) -> None:
        source = AzureSource(AzureConfig(), HttpClient())
        assert source.predict(PRIMARY, {NETWORK_PATH: "not json"}) is None
        assert source.predict(PRIMARY, {NETWORK_PATH: None}) is None
        predicted = source.predict(PRIMARY, {NETWORK_PATH: doc(nic())})
        assert predicted is not None
        assert predicted.state is not None


class TestNumbering:
    def test_tables_and_metrics_of_every_number_are_in_range_and_distinct(self) -> None:
        tables = {numbering(n)[0] for n in range(100)}
        assert len(tables) == 100
        assert all(MIN_TABLE <= t <= MAX_TABLE for t in tables)
        assert numbering(0) == (10000, 512)
        assert numbering(99) == (10099, 611)

    def test_the_metric_stays_above_the_primarys_dhcp_route(self) -> None:
        # cloud-init and NetworkManager give the primary 100.
        assert all(numbering(n)[1] > 100 for n in range(1, 100))

    def test_a_secondary_keeps_its_number_when_the_document_reorders(self) -> None:
        # IMDS does not promise the order: the number comes from the NIC, not the position.
        data = fixture("two_nics_secondary_ip")
        text = document("two_nics_secondary_ip")
        swapped = dict(data["document"])
        swapped["interface"] = list(reversed(swapped["interface"]))
        text2 = json.dumps(swapped)
        before = parse_nic(data["secondary"], text, primary_mac=data["primary"], number=4)
        after = parse_nic(data["secondary"], text2, primary_mac=data["primary"], number=4)
        assert before.state == after.state


class TestConfig:
    def test_defaults_and_a_custom_endpoint(self) -> None:
        assert config_mod.Config().section(AzureConfig).endpoint == "http://169.254.169.254"
        config = config_mod.parse({"cloud": "azure", "azure": {"endpoint": "http://127.0.0.1:8/"}})
        assert config.cloud == "azure"
        assert config.section(AzureConfig).endpoint == "http://127.0.0.1:8"

    def test_an_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"^azure\.colour: unknown key$"):
            config_mod.parse({"azure": {"colour": "blue"}})

    @pytest.mark.parametrize("bad", ["ftp://x", "http://", "http://h/path", 5])
    def test_a_bad_endpoint_is_named(self, bad: object) -> None:
        with pytest.raises(ConfigError, match=r"^azure\.endpoint: "):
            config_mod.parse({"azure": {"endpoint": bad}})

    def test_it_is_registered_with_its_simulator_and_probed_after_oci(self) -> None:
        assert sources.source_class("azure") is AzureSource
        assert simulator_class("azure") is AzureSim
        assert "azure" in SIMULATORS
        order = sources.AUTO_ORDER
        assert order.index("azure") == order.index("oci") + 1


def dmi_tree(root: Path, tag: str) -> Path:
    dmi = root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "chassis_asset_tag").write_text(tag)
    return root


class TestDmi:
    def test_the_chassis_asset_tag_names_azure(self, tmp_path: Path) -> None:
        assert AzureSource.dmi_says(dmi_tree(tmp_path, CHASSIS_ASSET_TAG + "\n")) is True

    @pytest.mark.parametrize(
        "tag", ["", "7783-7084-3265-9085-8269-3286-7", "OracleCloud.com", "Default string"]
    )
    def test_anything_else_cannot_tell(self, tmp_path: Path, tag: str) -> None:
        assert AzureSource.dmi_says(dmi_tree(tmp_path, tag)) is None

    def test_no_dmi_at_all_cannot_tell(self, tmp_path: Path) -> None:
        assert AzureSource.dmi_says(tmp_path) is None

    async def test_auto_selects_azure_by_dmi_without_a_request(self, tmp_path: Path) -> None:
        http = HttpClient.from_polling(10, 0.2)
        try:
            source = await sources.select_source(
                config_mod.Config(), http, sys_root=dmi_tree(tmp_path, CHASSIS_ASSET_TAG)
            )
            assert isinstance(source, AzureSource)
            assert http.requests_sent == 0
        finally:
            await http.close()
