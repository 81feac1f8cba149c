"""NetplanRenderer: NicState -> netplan YAML, checked against golden files and by structure.

Set NICR_UPDATE_GOLDEN=1 to rewrite tests/golden/netplan/*.yaml from the current renderer
instead of comparing (then review the diff and run ``netplan generate`` via the integration
tests before committing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicreconciled.model import NicState
from nicreconciled.render import Renderer
from nicreconciled.render.netplan import NetplanRenderer

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "netplan"
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
    return NicState.model_validate(base)


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


#: Golden file stem -> (renderer, state). Every file in GOLDEN_DIR must have an entry here.
#: Each case has its own MAC and device number: the integration tests also generate them all
#: in one root, as one instance with several NICs.
GOLDEN_CASES: dict[str, tuple[NetplanRenderer, NicState]] = {
    "nonprimary-ipv4": (NetplanRenderer(), nic()),
    "nonprimary-dualstack-prefixes-card1": (NetplanRenderer(), dual_stack()),
    "primary-managed": (
        NetplanRenderer(),
        nic(
            mac="0a:1b:2c:3d:4e:01",
            primary=True,
            device_number=0,
            ipv4_addresses=("10.0.1.5", "10.0.1.6"),
            ipv6_addresses=("2600:1f18:4a3:6901::5",),
            ipv6_subnets=("2600:1f18:4a3:6901::/64",),
        ),
    ),
    "nonprimary-networkmanager": (
        NetplanRenderer(backend="NetworkManager"),
        dual_stack(mac="0a:1b:2c:3d:4e:61", device_number=3),
    ),
    "nonprimary-metadata-partial": (
        NetplanRenderer(),
        nic(
            mac="0a:1b:2c:3d:4e:62",
            device_number=4,
            ipv4_addresses=("10.0.1.40", "10.0.1.41"),
            ipv4_subnet=None,
            ipv4_gateway=None,
        ),
    ),
}


def ethernet(text: str) -> dict[str, Any]:
    """The one ethernet definition of a rendered file (asserting there is exactly one)."""
    document = yaml.safe_load(text)
    ethernets = document["network"]["ethernets"]
    assert len(ethernets) == 1
    (definition,) = ethernets.values()
    assert isinstance(definition, dict)
    return definition


def render(state: NicState, renderer: NetplanRenderer | None = None) -> dict[str, Any]:
    return ethernet((renderer or NetplanRenderer()).render(state))


class TestFilename:
    def test_it_is_the_prefix_the_mac_key_and_the_suffix(self) -> None:
        assert NetplanRenderer().filename(MAC) == f"90-nicreconciled-{KEY}.yaml"

    def test_upper_case_and_dashed_macs_give_the_same_name(self) -> None:
        renderer = NetplanRenderer()
        assert renderer.filename("0A-1B-2C-3D-4E-5F") == renderer.filename(MAC)

    def test_it_does_not_depend_on_the_backend(self) -> None:
        networkd = NetplanRenderer("networkd").filename(MAC)
        assert NetplanRenderer("NetworkManager").filename(MAC) == networkd

    def test_every_name_starts_with_prefix_and_ends_with_suffix(self) -> None:
        name = NetplanRenderer().filename(MAC)
        assert name.startswith(NetplanRenderer.prefix)
        assert name.endswith(NetplanRenderer.suffix)

    @pytest.mark.parametrize(
        "bad", ["", "0a1b2c3d4e5f", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5g", "../../etc/x"]
    )
    def test_an_invalid_mac_raises_value_error(self, bad: str) -> None:
        with pytest.raises(ValueError, match="MAC"):
            NetplanRenderer().filename(bad)


class TestRendererClass:
    def test_it_satisfies_the_renderer_protocol(self) -> None:
        renderer: Renderer = NetplanRenderer()
        assert renderer.name == "netplan"
        assert (renderer.prefix, renderer.suffix) == ("90-nicreconciled-", ".yaml")

    def test_the_default_backend_is_networkd(self) -> None:
        assert NetplanRenderer().backend == "networkd"

    def test_an_unknown_backend_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="backend"):
            NetplanRenderer("systemd")  # type: ignore[arg-type]


class TestDocument:
    def test_the_first_line_says_who_wrote_it_for_which_mac(self) -> None:
        first = NetplanRenderer().render(nic()).splitlines()[0]
        assert first == f"# Written by nicreconciled for {MAC}; do not edit (rewritten on change)."

    def test_it_is_version_2_with_one_ethernet_named_after_the_key(self) -> None:
        document = yaml.safe_load(NetplanRenderer().render(nic()))
        assert document["network"]["version"] == 2
        assert list(document["network"]["ethernets"]) == [f"nicr-{KEY}"]

    def test_it_matches_by_mac_only_and_never_renames(self) -> None:
        definition = render(nic())
        assert definition["match"] == {"macaddress": MAC}
        assert "set-name" not in definition

    def test_the_mac_is_written_in_normalized_form(self) -> None:
        assert render(nic(mac="0A-1B-2C-3D-4E-5F"))["match"]["macaddress"] == MAC

    def test_an_all_digit_mac_stays_a_string(self) -> None:
        # YAML 1.1 would read an unquoted 12:34:56:00:00:01 as a base-60 integer.
        definition = render(nic(mac="12:34:56:00:00:01"))
        assert definition["match"]["macaddress"] == "12:34:56:00:00:01"

    def test_the_same_state_always_renders_the_same_text(self) -> None:
        renderer = NetplanRenderer()
        assert renderer.render(dual_stack()) == renderer.render(dual_stack())

    def test_repeated_addresses_are_written_once(self) -> None:
        definition = render(nic(ipv4_addresses=("10.0.1.10", "10.0.1.20", "10.0.1.20")))
        assert definition["addresses"] == ["10.0.1.10/24", "10.0.1.20/24"]
        assert [r["from"] for r in definition["routing-policy"]] == [
            "10.0.1.10/32",
            "10.0.1.20/32",
        ]


class TestBackend:
    @pytest.mark.parametrize("backend", ["networkd", "NetworkManager"])
    def test_the_backend_is_set_on_our_definition(self, backend: Any) -> None:
        assert render(nic(), NetplanRenderer(backend))["renderer"] == backend

    @pytest.mark.parametrize("backend", ["networkd", "NetworkManager"])
    def test_the_network_block_sets_no_global_renderer(self, backend: Any) -> None:
        # A global renderer in our 90- file would switch other files' interfaces too.
        document = yaml.safe_load(NetplanRenderer(backend).render(nic()))
        assert "renderer" not in document["network"]

    def test_every_routing_policy_entry_has_a_priority_for_networkmanager(self) -> None:
        definition = render(dual_stack(), NetplanRenderer("NetworkManager"))
        assert definition["routing-policy"]
        assert all("priority" in rule for rule in definition["routing-policy"])


class TestIPv4:
    def test_the_primary_address_comes_from_dhcp_and_is_also_static_so_it_is_first(
        self,
    ) -> None:
        definition = render(nic())
        assert definition["dhcp4"] is True
        assert definition["addresses"] == ["10.0.1.10/24"]

    def test_secondary_addresses_are_static_with_the_subnet_prefix_length(self) -> None:
        definition = render(nic(ipv4_addresses=("10.0.1.10", "10.0.1.20", "10.0.1.21")))
        assert definition["addresses"] == ["10.0.1.10/24", "10.0.1.20/24", "10.0.1.21/24"]

    def test_secondary_addresses_are_host_routes_when_the_subnet_is_unknown(self) -> None:
        definition = render(nic(ipv4_addresses=("10.0.1.10", "10.0.1.20"), ipv4_subnet=None))
        assert definition["addresses"] == ["10.0.1.10/32", "10.0.1.20/32"]

    def test_a_secondary_outside_the_subnet_gets_a_host_prefix(self) -> None:
        definition = render(nic(ipv4_addresses=("10.0.1.10", "192.168.7.7")))
        assert definition["addresses"] == ["10.0.1.10/24", "192.168.7.7/32"]


class TestIPv6:
    def test_without_ipv6_addresses_dhcp6_is_off_and_nothing_ipv6_is_written(self) -> None:
        definition = render(nic(ipv6_subnets=("2600:1f18:4a3:6902::/64",)))
        assert definition["dhcp6"] is False
        assert "accept-ra" not in definition
        assert "dhcp6-overrides" not in definition
        assert not any(":" in route["to"] for route in definition["routes"])

    def test_with_ipv6_addresses_dhcp6_and_router_advertisements_are_on(self) -> None:
        definition = render(dual_stack())
        assert definition["dhcp6"] is True
        assert definition["accept-ra"] is True

    def test_each_address_gets_the_prefix_length_of_the_subnet_containing_it(self) -> None:
        state = dual_stack(
            ipv6_addresses=("2600:1f18:4a3:6902::10", "2600:1f18:4a3:6a00::7"),
            ipv6_subnets=("2600:1f18:4a3:6a00::/56", "2600:1f18:4a3:6902::/64"),
        )
        assert [a for a in render(state)["addresses"] if ":" in a] == [
            "2600:1f18:4a3:6902::10/64",
            "2600:1f18:4a3:6a00::7/56",
        ]

    def test_an_address_in_no_known_subnet_gets_a_host_prefix(self) -> None:
        state = dual_stack(ipv6_subnets=())
        assert [a for a in render(state)["addresses"] if ":" in a] == [
            "2600:1f18:4a3:6902::10/128",
            "2600:1f18:4a3:6902::11/128",
        ]

    def test_ra_overrides_are_not_used_because_netplan_0_106_rejects_them(self) -> None:
        assert "ra-overrides" not in render(dual_stack())


class TestPolicyRouting:
    def test_table_priority_and_metric_follow_the_ec2_net_utils_numbering(self) -> None:
        definition = render(dual_stack())  # network card 1, device 2
        assert {r["table"] for r in definition["routes"]} == {10102}
        assert {r["table"] for r in definition["routing-policy"]} == {10102}
        assert {r["priority"] for r in definition["routing-policy"]} == {10102}
        assert definition["dhcp4-overrides"] == {"route-metric": 614}

    def test_dhcp6_gets_the_same_route_metric_as_dhcp4(self) -> None:
        definition = render(dual_stack())
        assert definition["dhcp6-overrides"] == definition["dhcp4-overrides"]

    def test_table_holds_the_subnet_route_and_the_default_route(self) -> None:
        assert render(nic())["routes"] == [
            {"to": "10.0.1.0/24", "scope": "link", "table": 10001},
            {"to": "0.0.0.0/0", "via": "10.0.1.1", "table": 10001},
        ]

    def test_every_address_gets_a_source_rule_into_the_table(self) -> None:
        sources = [r["from"] for r in render(dual_stack())["routing-policy"]]
        assert sources[:5] == [
            "10.0.2.10/32",
            "10.0.2.20/32",
            "10.0.2.21/32",
            "2600:1f18:4a3:6902::10/128",
            "2600:1f18:4a3:6902::11/128",
        ]

    def test_the_ipv6_subnet_route_in_the_table_has_no_scope(self) -> None:
        # netplan documents scope as IPv4-only; networkd ignores it on IPv6 with a warning.
        (route,) = [r for r in render(dual_stack())["routes"] if ":" in r["to"]]
        assert route == {"to": "2600:1f18:4a3:6902::/64", "table": 10102}

    def test_an_unknown_gateway_leaves_out_only_the_default_route(self) -> None:
        assert render(nic(ipv4_gateway=None))["routes"] == [
            {"to": "10.0.1.0/24", "scope": "link", "table": 10001}
        ]

    def test_an_unknown_subnet_leaves_out_only_the_subnet_route(self) -> None:
        assert render(nic(ipv4_subnet=None))["routes"] == [
            {"to": "0.0.0.0/0", "via": "10.0.1.1", "table": 10001}
        ]

    def test_with_nothing_to_route_there_is_no_routes_key_but_still_rules(self) -> None:
        definition = render(nic(ipv4_subnet=None, ipv4_gateway=None))
        assert "routes" not in definition
        assert definition["routing-policy"] == [
            {"from": "10.0.1.10/32", "table": 10001, "priority": 10001}
        ]


class TestDelegatedPrefixes:
    def test_each_prefix_gets_a_source_rule_into_the_table(self) -> None:
        rules = render(dual_stack())["routing-policy"]
        assert rules[5:] == [
            {"from": "10.0.2.128/28", "table": 10102, "priority": 10102},
            {"from": "2600:1f18:4a3:6902:9d00::/80", "table": 10102, "priority": 10102},
        ]

    def test_prefixes_are_not_assigned_as_addresses(self) -> None:
        addresses = render(dual_stack())["addresses"]
        assert not any(a.startswith(("10.0.2.128", "2600:1f18:4a3:6902:9d00")) for a in addresses)

    def test_an_ipv6_prefix_without_ipv6_addresses_still_gets_the_ipv6_subnet_route(
        self,
    ) -> None:
        definition = render(dual_stack(ipv6_addresses=()))
        assert {"to": "2600:1f18:4a3:6902::/64", "table": 10102} in definition["routes"]
        assert definition["dhcp6"] is False


class TestPrimary:
    def primary(self) -> NicState:
        return GOLDEN_CASES["primary-managed"][1]

    def test_it_gets_no_policy_routing(self) -> None:
        definition = render(self.primary())
        assert "routes" not in definition
        assert "routing-policy" not in definition

    def test_it_keeps_normal_metrics(self) -> None:
        definition = render(self.primary())
        assert "dhcp4-overrides" not in definition
        assert "dhcp6-overrides" not in definition

    def test_it_still_gets_dhcp_and_static_secondaries(self) -> None:
        definition = render(self.primary())
        assert (definition["dhcp4"], definition["dhcp6"], definition["accept-ra"]) == (
            True,
            True,
            True,
        )
        assert definition["addresses"] == [
            "10.0.1.5/24",
            "10.0.1.6/24",
            "2600:1f18:4a3:6901::5/64",
        ]

    def test_delegated_prefixes_on_the_primary_get_no_rules(self) -> None:
        state = nic(primary=True, device_number=0, ipv4_prefixes=("10.0.1.64/28",))
        assert "routing-policy" not in render(state)


class TestGoldenFiles:
    @pytest.mark.parametrize("stem", sorted(GOLDEN_CASES))
    def test_rendering_matches_the_golden_file(self, stem: str) -> None:
        renderer, state = GOLDEN_CASES[stem]
        text = renderer.render(state)
        path = GOLDEN_DIR / f"{stem}.yaml"
        if UPDATE_GOLDEN:
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_golden_file_has_a_case(self) -> None:
        on_disk = {p.stem for p in GOLDEN_DIR.glob("*.yaml")}
        assert on_disk <= set(GOLDEN_CASES), f"stale golden files: {on_disk - set(GOLDEN_CASES)}"
