"""parse_nic() and parse_mac_listing(): pure functions, fed with captured-style fixtures."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from nicreconciled.errors import MetadataError
from nicreconciled.model import MAX_ADDRESSES, Observation
from nicreconciled.sources.ec2_parse import parse_mac_listing, parse_nic
from tests.unit.conftest import Ec2Capture

Load = Callable[[str], Ec2Capture]


def parse(cap: Ec2Capture, **changes: str | None) -> Observation:
    """parse_nic on a capture, with some key answers replaced."""
    return parse_nic(cap.mac, cap.listing, cap.raw() | changes, cap.primary_mac)


def kinds(obs: Observation) -> list[str]:
    return [flag.kind for flag in obs.flags]


class TestCompleteEni:
    def test_every_field_is_parsed_in_order(self, capture: Load) -> None:
        obs = parse(capture("complete_eni"))
        state = obs.state
        assert state is not None
        assert obs.flags == ()
        assert obs.probe == {}
        assert state.mac == "0e:5c:3a:91:0b:7f"
        assert state.cloud == "ec2"
        assert state.primary is False
        assert (state.device_number, state.route_table, state.route_metric) == (1, 10001, 513)
        assert state.interface_id == "eni-0f1e2d3c4b5a69788"
        assert state.ipv4_addresses == tuple(
            IPv4Address(a) for a in ("10.20.1.37", "10.20.1.99", "10.20.1.140")
        )
        assert state.ipv4_subnet == IPv4Network("10.20.1.0/24")
        assert state.ipv6_addresses == (IPv6Address("2600:1f18:4367:3401:6c1d:9e2f:a0b1:c2d3"),)
        assert state.ipv6_subnets == (IPv6Network("2600:1f18:4367:3401::/64"),)
        assert state.ipv4_prefixes == (IPv4Network("10.20.1.208/28"),)
        assert state.ipv6_prefixes == (IPv6Network("2600:1f18:4367:3401:8e5f::/80"),)

    def test_gateway_is_the_first_host_of_the_subnet(self, capture: Load) -> None:
        state = parse(capture("complete_eni")).state
        assert state is not None
        assert state.ipv4_gateway == IPv4Address("10.20.1.1")

    def test_primary_is_decided_by_the_primary_mac(self, capture: Load) -> None:
        cap = capture("complete_eni")
        obs = parse_nic(cap.mac, cap.listing, cap.raw(), primary_mac=cap.mac.upper())
        assert obs.state is not None
        assert obs.state.primary is True

    def test_mac_is_normalized(self, capture: Load) -> None:
        cap = capture("complete_eni")
        obs = parse_nic(cap.mac.upper().replace(":", "-"), cap.listing, cap.raw(), cap.primary_mac)
        assert obs.mac == cap.mac

    def test_network_card_absent_from_listing_means_zero(self, capture: Load) -> None:
        cap = capture("late_ipv6")
        state = parse(cap).state
        assert state is not None
        assert state.route_table == 10000 + state.device_number

    def test_blank_lines_and_duplicates_are_ignored(self, capture: Load) -> None:
        obs = parse(capture("complete_eni"), **{"local-ipv4s": "\n10.20.1.37\n\n10.20.1.37\n"})
        assert obs.state is not None
        assert obs.state.ipv4_addresses == (IPv4Address("10.20.1.37"),)

    def test_parsing_is_pure(self, capture: Load) -> None:
        cap = capture("complete_eni")
        raw = cap.raw()
        before = dict(raw)
        assert parse_nic(cap.mac, cap.listing, raw, cap.primary_mac) == parse_nic(
            cap.mac, cap.listing, raw, cap.primary_mac
        )
        assert raw == before

    def test_keys_absent_from_listing_are_ignored_even_if_answered(self, capture: Load) -> None:
        cap = capture("late_ipv6")
        obs = parse_nic(cap.mac, cap.listing, cap.raw() | {"ipv6s": "2600::1"}, cap.primary_mac)
        assert obs.state is not None
        assert obs.state.ipv6_addresses == ()


class TestLateIpv6:
    def test_state_is_built_and_flagged_pending_with_ipv6_grace(self, capture: Load) -> None:
        cap = capture("late_ipv6")
        obs = parse(cap)
        assert obs.state is not None
        assert obs.state.ipv6_addresses == ()
        assert obs.state.ipv6_subnets == (IPv6Network("2600:1f18:4367:3401::/64"),)
        (flag,) = obs.flags
        assert flag.kind == "ipv6-pending"
        assert flag.grace == "ipv6"
        assert flag.keys == (cap.directory + "ipv6s",)

    def test_probe_holds_the_awaited_answer(self, capture: Load) -> None:
        cap = capture("late_ipv6")
        assert parse(cap).probe == {cap.directory + "ipv6s": None}

    def test_no_flag_on_an_ipv4_only_subnet(self, capture: Load) -> None:
        cap = capture("late_ipv6")
        listing = cap.listing.replace("subnet-ipv6-cidr-blocks\n", "")
        obs = parse_nic(cap.mac, listing, cap.raw(), cap.primary_mac)
        assert obs.flags == ()


class TestListedBut404:
    def test_optional_keys_flagged_and_state_still_built(self, capture: Load) -> None:
        cap = capture("listed_but_404")
        obs = parse(cap)
        assert obs.state is not None
        assert obs.state.interface_id is None
        assert kinds(obs) == ["listed-but-404", "ipv6-pending"]
        flag = obs.flags[0]
        paths = (cap.directory + "interface-id", cap.directory + "ipv6s")
        assert flag.keys == paths
        assert flag.grace == "deadline"
        assert obs.probe == dict.fromkeys(paths)

    def test_a_listed_key_missing_from_raw_counts_as_404(self, capture: Load) -> None:
        cap = capture("complete_eni")
        raw = cap.raw()
        del raw["interface-id"]
        obs = parse_nic(cap.mac, cap.listing, raw, cap.primary_mac)
        assert kinds(obs) == ["listed-but-404"]
        assert obs.flags[0].keys == (cap.directory + "interface-id",)

    @pytest.mark.parametrize("key", ["device-number", "local-ipv4s", "subnet-ipv4-cidr-block"])
    def test_required_key_404_leaves_no_state(self, capture: Load, key: str) -> None:
        cap = capture("complete_eni")
        obs = parse(cap, **{key: None})
        assert obs.state is None
        assert kinds(obs) == ["listed-but-404"]
        assert obs.probe == {cap.directory + key: None}

    @pytest.mark.parametrize("key", ["ipv4-prefix", "ipv6-prefix"])
    def test_prefix_404_means_none_delegated(self, capture: Load, key: str) -> None:
        # IMDS answers 404, not an empty body, when an ENI has no delegated prefix.
        obs = parse(capture("complete_eni"), **{key: None})
        assert obs.state is not None
        assert obs.flags == ()


class TestDeviceNumberZero:
    def test_secondary_reading_zero_is_flagged(self, capture: Load) -> None:
        cap = capture("device_number_0")
        obs = parse(cap)
        assert obs.state is not None
        assert obs.state.device_number == 0
        (flag,) = obs.flags
        assert flag.kind == "device-number-0"
        assert flag.keys == (cap.directory + "device-number",)
        assert obs.probe == {cap.directory + "device-number": "0"}

    def test_primary_with_zero_is_normal(self, capture: Load) -> None:
        cap = capture("device_number_0")
        obs = parse_nic(cap.mac, cap.listing, cap.raw(), primary_mac=cap.mac)
        assert obs.flags == ()


class TestIncomplete:
    def test_missing_required_key_means_no_state(self, capture: Load) -> None:
        cap = capture("incomplete")
        obs = parse(cap)
        assert obs.state is None
        assert kinds(obs) == ["incomplete", "ipv6-pending"]
        flag = obs.flags[0]
        assert "subnet-ipv4-cidr-block" in flag.detail
        assert flag.keys == (cap.directory,)
        # A directory key's probe answer is the listing text.
        assert obs.probe[cap.directory] == cap.listing

    def test_empty_listing_names_every_required_key(self, capture: Load) -> None:
        cap = capture("incomplete")
        obs = parse_nic(cap.mac, "", {}, cap.primary_mac)
        assert obs.state is None
        detail = obs.flags[0].detail
        assert "missing device-number, local-ipv4s, subnet-ipv4-cidr-block" in detail
        assert detail.endswith("(or ipv6s, for an ENI of an IPv6-only subnet)")


def ipv6_only(cap: Ec2Capture, *, drop: tuple[str, ...] = ()) -> tuple[str, dict[str, str | None]]:
    """The complete ENI of CAPTURE as an ENI of an IPv6-only subnet: listing and answers
    without any IPv4 key (and without DROP)."""
    gone = {"local-ipv4s", "subnet-ipv4-cidr-block", "ipv4-prefix", *drop}
    names = [n for n in cap.listing.split("\n") if n not in gone]
    raw = {k: v for k, v in cap.raw().items() if k not in gone}
    return "\n".join(names), raw


class TestIPv6OnlyEni:
    """EC2 IPv6-only subnets: ``ipv6s`` and ``subnet-ipv6-cidr-blocks``, no IPv4 key at all."""

    def test_it_is_a_complete_state_without_ipv4_and_without_any_flag(self, capture: Load) -> None:
        cap = capture("complete_eni")
        listing, raw = ipv6_only(cap)
        obs = parse_nic(cap.mac, listing, raw, cap.primary_mac)
        assert obs.flags == ()
        state = obs.state
        assert state is not None
        assert state.ipv6_only is True
        assert (state.ipv4_addresses, state.ipv4_subnet, state.ipv4_gateway) == ((), None, None)
        assert state.ipv4_prefixes == ()
        assert state.ipv6_addresses == (IPv6Address("2600:1f18:4367:3401:6c1d:9e2f:a0b1:c2d3"),)
        assert state.ipv6_subnets == (IPv6Network("2600:1f18:4367:3401::/64"),)
        assert state.ipv6_prefixes == (IPv6Network("2600:1f18:4367:3401:8e5f::/80"),)
        assert state.device_number == 1

    def test_a_dual_stack_eni_is_never_ipv6_only(self, capture: Load) -> None:
        state = parse(capture("complete_eni")).state
        assert state is not None
        assert state.ipv6_only is False

    @pytest.mark.parametrize("listed", ["local-ipv4s", "subnet-ipv4-cidr-block"])
    def test_a_dual_stack_eni_whose_ipv4_is_late_still_waits(
        self, capture: Load, listed: str
    ) -> None:
        # One IPv4 key listed (even answering 404): this ENI has IPv4, it is not there yet.
        cap = capture("complete_eni")
        listing, raw = ipv6_only(cap)
        obs = parse_nic(cap.mac, f"{listing}\n{listed}", raw, cap.primary_mac)
        assert obs.state is None
        assert "incomplete" in kinds(obs)
        assert "listed-but-404" in kinds(obs)

    def test_the_incomplete_fixture_still_waits_for_its_subnet(self, capture: Load) -> None:
        obs = parse(capture("incomplete"))
        assert obs.state is None
        assert kinds(obs)[0] == "incomplete"

    def test_without_ipv6s_listed_it_waits_and_says_what_is_missing(self, capture: Load) -> None:
        cap = capture("complete_eni")
        listing, raw = ipv6_only(cap, drop=("ipv6s",))
        obs = parse_nic(cap.mac, listing, raw, cap.primary_mac)
        assert obs.state is None
        assert kinds(obs) == ["incomplete", "ipv6-pending"]
        assert "(or ipv6s, for an ENI of an IPv6-only subnet)" in obs.flags[0].detail

    def test_without_its_subnet_it_waits_for_the_subnet(self, capture: Load) -> None:
        cap = capture("complete_eni")
        listing, raw = ipv6_only(cap, drop=("subnet-ipv6-cidr-blocks",))
        obs = parse_nic(cap.mac, listing, raw, cap.primary_mac)
        assert obs.state is None
        (flag,) = obs.flags
        assert flag.detail == "metadata incomplete: missing subnet-ipv6-cidr-blocks"
        assert flag.keys == (cap.directory,)

    def test_ipv6s_listed_but_404_leaves_no_state(self, capture: Load) -> None:
        cap = capture("complete_eni")
        listing, raw = ipv6_only(cap)
        obs = parse_nic(cap.mac, listing, raw | {"ipv6s": None}, cap.primary_mac)
        assert obs.state is None
        assert kinds(obs) == ["listed-but-404", "ipv6-pending"]

    def test_a_secondary_reading_device_number_0_is_still_flagged(self, capture: Load) -> None:
        cap = capture("complete_eni")
        listing, raw = ipv6_only(cap)
        obs = parse_nic(cap.mac, listing, raw | {"device-number": "0"}, cap.primary_mac)
        assert obs.state is not None
        assert kinds(obs) == ["device-number-0"]


class TestGarbage:
    @pytest.mark.parametrize(
        ("name", "key"),
        [
            ("garbage_bad_address", "local-ipv4s"),
            ("garbage_nul", "ipv6s"),
            ("garbage_newline_interface_id", "interface-id"),
            ("garbage_thousands", "local-ipv4s"),
        ],
    )
    def test_captured_garbage_is_refused_naming_the_key(
        self, capture: Load, name: str, key: str
    ) -> None:
        with pytest.raises(MetadataError) as info:
            parse(capture(name))
        message = str(info.value)
        assert message.startswith(key)
        assert "\n" not in message
        assert "\x00" not in message

    def test_thousands_fail_on_the_count(self, capture: Load) -> None:
        with pytest.raises(MetadataError, match=f"3000 entries, more than {MAX_ADDRESSES}"):
            parse(capture("garbage_thousands"))

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("device-number", "-1"),
            ("device-number", "100"),
            ("device-number", "1e2"),
            ("device-number", "\u0663"),  # an Arabic-Indic digit: int() would accept it
            ("device-number", "1\n2"),
            ("device-number", ""),
            ("network-card", "x"),
            ("interface-id", "eni-XYZ"),
            ("interface-id", "eni-0f1e2d3c4b5a69788 x"),
            ("interface-id", "vol-0f1e2d3c4b5a69788"),
            ("local-ipv4s", ""),
            ("local-ipv4s", "010.20.1.37"),
            ("local-ipv4s", "2600::1"),
            ("subnet-ipv4-cidr-block", "10.20.1.5/24"),
            ("subnet-ipv4-cidr-block", "10.20.1.0"),
            ("subnet-ipv4-cidr-block", "10.20.1.0/24\n10.20.2.0/24"),
            ("subnet-ipv4-cidr-block", "10.20.1.0/32"),
            ("ipv6s", "fe80::1%eth0"),
            ("ipv6s", "10.0.0.1"),
            ("subnet-ipv6-cidr-blocks", "2600:1f18::1/64"),
            ("subnet-ipv6-cidr-blocks", "\n".join(f"2600:1f18:{i:x}::/64" for i in range(17))),
            ("ipv4-prefix", "10.20.1.208/33"),
            ("ipv6-prefix", "2600::/129"),
            ("ipv6s", "2600::1\r"),
            ("local-ipv4s", "10.20.1.37\x1b[2J"),
            ("local-ipv4s", "10.20.1.37\x85"),
            # Found by tests/fuzz: accepted, rendered as "0.0.0.0/24" (networkd: any free
            # address of its pool) or as addresses "/0" (netplan generate refuses them).
            ("local-ipv4s", "10.20.1.37\n0.0.0.0"),
            ("ipv6s", "::"),
            ("subnet-ipv4-cidr-block", "0.0.0.0/0"),
            ("subnet-ipv6-cidr-blocks", "::/0"),
            ("ipv4-prefix", "0.0.0.0/0"),
            ("ipv6-prefix", "::/0"),
        ],
    )
    def test_invalid_value_is_refused_naming_the_key(
        self, capture: Load, key: str, value: str
    ) -> None:
        with pytest.raises(MetadataError) as info:
            parse(capture("complete_eni"), **{key: value})
        assert str(info.value).startswith(key)
        assert "\n" not in str(info.value)

    def test_control_character_in_listing_is_refused(self, capture: Load) -> None:
        cap = capture("complete_eni")
        with pytest.raises(MetadataError, match="control character"):
            parse_nic(cap.mac, cap.listing + "\x00", cap.raw(), cap.primary_mac)

    def test_trailing_newline_is_not_garbage(self, capture: Load) -> None:
        obs = parse(capture("complete_eni"), **{"interface-id": "eni-0f1e2d3c4b5a69788\n"})
        assert obs.state is not None
        assert obs.state.interface_id == "eni-0f1e2d3c4b5a69788"


class TestMacListing:
    def test_hostile_entries_are_dropped_and_reported(self, capture: Load) -> None:
        cap = capture("hostile_mac_listing")
        text = cap.answers["meta-data/network/interfaces/macs/"]
        assert text is not None
        macs, rejected = parse_mac_listing(text)
        assert macs == {"0e:5c:3a:91:0b:01", "0e:5c:3a:91:0b:7f", "0e:5c:3a:91:0b:99"}
        assert "../../etc/" in rejected
        assert "0e:5c:3a:91:0b:7f/../../../latest/api/token/" in rejected
        assert "not-a-mac" in rejected
        assert len(rejected) == 6

    def test_empty_listing(self) -> None:
        assert parse_mac_listing("") == (frozenset(), ())
