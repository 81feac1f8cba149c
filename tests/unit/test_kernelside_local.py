"""The kernel side with local routes: table local is every link's, so its notifications
concern a NIC by the route's output link only (kernelside.KernelSide.on_events).

The kernel adds and removes routes in table local for every address of every link (the
address itself, the subnet's broadcast): were table local looked up like a NIC's own table,
any address change anywhere (a container's veth) would be a look at every NIC with local
routes. The notifications here are rtnetlink messages parsed by ``rtnl.parse_event``, as the
kernel watch gets them.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any, cast

from nicreconciled.keeper import Keeper
from nicreconciled.kernelside import KernelSide
from nicreconciled.promise import Promise, PromisedRule
from nicreconciled.reconciler import Reconciler
from nicreconciled.system import rtnl
from tests.unit.test_rtnl import ifaddrmsg, ip, rtmsg, u32

OURS, OTHER = 7, 3
MAC, PRIMARY = "42:01:0a:80:00:05", "42:01:0a:80:00:02"
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWADDR = 24, 25, 20


def nic(ifindex: int, promise: Promise, *, held: bool = True) -> Any:
    keeper = Keeper()
    keeper.applied(promise, 0.0)
    keeper.held = held
    return SimpleNamespace(keeper=keeper, ifindex=ifindex)


def side(**nics: Any) -> KernelSide:
    return KernelSide(cast("dict[str, Reconciler]", nics), lambda: False)


def route(msg: int, family: int, dst: str, length: int, oif: int, rtype: int) -> rtnl.Event:
    body = rtmsg(family, length, 255, ip(1, dst), u32(4, oif), rtype=rtype)
    event = rtnl.parse_event(msg, 1234, body)
    assert event is not None
    return event


SECONDARY = Promise(
    addresses=("10.128.0.5/20",),
    rules=(PromisedRule("10.128.0.5/32", 10001, 10001),),
    table=10001,
    local=("10.128.16.0/24",),
)
PRIMARY_PROMISE = Promise(addresses=("10.128.0.2/20",), local=("10.128.32.0/24",))


def looked_at(kernel: KernelSide) -> set[str]:
    found = set(kernel._rechecks)
    for handle, _at, _first in kernel._rechecks.values():
        handle.cancel()
    kernel._rechecks.clear()
    return found


class TestTableLocal:
    async def test_a_deleted_local_route_is_a_look_at_its_nic(self) -> None:
        kernel = side(**{MAC: nic(OURS, SECONDARY)})
        kernel.on_events([route(RTM_DELROUTE, socket.AF_INET, "10.128.16.0", 24, OURS, 2)])
        assert looked_at(kernel) == {MAC}

    async def test_a_primary_with_only_local_routes_is_watched_by_its_link(self) -> None:
        kernel = side(**{PRIMARY: nic(OURS, PRIMARY_PROMISE)})
        assert PRIMARY_PROMISE.tables == {255}
        kernel.on_events([route(RTM_DELROUTE, socket.AF_INET, "10.128.32.0", 24, OURS, 2)])
        assert looked_at(kernel) == {PRIMARY}

    async def test_table_local_churn_of_another_link_is_no_look(self) -> None:
        # An address added and removed on another link: the kernel's local and broadcast
        # routes for it come and go in table local, and the address events name that link.
        kernel = side(**{MAC: nic(OURS, SECONDARY), PRIMARY: nic(9, PRIMARY_PROMISE)})
        churn = []
        for msg in (RTM_NEWROUTE, RTM_DELROUTE):
            churn += [
                route(msg, socket.AF_INET, "172.17.0.1", 32, OTHER, 2),
                route(msg, socket.AF_INET, "172.17.255.255", 32, OTHER, 3),
                route(msg, socket.AF_INET6, "fd00::1", 128, OTHER, 2),
            ]
        address = rtnl.parse_event(RTM_NEWADDR, 0, ifaddrmsg(socket.AF_INET, 16, OTHER))
        assert address is not None
        kernel.on_events([*churn, address])
        assert looked_at(kernel) == set()

    async def test_an_address_of_the_nic_is_one_look_as_before(self) -> None:
        # Its own address brings the kernel's local route for it: the same NIC, one look.
        kernel = side(**{MAC: nic(OURS, SECONDARY)})
        address = rtnl.parse_event(RTM_NEWADDR, 0, ifaddrmsg(socket.AF_INET, 20, OURS))
        assert address is not None
        own = route(RTM_NEWROUTE, socket.AF_INET, "10.128.0.5", 32, OURS, 2)
        kernel.on_events([address, own])
        assert looked_at(kernel) == {MAC}

    async def test_the_nics_own_table_still_counts_by_table(self) -> None:
        kernel = side(**{MAC: nic(OURS, SECONDARY)})
        body = rtmsg(socket.AF_INET, 0, 252, u32(15, 10001), ip(5, "10.128.0.1"), u32(4, OTHER))
        event = rtnl.parse_event(RTM_DELROUTE, 1234, body)
        assert event is not None
        kernel.on_events([event])
        assert looked_at(kernel) == {MAC}

    async def test_a_local_route_added_while_pending_counts_as_seen(self) -> None:
        pending = nic(OURS, SECONDARY, held=False)
        kernel = side(**{MAC: pending})
        kernel.on_events([route(RTM_NEWROUTE, socket.AF_INET, "10.128.16.0", 24, OURS, 2)])
        assert pending.keeper.seen == {"route local 10.128.16.0/24 table local"}
        looked_at(kernel)
