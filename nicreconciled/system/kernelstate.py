"""What the kernel has now for a NIC's promise, read over rtnetlink (no capability needed)."""

from __future__ import annotations

from nicreconciled.promise import Promise, Snapshot, snapshot
from nicreconciled.system import rtnl

_ANY = {rtnl.AF_INET: "0.0.0.0/0", rtnl.AF_INET6: "::/0"}
RTN_UNICAST = 1


def _prefix(family: int, address: str | None, length: int) -> str:
    return f"{address}/{length}" if address else _ANY.get(family, "0.0.0.0/0")


def read(ifindex: int, promise: Promise) -> Snapshot:
    """IFINDEX's addresses; the plain source rules and the unicast routes of PROMISE's tables."""
    tables = promise.tables
    addresses = [a.cidr for a in rtnl.dump_addresses(ifindex) if a.ifindex == ifindex]
    rules = [
        (_prefix(r.family, r.src, r.src_len), r.table, r.priority)
        for r in (rtnl.dump_rules() if tables else [])
        if r.table in tables and r.plain_source_rule
    ]
    routes = [
        (_prefix(r.family, r.dst, r.dst_len), r.gateway, r.table)
        for table in sorted(tables)
        for r in rtnl.dump_routes(table)
        if r.table == table and r.type == RTN_UNICAST
    ]
    return snapshot(addresses, rules, routes)
