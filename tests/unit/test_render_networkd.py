"""NetworkdRenderer: NicState -> systemd-networkd ``.network`` file; and its applier.

Golden files live in tests/golden/networkd/ (NICR_UPDATE_GOLDEN=1 rewrites them). Their real
consumer is systemd-networkd itself: tests/integration/lab/test_networkd_renderer.py loads
every golden file into a real networkd (no warning allowed) and checks kernel state and
packets for rendered NICs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.apply import Change, NetworkdApplier, Outcome
from nicreconciled.config import parse as parse_config
from nicreconciled.errors import ApplyError
from nicreconciled.model import NicState
from nicreconciled.render import Renderer, make_renderer, owned_names
from nicreconciled.render.addressing import LOCAL_ROUTE_PROTOCOL
from nicreconciled.render.networkd import NetworkdRenderer, network, write_network
from nicreconciled.system.proc import Completed
from tests.states import ec2_state
from tests.unit.local_route_states import CASES as LOCAL_CASES
from tests.unit.local_route_states import golden_path as local_golden

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "networkd"
UPDATE_GOLDEN = os.environ.get("NICR_UPDATE_GOLDEN") == "1"

MAC = "0a:1b:2c:3d:4e:5f"
KEY = "0a1b2c3d4e5f"

Sections = list[tuple[str, dict[str, list[str]]]]


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


def primary(**fields: Any) -> NicState:
    base: dict[str, Any] = {
        "mac": "0a:1b:2c:3d:4e:01",
        "primary": True,
        "device_number": 0,
        "ipv4_addresses": ("10.0.1.5", "10.0.1.6"),
        "ipv6_addresses": ("2600:1f18:4a3:6901::5",),
        "ipv6_subnets": ("2600:1f18:4a3:6901::/64",),
        "ipv4_prefixes": ("10.0.1.64/28",),
    }
    base.update(fields)
    return nic(**base)


#: Golden file stem -> state. Every file in GOLDEN_DIR must have an entry here. Distinct MACs
#: and tables: the lab loads them all into one networkd.
GOLDEN_CASES: dict[str, NicState] = {
    "nonprimary-ipv4": nic(),
    "nonprimary-dualstack-prefixes-card1": dual_stack(),
    "nonprimary-ipv6-only": ipv6_only(),
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
        mac="0a:1b:2c:3d:4e:02", ipv6_addresses=(), ipv6_subnets=(), ipv4_prefixes=()
    ),
    "cloudstack-no-address": nic(
        mac="02:00:4c:4f:4f:51",
        cloud="cloudstack",
        interface_id=None,
        device_number=7,
        ipv4_addresses=(),
        ipv4_subnet=None,
        ipv4_gateway=None,
    ),
}


def parse(text: str) -> Sections:
    """A .network file as [(section, {key: [values]})], in order (sections repeat)."""
    parsed: Sections = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            parsed.append((line.strip("[]"), {}))
            continue
        key, _, value = line.partition("=")
        parsed[-1][1].setdefault(key, []).append(value)
    return parsed


def render(state: NicState) -> Sections:
    return parse(NetworkdRenderer().render(state))


def section(state: NicState, name: str) -> dict[str, list[str]]:
    """The one section NAME (asserting there is exactly one)."""
    (found,) = [body for title, body in render(state) if title == name]
    return found


def flat(body: dict[str, list[str]]) -> dict[str, str]:
    assert all(len(v) == 1 for v in body.values()), body
    return {k: v[0] for k, v in body.items()}


def every(state: NicState, name: str) -> list[dict[str, str]]:
    return [flat(body) for title, body in render(state) if title == name]


class TestFilename:
    def test_it_is_the_prefix_the_mac_key_and_the_suffix(self) -> None:
        assert NetworkdRenderer().filename(MAC) == f"05-nicreconciled-{KEY}.network"

    def test_it_sorts_before_every_other_network_file_known_to_match_an_eni(self) -> None:
        ours = NetworkdRenderer().filename(MAC)
        others = [
            "07-ens6.network",  # amazon-ec2-net-utils, Debian's package
            "10-netplan-ens6.network",
            "10-netplan-nicr-0a1b2c3d4e5f.network",
            "10-cloud-init-ens6.network",
            "70-ens6.network",  # amazon-ec2-net-utils upstream
            "80-ec2.network",  # AL2023's catch-all
            "89-ethernet.network",
        ]
        assert sorted([*others, ours])[0] == ours

    def test_upper_case_and_dashed_macs_give_the_same_name(self) -> None:
        renderer = NetworkdRenderer()
        assert renderer.filename("0A-1B-2C-3D-4E-5F") == renderer.filename(MAC)

    def test_the_owned_names_pattern_matches_exactly_our_files(self) -> None:
        pattern = owned_names(NetworkdRenderer())
        assert pattern.fullmatch(NetworkdRenderer().filename(MAC))
        assert not pattern.fullmatch("05-nicreconciled-0a1b2c3d4e5f.network.d")
        assert not pattern.fullmatch("10-netplan-nicr-0a1b2c3d4e5f.network")

    @pytest.mark.parametrize(
        "bad", ["", "0a1b2c3d4e5f", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5g", "../../etc/x"]
    )
    def test_an_invalid_mac_raises_value_error(self, bad: str) -> None:
        with pytest.raises(ValueError, match="MAC"):
            NetworkdRenderer().filename(bad)


class TestRendererClass:
    def test_it_satisfies_the_renderer_protocol(self) -> None:
        renderer: Renderer = NetworkdRenderer()
        assert renderer.name == "networkd"
        assert (renderer.prefix, renderer.suffix) == ("05-nicreconciled-", ".network")

    def test_its_files_are_readable_by_networkds_unprivileged_user(self) -> None:
        assert NetworkdRenderer.mode == 0o644

    def test_the_registry_builds_it_by_name(self) -> None:
        # The configuration's renderer name is validated by config.py; build past it here.
        config = parse_config({}).model_copy(update={"renderer": "networkd"})
        assert isinstance(make_renderer(config), NetworkdRenderer)


class TestMatch:
    def test_it_matches_the_current_mac_of_an_ethernet_device(self) -> None:
        match = flat(section(nic(mac="0A-1B-2C-3D-4E-5F"), "Match"))
        assert match["MACAddress"] == MAC
        assert match["Type"] == "ether"
        assert "PermanentMACAddress" not in match
        assert "Name" not in match

    def test_devices_that_share_the_mac_are_excluded_by_kind(self) -> None:
        kinds = flat(section(nic(), "Match"))["Kind"].split()
        assert kinds == ["!macvlan", "!macvtap", "!ipvlan", "!ipvtap", "!team"]


class TestNetwork:
    def test_an_ipv4_nic_runs_dhcpv4_and_takes_no_router_advertisement(self) -> None:
        body = flat(section(nic(), "Network"))
        assert (body["DHCP"], body["IPv6AcceptRA"]) == ("ipv4", "no")
        assert body["LinkLocalAddressing"] == "ipv6"

    def test_every_address_is_static_with_the_primary_first(self) -> None:
        assert section(dual_stack(), "Network")["Address"] == [
            "10.0.2.10/24",
            "10.0.2.20/24",
            "10.0.2.21/24",
            "2600:1f18:4a3:6902::10/64",
            "2600:1f18:4a3:6902::11/64",
        ]

    def test_a_dual_stack_nic_runs_both_dhcp_clients_and_takes_router_advertisements(
        self,
    ) -> None:
        body = section(dual_stack(), "Network")
        assert (body["DHCP"], body["IPv6AcceptRA"]) == (["yes"], ["yes"])

    def test_prefixes_are_not_assigned_as_addresses(self) -> None:
        text = " ".join(section(dual_stack(), "Network")["Address"])
        assert "10.0.2.128" not in text
        assert "9d00" not in text

    def test_dhcpv4_gets_the_metric_and_the_mtu(self) -> None:
        assert flat(section(dual_stack(), "DHCPv4")) == {"RouteMetric": "614", "UseMTU": "yes"}


class TestIPv6DefaultRouteInTheTable:
    def test_router_advertisement_routes_go_to_the_nics_table_with_its_metric(self) -> None:
        assert flat(section(dual_stack(), "IPv6AcceptRA")) == {
            "RouteMetric": "614",
            "RouteTable": "10102",
        }

    def test_no_gateway_ipv6ra_route_is_written(self) -> None:
        # It would also keep the RA default route in main (module docstring).
        assert "_ipv6ra" not in NetworkdRenderer().render(dual_stack())

    def test_an_ipv4_only_nic_has_no_ra_section(self) -> None:
        assert not [t for t, _ in render(nic()) if t == "IPv6AcceptRA"]

    def test_prefixes_alone_take_ras_into_the_table_but_ask_dhcpv6_for_nothing(self) -> None:
        state = GOLDEN_CASES["nonprimary-ipv6-prefix-only"]
        body = section(state, "Network")
        assert (body["IPv6AcceptRA"], body["DHCP"]) == (["yes"], ["ipv4"])
        assert flat(section(state, "IPv6AcceptRA")) == {
            "RouteMetric": "617",
            "RouteTable": "10105",
            "DHCPv6Client": "no",
        }


class TestPolicyRouting:
    def test_the_table_holds_the_subnet_route_the_default_route_and_the_ipv6_subnet(
        self,
    ) -> None:
        assert every(dual_stack(), "Route") == [
            {"Destination": "10.0.2.0/24", "Scope": "link", "Table": "10102"},
            {"Destination": "0.0.0.0/0", "Gateway": "10.0.2.1", "Table": "10102"},
            {"Destination": "2600:1f18:4a3:6902::/64", "Table": "10102"},
        ]

    def test_every_address_and_prefix_gets_a_rule_into_the_table(self) -> None:
        rules = every(dual_stack(), "RoutingPolicyRule")
        assert {(r["Table"], r["Priority"]) for r in rules} == {("10102", "10102")}
        assert [r["From"] for r in rules] == [
            "10.0.2.10/32",
            "10.0.2.20/32",
            "10.0.2.21/32",
            "2600:1f18:4a3:6902::10/128",
            "2600:1f18:4a3:6902::11/128",
            "10.0.2.128/28",
            "2600:1f18:4a3:6902:9d00::/80",
        ]

    def test_an_unknown_subnet_and_gateway_leave_out_only_their_routes(self) -> None:
        state = GOLDEN_CASES["nonprimary-metadata-partial"]
        assert every(state, "Route") == []
        assert section(state, "Network")["Address"] == ["10.0.1.40/32", "10.0.1.41/32"]
        assert len(every(state, "RoutingPolicyRule")) == 2

    def test_an_ipv4_only_nic_gets_no_ipv6_route(self) -> None:
        state = nic(ipv6_subnets=("2600:1f18:4a3:6902::/64",))
        assert not any(":" in r["Destination"] for r in every(state, "Route"))


class TestIPv6Only:
    def test_it_runs_only_dhcpv6_and_router_advertisements(self) -> None:
        body = flat({k: v for k, v in section(ipv6_only(), "Network").items() if k != "Address"})
        assert (body["DHCP"], body["IPv6AcceptRA"]) == ("ipv6", "yes")

    def test_it_has_no_dhcpv4_section_and_nothing_ipv4(self) -> None:
        state = ipv6_only()
        assert not [t for t, _ in render(state) if t == "DHCPv4"]
        text = NetworkdRenderer().render(state)
        assert not re.search(r"\b\d+\.\d+\.\d+\.\d+", text)

    def test_its_ipv6_routes_rules_and_ra_table_are_all_there(self) -> None:
        state = ipv6_only()
        assert flat(section(state, "IPv6AcceptRA"))["RouteTable"] == "10006"
        assert every(state, "Route") == [
            {"Destination": "2600:1f18:4a3:6906::/64", "Table": "10006"}
        ]
        assert [r["From"] for r in every(state, "RoutingPolicyRule")] == [
            "2600:1f18:4a3:6906::10/128",
            "2600:1f18:4a3:6906::11/128",
            "2600:1f18:4a3:6906:9d00::/80",
        ]


class TestPrimaryAndCloudStack:
    def test_the_primary_gets_dhcp_and_addresses_but_no_policy_routing(self) -> None:
        titles = [t for t, _ in render(primary())]
        assert titles == ["Match", "Network", "DHCPv4"]
        assert flat(section(primary(), "DHCPv4")) == {"UseMTU": "yes"}
        body = section(primary(), "Network")
        assert body["DHCP"] == ["yes"]
        assert body["IPv6AcceptRA"] == ["yes"]

    def test_a_primary_without_ipv6_leaves_router_advertisements_to_networkds_default(
        self,
    ) -> None:
        assert "IPv6AcceptRA" not in section(GOLDEN_CASES["primary-ipv4-only"], "Network")

    def test_a_cloudstack_nic_without_a_lease_is_just_dhcpv4(self) -> None:
        state = GOLDEN_CASES["cloudstack-no-address"]
        assert flat(section(state, "Network")) == {
            "DHCP": "ipv4",
            "LinkLocalAddressing": "ipv6",
            "IPv6AcceptRA": "no",
        }
        assert every(state, "Route") == []
        assert every(state, "RoutingPolicyRule") == []


class TestFormatSafety:
    @pytest.mark.parametrize("stem", sorted(GOLDEN_CASES))
    def test_every_line_is_a_comment_a_section_a_plain_key_value_or_blank(self, stem: str) -> None:
        for line in NetworkdRenderer().render(GOLDEN_CASES[stem]).splitlines():
            assert re.fullmatch(r"|# .*|\[[A-Za-z0-9]+\]|[A-Za-z0-9]+=[^\s#;\\\"'%].*", line), line

    def test_the_first_line_says_who_wrote_it_for_which_mac(self) -> None:
        first = NetworkdRenderer().render(nic()).splitlines()[0]
        assert first == f"# Written by nicreconciled for {MAC}; do not edit (rewritten on change)."

    @pytest.mark.parametrize(
        "value", ["a\nb", "x # y", "a;b", "a\\", '"q"', "%H", " lead", "trail ", "", "a\tb"]
    )
    def test_the_writer_refuses_values_the_format_would_misread(self, value: str) -> None:
        with pytest.raises(ValueError, match="invalid value"):
            write_network([("Network", [("Address", value)])])

    @pytest.mark.parametrize("key", ["", "Address X", "a=b", "#Key", "lowercase"])
    def test_the_writer_refuses_bad_keys(self, key: str) -> None:
        with pytest.raises(ValueError, match="invalid key"):
            write_network([("Network", [(key, "1")])])

    @pytest.mark.parametrize("name", ["", "Net work", "Match]", "match"])
    def test_the_writer_refuses_bad_section_names(self, name: str) -> None:
        with pytest.raises(ValueError, match="invalid section"):
            write_network([(name, [])])

    def test_the_same_state_always_renders_the_same_text(self) -> None:
        assert NetworkdRenderer().render(dual_stack()) == NetworkdRenderer().render(dual_stack())

    def test_the_data_is_what_render_serializes(self) -> None:
        state = dual_stack()
        assert parse(write_network(network(state))) == render(state)


class TestGoldenFiles:
    @pytest.mark.parametrize("stem", sorted(GOLDEN_CASES))
    def test_rendering_matches_the_golden_file(self, stem: str) -> None:
        text = NetworkdRenderer().render(GOLDEN_CASES[stem])
        path = GOLDEN_DIR / f"{stem}.network"
        if UPDATE_GOLDEN:
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_golden_file_has_a_case(self) -> None:
        on_disk = {p.stem for p in GOLDEN_DIR.glob("*.network")}
        assert on_disk <= set(GOLDEN_CASES), f"stale golden files: {on_disk - set(GOLDEN_CASES)}"

    def test_golden_cases_are_distinct_nics(self) -> None:
        states = list(GOLDEN_CASES.values())
        assert len({s.mac for s in states}) == len(states)
        non_primary = [s for s in states if not s.primary]
        assert len({s.route_table for s in non_primary}) == len(non_primary)


class Recorder:
    """Stands in for ``proc.run``: records every argv, fails when told to."""

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.returncode = returncode

    async def __call__(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
        self.calls.append(tuple(argv))
        return Completed(tuple(argv), self.returncode, "", "networkctl: failed\n")


class TestNetworkdApplier:
    async def test_one_reload_loads_a_written_file(self, tmp_path: Path) -> None:
        runner = Recorder()
        path = tmp_path / NetworkdRenderer().filename(MAC)
        path.write_text("[Match]\n")
        await NetworkdApplier(runner).apply(mac=MAC, path=path, ifname="ens6")
        assert runner.calls == [("networkctl", "reload")]

    async def test_a_removed_file_is_unloaded_by_the_same_reload(self, tmp_path: Path) -> None:
        runner = Recorder()
        path = tmp_path / NetworkdRenderer().filename(MAC)
        await NetworkdApplier(runner).apply(mac=MAC, path=path, ifname=None)
        assert runner.calls == [("networkctl", "reload")]

    async def test_a_batch_of_nics_costs_one_reload(self, tmp_path: Path) -> None:
        runner = Recorder()
        macs = [f"0a:1b:2c:3d:4e:{n:02x}" for n in range(4)]
        changes = [Change(mac, tmp_path / NetworkdRenderer().filename(mac), "ens6") for mac in macs]
        outcome: Outcome = await NetworkdApplier(runner).apply_batch(changes)
        assert runner.calls == [("networkctl", "reload")]
        assert outcome == dict.fromkeys(macs, None)

    async def test_a_failed_reload_is_an_apply_error(self, tmp_path: Path) -> None:
        runner = Recorder(returncode=1)
        with pytest.raises(ApplyError, match="networkctl reload exited 1"):
            await NetworkdApplier(runner).apply(mac=MAC, path=tmp_path / "x", ifname="ens6")


class TestLocalRoutes:
    """``local_routes``: type local in table local, scope host, our protocol number."""

    def test_each_is_a_local_route_in_table_local_with_our_protocol(self) -> None:
        state = LOCAL_CASES["secondary-dualstack"]
        local = [r for r in every(state, "Route") if r.get("Type") == "local"]
        assert local == [
            {
                "Destination": "10.128.16.0/24",
                "Type": "local",
                "Scope": "host",
                "Table": "255",
                "Protocol": str(LOCAL_ROUTE_PROTOCOL),
            },
            {
                "Destination": "203.0.113.7/32",
                "Type": "local",
                "Scope": "host",
                "Table": "255",
                "Protocol": str(LOCAL_ROUTE_PROTOCOL),
            },
            # networkd ignores Scope= on an IPv6 route, with a warning: none is written.
            {
                "Destination": "2600:1900:4010:5:8000::7/128",
                "Type": "local",
                "Table": "255",
                "Protocol": str(LOCAL_ROUTE_PROTOCOL),
            },
        ]

    def test_the_protocol_number_is_no_one_elses(self) -> None:
        # 66 is google-guest-agent's for these very routes; the kernel's and iproute2's names
        # stop at 99 (openr) below 186 (bgp).
        assert LOCAL_ROUTE_PROTOCOL == 110

    def test_the_primary_gets_them_too_and_no_policy_routing(self) -> None:
        state = LOCAL_CASES["primary-ipv4"]
        routes = every(state, "Route")
        assert [r["Destination"] for r in routes] == [
            "10.128.32.0/24",
            "10.128.33.0/28",
            "203.0.113.8/32",
        ]
        assert {(r["Type"], r["Table"]) for r in routes} == {("local", "255")}
        assert every(state, "RoutingPolicyRule") == []

    def test_they_come_after_the_tables_routes_and_change_nothing_else(self) -> None:
        with_local = LOCAL_CASES["secondary-ipv4-ipv6-local"]
        without = NicState.model_validate({**with_local.model_dump(), "local_routes": ()})
        sections = render(with_local)
        assert [s for s in sections if s[1].get("Type") != ["local"]] == render(without)
        kinds = [body.get("Type") == ["local"] for title, body in sections if title == "Route"]
        assert kinds == sorted(kinds)  # every local route after every other route

    def test_an_ipv6_one_without_ipv6_addresses_keeps_ipv6_on_the_link(self) -> None:
        state = LOCAL_CASES["secondary-ipv4-ipv6-local"]
        assert section(state, "Network")["LinkLocalAddressing"] == ["ipv6"]
        destinations = [r["Destination"] for r in every(state, "Route")]
        assert "2001:db8:77::9/128" in destinations

    def test_repeats_are_written_once_ipv4_first(self) -> None:
        state = nic(local_routes=("2001:db8::/96", "192.0.2.0/24", "2001:db8::/96"))
        local = [r["Destination"] for r in every(state, "Route") if r.get("Type") == "local"]
        assert local == ["192.0.2.0/24", "2001:db8::/96"]

    @pytest.mark.parametrize("stem", sorted(LOCAL_CASES))
    def test_rendering_matches_the_golden_file(self, stem: str) -> None:
        text = NetworkdRenderer().render(LOCAL_CASES[stem])
        path = local_golden("networkd", stem, ".network")
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_golden_file_has_a_case(self) -> None:
        folder = local_golden("networkd", "x", "").parent
        assert {p.stem for p in folder.glob("*.network")} == set(LOCAL_CASES)


class TestLeaseRoutes:
    def test_a_secondary_nic_with_dhcp_routes_off_uses_none_of_its_lease_routes(self) -> None:
        assert flat(section(nic(dhcp_routes=False), "DHCPv4"))["UseRoutes"] == "no"
        assert "UseRoutes" not in flat(section(nic(), "DHCPv4"))

    def test_the_primary_keeps_its_lease_whole(self) -> None:
        assert all("UseRoutes" not in s for s in every(primary(dhcp_routes=False), "DHCPv4"))
