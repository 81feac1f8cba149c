"""Canonical fingerprints of NicState."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

from nicreconciled.fingerprint import canonical, fingerprint
from nicreconciled.model import NicState
from tests.states import ec2_state


def state(**changes: object) -> NicState:
    base: dict[str, object] = {
        "mac": "0A:00:00:00:00:02",
        "cloud": "ec2",
        "primary": False,
        "device_number": 1,
        "ipv4_addresses": (IPv4Address("10.0.1.5"), IPv4Address("10.0.1.6")),
        "ipv4_subnet": IPv4Network("10.0.1.0/24"),
    }
    base.update(changes)
    return ec2_state(base)


class TestFingerprint:
    def test_equal_states_have_equal_fingerprints(self) -> None:
        assert fingerprint(state()) == fingerprint(state(mac="0a:00:00:00:00:02"))

    def test_any_rendered_fact_changes_the_fingerprint(self) -> None:
        base = fingerprint(state())
        assert fingerprint(state(device_number=2)) != base
        assert fingerprint(state(ipv6_addresses=(IPv6Address("2001:db8::1"),))) != base
        assert fingerprint(state(ipv4_addresses=(IPv4Address("10.0.1.5"),))) != base

    def test_the_primary_address_comes_first_so_order_matters(self) -> None:
        swapped = state(ipv4_addresses=(IPv4Address("10.0.1.6"), IPv4Address("10.0.1.5")))
        assert fingerprint(swapped) != fingerprint(state())

    def test_absent_is_a_state_of_its_own(self) -> None:
        assert canonical(None) == "null"
        assert fingerprint(None) != fingerprint(state())

    def test_the_canonical_form_is_sorted_compact_json(self) -> None:
        text = canonical(state())
        assert text.startswith('{"cloud":"ec2","device_number":1,')
        assert " " not in text
        assert len(fingerprint(state())) == 16


class TestLaterFields:
    """Fields added after fingerprints were first stored leave old states' fingerprints as
    they were (no re-render of every NIC at an upgrade), and count once used."""

    def test_at_their_defaults_they_are_not_in_the_canonical_form(self) -> None:
        text = canonical(state())
        assert "local_routes" not in text
        assert "dhcp_routes" not in text

    def test_used_they_change_the_fingerprint(self) -> None:
        base = fingerprint(state())
        assert fingerprint(state(local_routes=(IPv4Network("10.128.1.0/24"),))) != base
        assert fingerprint(state(dhcp_routes=False)) != base
