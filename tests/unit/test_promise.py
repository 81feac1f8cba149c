"""promise(): what a NIC's applied configuration puts in the kernel, and the diff."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from nicreconciled.model import NicState, StaticRoute
from nicreconciled.promise import Choices, Promise, PromisedRoute, PromisedRule, promise, snapshot


def eni(**changes: object) -> NicState:
    base: dict[str, object] = {
        "mac": "0a:00:00:00:01:01",
        "cloud": "ec2",
        "primary": False,
        "device_number": 1,
        "route_table": 10001,
        "route_metric": 513,
        "ipv4_addresses": (IPv4Address("10.0.11.20"), IPv4Address("10.0.11.21")),
        "ipv4_subnet": IPv4Network("10.0.11.0/24"),
        "ipv4_gateway": IPv4Address("10.0.11.1"),
        "ipv6_addresses": (IPv6Address("2001:db8:11::10"),),
        "ipv6_subnets": (IPv6Network("2001:db8:11::/64"),),
    }
    base.update(changes)
    return NicState.model_validate(base)


class TestPromise:
    def test_a_secondary_eni_promises_addresses_rules_and_its_table(self) -> None:
        p = promise(eni())
        assert p.addresses == ("10.0.11.20/24", "10.0.11.21/24", "2001:db8:11::10/64")
        assert p.rules == (
            PromisedRule("10.0.11.20/32", 10001, 10001),
            PromisedRule("10.0.11.21/32", 10001, 10001),
            PromisedRule("2001:db8:11::10/128", 10001, 10001),
        )
        assert p.routes == (
            PromisedRoute("10.0.11.0/24", None, 10001),
            PromisedRoute("0.0.0.0/0", "10.0.11.1", 10001),
            PromisedRoute("2001:db8:11::/64", None, 10001),
        )
        assert p.tables == {10001}

    def test_the_primary_promises_its_addresses_only(self) -> None:
        p = promise(eni(primary=True))
        assert p.rules == ()
        assert p.routes == ()
        assert p.table == 0
        assert "10.0.11.20/24" in p.addresses

    def test_named_routers_and_extra_routes_are_promised_in_the_table(self) -> None:
        route = StaticRoute(to=IPv4Network("192.168.0.0/16"), via=IPv4Address("10.0.11.254"))
        p = promise(eni(ipv6_gateway=IPv6Address("2001:db8:11::1"), routes=(route,)))
        assert PromisedRoute("::/0", "2001:db8:11::1", 10001) in p.routes
        assert PromisedRoute("192.168.0.0/16", "10.0.11.254", 10001) in p.routes

    def test_without_ipv6_no_ipv6_route_is_promised(self) -> None:
        p = promise(eni(ipv6_addresses=()))
        assert all(":" not in r.destination for r in p.routes)
        assert all(":" not in r.source for r in p.rules)

    def test_a_backend_that_drops_rules_is_not_promised_rules(self) -> None:
        assert promise(eni(), Choices(rules=False)).rules == ()

    def test_delegated_prefixes_get_rules(self) -> None:
        p = promise(eni(ipv4_prefixes=(IPv4Network("10.0.11.64/28"),)))
        assert PromisedRule("10.0.11.64/28", 10001, 10001) in p.rules


class TestMissing:
    def kernel_of(
        self, p: Promise
    ) -> tuple[list[str], list[tuple[str, int, int]], list[tuple[str, str | None, int]]]:
        return (
            list(p.addresses),
            [(r.source, r.table, r.priority) for r in p.rules],
            [(r.destination, r.gateway, r.table) for r in p.routes],
        )

    def test_the_whole_promise_in_the_kernel_misses_nothing(self) -> None:
        p = promise(eni())
        addresses, rules, routes = self.kernel_of(p)
        extra = [("10.9.9.0/24", None, 10001), ("::/0", "fe80::1", 10001)]  # RA, DHCP: fine
        assert p.missing(snapshot([*addresses, "fe80::1/64"], rules, routes + extra)) == []

    def test_each_missing_object_is_one_line(self) -> None:
        p = promise(eni())
        addresses, rules, routes = self.kernel_of(p)
        kernel = snapshot(addresses[1:], rules[1:], routes[:1])
        assert p.missing(kernel) == [
            "address 10.0.11.20/24",
            "rule from 10.0.11.20/32 lookup 10001 priority 10001",
            "route default via 10.0.11.1 table 10001",
            "route 2001:db8:11::/64 table 10001",
        ]

    def test_a_rule_at_another_priority_or_table_is_not_ours(self) -> None:
        p = promise(eni(ipv6_addresses=(), ipv4_addresses=(IPv4Address("10.0.11.20"),)))
        addresses, _rules, routes = self.kernel_of(p)
        kernel = snapshot(
            addresses, [("10.0.11.20/32", 10001, 100), ("10.0.11.20/32", 200, 10001)], routes
        )
        assert p.missing(kernel) == ["rule from 10.0.11.20/32 lookup 10001 priority 10001"]

    def test_text_forms_are_normalized(self) -> None:
        p = promise(eni())
        kernel = snapshot(
            ["10.0.11.20/24", "10.0.11.21/24", "2001:0db8:0011::0010/64"],
            [
                (s, 10001, 10001)
                for s in ("10.0.11.20/32", "10.0.11.21/32", "2001:db8:11:0::10/128")
            ],
            [
                ("10.0.11.0/24", None, 10001),
                ("0.0.0.0/0", "10.0.11.1", 10001),
                ("2001:db8:11:0::/64", None, 10001),
            ],
        )
        assert p.missing(kernel) == []


class TestJson:
    def test_round_trip(self) -> None:
        route = StaticRoute(to=IPv4Network("192.168.0.0/16"), via=IPv4Address("10.0.11.254"))
        p = promise(eni(routes=(route,)))
        assert Promise.from_json(p.to_json()) == p

    @pytest.mark.parametrize(
        "data",
        [
            None,
            [],
            {},
            {"addresses": ["x"], "rules": [], "routes": []},
            {"addresses": [], "rules": [{"from": "1.2.3.4/32"}], "routes": []},
        ],
    )
    def test_anything_else_is_a_value_error(self, data: object) -> None:
        with pytest.raises(ValueError, match="not a promise"):
            Promise.from_json(data)


LOCAL = (
    IPv4Network("10.128.16.0/24"),
    IPv4Network("203.0.113.7/32"),
    IPv6Network("2001:db8:11:8000::7/128"),
)


class TestLocalRoutes:
    def test_a_nics_local_routes_are_promised_in_table_local(self) -> None:
        p = promise(eni(local_routes=LOCAL))
        assert p.local == ("10.128.16.0/24", "203.0.113.7/32", "2001:db8:11:8000::7/128")
        assert p.items()[-3:] == [
            "route local 10.128.16.0/24 table local",
            "route local 203.0.113.7/32 table local",
            "route local 2001:db8:11:8000::7/128 table local",
        ]

    def test_the_primary_promises_them_too(self) -> None:
        p = promise(eni(primary=True, local_routes=LOCAL[:1]))
        assert p.local == ("10.128.16.0/24",)
        assert (p.rules, p.routes, p.table) == ((), (), 0)
        assert not p.empty
        assert p.tables == {255}

    def test_table_local_is_one_of_its_tables_only_with_local_routes(self) -> None:
        assert promise(eni()).tables == {10001}
        assert promise(eni(local_routes=LOCAL)).tables == {10001, 255}

    def test_a_local_route_only_promises_nothing_else(self) -> None:
        p, plain = promise(eni(local_routes=LOCAL)), promise(eni())
        assert (p.addresses, p.rules, p.routes, p.table) == (
            plain.addresses,
            plain.rules,
            plain.routes,
            plain.table,
        )

    def test_repeats_are_promised_once_ipv4_first(self) -> None:
        p = promise(eni(local_routes=(LOCAL[2], LOCAL[0], LOCAL[2])))
        assert p.local == ("10.128.16.0/24", "2001:db8:11:8000::7/128")

    def test_a_missing_local_route_is_one_line_after_the_rest(self) -> None:
        p = promise(eni(local_routes=LOCAL))
        whole = snapshot(
            p.addresses,
            [(r.source, r.table, r.priority) for r in p.rules],
            [(r.destination, r.gateway, r.table) for r in p.routes],
            local=["10.128.16.0/24", "203.0.113.7/32", "2001:db8:11:8000::7/128"],
        )
        assert p.missing(whole) == []
        partial = snapshot(
            p.addresses[1:],
            [(r.source, r.table, r.priority) for r in p.rules],
            [(r.destination, r.gateway, r.table) for r in p.routes],
            local=["203.0.113.7/32", "10.0.11.20/32"],  # the kernel's own for an address
        )
        assert p.missing(partial) == [
            "address 10.0.11.20/24",
            "route local 10.128.16.0/24 table local",
            "route local 2001:db8:11:8000::7/128 table local",
        ]

    def test_a_unicast_route_to_the_range_is_not_a_local_one(self) -> None:
        p = promise(eni(primary=True, local_routes=LOCAL[:1]))
        kernel = snapshot(p.addresses, [], [("10.128.16.0/24", None, 255)])
        assert p.missing(kernel) == ["route local 10.128.16.0/24 table local"]

    def test_text_forms_are_normalized(self) -> None:
        p = promise(eni(primary=True, local_routes=LOCAL))
        kernel = snapshot(
            p.addresses, [], [], local=["10.128.16.0/24", "203.0.113.7", "2001:0db8:11:8000:0::7"]
        )
        assert p.missing(kernel) == []


class TestLocalRoutesJson:
    def test_round_trip(self) -> None:
        p = promise(eni(local_routes=LOCAL))
        data = p.to_json()
        assert data["local_routes"] == list(p.local)
        assert Promise.from_json(data) == p

    def test_without_local_routes_the_file_is_what_it_was(self) -> None:
        assert "local_routes" not in promise(eni()).to_json()

    def test_a_file_written_before_local_routes_reads(self) -> None:
        old = {
            "addresses": ["10.0.11.20/24"],
            "rules": [{"from": "10.0.11.20/32", "table": 10001, "priority": 10001}],
            "routes": [{"to": "0.0.0.0/0", "via": "10.0.11.1", "table": 10001}],
            "table": 10001,
        }
        p = Promise.from_json(old)
        assert p.local == ()
        assert p.tables == {10001}

    @pytest.mark.parametrize("bad", [["not a prefix"], "10.0.0.0/8", [None]])
    def test_a_bad_local_route_is_a_value_error(self, bad: object) -> None:
        data = promise(eni()).to_json() | {"local_routes": bad}
        with pytest.raises(ValueError, match="not a promise"):
            Promise.from_json(data)
