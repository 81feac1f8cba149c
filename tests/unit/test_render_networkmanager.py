"""NetworkManagerRenderer: NicState -> keyfile, checked against golden files and by structure.

Set NICR_UPDATE_GOLDEN=1 to rewrite tests/golden/networkmanager/*.nmconnection from the
current renderer instead of comparing (then review the diff, and run the integration tests:
they load every golden file with libnm).
"""

from __future__ import annotations

import configparser
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.config import parse as parse_config
from nicreconciled.model import NicState
from nicreconciled.render import Renderer, make_renderer
from nicreconciled.render.networkmanager import (
    NetworkManagerRenderer,
    connection_uuid,
    keyfile,
    write_keyfile,
)
from tests.states import ec2_state
from tests.unit.local_route_states import CASES as LOCAL_CASES
from tests.unit.local_route_states import golden_path as local_golden

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "networkmanager"
UPDATE_GOLDEN = os.environ.get("NICR_UPDATE_GOLDEN") == "1"

MAC = "0a:1b:2c:3d:4e:5f"
KEY = "0a1b2c3d4e5f"


def nic(**fields: Any) -> NicState:
    """A settled non-primary ENI (device 1, card 0, IPv4 only); override any field."""
    base: dict[str, Any] = {
        "mac": MAC,
        "cloud": "ec2",
        "primary": False,
        "device_number": 1,
        "network_card": 0,
        "interface_id": "eni-0123456789abcdef0",
        "ipv4_addresses": ("10.0.1.10",),
        "ipv4_subnet": "10.0.1.0/24",
        "ipv4_gateway": "10.0.1.1",
    }
    base.update(fields)
    return ec2_state(base)


def dual_stack(**fields: Any) -> NicState:
    """Card 1, device 2: two secondary IPv4s, two IPv6s, delegated prefixes of both families."""
    base: dict[str, Any] = {
        "mac": "0a:1b:2c:3d:4e:60",
        "device_number": 2,
        "network_card": 1,
        "interface_id": "eni-0fedcba9876543210",
        "ipv4_addresses": ("10.0.2.10", "10.0.2.20", "10.0.2.21"),
        "ipv4_subnet": "10.0.2.0/24",
        "ipv4_gateway": "10.0.2.1",
        "ipv6_addresses": ("2600:1f18:4a3:6902::10", "2600:1f18:4a3:6902::11"),
        "ipv6_subnets": ("2600:1f18:4a3:6902::/64",),
        "ipv4_prefixes": ("10.0.2.128/28",),
        "ipv6_prefixes": ("2600:1f18:4a3:6902:9d00::/80",),
    }
    base.update(fields)
    return nic(**base)


def primary(**fields: Any) -> NicState:
    base: dict[str, Any] = {
        "mac": "0a:1b:2c:3d:4e:01",
        "primary": True,
        "device_number": 0,
        "ipv4_addresses": ("10.0.1.5", "10.0.1.6"),
        "ipv6_addresses": ("2600:1f18:4a3:6901::5",),
        "ipv6_subnets": ("2600:1f18:4a3:6901::/64",),
    }
    base.update(fields)
    return nic(**base)


def cloudstack(**fields: Any) -> NicState:
    """A CloudStack guest NIC: no interface id, the address from the DHCP lease."""
    base: dict[str, Any] = {
        "mac": "02:00:4c:4f:4f:50",
        "cloud": "cloudstack",
        "device_number": 6,
        "interface_id": None,
        "ipv4_addresses": ("10.1.1.23",),
        "ipv4_subnet": "10.1.1.0/24",
        "ipv4_gateway": "10.1.1.1",
    }
    base.update(fields)
    return nic(**base)


def ipv6_only(**fields: Any) -> NicState:
    """Device 8 of an EC2 IPv6-only subnet: IPv6 addresses and a prefix, no IPv4 at all."""
    base: dict[str, Any] = {
        "mac": "0a:1b:2c:3d:4e:64",
        "device_number": 8,
        "ipv4_addresses": (),
        "ipv4_subnet": None,
        "ipv4_gateway": None,
        "ipv6_addresses": ("2600:1f18:4a3:6906::10", "2600:1f18:4a3:6906::11"),
        "ipv6_subnets": ("2600:1f18:4a3:6906::/64",),
        "ipv6_prefixes": ("2600:1f18:4a3:6906:9d00::/80",),
    }
    base.update(fields)
    return nic(**base)


#: Golden file stem -> state. Every file in GOLDEN_DIR must have an entry here. Each case
#: has its own MAC and device number, so they can all be loaded as one instance's NICs.
GOLDEN_CASES: dict[str, NicState] = {
    "nonprimary-ipv4": nic(),
    "nonprimary-dualstack-prefixes-card1": dual_stack(),
    "nonprimary-ipv6-prefix-only": dual_stack(
        mac="0a:1b:2c:3d:4e:63", device_number=5, ipv6_addresses=()
    ),
    "nonprimary-metadata-partial": nic(
        mac="0a:1b:2c:3d:4e:62",
        device_number=4,
        ipv4_addresses=("10.0.1.40", "10.0.1.41"),
        ipv4_subnet=None,
        ipv4_gateway=None,
    ),
    "primary-managed": primary(),
    "primary-ipv4-only": primary(
        mac="0a:1b:2c:3d:4e:02", ipv6_addresses=(), ipv6_subnets=(), device_number=0
    ),
    "nonprimary-ipv6-only": ipv6_only(),
    "cloudstack-lease-address": cloudstack(),
    "cloudstack-no-address": cloudstack(
        mac="02:00:4c:4f:4f:51",
        device_number=7,
        ipv4_addresses=(),
        ipv4_subnet=None,
        ipv4_gateway=None,
    ),
}


def parse(text: str) -> dict[str, dict[str, str]]:
    """A rendered keyfile as {section: {key: value}} (asserting no key repeats)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def render(state: NicState) -> dict[str, dict[str, str]]:
    return parse(NetworkManagerRenderer().render(state))


def numbered(section: dict[str, str], key: str) -> list[str]:
    """Values of key1, key2, ... in order, asserting the numbering has no gaps."""
    values: list[str] = []
    while f"{key}{len(values) + 1}" in section:
        values.append(section[f"{key}{len(values) + 1}"])
    indexes = [k[len(key) :] for k in section if re.fullmatch(rf"{key}\d+", k)]
    assert len(indexes) == len(values), f"gap in {key}N: {indexes}"
    return values


def routes(section: dict[str, str]) -> list[tuple[str, str]]:
    """(route, options) pairs of a family section."""
    return [(r, section[f"route{n}_options"]) for n, r in enumerate(numbered(section, "route"), 1)]


class TestFilename:
    def test_it_is_the_prefix_the_mac_key_and_the_suffix(self) -> None:
        assert NetworkManagerRenderer().filename(MAC) == f"nicreconciled-{KEY}.nmconnection"

    def test_upper_case_and_dashed_macs_give_the_same_name(self) -> None:
        renderer = NetworkManagerRenderer()
        assert renderer.filename("0A-1B-2C-3D-4E-5F") == renderer.filename(MAC)

    @pytest.mark.parametrize(
        "bad", ["", "0a1b2c3d4e5f", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5g", "../../etc/x"]
    )
    def test_an_invalid_mac_raises_value_error(self, bad: str) -> None:
        with pytest.raises(ValueError, match="MAC"):
            NetworkManagerRenderer().filename(bad)


class TestRendererClass:
    def test_it_satisfies_the_renderer_protocol(self) -> None:
        renderer: Renderer = NetworkManagerRenderer()
        assert renderer.name == "networkmanager"
        assert (renderer.prefix, renderer.suffix) == ("nicreconciled-", ".nmconnection")

    def test_the_registry_builds_it_by_name(self) -> None:
        config = parse_config({"renderer": "networkmanager"})
        assert isinstance(make_renderer(config), NetworkManagerRenderer)


class TestConnectionUuid:
    def test_it_is_pinned_so_existing_profiles_keep_their_identity(self) -> None:
        # Changing the namespace would orphan every profile NetworkManager already holds.
        assert connection_uuid(MAC) == "9bb9a672-2cfb-50cd-8afa-374134d677b1"

    def test_it_is_a_version_5_uuid(self) -> None:
        assert uuid.UUID(connection_uuid(MAC)).version == 5

    def test_every_spelling_of_a_mac_gives_the_same_uuid(self) -> None:
        assert connection_uuid("0A-1B-2C-3D-4E-5F") == connection_uuid(MAC)
        assert connection_uuid(" 0A:1B:2C:3D:4E:5F ") == connection_uuid(MAC)

    def test_different_macs_give_different_uuids(self) -> None:
        assert connection_uuid(MAC) != connection_uuid("0a:1b:2c:3d:4e:60")

    def test_an_invalid_mac_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="MAC"):
            connection_uuid("not-a-mac")


class TestConnection:
    def test_the_first_line_says_who_wrote_it_for_which_mac(self) -> None:
        first = NetworkManagerRenderer().render(nic()).splitlines()[0]
        assert first == f"# Written by nicreconciled for {MAC}; do not edit (rewritten on change)."

    def test_it_is_an_autoconnecting_ethernet_profile_named_after_the_key(self) -> None:
        connection = render(nic())["connection"]
        assert connection == {
            "id": f"nicreconciled-{KEY}",
            "uuid": connection_uuid(MAC),
            "type": "ethernet",
            "autoconnect": "true",
            "autoconnect-priority": "150",
            "autoconnect-retries": "0",
        }

    def test_it_is_bound_by_mac_in_upper_case_as_networkmanager_writes_it(self) -> None:
        assert render(nic())["ethernet"] == {"mac-address": MAC.upper()}

    @pytest.mark.parametrize("stem", sorted(GOLDEN_CASES))
    def test_no_interface_name_is_ever_written(self, stem: str) -> None:
        assert "interface-name" not in NetworkManagerRenderer().render(GOLDEN_CASES[stem])

    def test_it_says_who_created_it_in_the_user_setting(self) -> None:
        assert render(nic())["user"] == {"org.freedesktop.NetworkManager.origin": "nicreconciled"}

    def test_the_same_state_always_renders_the_same_text(self) -> None:
        renderer = NetworkManagerRenderer()
        assert renderer.render(dual_stack()) == renderer.render(dual_stack())

    def test_the_interface_id_is_not_rendered(self) -> None:
        # Only routing-relevant facts reach the file; the ENI id is for logs.
        assert "eni-" not in NetworkManagerRenderer().render(dual_stack())


class TestIPv4:
    def test_the_primary_address_comes_from_dhcp_and_is_also_static_so_it_is_first(
        self,
    ) -> None:
        ipv4 = render(nic())["ipv4"]
        assert ipv4["method"] == "auto"
        assert numbered(ipv4, "address") == ["10.0.1.10/24"]

    def test_secondary_addresses_are_static_with_the_subnet_prefix_length(self) -> None:
        ipv4 = render(nic(ipv4_addresses=("10.0.1.10", "10.0.1.20", "10.0.1.21")))["ipv4"]
        assert numbered(ipv4, "address") == ["10.0.1.10/24", "10.0.1.20/24", "10.0.1.21/24"]

    def test_secondary_addresses_are_host_routes_when_the_subnet_is_unknown(self) -> None:
        ipv4 = render(nic(ipv4_addresses=("10.0.1.10", "10.0.1.20"), ipv4_subnet=None))["ipv4"]
        assert numbered(ipv4, "address") == ["10.0.1.10/32", "10.0.1.20/32"]

    def test_repeated_addresses_are_written_once(self) -> None:
        ipv4 = render(nic(ipv4_addresses=("10.0.1.10", "10.0.1.20", "10.0.1.20")))["ipv4"]
        assert numbered(ipv4, "address") == ["10.0.1.10/24", "10.0.1.20/24"]
        assert len(numbered(ipv4, "routing-rule")) == 2


class TestPolicyRouting:
    def test_table_priority_and_metric_follow_the_ec2_net_utils_numbering(self) -> None:
        keyfile_ = render(dual_stack())  # network card 1, device 2
        for family in ("ipv4", "ipv6"):
            section = keyfile_[family]
            assert section["route-metric"] == "614"
            assert {options for _, options in routes(section)} <= {"table=10102", "table=254"}
            for rule in numbered(section, "routing-rule"):
                assert rule.startswith("priority 10102 from ")
                assert rule.endswith(" table 10102")
        assert keyfile_["ipv6"]["route-table"] == "10102"

    def test_a_non_primary_nic_never_gets_the_main_ipv4_default_route(self) -> None:
        assert render(dual_stack())["ipv4"]["never-default"] == "true"

    def test_the_table_holds_the_subnet_route_and_the_default_route(self) -> None:
        assert routes(render(nic())["ipv4"]) == [
            ("10.0.1.0/24", "table=10001"),
            ("0.0.0.0/0,10.0.1.1", "table=10001"),
        ]

    def test_every_address_and_prefix_gets_a_source_rule(self) -> None:
        keyfile_ = render(dual_stack())
        assert numbered(keyfile_["ipv4"], "routing-rule") == [
            "priority 10102 from 10.0.2.10/32 table 10102",
            "priority 10102 from 10.0.2.20/32 table 10102",
            "priority 10102 from 10.0.2.21/32 table 10102",
            "priority 10102 from 10.0.2.128/28 table 10102",
        ]
        assert numbered(keyfile_["ipv6"], "routing-rule") == [
            "priority 10102 from 2600:1f18:4a3:6902::10/128 table 10102",
            "priority 10102 from 2600:1f18:4a3:6902::11/128 table 10102",
            "priority 10102 from 2600:1f18:4a3:6902:9d00::/80 table 10102",
        ]

    def test_prefixes_are_not_assigned_as_addresses(self) -> None:
        keyfile_ = render(dual_stack())
        text = " ".join(
            numbered(keyfile_["ipv4"], "address") + numbered(keyfile_["ipv6"], "address")
        )
        assert "10.0.2.128" not in text
        assert "9d00" not in text

    def test_an_unknown_gateway_leaves_out_only_the_default_route(self) -> None:
        assert routes(render(nic(ipv4_gateway=None))["ipv4"]) == [("10.0.1.0/24", "table=10001")]

    def test_with_nothing_to_route_there_are_no_routes_but_still_rules(self) -> None:
        ipv4 = render(nic(ipv4_subnet=None, ipv4_gateway=None))["ipv4"]
        assert routes(ipv4) == []
        assert numbered(ipv4, "routing-rule") == ["priority 10001 from 10.0.1.10/32 table 10001"]

    def test_ipv4_route_table_is_never_used_so_dhcp_routes_stay_in_main(self) -> None:
        for stem, state in GOLDEN_CASES.items():
            assert "route-table" not in render(state)["ipv4"], stem


class TestIPv6:
    def test_with_addresses_it_uses_ra_and_dhcpv6_plus_static_addresses(self) -> None:
        ipv6 = render(dual_stack())["ipv6"]
        assert ipv6["method"] == "auto"
        assert numbered(ipv6, "address") == [
            "2600:1f18:4a3:6902::10/64",
            "2600:1f18:4a3:6902::11/64",
        ]

    def test_ra_routes_go_to_the_table_so_the_ra_default_route_is_there_and_not_in_main(
        self,
    ) -> None:
        ipv6 = render(dual_stack())["ipv6"]
        assert ipv6["route-table"] == "10102"
        # never-default would drop the RA default route from the table too.
        assert "never-default" not in ipv6

    def test_the_ipv6_subnet_route_is_in_the_table_and_back_in_main_with_link_local(
        self,
    ) -> None:
        # route-table moves the routes NetworkManager derives from the link out of main.
        assert routes(render(dual_stack())["ipv6"]) == [
            ("2600:1f18:4a3:6902::/64", "table=10102"),
            ("2600:1f18:4a3:6902::/64", "table=254"),
            ("fe80::/64", "table=254"),
        ]

    def test_every_subnet_gets_its_routes(self) -> None:
        state = dual_stack(ipv6_subnets=("2600:1f18:4a3:6902::/64", "2600:1f18:4a3:6a00::/56"))
        assert [r for r, options in routes(render(state)["ipv6"]) if options == "table=254"] == [
            "2600:1f18:4a3:6902::/64",
            "2600:1f18:4a3:6a00::/56",
            "fe80::/64",
        ]

    def test_an_address_in_no_known_subnet_gets_a_host_prefix(self) -> None:
        ipv6 = render(dual_stack(ipv6_subnets=()))["ipv6"]
        assert numbered(ipv6, "address") == [
            "2600:1f18:4a3:6902::10/128",
            "2600:1f18:4a3:6902::11/128",
        ]
        assert routes(ipv6) == [("fe80::/64", "table=254")]

    def test_without_anything_ipv6_a_non_primary_nic_has_ipv6_disabled(self) -> None:
        assert render(nic(ipv6_subnets=("2600:1f18:4a3:6902::/64",)))["ipv6"] == {
            "method": "disabled"
        }

    def test_prefixes_without_addresses_keep_ipv6_link_local_with_routes_and_rules(self) -> None:
        ipv6 = render(GOLDEN_CASES["nonprimary-ipv6-prefix-only"])["ipv6"]
        assert ipv6["method"] == "link-local"
        # No RA is processed there: no route-table, and no RA default route anywhere.
        assert "route-table" not in ipv6
        assert ipv6["never-default"] == "true"
        assert routes(ipv6) == [("2600:1f18:4a3:6902::/64", "table=10105")]
        assert numbered(ipv6, "routing-rule") == [
            "priority 10105 from 2600:1f18:4a3:6902:9d00::/80 table 10105"
        ]


class TestIPv6Only:
    def test_ipv4_is_disabled_and_nothing_ipv4_is_written(self) -> None:
        assert render(ipv6_only())["ipv4"] == {"method": "disabled"}

    def test_ipv6_gets_ra_and_dhcpv6_the_table_the_metric_and_every_rule(self) -> None:
        ipv6 = render(ipv6_only())["ipv6"]
        assert ipv6["method"] == "auto"
        assert (ipv6["route-table"], ipv6["route-metric"]) == ("10008", "520")
        assert numbered(ipv6, "routing-rule") == [
            "priority 10008 from 2600:1f18:4a3:6906::10/128 table 10008",
            "priority 10008 from 2600:1f18:4a3:6906::11/128 table 10008",
            "priority 10008 from 2600:1f18:4a3:6906:9d00::/80 table 10008",
        ]

    def test_a_managed_primary_of_an_ipv6_only_subnet_has_ipv4_disabled_and_no_policy(
        self,
    ) -> None:
        keyfile_ = render(ipv6_only(primary=True, device_number=0, ipv6_prefixes=()))
        assert keyfile_["ipv4"] == {"method": "disabled"}
        assert keyfile_["ipv6"] == {
            "method": "auto",
            "address1": "2600:1f18:4a3:6906::10/64",
            "address2": "2600:1f18:4a3:6906::11/64",
        }


class TestPrimary:
    def test_it_gets_dhcp_and_static_secondaries(self) -> None:
        keyfile_ = render(primary())
        assert keyfile_["ipv4"] == {
            "method": "auto",
            "address1": "10.0.1.5/24",
            "address2": "10.0.1.6/24",
        }
        assert keyfile_["ipv6"] == {"method": "auto", "address1": "2600:1f18:4a3:6901::5/64"}

    def test_it_gets_no_policy_routing_and_keeps_the_default_route(self) -> None:
        text = NetworkManagerRenderer().render(primary(ipv4_prefixes=("10.0.1.64/28",)))
        for word in ("routing-rule", "route1", "never-default", "route-metric"):
            assert word not in text

    def test_without_ipv6_its_ipv6_is_left_to_the_kernel(self) -> None:
        assert render(GOLDEN_CASES["primary-ipv4-only"])["ipv6"] == {"method": "ignore"}


class TestCloudStack:
    def test_a_lease_address_gets_its_rule_and_table(self) -> None:
        ipv4 = render(cloudstack())["ipv4"]
        assert numbered(ipv4, "address") == ["10.1.1.23/24"]
        assert routes(ipv4) == [
            ("10.1.1.0/24", "table=10006"),
            ("0.0.0.0/0,10.1.1.1", "table=10006"),
        ]
        assert numbered(ipv4, "routing-rule") == ["priority 10006 from 10.1.1.23/32 table 10006"]

    def test_without_any_address_it_is_just_dhcp_kept_off_the_default_route(self) -> None:
        keyfile_ = render(GOLDEN_CASES["cloudstack-no-address"])
        assert keyfile_["ipv4"] == {
            "method": "auto",
            "never-default": "true",
            "route-metric": "519",
        }
        assert keyfile_["ipv6"] == {"method": "disabled"}


LINE = re.compile(r"#[^\n]*|\[[a-z0-9-]+\]|[A-Za-z0-9._-]+=[A-Za-z0-9:./,= _-]+|")


class TestFormatSafety:
    @pytest.mark.parametrize("stem", sorted(GOLDEN_CASES))
    def test_every_line_is_a_comment_a_group_a_plain_key_value_or_blank(self, stem: str) -> None:
        text = NetworkManagerRenderer().render(GOLDEN_CASES[stem])
        assert text.endswith("\n")
        for line in text.splitlines():
            assert LINE.fullmatch(line), line
            assert line == line.strip(), line
            if not line.startswith("#"):
                assert "\\" not in line
                assert ";" not in line

    @pytest.mark.parametrize(
        "value",
        ["a\nb", "a\rb", "x\\n", "a;b", "[ipv4]", " leading", "trailing ", "", "#x", "a\x00b"],
    )
    def test_the_writer_refuses_values_the_format_would_misread(self, value: str) -> None:
        with pytest.raises(ValueError, match="invalid keyfile value"):
            write_keyfile({"ipv4": [("method", value)]})

    @pytest.mark.parametrize("key", ["", "a=b", "a b", "a\nb", "[x]"])
    def test_the_writer_refuses_bad_keys(self, key: str) -> None:
        with pytest.raises(ValueError, match="invalid keyfile key"):
            write_keyfile({"ipv4": [(key, "auto")]})

    @pytest.mark.parametrize("name", ["", "ip v4", "ipv4]\n[x", "IPV4"])
    def test_the_writer_refuses_bad_section_names(self, name: str) -> None:
        with pytest.raises(ValueError, match="invalid keyfile section"):
            write_keyfile({name: [("method", "auto")]})

    def test_a_mac_cannot_smuggle_text_because_the_model_rejects_it(self) -> None:
        with pytest.raises(ValueError, match="MAC"):
            nic(mac="0a:1b:2c:3d:4e:5f\n[ipv4]")

    def test_the_sections_are_exactly_the_rendered_ones(self) -> None:
        assert list(keyfile(dual_stack())) == ["connection", "ethernet", "ipv4", "ipv6", "user"]
        assert list(render(dual_stack())) == ["connection", "ethernet", "ipv4", "ipv6", "user"]


class TestGoldenFiles:
    @pytest.mark.parametrize("stem", sorted(GOLDEN_CASES))
    def test_rendering_matches_the_golden_file(self, stem: str) -> None:
        text = NetworkManagerRenderer().render(GOLDEN_CASES[stem])
        path = GOLDEN_DIR / f"{stem}.nmconnection"
        if UPDATE_GOLDEN:
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_golden_file_has_a_case(self) -> None:
        on_disk = {p.stem for p in GOLDEN_DIR.glob("*.nmconnection")}
        assert on_disk <= set(GOLDEN_CASES), f"stale golden files: {on_disk - set(GOLDEN_CASES)}"

    def test_golden_cases_are_distinct_nics(self) -> None:
        states = list(GOLDEN_CASES.values())
        assert len({s.mac for s in states}) == len(states)
        non_primary = [s for s in states if not s.primary]
        assert len({s.route_table for s in non_primary}) == len(non_primary)


class TestLocalRoutes:
    """``local_routes``: ``type=local`` routes in table 255, scope host (254) for IPv4."""

    def test_each_is_a_local_route_in_table_local_after_the_others(self) -> None:
        profile = render(LOCAL_CASES["secondary-dualstack"])
        assert routes(profile["ipv4"])[-2:] == [
            ("10.128.16.0/24", "scope=254,table=255,type=local"),
            ("203.0.113.7/32", "scope=254,table=255,type=local"),
        ]
        # libnm has no scope for IPv6 routes.
        assert routes(profile["ipv6"])[-1] == (
            "2600:1900:4010:5:8000::7/128",
            "table=255,type=local",
        )

    def test_the_primary_gets_them_too(self) -> None:
        profile = render(LOCAL_CASES["primary-ipv4"])
        assert routes(profile["ipv4"]) == [
            ("10.128.32.0/24", "scope=254,table=255,type=local"),
            ("10.128.33.0/28", "scope=254,table=255,type=local"),
            ("203.0.113.8/32", "scope=254,table=255,type=local"),
        ]
        assert profile["ipv6"] == {"method": "ignore"}

    def test_an_ipv6_one_without_ipv6_addresses_keeps_ipv6_on_the_link(self) -> None:
        # "disabled" would turn IPv6 off on the link and the kernel would refuse the route.
        profile = render(LOCAL_CASES["secondary-ipv4-ipv6-local"])
        assert profile["ipv6"]["method"] == "link-local"
        assert profile["ipv6"]["never-default"] == "true"
        assert routes(profile["ipv6"]) == [("2001:db8:77::9/128", "table=255,type=local")]

    def test_nothing_else_changes(self) -> None:
        state = LOCAL_CASES["secondary-dualstack"]
        without = render(NicState.model_validate({**state.model_dump(), "local_routes": ()}))
        profile = render(state)
        for family, count in (("ipv4", 2), ("ipv6", 1)):
            assert routes(profile[family])[:-count] == routes(without[family])
            rest = {k: v for k, v in profile[family].items() if not k.startswith("route")}
            assert rest == {k: v for k, v in without[family].items() if not k.startswith("route")}

    def test_a_primary_ipv6_one_leaves_the_primarys_ipv6_alone(self) -> None:
        state = LOCAL_CASES["primary-ipv4"]
        state = NicState.model_validate({**state.model_dump(), "local_routes": ("2001:db8::/96",)})
        ipv6 = render(state)["ipv6"]
        # NetworkManager installs a profile's IPv6 routes with "ignore" too (seen in the lab).
        assert ipv6["method"] == "ignore"
        assert routes(ipv6) == [("2001:db8::/96", "table=255,type=local")]

    @pytest.mark.parametrize("stem", sorted(LOCAL_CASES))
    def test_rendering_matches_the_golden_file(self, stem: str) -> None:
        text = NetworkManagerRenderer().render(LOCAL_CASES[stem])
        path = local_golden("networkmanager", stem, ".nmconnection")
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_golden_file_has_a_case(self) -> None:
        folder = local_golden("networkmanager", "x", "").parent
        assert {p.stem for p in folder.glob("*.nmconnection")} == set(LOCAL_CASES)


class TestLeaseRoutes:
    def test_a_secondary_nic_with_dhcp_routes_off_ignores_its_ipv4_lease_routes(self) -> None:
        keyfile = render(dual_stack(dhcp_routes=False))
        assert keyfile["ipv4"]["ignore-auto-routes"] == "true"
        assert "ignore-auto-routes" not in keyfile["ipv6"]  # the router's routes stay
        assert "ignore-auto-routes" not in render(dual_stack())["ipv4"]

    def test_the_primary_keeps_its_lease_whole(self) -> None:
        assert "ignore-auto-routes" not in render(primary(dhcp_routes=False))["ipv4"]
