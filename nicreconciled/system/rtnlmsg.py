"""rtnetlink messages: their layout, and parsers of addresses, rules, routes and notifications.

Pure: bytes in, frozen dataclasses out; ``rtnl.py`` has the sockets (dumps, notifications).

Split from ``rtnl.py`` along that seam; the why of our own parser is told there.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

AF_INET = 2
AF_INET6 = 10
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
FR_ACT_TO_TBL = 1

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_RTM_GETADDR, _RTM_GETROUTE, _RTM_GETRULE = 22, 26, 34
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_TABLE, _RTA_VIA = 1, 4, 5, 6, 15, 18
_RTA_MULTIPATH = 9
#: struct rtnexthop: u16 length, u8 flags, u8 hops, s32 ifindex; its attributes follow.
_RTNH = struct.Struct("=HBBi")
_FRA_DST, _FRA_SRC, _FRA_IIFNAME, _FRA_GOTO, _FRA_PRIORITY = 1, 2, 3, 4, 6
_FRA_FWMARK, _FRA_TABLE, _FRA_FWMASK, _FRA_OIFNAME, _FRA_PROTOCOL = 10, 15, 16, 17, 21
_FRA_SUPPRESS_IFGROUP, _FRA_SUPPRESS_PREFIXLEN = 13, 14
_FIB_RULE_INVERT = 0x2

_HDR = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct fib_rule_hdr has the same layout
_BITS = {AF_INET: 32, AF_INET6: 128}
_TABLE_NAMES = {253: "default", 254: "main", 255: "local"}
_RULE_ACTIONS = {2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
# What a rule "from PREFIX lookup TABLE pref N" carries; anything else selects or acts more,
# except FRA_SUPPRESS_*, which the kernel sends with every rule, as -1 when unset.
_PLAIN_RULE_ATTRS = frozenset({_FRA_SRC, _FRA_PRIORITY, _FRA_TABLE, _FRA_PROTOCOL})
_UNSET_RULE_ATTRS = frozenset({_FRA_SUPPRESS_IFGROUP, _FRA_SUPPRESS_PREFIXLEN})


Kind = Literal["link", "address", "route", "rule"]


@dataclass(frozen=True, slots=True)
class KAddress:
    ifindex: int
    family: int
    address: str
    prefixlen: int
    flags: int  # IFA_FLAGS when present (it has the bits above 0x80), else ifa_flags

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True, slots=True)
class KRule:
    family: int
    priority: int
    table: int
    action: int
    src: str | None
    src_len: int
    dst: str | None
    dst_len: int
    # Also 0 (not None) when only FRA_FWMASK came: "fwmark 0/0x1" still selects on the mark.
    fwmark: int | None
    iifname: str | None
    oifname: str | None
    tos: int
    raw: bytes = field(repr=False, compare=False)

    @property
    def plain_source_rule(self) -> bool:
        """Only a source prefix selects, and the action is a table lookup: "from X lookup T"."""
        flags, attrs = _rule_extras(self.raw)
        selectors = (self.dst, self.fwmark, self.iifname, self.oifname, self.tos or None)
        extra = [(k, v) for k, v in attrs.items() if k not in _PLAIN_RULE_ATTRS]
        unset = all(k in _UNSET_RULE_ATTRS and v == b"\xff" * 4 for k, v in extra)
        only_src = self.src is not None and selectors == (None,) * 5 and unset
        return only_src and self.action == FR_ACT_TO_TBL and not flags & _FIB_RULE_INVERT

    def describe(self) -> str:
        """The rule as ``ip rule`` prints it, e.g. "10001: from 10.0.11.20 lookup 10001"."""
        flags, attrs = _rule_extras(self.raw)
        bits = _BITS.get(self.family, 0)

        def prefix(address: str, length: int) -> str:
            return address if length == bits else f"{address}/{length}"

        words = [f"{self.priority}:"] + (["not"] if flags & _FIB_RULE_INVERT else [])
        words.append("from " + (prefix(self.src, self.src_len) if self.src else "all"))
        if self.dst is not None:
            words.append("to " + prefix(self.dst, self.dst_len))
        if self.tos:
            words.append(f"tos 0x{self.tos:02x}")
        if self.fwmark is not None:
            mask = _u32(attrs.get(_FRA_FWMASK, b""))
            shown = f"/0x{mask:x}" if mask is not None and mask != 0xFFFFFFFF else ""
            words.append(f"fwmark 0x{self.fwmark:x}{shown}")
        if self.iifname is not None:
            words.append(f"iif {self.iifname}")
        if self.oifname is not None:
            words.append(f"oif {self.oifname}")
        if self.table:
            words.append(f"lookup {_TABLE_NAMES.get(self.table, self.table)}")
            suppress = _u32(attrs.get(_FRA_SUPPRESS_PREFIXLEN, b""))
            if suppress is not None and suppress != 0xFFFFFFFF:
                words.append(f"suppress_prefixlength {suppress}")
        if self.action != FR_ACT_TO_TBL:
            words.append(_RULE_ACTIONS.get(self.action, f"action {self.action}"))
            if self.action == 2:
                words.append(str(_u32(attrs.get(_FRA_GOTO, b"")) or "none"))
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class KRoute:
    family: int
    table: int
    dst: str | None
    dst_len: int
    gateway: str | None
    oif: int | None  # None for a multipath route: see nexthops
    protocol: int
    type: int
    metric: int | None
    #: A multipath route's (gateway, ifindex) per next hop (RTA_MULTIPATH); () for others.
    #: NetworkManager 1.52 merges a static IPv6 default route and the router advertisement's
    #: of one table and metric into one such route.
    nexthops: tuple[tuple[str | None, int], ...] = ()

    def hops(self) -> tuple[tuple[str | None, int | None], ...]:
        """(gateway, ifindex) of every way out: the next hops, or the route's own."""
        return self.nexthops or ((self.gateway, self.oif),)

    @property
    def destination(self) -> str:
        return "default" if self.dst is None else f"{self.dst}/{self.dst_len}"


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    deleted: bool
    family: int
    ifindex: int | None
    table: int | None
    sender: int  # the changer's netlink port id (its pid, for ip), 0 when the kernel itself
    #: The message body (after nlmsghdr), for the few events a caller parses in full.
    body: bytes = field(default=b"", repr=False, compare=False)


class EventsLost(Exception):
    """The socket overflowed (ENOBUFS): notifications were dropped; the caller must re-read
    everything."""


class RtnlError(OSError):
    """A dump failed: the kernel's errno in ``.errno`` (ETIMEDOUT if it did not answer)."""


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, bytes]]:
    offset, end = 0, len(data)
    while offset + 16 <= end:
        length, mtype, flags, seq, pid = _HDR.unpack_from(data, offset)
        if length < 16 or offset + length > end:
            return
        yield mtype, flags, seq, pid, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


def parse_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, pid, body) of each message in DATA; stops at a truncated one."""
    for mtype, flags, _seq, pid, body in _messages(data):
        yield mtype, flags, pid, body


def _attrs(body: bytes, offset: int) -> dict[int, bytes] | None:
    """Top-level attributes from OFFSET, type -> payload; None when one overruns the body."""
    out: dict[int, bytes] = {}
    end = len(body)
    while offset + 4 <= end:
        length, kind = _RTA.unpack_from(body, offset)
        if length < 4 or offset + length > end:
            return None
        out[kind & 0x3FFF] = body[offset + 4 : offset + length]  # without NESTED/BYTEORDER
        offset += (length + 3) & ~3
    return out


def _u32(raw: bytes) -> int | None:
    return _U32.unpack_from(raw)[0] if len(raw) >= 4 else None


def _text(family: int, raw: bytes) -> str | None:
    if family == AF_INET and len(raw) == 4:
        return socket.inet_ntoa(raw)
    if family == AF_INET6 and len(raw) == 16:
        # ipaddress, not inet_ntop: glibc writes some addresses (::a.b.c.d) differently.
        return str(ipaddress.IPv6Address(raw))
    return None


def _name(raw: bytes | None) -> str | None:
    return None if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")


def _rule_extras(raw: bytes) -> tuple[int, dict[int, bytes]]:
    """The header flags and attributes of a rule's RAW body (none if it is not one)."""
    if len(raw) < 12:
        return 0, {}
    return _RTMSG.unpack_from(raw)[8], _attrs(raw, 12) or {}


def parse_address(body: bytes) -> KAddress | None:
    """The address in an RTM_NEWADDR/DELADDR body; None if it is not IPv4/IPv6 or malformed."""
    if len(body) < 8:
        return None
    family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(body)
    attrs = _attrs(body, 8)
    if attrs is None or prefixlen > _BITS.get(family, -1):
        return None
    # On a point-to-point address IFA_ADDRESS is the peer, IFA_LOCAL ours.
    raw = attrs.get(_IFA_LOCAL, attrs.get(_IFA_ADDRESS))
    text = None if raw is None else _text(family, raw)
    if text is None:
        return None
    if _IFA_FLAGS in attrs:
        flags = _u32(attrs[_IFA_FLAGS]) or 0
    return KAddress(index, family, text, prefixlen, flags)


def _prefix(family: int, length: int, raw: bytes | None) -> tuple[bool, str | None]:
    """(valid, text) of a prefix attribute: absent is fine only for length 0."""
    if raw is None:
        return length == 0, None
    text = _text(family, raw)
    return text is not None, text


def parse_rule(body: bytes) -> KRule | None:
    """The rule in an RTM_NEWRULE/DELRULE body; None if it is not IPv4/IPv6 or malformed."""
    if len(body) < 12:
        return None
    family, dst_len, src_len, tos, table, _r1, _r2, action, _flags = _RTMSG.unpack_from(body)
    bits = _BITS.get(family, -1)
    attrs = _attrs(body, 12)
    if attrs is None or src_len > bits or dst_len > bits:
        return None
    src_ok, src = _prefix(family, src_len, attrs.get(_FRA_SRC))
    dst_ok, dst = _prefix(family, dst_len, attrs.get(_FRA_DST))
    if not (src_ok and dst_ok):
        return None
    fwmark = _u32(attrs[_FRA_FWMARK]) if _FRA_FWMARK in attrs else None
    if fwmark is None and _FRA_FWMASK in attrs:
        fwmark = 0  # the kernel omits a zero mark but still matches mark & mask == 0
    priority = _u32(attrs.get(_FRA_PRIORITY, b"")) or 0
    table = _u32(attrs.get(_FRA_TABLE, b"")) or table
    iif, oif = _name(attrs.get(_FRA_IIFNAME)), _name(attrs.get(_FRA_OIFNAME))
    return KRule(family, priority, table, action, src, src_len, dst, dst_len, fwmark, iif, oif,
                 tos, bytes(body))  # fmt: skip


def parse_route(body: bytes) -> KRoute | None:
    """The route in an RTM_NEWROUTE/DELROUTE body; None if it is not IPv4/IPv6 or malformed."""
    if len(body) < 12:
        return None
    family, dst_len, _src_len, _tos, table, protocol, _scope, rtype, _f = _RTMSG.unpack_from(body)
    attrs = _attrs(body, 12)
    if attrs is None or dst_len > _BITS.get(family, -1):
        return None
    dst_ok, dst = _prefix(family, dst_len, attrs.get(_RTA_DST) if dst_len else None)
    if not dst_ok:
        return None
    gateway = _gateway(family, attrs)
    nexthops = _nexthops(family, attrs.get(_RTA_MULTIPATH, b""))
    if nexthops is None:
        return None
    table = _u32(attrs.get(_RTA_TABLE, b"")) or table  # tables > 255: rtm_table is 252
    oif, metric = _u32(attrs.get(_RTA_OIF, b"")), _u32(attrs.get(_RTA_PRIORITY, b""))
    return KRoute(family, table, dst, dst_len, gateway, oif, protocol, rtype, metric, nexthops)


def _gateway(family: int, attrs: dict[int, bytes]) -> str | None:
    if _RTA_GATEWAY in attrs:
        return _text(family, attrs[_RTA_GATEWAY])
    if len(attrs.get(_RTA_VIA, b"")) >= 2:  # struct rtvia: u16 family, then the address
        via = attrs[_RTA_VIA]
        return _text(_U16.unpack_from(via)[0], via[2:])
    return None


def _nexthops(family: int, raw: bytes) -> tuple[tuple[str | None, int], ...] | None:
    """RTA_MULTIPATH's next hops as (gateway, ifindex); None when malformed."""
    hops: list[tuple[str | None, int]] = []
    offset = 0
    while offset + _RTNH.size <= len(raw):
        length, _flags, _hops, ifindex = _RTNH.unpack_from(raw, offset)
        if length < _RTNH.size or offset + length > len(raw):
            return None
        attrs = _attrs(raw[offset : offset + length], _RTNH.size)
        if attrs is None:
            return None
        hops.append((_gateway(family, attrs), ifindex))
        offset += (length + 3) & ~3
    return tuple(hops)


# Message type -> (kind, deleted, fixed header size: ifinfomsg 16, ifaddrmsg 8, rtmsg 12).
_EVENT_TYPES: dict[int, tuple[Kind, bool, int]] = {
    16: ("link", False, 16), 17: ("link", True, 16),
    20: ("address", False, 8), 21: ("address", True, 8),
    24: ("route", False, 12), 25: ("route", True, 12),
    32: ("rule", False, 12), 33: ("rule", True, 12),
}  # fmt: skip


def parse_event(msg_type: int, pid: int, body: bytes) -> Event | None:
    """What changed, from a notification: only headers and the table/oif attributes are read
    (this runs for every notification on a busy host)."""
    what = _EVENT_TYPES.get(msg_type)
    if what is None:
        return None
    kind, deleted, size = what
    end = len(body)
    if end < size:
        return None
    if size != 12:  # ifinfomsg and ifaddrmsg: the family first, the link's index at 4
        return Event(kind, deleted, body[0], _U32.unpack_from(body, 4)[0], None, pid, body)
    if body[0] != AF_INET and body[0] != AF_INET6:
        return None  # multicast routing's rules (family 128) share IPV4_RULE: not our tables
    table, oif, offset = body[4], None, 12
    unpack_rta, unpack_u32 = _RTA.unpack_from, _U32.unpack_from
    while offset + 4 <= end:
        length, atype = unpack_rta(body, offset)
        if length < 4 or offset + length > end:
            return None
        if length >= 8:
            if atype == _RTA_TABLE:  # == FRA_TABLE
                table = unpack_u32(body, offset + 4)[0]
            elif atype == _RTA_OIF and kind == "route":  # FRA_ 4 is FRA_GOTO
                oif = unpack_u32(body, offset + 4)[0]
        offset += (length + 3) & ~3
    return Event(kind, deleted, body[0], oif, table, pid, body)
