"""GCE, the pure side: the parser on captured-shape documents, garbage, the numbering, the
[gce] table, DMI detection, the dynamic NICs' summary, and the renderers' golden files of GCE
states. The source against the simulator (and its long poll): test_gce_source.py."""

from __future__ import annotations

import json
import os
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nicreconciled import config as config_mod
from nicreconciled import sources
from nicreconciled.errors import ConfigError, MetadataError
from nicreconciled.model import MAX_TABLE, MIN_TABLE, NicState
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.render.networkmanager import NetworkManagerRenderer
from nicreconciled.sources.gce import GceConfig, GceSource
from nicreconciled.sources.gce_parse import (
    MAX_NICS,
    NICS_PATH,
    dynamic_nics,
    numbering,
    parse_nic,
    parse_nics,
)
from nicreconciled.sources.http import HttpClient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gce"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE_GOLDEN = os.environ.get("NICR_UPDATE_GOLDEN") == "1"
NIC0 = "42:01:0a:80:00:02"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def document(name: str) -> str:
    """The fixture's document as the server writes it: compact, keys sorted."""
    return json.dumps(fixture(name)["document"], sort_keys=True, separators=(",", ":"))


def state_of(name: str, role: str) -> NicState:
    observation = parse_nic(fixture(name)[role], document(name))
    assert not observation.flags
    assert observation.state is not None
    return observation.state


class TestParseFixtures:
    def test_the_primary_on_the_default_network(self) -> None:
        state = state_of("default_network", "primary")
        assert (state.cloud, state.primary, state.device_number) == ("gce", True, 0)
        assert state.ipv4_addresses == (ip_address("10.128.0.7"),)
        assert state.ipv4_subnet == ip_network("10.128.0.0/20")
        assert state.ipv4_gateway == ip_address("10.128.0.1")
        assert state.mtu == 1460
        assert (state.route_table, state.route_metric) == (10000, 512)
        assert state.interface_id == "nic0"
        assert not state.local_routes

    def test_secondary_nics_are_numbered_by_their_index(self) -> None:
        second, third = state_of("three_nics", "secondary"), state_of("three_nics", "third")
        assert (second.primary, second.device_number, second.route_table) == (False, 1, 10001)
        assert (third.device_number, third.route_table, third.route_metric) == (2, 10002, 514)
        assert second.ipv4_subnet == ip_network("192.168.1.0/24")
        assert second.mtu == third.mtu == 8244

    def test_the_primary_alias_range_is_a_local_route(self) -> None:
        primary = state_of("three_nics", "primary")
        assert primary.local_routes == (ip_network("10.24.3.0/24"),)

    def test_alias_forwarded_and_target_instance_ranges(self) -> None:
        state = state_of("forwarding", "secondary")
        texts = ("10.130.0.16/28", "10.130.0.9/32", "10.130.0.200/32", "34.118.10.7/32")
        ranges = tuple(ip_network(r) for r in texts)
        # Delivered to the instance (local routes) and answered through this NIC (rules).
        assert state.local_routes == ranges
        assert state.ipv4_prefixes == ranges
        assert state.ipv4_addresses == (ip_address("10.130.0.5"),)

    def test_dual_stack_is_a_128_behind_a_link_local_router(self) -> None:
        state = state_of("dual_stack", "secondary")
        assert state.ipv6_addresses == (ip_address("2600:1900:4041:1a8:0:1::"),)
        assert state.ipv6_subnets == ()  # no on-link IPv6 subnet on GCE
        assert state.ipv6_gateway == ip_address("fe80::4001:aff:fe84:1")
        assert state.ipv6_prefixes == (ip_network("2600:1900:4041:1a8:8000::/96"),)
        assert state.local_routes == state.ipv6_prefixes

    def test_an_ipv6_only_nic(self) -> None:
        state = state_of("ipv6_only", "secondary")
        assert state.ipv6_only
        assert state.ipv4_gateway is None
        assert state.ipv6_gateway == ip_address("fe80::4001:aff:fe84:1")

    def test_macs_match_in_any_spelling(self) -> None:
        text = document("three_nics")
        assert parse_nic("42:01:C0:A8:01:02", text).state is not None
        assert parse_nic("42-01-c0-a8-01-02", text).state is not None

    def test_a_mac_not_in_the_document_is_not_listed(self) -> None:
        text = document("three_nics")
        obs = parse_nic("0a:00:00:00:00:99", text)
        assert obs.state is None
        (flag,) = obs.flags
        assert (flag.kind, flag.grace, flag.keys) == ("not-listed", "unlisted", (NICS_PATH,))
        assert obs.probe == {NICS_PATH: text}

    def test_missing_ipv4_fields_are_incomplete(self) -> None:
        text = json.dumps([{"mac": NIC0, "ip": "10.128.0.2", "gateway": "10.128.0.1"}])
        obs = parse_nic(NIC0, text)
        assert obs.state is None
        (flag,) = obs.flags
        assert flag.kind == "incomplete"
        assert "subnetmask" in flag.detail

    def test_the_nics_own_address_as_a_range_is_left_out(self) -> None:
        text = entry(ipAliases=["10.128.0.2/32", "10.128.0.16/28"], forwardedIps=["10.128.0.2"])
        state = parse_nic(NIC0, text).state
        assert state is not None
        assert state.local_routes == state.ipv4_prefixes == (ip_network("10.128.0.16/28"),)

    @pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
    def test_every_emitted_flag_kind_is_declared(self, name: str) -> None:
        if name == "vlans":
            return
        text = document(name)
        for nic in parse_nics(text):
            for flag in parse_nic(nic.mac, text).flags:
                assert flag.kind in GceSource.FLAG_KINDS
        for flag in parse_nic("0a:00:00:00:00:99", text).flags:
            assert flag.kind in GceSource.FLAG_KINDS


def entry(**fields: Any) -> str:
    """A one-NIC document; a field given as ... is left out."""
    base: dict[str, Any] = {
        "mac": NIC0,
        "ip": "10.128.0.2",
        "subnetmask": "255.255.240.0",
        "gateway": "10.128.0.1",
        "mtu": 1460,
        "ipAliases": [],
        "forwardedIps": [],
        "targetInstanceIps": [],
    }
    base.update(fields)
    return json.dumps([{k: v for k, v in base.items() if v is not ...}])


class TestGarbage:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("<html>502</html>", r"^computeMetadata/v1/instance/network-interfaces/: not JSON"),
            ('{"0": {}}', r"network-interfaces/: expected a JSON list, got dict$"),
            ("[1]", r"^network-interfaces\[0\]: expected a JSON object$"),
            (entry(mac=...), r"^network-interfaces\[0\]\.mac: missing$"),
            (entry(mac="../../etc"), r"^network-interfaces\[0\]\.mac: not a MAC"),
            (entry(ip=5), r"^network-interfaces\[0\]\.ip: expected a string, got int$"),
            (entry(ip="10.128.0.300"), r"^network-interfaces\[0\]\.ip: invalid entry"),
            (entry(ip="10.128.0.2\n10.1.1.1"), r"^network-interfaces\[0\]\.ip: more than one"),
            (entry(ip="10.128\x000.2"), r"^network-interfaces\[0\]\.ip: control character"),
            (entry(gateway="10.9.0.1"), r"^network-interfaces\[0\]\.gateway: .* not in"),
            (entry(subnetmask="255.0.255.0"), r"\.subnetmask: not a netmask"),
            (entry(subnetmask="20"), r"\.subnetmask: not a dotted netmask"),
            (entry(subnetmask="255.255.255.255"), r"\.subnetmask: /32 is no subnet"),
            (entry(subnetmask="0.0.0.0"), r"\.subnetmask: /0 is no subnet"),
            (entry(mtu="1460"), r"^network-interfaces\[0\]\.mtu: not an MTU"),
            (entry(mtu=True), r"^network-interfaces\[0\]\.mtu: not an MTU"),
            (entry(mtu=70000), r"^network-interfaces\[0\]\.mtu: not an MTU"),
            (entry(ipAliases="10.0.0.0/24"), r"\.ipAliases: expected a list of strings$"),
            (entry(ipAliases=[1]), r"\.ipAliases: expected a list of strings$"),
            (entry(ipAliases=["10.130.0.17/28"]), r"\.ipAliases: invalid entry '10\.130"),
            (entry(ipAliases=["0.0.0.0/0"]), r"\.ipAliases: invalid entry .*every address"),
            (entry(ipAliases=["10.128.0.0/20"]), r"\.ipAliases: 10\.128\.0\.0/20 holds the"),
            (entry(forwardedIps=["169.254.169.254"]), r"\.forwardedIps: .* not a range a NIC"),
            (entry(forwardedIps=["127.0.0.1"]), r"\.forwardedIps: .* not a range a NIC"),
            (entry(forwardedIps=["0.0.0.0"]), r"\.forwardedIps: invalid entry .*no address"),
            (entry(forwardedIps=["224.0.0.1"]), r"\.forwardedIps: .* not a range a NIC"),
            (entry(forwardedIps=["fe80::1%eth0"]), r"\.forwardedIps: invalid entry"),
            (entry(targetInstanceIps=["x"]), r"\.targetInstanceIps: invalid entry 'x'"),
            (entry(forwardedIpv6s=["::/0"]), r"\.forwardedIpv6s: invalid entry"),
            (entry(ipAliases=[f"10.9.{i}.0/24" for i in range(129)]), r"129 entries, more"),
            (entry(ipv6s="2600:1900::1"), r"\.ipv6s: expected a list of strings$"),
            (entry(ipv6s=["10.0.0.1"]), r"\.ipv6s: invalid entry"),
            (entry(ipv6s=["::"]), r"\.ipv6s: invalid entry '::'"),
            (entry(ipv6s=["::/96"]), r"\.ipv6s: invalid entry .*no address"),
            (entry(ipv6s=[f"2600::{i:x}" for i in range(17)]), r"\.ipv6s: 17 entries"),
            (entry(gatewayIpv6="10.0.0.1"), r"\.gatewayIpv6: invalid entry"),
            ("[" + ",".join([entry()[1:-1]] * 2) + "]", r"^network-interfaces\[1\]\.mac: .*twice$"),
            (json.dumps([{}] * (MAX_NICS + 1)), r"network-interfaces/: 33 NICs, more than 32$"),
            ("[" + " " * (1024 * 1024) + "]", r"network-interfaces/: \d+ bytes, more than"),
        ],
    )
    def test_is_a_one_line_metadata_error_naming_the_field(self, text: str, message: str) -> None:
        with pytest.raises(MetadataError, match=message) as caught:
            parse_nic(NIC0, text)
        assert "\n" not in str(caught.value)

    def test_deep_nesting_anywhere_is_a_metadata_error(self) -> None:
        for depth in range(800, 1100, 7):
            deep = "[" * depth + "]" * depth
            for text in (deep, entry(mtu=...)[:-2] + f', "mtu": {deep}}}]'):
                with pytest.raises(MetadataError):
                    parse_nic(NIC0, text)

    def test_garbage_in_another_nic_fails_the_whole_document(self) -> None:
        good = json.loads(entry())[0]
        text = json.dumps([good, {"mac": "42:01:0a:80:00:03", "ipAliases": ["x"]}])
        with pytest.raises(MetadataError, match=r"^network-interfaces\[1\]\.ipAliases"):
            parse_nic(NIC0, text)

    def test_fields_we_do_not_read_are_not_judged(self) -> None:
        text = entry(dnsServers=[1, {}], network=None, accessConfigs="x", dhcpv6Refresh=7)
        assert parse_nic(NIC0, text).state is not None

    def test_an_ipv6_with_a_length_keeps_the_address(self) -> None:
        state = parse_nic(NIC0, entry(ipv6s=["2600:1900:4000:318:0:7::/96"])).state
        assert state is not None
        assert state.ipv6_addresses == (ip_address("2600:1900:4000:318:0:7::"),)

    def test_predict_never_raises(self) -> None:
        source = GceSource(GceConfig(), HttpClient())
        assert source.predict(NIC0, {NICS_PATH: "not json"}) is None
        assert source.predict(NIC0, {NICS_PATH: None}) is None
        predicted = source.predict(NIC0, {NICS_PATH: entry()})
        assert predicted is not None
        assert predicted.state is not None


class TestNumbering:
    def test_each_index_has_its_own_table_in_the_allowed_range(self) -> None:
        tables = [numbering(i)[0] for i in range(MAX_NICS)]
        assert len(set(tables)) == MAX_NICS
        assert all(MIN_TABLE <= t <= MAX_TABLE for t in tables)
        assert all(numbering(i)[1] > 100 for i in range(MAX_NICS))  # above the DHCP route

    def test_a_nic_keeps_its_state_when_another_nic_changes(self) -> None:
        data = fixture("three_nics")
        before = parse_nic(data["third"], document("three_nics")).state
        doc = data["document"]
        doc[1]["ipAliases"] = ["192.168.1.128/25"]
        doc[1]["mtu"] = 1500
        after = parse_nic(data["third"], json.dumps(doc)).state
        assert before == after


class TestConfig:
    def test_defaults_and_a_custom_endpoint(self) -> None:
        default = config_mod.Config().section(GceConfig)
        assert default.endpoint == "http://metadata.google.internal"
        config = config_mod.parse({"cloud": "gce", "gce": {"endpoint": "http://169.254.169.254/"}})
        assert config.cloud == "gce"
        assert config.section(GceConfig).endpoint == "http://169.254.169.254"

    def test_an_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"^gce\.flavor: unknown key$"):
            config_mod.parse({"gce": {"flavor": "Google"}})

    @pytest.mark.parametrize("bad", ["ftp://x", "http://", "http://h/computeMetadata", 5])
    def test_a_bad_endpoint_is_named(self, bad: object) -> None:
        with pytest.raises(ConfigError, match=r"^gce\.endpoint: "):
            config_mod.parse({"gce": {"endpoint": bad}})

    def test_it_is_registered_long_polls_and_is_probed_once(self) -> None:
        assert sources.source_class("gce") is GceSource
        assert sources.AUTO_ORDER.count("gce") == 1
        assert GceSource.ONE_ANSWER
        assert GceSource.LONG_POLL


def dmi_tree(root: Path, **fields: str) -> Path:
    dmi = root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    for name, value in fields.items():
        (dmi / name).write_text(value)
    return root


class TestDmi:
    @pytest.mark.parametrize(
        "fields",
        [
            {"product_name": "Google Compute Engine\n", "sys_vendor": "Google\n"},
            {"product_name": "Google\n"},
            {"product_name": "", "product_serial": "GoogleCloud-0123456789ABCDEF\n"},
        ],
    )
    def test_product_name_or_serial_names_gce(self, tmp_path: Path, fields: dict[str, str]) -> None:
        assert GceSource.dmi_says(dmi_tree(tmp_path, **fields)) is True

    @pytest.mark.parametrize(
        "fields",
        [
            {"sys_vendor": "Google\n", "bios_vendor": "Google\n", "product_name": "Eve\n"},
            {"product_name": "Google Compute Engine 2\n"},
            {"product_serial": "Google-0123\n"},
            {},
        ],
    )
    def test_anything_else_cannot_tell(self, tmp_path: Path, fields: dict[str, str]) -> None:
        assert GceSource.dmi_says(dmi_tree(tmp_path, **fields)) is None

    async def test_auto_selects_gce_by_dmi_without_a_request(self, tmp_path: Path) -> None:
        http = HttpClient.from_polling(10, 0.2)
        try:
            root = dmi_tree(tmp_path, product_name="Google Compute Engine\n")
            source = await sources.select_source(config_mod.Config(), http, sys_root=root)
            assert isinstance(source, GceSource)
            assert http.requests_sent == 0
        finally:
            await http.close()


class TestDynamicNics:
    def test_each_dynamic_nic_is_one_line(self) -> None:
        text = json.dumps(fixture("vlans")["document"])
        assert dynamic_nics(text) == ("nic0.10 42:01:0a:00:00:05", "nic0.33 42:01:0a:00:21:05")

    @pytest.mark.parametrize("text", ["{}", "", "  "])
    def test_none(self, text: str) -> None:
        assert dynamic_nics(text) == ()

    @pytest.mark.parametrize("text", ["[1]", "<html>", '{"0": 5}', '{"0": {"1": 7}}'])
    def test_anything_else_is_one_line_never_an_error(self, text: str) -> None:
        (line,) = dynamic_nics(text)
        assert "\n" not in line


GOLDEN_CASES = {
    "secondary": ("three_nics", "secondary"),
    "secondary-forwarding": ("forwarding", "secondary"),
    "secondary-dualstack": ("dual_stack", "secondary"),
}
RENDERERS = {
    "netplan": (NetplanRenderer(), "yaml"),
    "networkd": (NetworkdRenderer(), "network"),
    "networkmanager": (NetworkManagerRenderer(), "nmconnection"),
}


def golden_state(case: str) -> NicState:
    return state_of(*GOLDEN_CASES[case])


def golden_path(renderer: str, case: str) -> Path:
    """tests/golden/<renderer>/gce-nics/<case>.<ext>: a folder of its own (the renderers' own
    tests own every file directly in their folder)."""
    return GOLDEN / renderer / "gce-nics" / f"{case}.{RENDERERS[renderer][1]}"


class TestGoldenFiles:
    @pytest.mark.parametrize("renderer", sorted(RENDERERS))
    @pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
    def test_rendering_matches_the_golden_file(self, renderer: str, case: str) -> None:
        state = golden_state(case)
        text = RENDERERS[renderer][0].render(state)
        assert str(state.route_table) in text
        assert "1460" in text or "8244" in text  # the metadata's MTU
        path = golden_path(renderer, case)
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    @pytest.mark.parametrize("renderer", sorted(RENDERERS))
    def test_every_golden_file_has_a_case(self, renderer: str) -> None:
        on_disk = {p.stem for p in (GOLDEN / renderer / "gce-nics").glob("*")}
        assert on_disk <= set(GOLDEN_CASES)
