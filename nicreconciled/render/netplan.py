"""NicState -> one netplan YAML drop-in per NIC.

Why the output looks the way it does:

* One ``ethernets`` entry per file, matched by MAC only and never renamed (``set-name``):
  hot-plugged NICs get unpredictable names, the MAC is what the metadata and our file name
  key on, and renaming would fight udev and other tools.

* Every private IPv4 is a static address, the primary first, and DHCPv4 runs as well
  (``dhcp4: true``: it brings the main table's routes and renews the lease EC2 expects);
  secondary IPv4s must be static because EC2's DHCPv4 hands out only the primary. Why the
  primary too: see ``addressing.py``. IPv6 addresses are written statically as well (DHCPv6
  and RAs stay on), so every address the metadata lists is configured whatever the DHCPv6
  server offers.

* Non-primary NICs get source-based policy routing: a reply must leave by the NIC whose
  address it carries, or the VPC's source/destination check drops it. Each NIC owns table
  T = 10000 + 100*network_card + device_number, looked up by rules of the same priority.
  The numbering is amazon-ec2-net-utils' so a host migrating from it (or a runbook, alert or
  firewall written for it) sees the same ``ip rule`` / ``ip route show table`` layout; it
  also stays clear of cloud-init's tables (100 + index), of 253-255, and, with priorities
  10000+, runs after the ``local`` rule (0) and before ``main`` (32766).

* Non-primary NICs also get a higher DHCP route metric (512 + ..., netplan's default is 100)
  so that their DHCP default route in the main table never wins over the primary's: traffic
  not bound to a secondary address keeps leaving by the primary NIC, as on a freshly booted
  instance. netplan 0.106 writes the metric once, to networkd's legacy ``[DHCP]`` section,
  which is why it insists on identical dhcp4/dhcp6 overrides.

* The primary NIC (rendered only when the operator asks for it) gets no policy rules and
  normal metrics: its addresses already use the main table, and rules for it would capture
  traffic from local bridges (Docker) that routes through the primary today
  (amazon-ec2-net-utils #97).

* Delegated prefixes (EC2 prefix delegation, ``ipv4_prefixes`` / ``ipv6_prefixes``) are
  routed to the NIC by the VPC but are not addresses of it: they are usually handed to
  containers or a local service behind the NIC. We do not assign them; we add one rule
  ``from <prefix> lookup T`` each, so replies sourced from anything in a prefix leave by the
  NIC the VPC routes that prefix to, exactly like replies from the NIC's own addresses.

* IPv6 default route in table T. EC2 announces its IPv6 router only by router
  advertisement, and the metadata does not name the router's link-local address, so a
  static ``::/0 via`` route cannot be written. netplan's ``ra-overrides: {table: T}``
  (networkd ``[IPv6AcceptRA] RouteTable=T``) puts the RA's routes, the default route
  included, into T instead of main; it exists only since netplan 1.1 (canonical/netplan
  PR #461) and netplan 0.106 (Debian 12) rejects it as an unknown key. So the renderer
  takes a capability flag, ``ra_table``, and writes the key only when it is true, only on
  the networkd backend (netplan's NetworkManager backend ignores it). The daemon passes
  ``nicreconciled.system.netplan.supports_ra_table``, which tries the key on the installed
  netplan once (a scratch ``netplan generate``, ~0.15 s) and caches the answer; the flag is
  read only when a NIC needs it (a non-primary NIC with IPv6 on the networkd backend), so
  hosts without such a NIC never run the probe and start-up never waits for it.
  With it, T has the IPv6 default route and main gets none from this NIC (as with the
  networkmanager and networkd renderers). Without it (0.106), T holds the NIC's IPv6
  subnet routes only, which keeps on-subnet replies symmetric; off-subnet IPv6 replies find
  no route in T and fall through to the main table, where networkd puts the RA's default
  route with this NIC's metric (netplan's ``[DHCP] RouteMetric=`` also sets the RA metric):
  they leave by whichever NIC has the best IPv6 default route, not necessarily this one.
  We write the IPv6 subnet routes in either case (static, so they are in T before the first
  RA) and without ``scope``, which netplan documents as IPv4-only; netplan 0.106 still emits
  ``Scope=link`` for every gateway-less route, and systemd-networkd drops it for IPv6 with a
  warning and installs the route as intended.

* An ENI of an IPv6-only subnet (``NicState.ipv6_only``) gets ``dhcp4: false`` and no
  IPv4 at all: DHCPv6 and RAs, its IPv6 addresses, its IPv6 routes and rules. netplan then
  takes the route metric from ``dhcp6-overrides`` alone.

* Local routes (``addressing.py``), on every NIC, after the other routes: ``{to: X, type:
  local, scope: host, table: 255}`` (no ``scope`` for IPv6: netplan documents it as IPv4-only,
  and still writes ``Scope=host`` there, which networkd ignores with a warning, as for the
  IPv6 subnet routes). netplan has no key for a route's protocol: networkd installs them
  ``proto static``. With ``backend="NetworkManager"`` netplan refuses every route that is not
  unicast ("NetworkManager only supports unicast routes", 0.106 up to 1.1 and upstream in
  2026), failing the whole ``generate``; so they go through netplan's keyfile passthrough
  (``networkmanager: passthrough:``) as ``ipvN.routeK`` keys, K counting on from the
  ``routeK`` netplan writes for the same family (it numbers a family's routes 1, 2, ... in
  the order of ``routes``), with the networkmanager renderer's attributes; the kernel then
  shows what that renderer gets (its module docstring). The passthrough exists since netplan
  0.102 (canonical/netplan #193); an older one refuses the key, and with it the whole
  ``generate``, for a NIC with local routes: there, use the networkmanager renderer.

* ``renderer:`` is set on our ethernet definition, not in the ``network:`` block. In the
  network block it is a global scalar, and netplan merges files in lexical order: our
  ``90-`` file would switch every interface configured by other files (cloud-init's
  ``50-cloud-init.yaml``, a desktop's ``01-network-manager-all.yaml``) to our backend.
  ``netplan generate`` confirms this on 0.106; a per-definition ``renderer`` touches
  only our NIC.

* With ``backend="NetworkManager"``, netplan 0.106 silently drops every ``routing-policy``
  entry from the keyfile it generates (NetworkManager support for it came with
  canonical/netplan PR #526, LP: #2086544), so on such hosts policy routing is missing.
  We still emit the rules, with the priority NetworkManager requires, so that newer
  netplan renders them; on NetworkManager hosts with older netplan use the
  ``networkmanager`` renderer, which writes ``routing-rule`` entries itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, get_args

import yaml

from nicreconciled.model import NicState, mac_to_key
from nicreconciled.render.addressing import (
    LOCAL_TABLE,
    SCOPE_HOST,
    addresses,
    local_routes,
    routes_ipv6,
    rule_sources,
    unique,
)

if TYPE_CHECKING:
    from nicreconciled.config import Config

Backend = Literal["networkd", "NetworkManager"]
_BACKENDS: Final[tuple[str, ...]] = get_args(Backend)

_HEADER: Final = "# Written by nicreconciled for {mac}; do not edit (rewritten on change).\n"

#: The IPv4 default destination spelled as a prefix: netplan 0.99 (Ubuntu 20.04) does not
#: know ``to: default``.
_IPV4_DEFAULT: Final = "0.0.0.0/0"


class NetplanRenderer:
    """Renders one NIC as a netplan drop-in for ``/run/netplan`` (or ``/etc/netplan``)."""

    name: ClassVar[str] = "netplan"
    # The 90- prefix sorts after cloud-init's 50-cloud-init.yaml, so where a key is set in
    # both (it should not be: our definition ID is our own) ours is read last.
    prefix: ClassVar[str] = "90-nicreconciled-"
    suffix: ClassVar[str] = ".yaml"
    mode: ClassVar[int] = 0o600

    def __init__(
        self, backend: Backend = "networkd", *, ra_table: bool | Callable[[], bool] = False
    ) -> None:
        """RA_TABLE: whether the installed netplan accepts ``ra-overrides: {table: N}``
        (>= 1.1), or a function that tells, asked the first time a NIC needs the answer;
        then RA routes go to the NIC's table on the networkd backend (module docstring)."""
        # Checked at run time too: the value may come from a configuration file.
        if backend not in _BACKENDS:
            raise ValueError(f"netplan backend must be one of {_BACKENDS}, not {backend!r}")
        self.backend: Backend = backend
        self._ra_table = ra_table

    @property
    def ra_table(self) -> bool:
        flag = self._ra_table
        return flag() if callable(flag) else flag

    @classmethod
    def from_config(cls, config: Config) -> NetplanRenderer:
        from nicreconciled.system.netplan import generate_command, supports_ra_table

        # Asked (once per process) the first time a NIC needs it, never at start.
        generator = config.netplan.generator
        return cls(
            config.netplan.backend,
            ra_table=lambda: supports_ra_table(generate_command(generator)),
        )

    def filename(self, mac: str) -> str:
        """``90-nicreconciled-0a1b2c3d4e5f.yaml``; ValueError if MAC is not a MAC."""
        return f"{self.prefix}{mac_to_key(mac)}{self.suffix}"

    def render(self, state: NicState) -> str:
        document = {
            "network": {
                "version": 2,
                "ethernets": {f"nicr-{state.key}": self._ethernet(state)},
            }
        }
        body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
        return _HEADER.format(mac=state.mac) + body

    def _ethernet(self, state: NicState) -> dict[str, Any]:
        ipv6 = unique(state.ipv6_addresses)
        policy = not state.primary
        dhcp4 = not state.ipv6_only
        metric: dict[str, Any] = {"route-metric": state.route_metric}
        # A lease's routes left out (dhcp_routes): networkd's one [DHCP] section takes it for
        # DHCPv4 only, so both overrides carry it; on NetworkManager it would also drop the
        # IPv6 router's routes (ipv6.ignore-auto-routes), so only dhcp4 does.
        no_routes = {"use-routes": False} if not state.dhcp_routes else {}
        if self.backend == "networkd":
            metric.update(no_routes)

        eth: dict[str, Any] = {
            "match": {"macaddress": state.mac},
            "renderer": self.backend,
            "dhcp4": dhcp4,
        }
        if state.mtu is not None:
            eth["mtu"] = state.mtu
        if policy and dhcp4:
            eth["dhcp4-overrides"] = {**metric, **no_routes}
        if ipv6:
            eth["dhcp6"] = True
            if policy:
                # networkd needs identical dhcp4/dhcp6 overrides (one [DHCP] section).
                eth["dhcp6-overrides"] = dict(metric)
            eth["accept-ra"] = True
            if policy and self.backend == "networkd" and self.ra_table:
                eth["ra-overrides"] = {"table": state.route_table}
        else:
            eth["dhcp6"] = False

        found = addresses(state)  # the primary IPv4 first: addressing.py
        if found:
            eth["addresses"] = found

        # The metadata's routes go to main (with the NIC's metric) and, below, to table T.
        main = [
            {"to": str(r.to), "via": str(r.via), "metric": state.route_metric} for r in state.routes
        ]
        if main:
            eth["routes"] = main
        if policy:
            main += _policy_routes(state)
            if main:
                eth["routes"] = main
            table, priority = state.route_table, state.rule_priority
            rules = [{"from": s, "table": table, "priority": priority} for s in rule_sources(state)]
            if rules:
                eth["routing-policy"] = rules
        if state.local_routes:
            self._local_routes(state, eth, main)
        return eth

    def _local_routes(self, state: NicState, eth: dict[str, Any], routes: list[Any]) -> None:
        """Add STATE's local routes to ETH, whose ``routes`` are ROUTES (module docstring)."""
        if self.backend == "networkd":
            eth["routes"] = routes + [
                {"to": str(n), "type": "local", "scope": "host", "table": LOCAL_TABLE}
                if n.version == 4
                else {"to": str(n), "type": "local", "table": LOCAL_TABLE}
                for n in local_routes(state)
            ]
            return
        # NetworkManager: netplan numbers each family's routes route1, route2, ... in the
        # order of ``routes``; ours follow them, as keyfile keys of netplan's passthrough.
        passthrough: dict[str, str] = {}
        for family, group in ((4, "ipv4"), (6, "ipv6")):
            n = sum(1 for r in routes if ipaddress.ip_network(r["to"]).version == family)
            for network in (x for x in local_routes(state) if x.version == family):
                n += 1
                scope = f"scope={SCOPE_HOST}," if family == 4 else ""
                passthrough[f"{group}.route{n}"] = str(network)
                passthrough[f"{group}.route{n}_options"] = f"{scope}table={LOCAL_TABLE},type=local"
        eth["networkmanager"] = {"passthrough": passthrough}


def _policy_routes(state: NicState) -> list[dict[str, Any]]:
    """The static routes of table T: what a reply sourced from this NIC may use."""
    table = state.route_table
    routes: list[dict[str, Any]] = []
    if state.ipv4_subnet is not None:
        routes.append({"to": str(state.ipv4_subnet), "scope": "link", "table": table})
    if state.ipv4_gateway is not None:
        routes.append({"to": _IPV4_DEFAULT, "via": str(state.ipv4_gateway), "table": table})
    if routes_ipv6(state):
        # On-subnet replies; the default route comes from RAs, where netplan can say so.
        routes.extend({"to": str(subnet), "table": table} for subnet in state.ipv6_subnets)
        if state.ipv6_gateway is not None:  # named by the metadata: no RA needed
            routes.append({"to": "::/0", "via": str(state.ipv6_gateway), "table": table})
    routes.extend({"to": str(r.to), "via": str(r.via), "table": table} for r in state.routes)
    return routes
