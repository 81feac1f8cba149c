"""A small rtnetlink client: kernel addresses, rules and routes, and notifications of changes.

Why our own: the daemon only needs to read links, addresses, rules and routes of both families
and to hear when they change, to notice drift of the NICs it manages. pyroute2 does that and far
more, at a resident cost the daemon does not want to pay for its whole life; this is stdlib
``socket`` + ``struct`` and parses only the fields we compare.

Neither reading nor listening needs a capability: dumps and multicast subscriptions to the
rtnetlink groups are open to any process (the unit runs with an empty CapabilityBoundingSet=).

Races, and how a caller stays correct:

* Open the :class:`Monitor` *before* dumping: a change that lands between a dump and a later
  subscription would otherwise be seen by neither.
* :class:`EventsLost` (ENOBUFS) means notifications were dropped: dump everything again. The
  kernel reports ENOBUFS once per overflow and stays silent about further drops until the
  socket's queue has been emptied, so :meth:`Monitor.read` drains the queue before raising.
* A dump that a concurrent change interrupted (NLM_F_DUMP_INTR) may mix old and new state: it
  is retried a few times, then reported as :class:`RtnlError` (EINTR).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket

from nicreconciled.system.rtnlmsg import (
    _HDR,
    _I32,
    _IFADDRMSG,
    _NLM_F_DUMP,
    _NLM_F_DUMP_INTR,
    _NLM_F_REQUEST,
    _NLMSG_DONE,
    _NLMSG_ERROR,
    _RTA,
    _RTA_TABLE,
    _RTM_GETADDR,
    _RTM_GETROUTE,
    _RTM_GETRULE,
    _RTMSG,
    _U32,
    AF_INET,
    AF_INET6,
    FR_ACT_TO_TBL,
    IFA_F_DADFAILED,
    IFA_F_TENTATIVE,
    Event,
    EventsLost,
    KAddress,
    Kind,
    KRoute,
    KRule,
    RtnlError,
    _messages,
    parse_address,
    parse_event,
    parse_messages,
    parse_route,
    parse_rule,
)

__all__ = [
    "AF_INET",
    "AF_INET6",
    "FR_ACT_TO_TBL",
    "IFA_F_DADFAILED",
    "IFA_F_TENTATIVE",
    "Event",
    "EventsLost",
    "KAddress",
    "KRoute",
    "KRule",
    "Kind",
    "Monitor",
    "RtnlError",
    "dump_addresses",
    "dump_routes",
    "dump_rules",
    "parse_address",
    "parse_event",
    "parse_messages",
    "parse_route",
    "parse_rule",
]

_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NETLINK_GET_STRICT_CHK = 270, 1, 12
_SO_RCVBUFFORCE = 33
# RTNLGRP_LINK, IPV4_IFADDR, IPV4_ROUTE, IPV4_RULE, IPV6_IFADDR, IPV6_ROUTE, IPV6_RULE.
_GROUPS = (1, 5, 7, 8, 9, 11, 19)
# A dump's answers come in skbs of at most 32 KiB; one notification is one message, which only
# a link with hundreds of VFs makes larger than this (Monitor.read then reports EventsLost).
_RECV_SIZE = 64 * 1024
_DUMP_TIMEOUT = 5.0  # per recv; a dump of a big table still takes milliseconds
_DUMP_TRIES = 4
_seq = itertools.count(1)


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)


def _dump_once(msg_type: int, request: bytes, strict: bool) -> tuple[list[bytes], bool]:
    """(bodies of the answers, whether the kernel flagged the dump as interrupted)."""
    with _netlink_socket() as sock:
        sock.settimeout(_DUMP_TIMEOUT)
        if strict:
            # Without it the kernel ignores the filter fields (we filter again anyway).
            with contextlib.suppress(OSError):
                sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        seq = next(_seq) & 0xFFFFFFFF
        head = _HDR.pack(16 + len(request), msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
        sock.send(head + request)
        bodies: list[bytes] = []
        interrupted = False
        while True:
            try:
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise RtnlError(errno.ETIMEDOUT, f"rtnetlink dump {msg_type}: no answer") from None
            for mtype, flags, mseq, _pid, body in _messages(data):
                if mseq != seq:
                    continue
                interrupted |= bool(flags & _NLM_F_DUMP_INTR)
                if mtype in (_NLMSG_DONE, _NLMSG_ERROR):
                    # A failed dump, a refused filter too, ends in an NLMSG_DONE carrying the
                    # negative errno; a request refused outright gets NLMSG_ERROR (0: an ACK).
                    code = _I32.unpack_from(body)[0] if len(body) >= 4 else 0
                    if code < 0:
                        err = -code
                        raise RtnlError(err, f"rtnetlink dump {msg_type}: {os.strerror(err)}")
                    if mtype == _NLMSG_DONE:
                        return bodies, interrupted
                else:
                    bodies.append(body)


def _dump(msg_type: int, request: bytes, strict: bool = False) -> list[bytes]:
    for _ in range(_DUMP_TRIES):
        bodies, interrupted = _dump_once(msg_type, request, strict)
        if not interrupted:
            return bodies
    raise RtnlError(errno.EINTR, f"rtnetlink dump {msg_type}: interrupted by changes every time")


def dump_addresses(ifindex: int | None = None) -> list[KAddress]:
    """The IPv4 and IPv6 addresses of every link, or of the link IFINDEX ([] if it is gone)."""
    request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, ifindex or 0)
    try:
        bodies = _dump(_RTM_GETADDR, request, strict=ifindex is not None)
    except RtnlError as exc:
        if ifindex is not None and exc.errno == errno.ENODEV:
            return []  # the link vanished (a hot-unplug): it has no addresses
        raise
    out = (parse_address(body) for body in bodies)
    return [a for a in out if a is not None and (ifindex is None or a.ifindex == ifindex)]


def dump_rules() -> list[KRule]:
    """The IPv4 and IPv6 policy routing rules (other families' rules are skipped)."""
    bodies = _dump(_RTM_GETRULE, _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0))
    return [r for r in map(parse_rule, bodies) if r is not None]


def dump_routes(table: int | None = None) -> list[KRoute]:
    """The IPv4 and IPv6 routes of every table, or only of TABLE ([] if it does not exist)."""
    routes: list[KRoute] = []
    for family in (AF_INET, AF_INET6):
        # One dump per family: under AF_UNSPEC the kernel runs every family's dumper (MPLS
        # refuses an RTA_TABLE filter) and a family without a dumper falls back to that.
        request = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        if table is not None:
            request += _RTA.pack(8, _RTA_TABLE) + _U32.pack(table)
        try:
            bodies = _dump(_RTM_GETROUTE, request, strict=table is not None)
        except RtnlError as exc:
            if table is not None and exc.errno == errno.ENOENT:
                continue  # no such table in this family
            raise
        # The family test also drops what a kernel without IPv6 sends for AF_INET6: there
        # rtnetlink falls back to the AF_UNSPEC dumper, i.e. everything.
        found = (parse_route(body) for body in bodies)
        routes += [
            r for r in found if r and r.family == family and (table is None or r.table == table)
        ]
    return routes


class Monitor:
    """Subscribed to RTNLGRP_LINK, IPV4_IFADDR, IPV6_IFADDR, IPV4_ROUTE, IPV6_ROUTE, IPV4_RULE,
    IPV6_RULE; non-blocking, for ``loop.add_reader(monitor.fileno(), ...)``."""

    def __init__(self, rcvbuf: int = 4 * 1024 * 1024) -> None:
        sock = _netlink_socket()
        try:
            sock.setblocking(False)
            # A big queue rides out bursts (a route flap, a NIC with many addresses) without
            # ENOBUFS. Forcing past net.core.rmem_max needs CAP_NET_ADMIN, which the unit does
            # not grant: then the kernel caps SO_RCVBUF at rmem_max.
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, 0))
            for group in _GROUPS:
                sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Event]:
        """Every notification readable now, oldest first; EventsLost if some were dropped."""
        events: list[Event] = []
        recv_into, view = self._sock.recv_into, self._view
        while True:
            try:
                # MSG_TRUNC: the datagram's real length, so a cut-off one is noticed.
                size = recv_into(view, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._drain()
                raise EventsLost("rtnetlink notifications were dropped (ENOBUFS)") from None
            if size > _RECV_SIZE:
                raise EventsLost(f"a {size}-byte rtnetlink notification did not fit")
            for mtype, _flags, pid, body in parse_messages(bytes(view[:size])):
                event = parse_event(mtype, pid, body)
                if event is not None:
                    events.append(event)

    def _drain(self) -> None:
        """Discard what is queued: the caller's re-read will see it. The kernel reports the
        next overflow only once the queue has been empty, so stopping early would hide drops
        that happen after that re-read. Reading outpaces any rtnetlink producer; the bound is
        a guard only."""
        for _ in range(1 << 20):
            try:
                self._sock.recv_into(self._view)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
