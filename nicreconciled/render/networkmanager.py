"""NicState -> one NetworkManager keyfile per NIC.

The routing design is the netplan renderer's (read its module docstring first); this
module only says where NetworkManager needs something different. Every key used here
exists in NetworkManager 1.42 (Debian 12) and was checked with libnm itself:
``tests/tools/nm_keyfile_check.py`` reads our output with ``NM.keyfile_read`` and
``verify()``, and the integration tests assert what libnm parsed, not just that it loaded.

* Bound by MAC only: ``[ethernet] mac-address`` (NetworkManager compares it with the
  permanent MAC), never ``interface-name``: hot-plugged names are not stable. The MAC is
  written upper-case because that is how NetworkManager writes it back (it reads either).

* The profile UUID is ``connection_uuid(mac)``, a uuid5 of the MAC: the same on every
  restart and every machine, so a rewrite updates the profile NetworkManager already has
  instead of adding a second one, and ``nmcli connection up uuid U`` needs no lookup.

* ``autoconnect-priority=150``: above the default 0 of hand-written or netplan-generated
  profiles, above cloud-init's 120 and far above the -999 of NetworkManager's own
  "Wired connection N", so when several profiles could take this NIC, ours does.
  (Another tool's profile for the same NIC is still a conflict: see ``conflicts.py``.)
  ``autoconnect-retries=0`` (retry forever): a server NIC has nobody to reconnect it by
  hand after NetworkManager's default four failed attempts (e.g. a slow DHCP server).

* Non-primary NICs get ``ipv4.never-default=true``: NetworkManager then installs no IPv4
  default route for this NIC in the main table at all, rather than one with a worse metric
  as the netplan renderer does. Both keep the primary's default route preferred; this one
  also means nothing unbound ever leaves by a secondary NIC while the primary's route is
  briefly gone (DHCP renewal, re-activation), which the VPC would drop for its source
  address. ``never-default`` only affects DHCP/``gateway=`` routes, not the static
  ``0.0.0.0/0`` route we put in table T (in the l3cfg code of NetworkManager >= 1.36,
  nm-device.c merges the manual configuration without the "no default routes" flag that
  ``never-default`` sets for DHCP and autoconf). ``route-metric=M`` still matters: it
  ranks this NIC's on-link subnet route in main below the primary's when both NICs are in
  the same subnet, and is the metric of our table-T routes.

* IPv4: table T is filled with static routes carrying a ``table=T`` route option (the
  subnet route, the default route via the subnet gateway), and looked up by
  ``routing-ruleN=priority P from X table T`` entries, one per address and delegated
  prefix; NetworkManager requires the priority and a numeric table. We do not use
  ``ipv4.route-table=T``: it would move every IPv4 route of the profile, DHCP's included,
  out of the main table, so the host would lose its on-link route to the NIC's own subnet
  for traffic not sourced from this NIC.

* IPv6, the default route in T. The IPv6 router is known only from router advertisements
  (the metadata does not name its link-local address), and NetworkManager 1.42 has no way
  to put an RA route in a table other than the profile's: so a non-primary NIC with IPv6
  addresses gets ``ipv6.route-table=T`` and no ``ipv6.never-default`` (which would drop
  the RA default route everywhere, T included). The RA's default route then lands in T
  only, and the main table's IPv6 default stays the primary's (seen in the lab: ``ip -6
  route show table T`` has ``default via fe80::... proto ra metric M``, main has no
  default via this NIC). ``route-table`` also moves the routes NetworkManager derives from
  the link (the on-link prefix routes of the addresses, ``fe80::/64``) out of main; so the
  profile puts them back with explicit ``table=254`` routes: each IPv6 subnet and
  ``fe80::/64``, with metric M. Without the ``fe80::/64`` in main, link-local traffic to
  the router fails (seen in the lab: ``ping fe80::1%ethN`` gets no answer). The subnet
  routes are also written to T (``table=T``), static, so T serves on-subnet replies before
  the first RA. The IPv6 rules are ``routing-rule`` entries as for IPv4.

* IPv6 method. With IPv6 addresses: ``auto`` (router advertisements plus DHCPv6) and the
  addresses statically as well, as in the netplan renderer. Without any, on a non-primary
  NIC: ``disabled`` (NetworkManager >= 1.20), not ``ignore``. ``ignore`` leaves IPv6 on the
  link to the kernel, which (with its default accept_ra) can take the router's
  advertisements of an IPv6-enabled subnet and install a main-table default route via this
  NIC, outside our table and metric: exactly the competing route the rest of the design
  avoids. ``disabled`` is undone by the next activation, which our applier requests as
  soon as IPv6 appears in the metadata. A non-primary NIC with delegated IPv6 prefixes but
  no IPv6 address gets ``link-local`` with ``never-default``: the link needs IPv6 for the
  VPC to deliver to the prefix and for the table-T subnet route and rules to exist, but it
  processes no RA, so T has no IPv6 default route for replies from such a prefix (a limit
  of that rare shape; the README says so).
  The primary NIC (rendered only with ``manage_primary``) without IPv6 gets ``ignore``: we
  do not take IPv6 away from the NIC the instance was booted with.

* Local routes (``addressing.py``), on every NIC: ``routeN=X`` with
  ``routeN_options=scope=254,table=255,type=local`` (IPv6: ``table=255,type=local``; libnm
  has no scope for IPv6 routes), after the profile's other routes, in the order
  NetworkManager writes the attributes back. libnm 1.42 has no route attribute for the
  protocol (and drops an unknown one without a warning): NetworkManager installs them as
  ``local X dev IF table local proto static scope host metric M`` (M: the family's
  ``route-metric``, else NetworkManager's default for the device, as for its other routes),
  and puts them back on ``nmcli device reapply`` (the heal). It installs a profile's IPv6
  routes with ``ipv6.method=ignore`` too (seen in the lab), so a primary's stays ``ignore``;
  a non-primary NIC with an IPv6 local route and no IPv6 address gets ``link-local``, as
  with delegated prefixes: ``disabled`` would turn IPv6 off on the link, and the kernel
  refuses an IPv6 route out of such a link.

* IPv4 method. ``auto`` (DHCPv4) with the addresses; an ENI of an IPv6-only subnet
  (``NicState.ipv6_only``) gets ``disabled``: there is no DHCPv4 server there.

* The file is built as data (sections of key/value pairs) and serialized by a writer that
  refuses anything outside a small character set: a value can never carry a newline, a
  ``[``, a ``;`` list separator or a ``\\`` escape into the GLib key-file syntax. The model's
  fields are validated types, so this never fires on real metadata; it turns a future
  mistake into an error instead of a silently different profile.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, ClassVar, Final

from nicreconciled.model import NicState, mac_to_key, normalize_mac
from nicreconciled.render.addressing import (
    LOCAL_TABLE,
    SCOPE_HOST,
    ipv4_cidr,
    ipv6_cidr,
    local_routes,
    rule_sources,
    unique,
)

if TYPE_CHECKING:
    from nicreconciled.config import Config

#: Fixed forever: changing it changes every profile UUID and orphans existing profiles.
UUID_NAMESPACE: Final = uuid.UUID("484654a7-89a4-4710-909c-b1de3df92bea")

#: See the module docstring for why these values.
AUTOCONNECT_PRIORITY: Final = 150
ORIGIN_KEY: Final = "org.freedesktop.NetworkManager.origin"

_HEADER: Final = "# Written by nicreconciled for {mac}; do not edit (rewritten on change).\n"
_IPV4_DEFAULT: Final = "0.0.0.0/0"
_IPV6_LINK_LOCAL: Final = "fe80::/64"
#: The kernel's main table: a route option ``table=254`` overrides ``route-table``.
MAIN_TABLE: Final = 254

Section = list[tuple[str, str]]
Keyfile = dict[str, Section]

_SECTION_RE: Final = re.compile(r"[a-z0-9-]+")
_KEY_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
# Everything our values need (addresses, numbers, rule strings, "table=N") and nothing the
# key-file syntax gives a meaning to (newline, "[", ";", "\\", "#", leading blanks).
_VALUE_RE: Final = re.compile(r"[A-Za-z0-9:./,=_-]+(?: [A-Za-z0-9:./,=_-]+)*")


def connection_uuid(mac: str) -> str:
    """The profile UUID for MAC: uuid5 of the normalized MAC; ValueError if not a MAC."""
    return str(uuid.uuid5(UUID_NAMESPACE, normalize_mac(mac)))


class NetworkManagerRenderer:
    """Renders one NIC as a keyfile for ``/run/NetworkManager/system-connections``."""

    name: ClassVar[str] = "networkmanager"
    prefix: ClassVar[str] = "nicreconciled-"
    suffix: ClassVar[str] = ".nmconnection"
    mode: ClassVar[int] = 0o600

    @classmethod
    def from_config(cls, config: Config) -> NetworkManagerRenderer:
        return cls()

    def filename(self, mac: str) -> str:
        """``nicreconciled-0a1b2c3d4e5f.nmconnection``; ValueError if MAC is not a MAC."""
        return f"{self.prefix}{mac_to_key(mac)}{self.suffix}"

    def render(self, state: NicState) -> str:
        return write_keyfile(keyfile(state), comment=_HEADER.format(mac=state.mac))


def keyfile(state: NicState) -> Keyfile:
    """The profile as ordered sections of (key, value); what ``render`` serializes."""
    return {
        "connection": [
            ("id", f"nicreconciled-{state.key}"),
            ("uuid", connection_uuid(state.mac)),
            ("type", "ethernet"),
            ("autoconnect", "true"),
            ("autoconnect-priority", str(AUTOCONNECT_PRIORITY)),
            ("autoconnect-retries", "0"),
        ],
        "ethernet": [
            ("mac-address", state.mac.upper()),
            *([("mtu", str(state.mtu))] if state.mtu is not None else []),
        ],
        "ipv4": _ipv4(state),
        "ipv6": _ipv6(state),
        "user": [(ORIGIN_KEY, "nicreconciled")],
    }


def write_keyfile(sections: Keyfile, *, comment: str = "") -> str:
    """Serialize SECTIONS; ValueError for any name or value the format could misread."""
    lines = [comment.rstrip("\n")] if comment else []
    for name, entries in sections.items():
        if not _SECTION_RE.fullmatch(name):
            raise ValueError(f"invalid keyfile section name {name!r}")
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, value in entries:
            if not _KEY_RE.fullmatch(key):
                raise ValueError(f"invalid keyfile key {key!r} in [{name}]")
            if not _VALUE_RE.fullmatch(value):
                raise ValueError(f"invalid keyfile value for {name}.{key}: {value[:60]!r}")
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _ipv4(state: NicState) -> Section:
    if state.ipv6_only:
        return [("method", "disabled")]
    ipv4 = unique(state.ipv4_addresses)
    # All of them static, the primary first (see addressing.py); DHCP still runs.
    entries: Section = [("method", "auto")]
    entries += _numbered("address", [ipv4_cidr(state, a) for a in ipv4])
    if state.primary:
        return entries + _routes(_static(state, 4) + _local(state, 4))
    entries += [("never-default", "true"), ("route-metric", str(state.route_metric))]
    if not state.dhcp_routes:
        entries.append(("ignore-auto-routes", "true"))
    routes: list[tuple[str, int]] = []
    if state.ipv4_subnet is not None:
        routes.append((str(state.ipv4_subnet), state.route_table))
    if state.ipv4_gateway is not None:
        routes.append((f"{_IPV4_DEFAULT},{state.ipv4_gateway}", state.route_table))
    entries += _routes(_tables(routes) + _static(state, 4) + _local(state, 4))
    entries += _rules(state, [s for s in rule_sources(state) if ":" not in s])
    return entries


def _ipv6(state: NicState) -> Section:
    ipv6 = unique(state.ipv6_addresses)
    local6 = _local(state, 6)
    if ipv6:
        method = "auto"
    elif state.primary:
        method = "ignore"
    elif state.ipv6_prefixes or local6:
        method = "link-local"
    else:
        return [("method", "disabled")]
    entries: Section = [("method", method)]
    entries += _numbered("address", [ipv6_cidr(state, a) for a in ipv6])
    if state.primary:
        return entries + _routes(_static(state, 6) + local6)
    table, subnets = state.route_table, [str(s) for s in unique(state.ipv6_subnets)]
    routes = [(s, table) for s in subnets]
    if state.ipv6_gateway is not None and (ipv6 or state.ipv6_prefixes):
        routes.append((f"::/0,{state.ipv6_gateway}", table))
    if ipv6:
        # RA routes into T; what route-table takes out of main is put back (docstring).
        entries += [("route-metric", str(state.route_metric)), ("route-table", str(table))]
        routes += [(s, MAIN_TABLE) for s in [*subnets, _IPV6_LINK_LOCAL]]
    else:
        entries += [("never-default", "true"), ("route-metric", str(state.route_metric))]
    entries += _routes(_tables(routes) + _static(state, 6) + local6)
    entries += _rules(state, [s for s in rule_sources(state) if ":" in s])
    return entries


def _static(state: NicState, family: int) -> list[tuple[str, str]]:
    """The metadata's routes of FAMILY: in main (metric: ipvN.route-metric) and, for a
    non-primary NIC, in table T too."""
    tables = [MAIN_TABLE] if state.primary else [MAIN_TABLE, state.route_table]
    return _tables(
        [
            (f"{r.to},{r.via}", table)
            for r in state.routes
            if r.to.version == family
            for table in tables
        ]
    )


def _local(state: NicState, family: int) -> list[tuple[str, str]]:
    """The local routes of FAMILY (module docstring): type local in table local, and scope
    host for IPv4 (libnm has no scope for IPv6 routes); the attributes in the order
    NetworkManager writes them back."""
    scope = f"scope={SCOPE_HOST}," if family == 4 else ""
    options = f"{scope}table={LOCAL_TABLE},type=local"
    return [(str(n), options) for n in local_routes(state) if n.version == family]


def _tables(routes: list[tuple[str, int]]) -> list[tuple[str, str]]:
    return [(route, f"table={table}") for route, table in routes]


def _routes(routes: list[tuple[str, str]]) -> Section:
    """``routeN`` + ``routeN_options`` for each (route, its attributes)."""
    entries: Section = []
    for n, (route, options) in enumerate(unique(routes), start=1):
        entries.append((f"route{n}", route))
        entries.append((f"route{n}_options", options))
    return entries


def _rules(state: NicState, sources: list[str]) -> Section:
    table, priority = state.route_table, state.rule_priority
    rules = [f"priority {priority} from {s} table {table}" for s in sources]
    return _numbered("routing-rule", rules)


def _numbered(key: str, values: list[str]) -> Section:
    return [(f"{key}{n}", value) for n, value in enumerate(values, start=1)]
