"""What the kernel has now for a NIC's promise, read over rtnetlink (no capability needed)."""

from __future__ import annotations

import socket
from pathlib import Path

from nicreconciled.promise import Promise, Snapshot, describe_local, snapshot
from nicreconciled.render.addressing import LOCAL_TABLE
from nicreconciled.system import rtnl

_ANY = {rtnl.AF_INET: "0.0.0.0/0", rtnl.AF_INET6: "::/0"}
RTN_UNICAST, RTN_LOCAL = 1, 2


def _prefix(family: int, address: str | None, length: int) -> str:
    return f"{address}/{length}" if address else _ANY.get(family, "0.0.0.0/0")


IFF_UP = 0x1


def link_up(ifindex: int, sys_root: Path = Path("/sys")) -> bool:
    """Whether link IFINDEX is administratively up (its sysfs ``flags``); True when unknown
    (gone, unreadable): a look that cannot tell must not stop a heal."""
    try:
        name = socket.if_indextoname(ifindex)
        flags = int((sys_root / "class" / "net" / name / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return True
    return bool(flags & IFF_UP)


def read(ifindex: int, promise: Promise) -> Snapshot:
    """IFINDEX's addresses; the plain source rules and the unicast routes of PROMISE's tables;
    with local routes promised, the type-local routes of table local out of IFINDEX (the
    kernel's own for every address of every link live there too: filtered by link and
    type); whether the link is up."""
    tables = promise.tables
    addresses = [a.cidr for a in rtnl.dump_addresses(ifindex) if a.ifindex == ifindex]
    rules = [
        (_prefix(r.family, r.src, r.src_len), r.table, r.priority)
        for r in (rtnl.dump_rules() if tables else [])
        if r.table in tables and r.plain_source_rule
    ]
    routes = [
        (_prefix(r.family, r.dst, r.dst_len), gateway, r.table)
        for table in sorted(tables - {LOCAL_TABLE})
        for r in rtnl.dump_routes(table)
        if r.table == table and r.type == RTN_UNICAST
        for gateway, _ in r.hops()  # a multipath route holds a route per next hop
    ]
    local = [
        _prefix(r.family, r.dst, r.dst_len)
        for r in (rtnl.dump_routes(LOCAL_TABLE) if LOCAL_TABLE in tables else [])
        if r.table == LOCAL_TABLE and r.type == RTN_LOCAL and r.oif == ifindex
    ]
    return snapshot(addresses, rules, routes, up=link_up(ifindex), local=local)


def describe_event(event: rtnl.Event) -> str | None:
    """The object a notification adds or removes (the first, for a multipath route)."""
    items = describe_event_items(event)
    return items[0] if items else None


def describe_event_items(event: rtnl.Event) -> list[str]:
    """The objects a notification adds or removes, named as ``Promise.missing`` names them (an
    address, a plain source rule, a unicast route (one per next hop of a multipath route), a
    local route in table local); [] for anything else."""
    if event.kind == "route":
        route = rtnl.parse_route(event.body)
        if route is None or route.type != RTN_UNICAST or not route.nexthops:
            return _describe_one(event)
        destination = _prefix(route.family, route.dst, route.dst_len)
        found = snapshot([], [], [(destination, gw, route.table) for gw, _ in route.hops()])
        return sorted(r.describe() for r in found.routes)
    return _describe_one(event)


def _describe_one(event: rtnl.Event) -> list[str]:
    one = _describe(event)
    return [] if one is None else [one]


def _describe(event: rtnl.Event) -> str | None:
    if event.kind == "address":
        address = rtnl.parse_address(event.body)
        if address is None:
            return None
        (cidr,) = snapshot([address.cidr], [], []).addresses
        return f"address {cidr}"
    if event.kind == "rule":
        rule = rtnl.parse_rule(event.body)
        if rule is None or not rule.plain_source_rule:
            return None
        source = _prefix(rule.family, rule.src, rule.src_len)
        (found,) = snapshot([], [(source, rule.table, rule.priority)], []).rules
        return found.describe()
    if event.kind == "route":
        route = rtnl.parse_route(event.body)
        if route is None:
            return None
        destination = _prefix(route.family, route.dst, route.dst_len)
        if route.type == RTN_LOCAL and route.table == LOCAL_TABLE:
            (local,) = snapshot([], [], [], local=[destination]).local
            return describe_local(local)
        if route.type != RTN_UNICAST:
            return None
        (found_route,) = snapshot([], [], [(destination, route.gateway, route.table)]).routes
        return found_route.describe()
    return None
