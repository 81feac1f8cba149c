"""A notification's object named as the promise names it (kernelstate.describe_event)."""

from __future__ import annotations

import socket

from nicreconciled.system import rtnl
from nicreconciled.system.kernelstate import describe_event, describe_event_items
from tests.unit.test_rtnl import attr, ifaddrmsg, ip, nexthop, rtmsg, rulemsg, u32

AF4, AF6 = socket.AF_INET, socket.AF_INET6


def event(kind: str, body: bytes) -> rtnl.Event:
    return rtnl.Event(kind, False, body[0], None, None, 1, body)  # type: ignore[arg-type]


class TestDescribeEvent:
    def test_an_address(self) -> None:
        body = ifaddrmsg(AF6, 64, 7, ip(1, "2001:db8:11:0::10"))
        assert describe_event(event("address", body)) == "address 2001:db8:11::10/64"

    def test_a_plain_source_rule(self) -> None:
        body = rulemsg(AF4, ip(2, "10.0.11.20"), u32(6, 10001), u32(15, 10001), src_len=32)
        assert (
            describe_event(event("rule", body))
            == "rule from 10.0.11.20/32 lookup 10001 priority 10001"
        )

    def test_a_rule_with_more_selectors_is_not_a_promise(self) -> None:
        body = rulemsg(AF4, u32(10, 0x80), u32(6, 100), u32(15, 200))
        assert describe_event(event("rule", body)) is None

    def test_routes_default_and_on_link(self) -> None:
        default = rtmsg(AF4, 0, 252, u32(15, 10001), ip(5, "10.0.11.1"), u32(4, 7))
        assert describe_event(event("route", default)) == "route default via 10.0.11.1 table 10001"
        subnet = rtmsg(AF6, 64, 252, u32(15, 10001), ip(1, "2001:db8:11::"), u32(4, 7))
        assert describe_event(event("route", subnet)) == "route 2001:db8:11::/64 table 10001"

    def test_a_local_route_in_table_local(self) -> None:
        local = rtmsg(AF4, 24, 255, ip(1, "10.128.16.0"), u32(4, 7), rtype=2)
        assert describe_event(event("route", local)) == "route local 10.128.16.0/24 table local"
        local6 = rtmsg(AF6, 128, 255, ip(1, "2001:db8:11:8000::7"), u32(4, 7), rtype=2)
        assert (
            describe_event(event("route", local6))
            == "route local 2001:db8:11:8000::7/128 table local"
        )

    def test_other_types_in_table_local_and_garbage_are_nothing(self) -> None:
        broadcast = rtmsg(AF4, 32, 255, ip(1, "10.0.11.255"), u32(4, 7), rtype=3)
        assert describe_event(event("route", broadcast)) is None
        elsewhere = rtmsg(AF4, 24, 252, u32(15, 10001), ip(1, "10.128.16.0"), u32(4, 7), rtype=2)
        assert describe_event(event("route", elsewhere)) is None
        assert describe_event(event("route", b"\x02\x00")) is None
        assert describe_event(event("link", b"\x00" * 16)) is None


def test_a_multipath_route_names_a_route_per_next_hop() -> None:
    hops = nexthop(4, ip(5, "2001:db8:11::1")) + nexthop(4, ip(5, "fe80::1"))
    body = rtmsg(10, 0, 252, u32(15, 10257), attr(9, hops))
    assert describe_event_items(event("route", body)) == [
        "route default via 2001:db8:11::1 table 10257",
        "route default via fe80::1 table 10257",
    ]
