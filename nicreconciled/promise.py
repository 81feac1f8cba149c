"""What a NIC's applied configuration promises in the kernel: one pure function, one diff.

The heal, ``nicreconciled check``, the lab's assertions and the benchmarks all ask this
module, and none re-derives it: ``promise(state, choices)`` is the set of kernel objects
every renderer's file makes the network manager install, whatever the manager (the three
renderers agree on them; their module docstrings say why each one is there):

* every address of the NIC (``addressing.addresses``: the primary IPv4 first, secondaries,
  IPv6), on the NIC's link;
* for a non-primary NIC, one rule per policy source (``addressing.rule_sources``) looking up
  table T at priority T;
* in table T: the IPv4 subnet route, the IPv4 default route via the subnet's gateway, the
  IPv6 subnet routes (when an IPv6 source is steered into T), the IPv6 default route where
  the metadata names the router, and the metadata's extra routes;
* for every NIC, primary or not, each local route (``addressing.local_routes``): a route of
  type local to the range in table local (255) out of the NIC's link. The kernel adds its own
  local routes there for every address of every link, so only type-local routes out of the
  NIC count (``Snapshot.local``), and only by destination: the protocol number differs per
  manager (``addressing.py``), and a range the kernel delivers locally out of this NIC is
  delivered whoever installed the route.

Only static objects are promised. What arrives by DHCP, DHCPv6 or router advertisement (the
DHCP lease's routes in main, the RA default route in T on EC2) is the manager's own churn: it
comes and goes with leases, so its absence is never drift. Extra objects are never drift
either: the promise is what must be there, not all that may be.

The promise is kept in the NIC's status file (``Promise.to_json``), so ``check`` compares
exactly what the daemon applied with the kernel, without fetching anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

from nicreconciled.model import NicState
from nicreconciled.render.addressing import (
    LOCAL_TABLE,
    addresses,
    local_routes,
    routes_ipv6,
    rule_sources,
)


@dataclass(frozen=True, order=True)
class PromisedRule:
    """``from SOURCE lookup TABLE`` at PRIORITY (SOURCE a prefix: ``10.0.11.20/32``)."""

    source: str
    table: int
    priority: int

    def describe(self) -> str:
        return f"rule from {self.source} lookup {self.table} priority {self.priority}"


@dataclass(frozen=True, order=True)
class PromisedRoute:
    """A route to DESTINATION (a prefix, ``0.0.0.0/0`` / ``::/0`` for the default) in TABLE,
    via GATEWAY (None: on-link)."""

    destination: str
    gateway: str | None
    table: int

    def describe(self) -> str:
        to = "default" if ip_network(self.destination).prefixlen == 0 else self.destination
        via = f" via {self.gateway}" if self.gateway else ""
        return f"route {to}{via} table {self.table}"


def describe_local(destination: str) -> str:
    """A local route (DESTINATION a prefix) as ``Promise.missing`` names it."""
    return f"route local {destination} table local"


@dataclass(frozen=True)
class Choices:
    """What the renderer and its backend can put in the kernel (pure facts, no probing).

    ``rules``: False where the rendered file cannot carry policy rules to the kernel: netplan
    0.106 on its NetworkManager backend drops every ``routing-policy`` entry (render/netplan.py),
    so promising them would report drift that no heal can fix.
    """

    rules: bool = True


@dataclass(frozen=True)
class Snapshot:
    """The kernel objects a promise is compared with: the NIC's addresses (``addr/len``,
    compressed), every rule looking up the NIC's table, every route in it."""

    addresses: frozenset[str] = frozenset()
    rules: frozenset[PromisedRule] = frozenset()
    routes: frozenset[PromisedRoute] = frozenset()
    #: The link is administratively up. Someone who set it down meant it: what that takes
    #: away (its routes, its IPv6 addresses) is reported, not healed, until it is up again.
    up: bool = True
    #: The destinations (prefixes) of the routes of type local in table local out of the
    #: NIC's link: the kernel's own for its addresses too, whatever their protocol.
    local: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Promise:
    addresses: tuple[str, ...] = ()
    rules: tuple[PromisedRule, ...] = ()
    routes: tuple[PromisedRoute, ...] = ()
    #: The NIC's own table (0: none, a primary NIC): the tables whose changes concern it.
    table: int = 0
    #: The destinations (prefixes) of the NIC's local routes, in table local.
    local: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.addresses or self.rules or self.routes or self.local)

    @property
    def tables(self) -> frozenset[int]:
        """Every table a rule or route of the promise lives in (table local only with local
        routes; it is shared by every link: kernelside.py looks its changes up by link)."""
        found = {r.table for r in self.rules} | {r.table for r in self.routes}
        found |= {LOCAL_TABLE} if self.local else set()
        return frozenset(found | ({self.table} if self.table else set()))

    def missing(self, kernel: Snapshot) -> list[str]:
        """What of the promise is not in KERNEL, one line each, in the promise's order."""
        out = [f"address {a}" for a in self.addresses if a not in kernel.addresses]
        out += [r.describe() for r in self.rules if r not in kernel.rules]
        out += [r.describe() for r in self.routes if r not in kernel.routes]
        return out + [describe_local(d) for d in self.local if d not in kernel.local]

    def items(self) -> list[str]:
        """Every promised object, one line each, as ``missing`` names them."""
        return self.missing(Snapshot())

    def to_json(self) -> dict[str, Any]:
        """Without ``local_routes`` when there are none: a NIC without them keeps the status
        file it had before they existed."""
        data: dict[str, Any] = {
            "addresses": list(self.addresses),
            "rules": [
                {"from": r.source, "table": r.table, "priority": r.priority} for r in self.rules
            ],
            "routes": [
                {"to": r.destination, "via": r.gateway, "table": r.table} for r in self.routes
            ],
            "table": self.table,
        }
        if self.local:
            data["local_routes"] = list(self.local)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Promise:
        """The inverse of ``to_json``; ValueError for anything else."""
        try:
            return cls(
                addresses=tuple(_address(a) for a in data["addresses"]),
                rules=tuple(
                    PromisedRule(_prefix(r["from"]), int(r["table"]), int(r["priority"]))
                    for r in data["rules"]
                ),
                routes=tuple(
                    PromisedRoute(
                        _prefix(r["to"]),
                        None if r["via"] is None else str(ip_address(r["via"])),
                        int(r["table"]),
                    )
                    for r in data["routes"]
                ),
                table=int(data.get("table", 0)),
                # Absent from files written before local routes existed.
                local=tuple(_prefix(d) for d in data.get("local_routes", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a promise: {exc}") from None


def _address(text: str) -> str:
    iface = ip_interface(text)
    return f"{iface.ip.compressed}/{iface.network.prefixlen}"


def _prefix(text: str) -> str:
    return ip_network(text, strict=False).compressed


def promise(state: NicState, choices: Choices = Choices()) -> Promise:
    """What STATE's file, once loaded, puts in the kernel (module docstring)."""
    found = tuple(_address(a) for a in addresses(state))
    local = tuple(dict.fromkeys(n.compressed for n in local_routes(state)))
    if state.primary:
        return Promise(addresses=found, local=local)
    table = state.route_table
    rules: tuple[PromisedRule, ...] = ()
    if choices.rules:
        rules = tuple(
            dict.fromkeys(
                PromisedRule(_prefix(s), table, state.rule_priority) for s in rule_sources(state)
            )
        )
    routes: list[PromisedRoute] = []
    if state.ipv4_subnet is not None:
        routes.append(PromisedRoute(state.ipv4_subnet.compressed, None, table))
    if state.ipv4_gateway is not None:
        routes.append(PromisedRoute("0.0.0.0/0", str(state.ipv4_gateway), table))
    if routes_ipv6(state):
        routes += [PromisedRoute(s.compressed, None, table) for s in state.ipv6_subnets]
        if state.ipv6_gateway is not None:
            routes.append(PromisedRoute("::/0", state.ipv6_gateway.compressed, table))
    routes += [PromisedRoute(r.to.compressed, r.via.compressed, table) for r in state.routes]
    once = tuple(dict.fromkeys(routes))
    return Promise(addresses=found, rules=rules, routes=once, table=table, local=local)


def snapshot(
    addresses: Iterable[str],
    rules: Iterable[tuple[str, int, int]],
    routes: Iterable[tuple[str, str | None, int]],
    *,
    up: bool = True,
    local: Iterable[str] = (),
) -> Snapshot:
    """A Snapshot from plain values: ``addr/len``; (source prefix, table, priority);
    (destination prefix, gateway or None, table); LOCAL: the destination prefixes of the
    link's local routes. Normalizes every text."""
    return Snapshot(
        addresses=frozenset(_address(a) for a in addresses),
        rules=frozenset(PromisedRule(_prefix(s), t, p) for s, t, p in rules),
        routes=frozenset(
            PromisedRoute(_prefix(d), None if g is None else ip_address(g).compressed, t)
            for d, g, t in routes
        ),
        up=up,
        local=frozenset(_prefix(d) for d in local),
    )
