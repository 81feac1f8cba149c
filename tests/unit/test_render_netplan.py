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
from nicreconciled.system import netplan as netplan_probe
from tests.states import ec2_state
from tests.unit.local_route_states import CASES as LOCAL_CASES
from tests.unit.local_route_states import golden_path as local_golden
from tests.unit.local_route_states import other_mac

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


def ipv6_only(**fields: Any) -> NicState:
    """Device 6 of an EC2 IPv6-only subnet: IPv6 addresses and a prefix, no IPv4 at all."""
    base: dict[str, Any] = {
        "mac": "0a:1b:2c:3d:4e:64",
        "device_number": 6,
        "ipv4_addresses": (),
        "ipv4_subnet": None,
        "ipv4_gateway": None,
        "ipv6_addresses": ("2600:1f18:4a3:6906::10", "2600:1f18:4a3:6906::11"),
        "ipv6_subnets": ("2600:1f18:4a3:6906::/64",),
        "ipv6_prefixes": ("2600:1f18:4a3:6906:9d00::/80",),
    }
    base.update(fields)
    return nic(**base)


#: netplan >= 1.1: ``ra-overrides: {table: T}`` is accepted (see nicreconciled.system.netplan).
RA_TABLE = NetplanRenderer(ra_table=True)

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
    "nonprimary-ipv6-only": (NetplanRenderer(), ipv6_only()),
    # The integration tests check these with the installed netplan: accepted on >= 1.1,
    # rejected for exactly that key on 0.106.
    "ra-table-nonprimary-dualstack": (
        RA_TABLE,
        dual_stack(mac="0a:1b:2c:3d:4e:65", device_number=7),
    ),
    "ra-table-nonprimary-ipv6-only": (
        RA_TABLE,
        ipv6_only(mac="0a:1b:2c:3d:4e:66", device_number=8),
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

    def test_ra_overrides_are_not_written_where_netplan_rejects_them(self) -> None:
        # netplan 0.106 (Debian 12) fails on the unknown key: the default is off.
        assert NetplanRenderer().ra_table is False
        assert "ra-overrides" not in render(dual_stack())


class TestRaTable:
    """netplan >= 1.1: router advertisement routes go to table T (the IPv6 default route)."""

    def test_the_ra_routes_go_to_the_nics_table(self) -> None:
        assert render(dual_stack(), RA_TABLE)["ra-overrides"] == {"table": 10102}

    def test_the_static_ipv6_subnet_route_stays_for_replies_before_the_first_ra(self) -> None:
        routes = render(dual_stack(), RA_TABLE)["routes"]
        assert {"to": "2600:1f18:4a3:6902::/64", "table": 10102} in routes

    def test_without_ipv6_addresses_there_is_no_ra_override(self) -> None:
        assert "ra-overrides" not in render(nic(), RA_TABLE)
        assert "ra-overrides" not in render(dual_stack(ipv6_addresses=()), RA_TABLE)

    def test_the_primary_keeps_its_ra_routes_in_main(self) -> None:
        state = GOLDEN_CASES["primary-managed"][1]
        assert "ra-overrides" not in render(state, RA_TABLE)

    def test_the_networkmanager_backend_gets_none_because_netplan_ignores_it_there(
        self,
    ) -> None:
        renderer = NetplanRenderer("NetworkManager", ra_table=True)
        assert "ra-overrides" not in render(dual_stack(), renderer)

    def test_only_the_override_differs_from_the_output_without_it(self) -> None:
        with_table = render(dual_stack(), RA_TABLE)
        del with_table["ra-overrides"]
        assert with_table == render(dual_stack())


class TestIPv6Only:
    def test_there_is_no_dhcpv4_and_no_ipv4_override(self) -> None:
        definition = render(ipv6_only())
        assert definition["dhcp4"] is False
        assert "dhcp4-overrides" not in definition

    def test_dhcpv6_and_ras_run_with_the_nics_metric(self) -> None:
        definition = render(ipv6_only())
        assert (definition["dhcp6"], definition["accept-ra"]) == (True, True)
        assert definition["dhcp6-overrides"] == {"route-metric": 518}

    def test_only_ipv6_addresses_routes_and_rules_are_written(self) -> None:
        definition = render(ipv6_only())
        assert definition["addresses"] == [
            "2600:1f18:4a3:6906::10/64",
            "2600:1f18:4a3:6906::11/64",
        ]
        assert definition["routes"] == [{"to": "2600:1f18:4a3:6906::/64", "table": 10006}]
        assert [r["from"] for r in definition["routing-policy"]] == [
            "2600:1f18:4a3:6906::10/128",
            "2600:1f18:4a3:6906::11/128",
            "2600:1f18:4a3:6906:9d00::/80",
        ]

    def test_a_nic_without_any_address_keeps_dhcpv4(self) -> None:
        # A CloudStack NIC whose lease is not known yet is not IPv6-only: DHCP must run.
        state = nic(cloud="cloudstack", ipv4_addresses=(), ipv4_subnet=None, ipv4_gateway=None)
        assert render(state)["dhcp4"] is True


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


class TestRaTableProbe:
    """``supports_ra_table``: the installed netplan is asked with a tiny scratch definition."""

    @staticmethod
    def fake(tmp_path: Path, body: str) -> str:
        """A stand-in ``netplan`` running BODY (sh) with ROOT = the --root-dir argument."""
        path = tmp_path / "netplan"
        path.write_text(f'#!/bin/sh\nset -e\nROOT="$3"\n{body}\n')
        path.chmod(0o755)
        return str(path)

    def test_a_netplan_that_writes_the_route_table_supports_it(self, tmp_path: Path) -> None:
        netplan = self.fake(
            tmp_path,
            'grep -q "ra-overrides: {table: 10099}" "$ROOT/etc/netplan/probe.yaml"\n'
            'mkdir -p "$ROOT/run/systemd/network"\n'
            'printf "[IPv6AcceptRA]\\nRouteTable=10099\\n"'
            ' > "$ROOT/run/systemd/network/10-netplan-nicr-probe.network"',
        )
        assert netplan_probe._probe((netplan, "generate")) == (True, "")

    def test_a_netplan_that_rejects_the_key_does_not(self, tmp_path: Path) -> None:
        netplan = self.fake(
            tmp_path,
            'echo "$ROOT/etc/netplan/probe.yaml:9:7: Error in network definition: unknown key'
            " 'ra-overrides'\" >&2\nexit 1",
        )
        supported, reason = netplan_probe._probe((netplan, "generate"))
        assert not supported
        # The scratch path is left out of the reason (it is logged).
        assert reason == (
            "etc/netplan/probe.yaml:9:7: Error in network definition: unknown key 'ra-overrides'"
        )

    def test_a_netplan_that_accepts_but_ignores_it_does_not(self, tmp_path: Path) -> None:
        netplan = self.fake(
            tmp_path,
            'mkdir -p "$ROOT/run/systemd/network"\n'
            'echo "[Network]" > "$ROOT/run/systemd/network/10-netplan-nicr-probe.network"',
        )
        assert netplan_probe._probe((netplan, "generate")) == (
            False,
            "accepted, but no RouteTable= in the generated file",
        )

    def test_a_missing_netplan_does_not(self, tmp_path: Path) -> None:
        supported, reason = netplan_probe._probe((str(tmp_path / "no-such-netplan"), "generate"))
        assert not supported
        assert "No such file" in reason

    def test_the_scratch_tree_is_removed(self, tmp_path: Path) -> None:
        netplan = self.fake(tmp_path, f'echo "$ROOT" > {tmp_path}/root; exit 1')
        netplan_probe._probe((netplan, "generate"))
        assert not Path((tmp_path / "root").read_text().strip()).exists()

    def test_the_answer_is_cached_per_netplan(self, tmp_path: Path) -> None:
        netplan = self.fake(tmp_path, f"echo run >> {tmp_path}/runs; exit 1")
        netplan_probe.supports_ra_table.cache_clear()
        try:
            assert netplan_probe.supports_ra_table(netplan) is False
            assert netplan_probe.supports_ra_table(netplan) is False
        finally:
            netplan_probe.supports_ra_table.cache_clear()
        assert (tmp_path / "runs").read_text() == "run\n"

    def test_no_writable_temporary_directory_means_no(self, tmp_path: Path) -> None:
        # A read-only tree (the daemon confined without a private /tmp): never an exception.
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        old = netplan_probe.tempfile.tempdir
        netplan_probe.tempfile.tempdir = str(readonly / "gone")
        try:
            supported, reason = netplan_probe._probe(("netplan", "generate"))
        finally:
            netplan_probe.tempfile.tempdir = old
        assert not supported
        assert reason.startswith("no scratch directory")


class TestRaTableFlagIsLazy:
    def test_a_function_is_asked_only_when_a_nic_needs_the_answer(self) -> None:
        asked: list[int] = []

        def probe() -> bool:
            asked.append(1)
            return True

        renderer = NetplanRenderer(ra_table=probe)
        renderer.render(nic())  # IPv4 only
        renderer.render(GOLDEN_CASES["primary-managed"][1])  # the primary: no table
        NetplanRenderer("NetworkManager", ra_table=probe).render(dual_stack())
        assert asked == []
        assert render(dual_stack(), renderer)["ra-overrides"] == {"table": 10102}
        assert asked == [1]

    def test_the_registry_passes_the_cached_probe_without_running_it(self) -> None:
        from nicreconciled.config import parse as parse_config
        from nicreconciled.render import make_renderer

        netplan_probe.supports_ra_table.cache_clear()
        renderer = make_renderer(parse_config({"renderer": "netplan"}))
        assert isinstance(renderer, NetplanRenderer)
        assert callable(renderer._ra_table)
        assert netplan_probe.supports_ra_table.cache_info().currsize == 0


#: Local-route golden stem -> (renderer, state): every case on the networkd backend, the
#: secondaries also on NetworkManager's (as other NICs, so that all load as one instance).
LOCAL_GOLDEN: dict[str, tuple[NetplanRenderer, NicState]] = {
    **{stem: (NetplanRenderer(), state) for stem, state in LOCAL_CASES.items()},
    "secondary-dualstack-networkmanager": (
        NetplanRenderer(backend="NetworkManager"),
        other_mac(LOCAL_CASES["secondary-dualstack"], 0x15),
    ),
    "secondary-ipv4-ipv6-local-networkmanager": (
        NetplanRenderer(backend="NetworkManager"),
        other_mac(LOCAL_CASES["secondary-ipv4-ipv6-local"], 0x16),
    ),
}


class TestLocalRoutes:
    """``local_routes``: netplan routes of type local in table 255 (networkd backend), keyfile
    routes by netplan's passthrough (NetworkManager backend, where netplan refuses them)."""

    def test_each_is_a_local_route_in_table_local_after_the_others(self) -> None:
        routes = render(LOCAL_CASES["secondary-dualstack"])["routes"]
        assert routes[-3:] == [
            {"to": "10.128.16.0/24", "type": "local", "scope": "host", "table": 255},
            {"to": "203.0.113.7/32", "type": "local", "scope": "host", "table": 255},
            # netplan documents scope as IPv4-only.
            {"to": "2600:1900:4010:5:8000::7/128", "type": "local", "table": 255},
        ]
        assert all(r.get("type") != "local" for r in routes[:-3])

    def test_the_primary_gets_them_too_and_no_policy_routing(self) -> None:
        definition = render(LOCAL_CASES["primary-ipv4"])
        assert [r["to"] for r in definition["routes"]] == [
            "10.128.32.0/24",
            "10.128.33.0/28",
            "203.0.113.8/32",
        ]
        assert "routing-policy" not in definition

    def test_nothing_else_changes(self) -> None:
        state = LOCAL_CASES["secondary-dualstack"]
        without = NicState.model_validate({**state.model_dump(), "local_routes": ()})
        for renderer in (NetplanRenderer(), NetplanRenderer(backend="NetworkManager")):
            definition, plain = render(state, renderer), render(without, renderer)
            definition.pop("networkmanager", None)
            definition["routes"] = [r for r in definition["routes"] if r.get("type") != "local"]
            assert definition == plain

    def test_networkmanager_gets_them_as_keyfile_routes_numbered_after_netplans(self) -> None:
        # netplan refuses any non-unicast route for NetworkManager ("NetworkManager only
        # supports unicast routes", 0.106 to 1.1): they go through its passthrough, numbered
        # after the routeN netplan writes for the definition's routes of the same family.
        definition = render(LOCAL_CASES["secondary-dualstack"], NetplanRenderer("NetworkManager"))
        assert all(r.get("type") is None for r in definition["routes"])
        ipv4 = [r for r in definition["routes"] if ":" not in r["to"]]
        ipv6 = [r for r in definition["routes"] if ":" in r["to"]]
        assert (len(ipv4), len(ipv6)) == (2, 1)
        assert definition["networkmanager"] == {
            "passthrough": {
                "ipv4.route3": "10.128.16.0/24",
                "ipv4.route3_options": "scope=254,table=255,type=local",
                "ipv4.route4": "203.0.113.7/32",
                "ipv4.route4_options": "scope=254,table=255,type=local",
                "ipv6.route2": "2600:1900:4010:5:8000::7/128",
                "ipv6.route2_options": "table=255,type=local",
            }
        }

    def test_without_local_routes_there_is_no_passthrough(self) -> None:
        assert "networkmanager" not in render(dual_stack(), NetplanRenderer("NetworkManager"))

    @pytest.mark.parametrize("stem", sorted(LOCAL_GOLDEN))
    def test_rendering_matches_the_golden_file(self, stem: str) -> None:
        renderer, state = LOCAL_GOLDEN[stem]
        text = renderer.render(state)
        path = local_golden("netplan", stem, ".yaml")
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_golden_file_has_a_case(self) -> None:
        folder = local_golden("netplan", "x", "").parent
        assert {p.stem for p in folder.glob("*.yaml")} == set(LOCAL_GOLDEN)


class TestLeaseRoutes:
    """dhcp_routes=False (Azure's secondary NICs): the lease's routes stay out of main."""

    def test_a_secondary_nic_ignores_its_lease_routes_on_networkd_both_overrides_alike(
        self,
    ) -> None:
        eth = render(dual_stack(dhcp_routes=False))
        assert eth["dhcp4-overrides"]["use-routes"] is False
        assert eth["dhcp6-overrides"] == eth["dhcp4-overrides"]

    def test_on_networkmanager_only_dhcp4_so_the_routers_routes_stay(self) -> None:
        eth = render(dual_stack(dhcp_routes=False), NetplanRenderer(backend="NetworkManager"))
        assert eth["dhcp4-overrides"]["use-routes"] is False
        assert "use-routes" not in eth["dhcp6-overrides"]

    def test_the_default_and_the_primary_keep_the_lease_whole(self) -> None:
        assert "use-routes" not in render(dual_stack())["dhcp4-overrides"]
        assert "dhcp4-overrides" not in render(dual_stack(primary=True, dhcp_routes=False))
