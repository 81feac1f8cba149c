"""Alibaba Cloud: the pure parser on captured-shape answers (``tests/fixtures/aliyun``), its
two list shapes, garbage, the MAC-derived table numbering, the ``[aliyun]`` table and DMI
detection. The source against the simulator: ``test_aliyun_source.py``."""

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
from nicreconciled.sources.aliyun import AliyunConfig, AliyunSource
from nicreconciled.sources.aliyun_parse import (
    FLAG_KINDS,
    MACS_DIR,
    TABLE_BASE,
    TABLE_SPAN,
    home_table,
    key_path,
    numbering,
    parse_list,
    parse_mac_listing,
    parse_nic,
)
from nicreconciled.sources.http import HttpClient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aliyun"
PRIMARY = "00:16:3e:14:59:58"
SECOND = "00:16:3e:39:43:27"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def parsed(name: str, **answers: str | None) -> Any:
    data = fixture(name)
    raw = {**data["answers"], **{k.replace("_", "-"): v for k, v in answers.items()}}
    return parse_nic(data["mac"], data["listing"], raw, data["primary_mac"])


class TestParseFixtures:
    def test_the_primary_eni(self) -> None:
        obs = parsed("primary")
        state = obs.state
        assert state is not None
        assert not obs.flags
        assert state.primary
        assert state.cloud == "aliyun"
        assert state.device_number is None  # the metadata numbers no ENI
        assert state.ipv4_addresses == (ip_address("172.16.101.222"),)
        assert state.ipv4_subnet == ip_network("172.16.101.0/24")
        # The vSwitch's router as the metadata names it, not the subnet's first address.
        assert state.ipv4_gateway == ip_address("172.16.101.253")
        assert state.interface_id == "eni-bp13i3ed90icgdgaxxxx"
        assert not state.ipv6_addresses
        assert state.ipv6_gateway is None

    def test_a_dual_stack_secondary_with_its_primary_ip_first(self) -> None:
        obs = parsed("secondary_dual_stack")
        state = obs.state
        assert state is not None
        assert not obs.flags
        assert not state.primary
        # private-ipv4s lists the primary private IP second: primary-ip-address goes first.
        assert [str(a) for a in state.ipv4_addresses] == ["192.168.1.10", "192.168.1.11"]
        assert [str(a) for a in state.ipv6_addresses] == [
            "2408:4005:325:a204:1875:217f:184a:e4e",
            "2408:4005:325:a204:1875:217f:184a:e4f",
        ]
        assert state.ipv6_subnets == (ip_network("2408:4005:325:a204::/64"),)
        assert state.ipv6_gateway == ip_address("2408:4005:325:a204:ffff:ffff:ffff:fff7")
        assert (state.route_table, state.route_metric) == numbering(SECOND, [PRIMARY, SECOND])

    def test_a_vswitch_with_ipv6_and_an_eni_without_is_pending(self) -> None:
        obs = parsed("secondary_ipv6_pending")
        assert obs.state is not None  # IPv4 complete: written after the IPv6 grace
        assert obs.state.ipv6_gateway is None  # no IPv6 address, no IPv6 default route
        (flag,) = obs.flags
        path = key_path(SECOND, "ipv6s")
        assert (flag.kind, flag.grace, flag.keys) == ("ipv6-pending", "ipv6", (path,))
        assert obs.probe == {path: None}

    def test_missing_ipv4_keys_are_incomplete_and_watched_by_key(self) -> None:
        obs = parsed("secondary_incomplete")
        assert obs.state is None
        (flag,) = obs.flags
        assert flag.kind == "incomplete"
        assert flag.detail == "metadata incomplete: missing private-ipv4s, gateway"
        paths = (key_path(SECOND, "private-ipv4s"), key_path(SECOND, "gateway"))
        assert flag.keys == paths
        assert obs.probe == dict.fromkeys(paths)

    def test_nothing_answering_watches_the_listing_too(self) -> None:
        data = fixture("secondary_nothing_yet")
        obs = parsed("secondary_nothing_yet")
        assert obs.state is None
        (flag,) = obs.flags
        assert flag.keys[0] == MACS_DIR
        assert obs.probe[MACS_DIR] == data["listing"]

    def test_ipv6_addresses_without_their_vswitch_block_are_incomplete(self) -> None:
        obs = parsed("secondary_dual_stack", vswitch_ipv6_cidr_block=None)
        assert obs.state is not None
        (flag,) = obs.flags
        assert flag.kind == "incomplete"
        assert flag.keys == (key_path(SECOND, "vswitch-ipv6-cidr-block"),)

    def test_every_emitted_flag_kind_is_declared(self) -> None:
        for path in FIXTURES.glob("*.json"):
            data = fixture(path.stem)
            obs = parse_nic(data["mac"], data["listing"], data["answers"], data["primary_mac"])
            for flag in obs.flags:
                assert flag.kind in AliyunSource.FLAG_KINDS == FLAG_KINDS


class TestLists:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('["192.168.1.10","192.168.1.11"]', ["192.168.1.10", "192.168.1.11"]),
            ('[ "192.168.1.10" , "192.168.1.11" ]', ["192.168.1.10", "192.168.1.11"]),
            ("[192.168.1.10,192.168.1.11]", ["192.168.1.10", "192.168.1.11"]),
            ('["192.168.1.10"]\n', ["192.168.1.10"]),
            ("[]", []),
            ("[ ]", []),
            ('["192.168.1.10","192.168.1.10"]', ["192.168.1.10"]),
        ],
    )
    def test_either_shape_of_either_list(self, text: str, expected: list[str]) -> None:
        got = parse_list("private-ipv4s", text, type(ip_address("10.0.0.1")), 256)
        assert [str(a) for a in got] == expected

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("192.168.1.10", r"^private-ipv4s: not a bracketed list: '192\.168\.1\.10'$"),
            ('"192.168.1.10"', r"not a bracketed list"),
            ('{"a": 1}', r"not a bracketed list"),
            ('["192.168.1.10",]', r"^private-ipv4s: empty entry in"),
            ('[""]', r"empty entry"),
            ('["192.168.1.300"]', r"^private-ipv4s: invalid entry '192\.168\.1\.300'$"),
            ("[192.168.1.10 192.168.1.11]", r"invalid entry"),
            ('[["192.168.1.10"]]', r"invalid entry"),
            ('["0.0.0.0"]', r"no address"),
            ("[10.0.0.1]\n[10.0.0.2]", r"^private-ipv4s: more than one line$"),
            ("[" + ",".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)) + "]", "300"),
        ],
    )
    def test_anything_else_is_a_one_line_error(self, text: str, message: str) -> None:
        with pytest.raises(MetadataError, match=message) as caught:
            parse_list("private-ipv4s", text, type(ip_address("10.0.0.1")), 256)
        assert "\n" not in str(caught.value)


class TestGarbage:
    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("network-interface-id", "eni-bp1\x00x", r"^network-interface-id: control character"),
            ("network-interface-id", "i-bp13i2xxxx", r"^network-interface-id: not an ENI id"),
            ("network-interface-id", "eni-a\neni-b", r"^network-interface-id: more than one"),
            ("primary-ip-address", "192.168.1.300", r"^primary-ip-address: invalid entry"),
            ("primary-ip-address", "192.168.9.10", r"^primary-ip-address: .* not in vswitch"),
            ("primary-ip-address", "", r"^primary-ip-address: empty value$"),
            ("private-ipv4s", "192.168.1.10", r"^private-ipv4s: not a bracketed list"),
            ("private-ipv4s", "[]", r"^private-ipv4s: empty list"),
            ("private-ipv4s", '["192.168.9.11"]', r"^private-ipv4s: 192\.168\.9\.11 not in"),
            ("vswitch-cidr-block", "192.168.1.0", r"^vswitch-cidr-block: invalid entry"),
            ("vswitch-cidr-block", "192.168.1.8/31", r"^vswitch-cidr-block: /31 has no room"),
            ("vswitch-cidr-block", "0.0.0.0/0", r"^vswitch-cidr-block: .* every address$"),
            ("gateway", "192.168.2.253", r"^gateway: 192\.168\.2\.253 not in vswitch"),
            ("gateway", "fe80::1", r"^gateway: invalid entry"),
            ("ipv6s", "2408:4005::1", r"^ipv6s: not a bracketed list"),
            ("ipv6s", "[fe80::1%eth0]", r"^ipv6s: invalid entry"),
            ("ipv6s", '["::"]', r"^ipv6s: invalid entry '::': no address$"),
            ("vswitch-ipv6-cidr-block", "2408:4005::/64x", r"^vswitch-ipv6-cidr-block: invalid"),
            ("ipv6-gateway", "192.168.1.253", r"^ipv6-gateway: invalid entry"),
        ],
    )
    def test_is_a_one_line_metadata_error_naming_the_key(
        self, key: str, value: str, message: str
    ) -> None:
        data = fixture("secondary_dual_stack")
        raw = {**data["answers"], key: value}
        with pytest.raises(MetadataError, match=message) as caught:
            parse_nic(data["mac"], data["listing"], raw, data["primary_mac"])
        assert "\n" not in str(caught.value)

    def test_an_absurd_listing_is_an_error_and_hostile_entries_are_dropped(self) -> None:
        macs, rejected = parse_mac_listing("00:16:3e:14:59:58/\n../../etc/\nlatest\n")
        assert macs == {PRIMARY}
        assert rejected == ("../../etc/", "latest")
        with pytest.raises(MetadataError, match=r"^meta-data/network/interfaces/macs/: 300"):
            parse_mac_listing(
                "\n".join(f"00:16:3e:00:{i // 256:02x}:{i % 256:02x}/" for i in range(300))
            )
        with pytest.raises(MetadataError, match="control character"):
            parse_mac_listing("00:16:3e:14:59:58/\x1b[2J")


class TestNumbering:
    def test_the_home_table_is_the_macs_low_bits(self) -> None:
        assert home_table("00:16:3e:00:00:01") == TABLE_BASE + 1
        assert home_table("00:16:3e:39:43:27") == TABLE_BASE + 0x394327 % TABLE_SPAN
        # Only the part after the OUI counts.
        assert home_table("02:00:00:39:43:27") == home_table("00:16:3e:39:43:27")

    def test_a_table_does_not_move_when_another_eni_attaches_or_detaches(self) -> None:
        macs = [f"00:16:3e:0a:{i:02x}:{i * 7 % 256:02x}" for i in range(1, 9)]
        full = {mac: numbering(mac, macs) for mac in macs}
        assert len({table for table, _ in full.values()}) == len(macs)
        for gone in macs:
            rest = [m for m in macs if m != gone]
            for mac in rest:
                assert numbering(mac, rest) == full[mac], (gone, mac)

    def test_two_macs_sharing_a_home_are_told_apart_the_lower_one_keeps_it(self) -> None:
        low, high = (
            "00:16:3e:00:00:05",
            f"00:16:3e:00:{(5 + TABLE_SPAN) >> 8:02x}:{(5 + TABLE_SPAN) & 0xFF:02x}",
        )
        assert home_table(low) == home_table(high) == TABLE_BASE + 5
        # The next table up is a third MAC's home: the displaced one skips it.
        third = "00:16:3e:00:00:06"
        listed = [low, high, third]
        assert numbering(low, listed)[0] == TABLE_BASE + 5
        assert numbering(third, listed)[0] == TABLE_BASE + 6
        assert numbering(high, listed)[0] == TABLE_BASE + 7
        # The order of the listing does not matter; alone, the higher MAC goes home.
        assert numbering(high, list(reversed(listed))) == numbering(high, listed)
        assert numbering(high, [high, third])[0] == TABLE_BASE + 5

    def test_the_range_wraps_and_stays_allowed(self) -> None:
        top = TABLE_SPAN - 1
        a = f"00:16:3e:00:{top >> 8:02x}:{top & 0xFF:02x}"
        b = f"00:16:3e:00:{(top + TABLE_SPAN) >> 8:02x}:{(top + TABLE_SPAN) & 0xFF:02x}"
        assert numbering(a, [a, b])[0] == TABLE_BASE + top
        assert numbering(b, [a, b])[0] == TABLE_BASE  # wrapped to the bottom
        for mac in (a, b, "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"):
            table, metric = numbering(mac, [a, b])
            assert MIN_TABLE <= table <= MAX_TABLE
            assert table < 30200  # clear of nm-cloud-setup's tables
            assert 512 <= metric <= 65535

    def test_the_metric_is_above_the_primarys_dhcp_route(self) -> None:
        assert numbering("00:16:3e:00:00:00", [])[1] == 512


class TestConfig:
    def test_defaults_and_a_custom_endpoint(self) -> None:
        section = config_mod.Config().section(AliyunConfig)
        assert (section.endpoint, section.token_ttl) == ("http://100.100.100.200", 21600)
        config = config_mod.parse(
            {"cloud": "aliyun", "aliyun": {"endpoint": "http://127.0.0.1:8/", "token_ttl": 60}}
        )
        assert config.cloud == "aliyun"
        assert config.section(AliyunConfig) == AliyunConfig(
            endpoint="http://127.0.0.1:8", token_ttl=60
        )

    @pytest.mark.parametrize(
        ("table", "message"),
        [
            ({"colour": "red"}, r"^aliyun\.colour: unknown key$"),
            ({"endpoint": "ftp://x"}, r"^aliyun\.endpoint: "),
            ({"token_ttl": 21601}, r"^aliyun\.token_ttl: "),
            ({"token_ttl": 1}, r"^aliyun\.token_ttl: "),
            ({"token_ttl": "60"}, r"^aliyun\.token_ttl: "),
        ],
    )
    def test_a_bad_key_is_named(self, table: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            config_mod.parse({"aliyun": table})

    def test_it_is_registered_and_probed_before_cloudstack(self) -> None:
        assert sources.source_class("aliyun") is AliyunSource
        order = sources.AUTO_ORDER
        assert order.index("aliyun") < order.index("cloudstack")


def dmi_tree(root: Path, **files: str) -> Path:
    dmi = root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    for name, text in files.items():
        (dmi / name).write_text(text)
    return root


class TestDmi:
    def test_the_product_name_names_alibaba(self, tmp_path: Path) -> None:
        assert AliyunSource.dmi_says(dmi_tree(tmp_path, product_name="Alibaba Cloud ECS\n"))

    @pytest.mark.parametrize(
        "name", ["", "Alibaba Cloud", "Alibaba Cloud ECS v2", "OpenStack Nova"]
    )
    def test_anything_else_cannot_tell(self, tmp_path: Path, name: str) -> None:
        assert AliyunSource.dmi_says(dmi_tree(tmp_path, product_name=name)) is None

    def test_no_dmi_at_all_cannot_tell(self, tmp_path: Path) -> None:
        assert AliyunSource.dmi_says(tmp_path) is None

    async def test_auto_selects_aliyun_by_dmi_without_a_request(self, tmp_path: Path) -> None:
        root = dmi_tree(tmp_path, product_name="Alibaba Cloud ECS\n", sys_vendor="Alibaba Cloud\n")
        http = HttpClient.from_polling(10, 0.2)
        try:
            source = await sources.select_source(config_mod.Config(), http, sys_root=root)
            assert isinstance(source, AliyunSource)
            assert http.requests_sent == 0
        finally:
            await http.close()
