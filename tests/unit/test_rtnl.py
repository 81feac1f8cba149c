"""rtnetlink parsing on packed bytes, and the dump/monitor logic against a scripted kernel."""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from nicreconciled.system import rtnl

# Bodies (after nlmsghdr) the 6.x kernel sent, captured in a namespace with `ip monitor`'s
# subscriptions: `ip route add default via 10.0.11.1 dev nrv0 table 10001 metric 100`, ...
KERNEL_ROUTE4 = bytes.fromhex(
    "02000000fc0300010000000008000f00112700000800060064000000080005000a000b010800040003000000"
)
KERNEL_ROUTE6 = bytes.fromhex(
    "0a400000fc0300010000000008000f00112700001400010020010db8001100000000000000000000080006"
    "0000040000080004000300000024000c00000000000000000000000000000000000000000000000000000000"
    "00000000000500140000000000"
)
KERNEL_ADDR6 = bytes.fromhex(
    "0a40c000030000001400010020010db800110000000000000000001014000600ffffffffffffffffa2e60000"
    "a2e6000008000800c0000000"
)
KERNEL_RULE_SRC = bytes.fromhex(
    "02002000fc0000010000000008000f001127000008000e00ffffffff05001500000000000800060011270000"
    "080002000a000b14"
)
KERNEL_RULE_FWMARK = bytes.fromhex(
    "02000000c80000010000000008000f00c800000008000e00ffffffff0500150000000000080006006400000008"
    "000a008000000008001000ffffffff"
)
KERNEL_BODIES = [KERNEL_ROUTE4, KERNEL_ROUTE6, KERNEL_ADDR6, KERNEL_RULE_SRC, KERNEL_RULE_FWMARK]

RTM = {"newlink": 16, "dellink": 17, "newaddr": 20, "deladdr": 21}
RTM |= {"newroute": 24, "delroute": 25, "newrule": 32, "delrule": 33}


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def ip(kind: int, text: str) -> bytes:
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return attr(kind, socket.inet_pton(family, text))


def message(mtype: int, body: bytes, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, mtype, flags, seq, pid) + body + b"\0" * (-length % 4)


def ifaddrmsg(family: int, prefixlen: int, index: int, *attrs: bytes, flags: int = 0) -> bytes:
    return struct.pack("=BBBBI", family, prefixlen, flags, 0, index) + b"".join(attrs)


def rtmsg(family: int, dst_len: int, table: int, *attrs: bytes, rtype: int = 1) -> bytes:
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, 3, 0, rtype, 0) + b"".join(attrs)


def rulemsg(
    family: int,
    *attrs: bytes,
    src_len: int = 0,
    dst_len: int = 0,
    tos: int = 0,
    table: int = 0,
    action: int = rtnl.FR_ACT_TO_TBL,
    flags: int = 0,
) -> bytes:
    head = (family, dst_len, src_len, tos, table, 0, 0, action, flags)
    return struct.pack("=BBBBBBBBI", *head) + b"".join(attrs)


def ifinfomsg(index: int) -> bytes:
    return struct.pack("=BxHiII", 0, 1, index, 0x1003, 0) + attr(3, b"eth0\0")


class TestMessages:
    def test_messages_are_split_at_their_aligned_lengths_with_unpadded_bodies(self) -> None:
        data = message(24, b"abcde", flags=2, pid=7) + message(3, b"\0\0\0\0", pid=8)
        assert list(rtnl.parse_messages(data)) == [(24, 2, 7, b"abcde"), (3, 0, 8, b"\0\0\0\0")]

    @pytest.mark.parametrize("cut", [1, 15, 16, 20, 21])
    def test_a_truncated_message_stops_the_walk(self, cut: int) -> None:
        data = message(24, b"first") + message(25, b"second")
        assert [m[0] for m in rtnl.parse_messages(data[: 24 + cut])] == [24]

    def test_a_length_below_the_header_or_past_the_buffer_stops_the_walk(self) -> None:
        assert list(rtnl.parse_messages(struct.pack("=IHHII", 8, 24, 0, 0, 0) + b"x" * 32)) == []
        assert list(rtnl.parse_messages(struct.pack("=IHHII", 999, 24, 0, 0, 0))) == []
        assert list(rtnl.parse_messages(b"")) == []


class TestAddress:
    def test_the_local_address_wins_over_the_peer_and_prints_as_cidr(self) -> None:
        body = ifaddrmsg(2, 24, 5, ip(1, "10.0.11.99"), ip(2, "10.0.11.20"), flags=0x80)
        address = rtnl.parse_address(body)
        assert address == rtnl.KAddress(5, rtnl.AF_INET, "10.0.11.20", 24, 0x80)
        assert address is not None
        assert address.cidr == "10.0.11.20/24"

    def test_ipv6_from_the_kernel_with_ifa_flags_overriding_the_header(self) -> None:
        address = rtnl.parse_address(KERNEL_ADDR6)
        assert address == rtnl.KAddress(3, rtnl.AF_INET6, "2001:db8:11::10", 64, 0xC0)
        assert address is not None
        assert address.flags & rtnl.IFA_F_TENTATIVE
        wide = ifaddrmsg(10, 64, 3, ip(1, "2001:db8::1"), u32(8, 0x208), flags=0x80)
        parsed = rtnl.parse_address(wide)
        assert parsed is not None
        assert parsed.flags == 0x208  # IFA_F_NOPREFIXROUTE | IFA_F_DADFAILED: above a byte
        assert parsed.flags & rtnl.IFA_F_DADFAILED

    def test_ipv6_text_is_ipaddress_compressed(self) -> None:
        body = ifaddrmsg(10, 96, 3, ip(1, "::10.1.2.3"))
        parsed = rtnl.parse_address(body)
        assert parsed is not None
        assert parsed.address == "::a01:203"  # as ipaddress writes it; glibc: ::10.1.2.3

    @pytest.mark.parametrize(
        "body",
        [
            ifaddrmsg(17, 0, 3, attr(1, b"\1\2\3\4\5\6")),  # AF_PACKET
            ifaddrmsg(2, 24, 3, attr(1, b"\1\2\3")),  # short address
            ifaddrmsg(2, 33, 3, ip(1, "10.0.0.1")),  # prefix too long
            ifaddrmsg(10, 64, 3, ip(1, "10.0.0.1")),  # IPv4 bytes in an IPv6 message
            ifaddrmsg(2, 24, 3, u32(8, 0)),  # no address
            ifaddrmsg(2, 24, 3) + struct.pack("=HH", 64, 1) + b"\0" * 4,  # attribute overrun
            b"\2\x18\0\0",
        ],
    )
    def test_malformed_or_foreign_addresses_are_none(self, body: bytes) -> None:
        assert rtnl.parse_address(body) is None


class TestRule:
    def test_a_source_rule_from_the_kernel_in_a_table_above_255(self) -> None:
        rule = rtnl.parse_rule(KERNEL_RULE_SRC)
        assert rule == rtnl.KRule(
            rtnl.AF_INET, 10001, 10001, 1, "10.0.11.20", 32, None, 0, None, None, None, 0, b""
        )
        assert rule is not None
        assert rule.raw == KERNEL_RULE_SRC
        assert rule.plain_source_rule
        assert rule.describe() == "10001: from 10.0.11.20 lookup 10001"

    def test_a_fwmark_rule_from_the_kernel(self) -> None:
        rule = rtnl.parse_rule(KERNEL_RULE_FWMARK)
        assert rule is not None
        assert (rule.priority, rule.table, rule.fwmark) == (100, 200, 0x80)
        assert not rule.plain_source_rule
        assert rule.describe() == "100: from all fwmark 0x80 lookup 200"

    def test_ipv6_rule_with_every_selector_described_like_ip_rule(self) -> None:
        body = rulemsg(
            10,
            ip(2, "2001:db8:11::"),
            ip(1, "2001:db8:99::1"),
            attr(3, b"eth1\0"),
            attr(17, b"eth2\0"),
            u32(10, 0x10),
            u32(16, 0xFF),
            u32(6, 5),
            src_len=64,
            dst_len=128,
            tos=0x10,
            table=254,
            flags=0x2,
        )
        rule = rtnl.parse_rule(body)
        assert rule is not None
        assert (rule.src, rule.dst, rule.iifname, rule.oifname) == (
            "2001:db8:11::",
            "2001:db8:99::1",
            "eth1",
            "eth2",
        )
        assert rule.describe() == (
            "5: not from 2001:db8:11::/64 to 2001:db8:99::1 tos 0x10 fwmark 0x10/0xff"
            " iif eth1 oif eth2 lookup main"
        )

    def test_a_mask_without_a_mark_still_selects_on_the_mark(self) -> None:
        rule = rtnl.parse_rule(rulemsg(2, ip(2, "10.0.0.1"), u32(16, 1), src_len=32, table=9))
        assert rule is not None
        assert rule.fwmark == 0
        assert not rule.plain_source_rule
        assert rule.describe() == "0: from 10.0.0.1 fwmark 0x0/0x1 lookup 9"

    def test_actions_other_than_a_lookup(self) -> None:
        unreachable = rtnl.parse_rule(rulemsg(2, u32(6, 7), action=7))
        goto = rtnl.parse_rule(rulemsg(2, u32(6, 8), u32(4, 100), action=2))
        assert unreachable is not None
        assert unreachable.describe() == "7: from all unreachable"
        assert goto is not None
        assert goto.describe() == "8: from all goto 100"

    @pytest.mark.parametrize(
        ("extra", "head"),
        [
            (ip(1, "10.1.0.0"), {"dst_len": 16}),
            (attr(3, b"lo\0"), {}),
            (u32(10, 1), {}),
            (b"", {"tos": 4}),
            (b"", {"flags": 0x2}),  # not from ...
            (b"", {"action": 7}),
            (u32(14, 0), {}),  # suppress_prefixlength 0
            (attr(20, struct.pack("=II", 1000, 1000)), {}),  # uidrange
            (attr(22, b"\x06"), {}),  # ipproto tcp
        ],
    )
    def test_any_other_selector_or_action_is_not_a_plain_source_rule(
        self, extra: bytes, head: dict[str, int]
    ) -> None:
        base = [ip(2, "10.0.11.20"), u32(15, 10001), u32(14, 0xFFFFFFFF), extra]
        rule = rtnl.parse_rule(rulemsg(2, *base, src_len=32, **head))
        assert rule is not None
        assert not rule.plain_source_rule
        plain = rtnl.parse_rule(rulemsg(2, *base[:3], src_len=32))
        assert plain is not None
        assert plain.plain_source_rule

    def test_from_all_is_not_a_source_rule(self) -> None:
        rule = rtnl.parse_rule(rulemsg(2, u32(15, 254), u32(6, 32766)))
        assert rule is not None
        assert not rule.plain_source_rule
        assert rule.describe() == "32766: from all lookup main"

    @pytest.mark.parametrize(
        "body",
        [
            rulemsg(2, src_len=32),  # a source length without FRA_SRC
            rulemsg(2, ip(2, "2001:db8::1"), src_len=32),
            rulemsg(2, src_len=33),
            rulemsg(128, u32(15, 1)),  # RTNL_FAMILY_IPMR
            rulemsg(2)[:11],
        ],
    )
    def test_malformed_or_foreign_rules_are_none(self, body: bytes) -> None:
        assert rtnl.parse_rule(body) is None


def nexthop(ifindex: int, *attrs: bytes) -> bytes:
    body = b"".join(attrs)
    return struct.pack("=HBBi", 8 + len(body), 0, 0, ifindex) + body


class TestRoute:
    def test_a_multipath_route_has_each_next_hop(self) -> None:
        """NetworkManager 1.52 merges a static IPv6 default route and the RA's of one table
        and metric into one route with RTA_MULTIPATH (9)."""
        hops = nexthop(4, ip(5, "2001:db8:11::1")) + nexthop(4, ip(5, "fe80::52:ff:fe00:2"))
        body = rtmsg(10, 0, 252, u32(15, 10257), u32(6, 769), attr(9, hops))
        route = rtnl.parse_route(body)
        assert route is not None
        assert (route.gateway, route.oif, route.table) == (None, None, 10257)
        assert route.nexthops == (("2001:db8:11::1", 4), ("fe80::52:ff:fe00:2", 4))
        assert route.hops() == route.nexthops

    def test_a_plain_route_is_its_own_single_hop(self) -> None:
        route = rtnl.parse_route(KERNEL_ROUTE4)
        assert route is not None
        assert route.hops() == (("10.0.11.1", 3),)

    def test_a_next_hop_overrunning_the_attribute_makes_the_route_malformed(self) -> None:
        broken = struct.pack("=HBBi", 40, 0, 0, 4) + ip(5, "2001:db8:11::1")
        assert rtnl.parse_route(rtmsg(10, 0, 252, attr(9, broken))) is None

    def test_a_default_route_from_the_kernel_in_a_table_above_255(self) -> None:
        route = rtnl.parse_route(KERNEL_ROUTE4)
        assert route == rtnl.KRoute(rtnl.AF_INET, 10001, None, 0, "10.0.11.1", 3, 3, 1, 100)
        assert route is not None
        assert route.destination == "default"

    def test_an_ipv6_subnet_route_from_the_kernel(self) -> None:
        route = rtnl.parse_route(KERNEL_ROUTE6)
        assert route == rtnl.KRoute(rtnl.AF_INET6, 10001, "2001:db8:11::", 64, None, 3, 3, 1, 1024)
        assert route is not None
        assert route.destination == "2001:db8:11::/64"

    def test_the_header_table_without_rta_table_and_an_ipv6_via(self) -> None:
        via = attr(18, struct.pack("=H", socket.AF_INET6) + socket.inet_pton(10, "fe80::1"))
        route = rtnl.parse_route(rtmsg(2, 24, 254, ip(1, "10.0.11.0"), via, rtype=1))
        assert route is not None
        assert (route.table, route.gateway, route.oif, route.metric) == (254, "fe80::1", None, None)
        assert route.destination == "10.0.11.0/24"

    @pytest.mark.parametrize(
        "body",
        [
            rtmsg(2, 24, 254),  # a prefix length without RTA_DST
            rtmsg(2, 33, 254, ip(1, "10.0.0.0")),
            rtmsg(28, 20, 254),  # AF_MPLS
            rtmsg(2, 0, 254, struct.pack("=HH", 3, 4)),  # attribute shorter than its header
            rtmsg(2, 0, 254)[:8],
        ],
    )
    def test_malformed_or_foreign_routes_are_none(self, body: bytes) -> None:
        assert rtnl.parse_route(body) is None


class TestEvent:
    def test_a_route_event_has_the_real_table_and_the_output_interface(self) -> None:
        event = rtnl.parse_event(RTM["newroute"], 4242, KERNEL_ROUTE4)
        assert event == rtnl.Event("route", False, rtnl.AF_INET, 3, 10001, 4242)
        event = rtnl.parse_event(RTM["delroute"], 0, rtmsg(10, 0, 254))
        assert event == rtnl.Event("route", True, rtnl.AF_INET6, None, 254, 0)

    def test_a_rule_event_has_its_table_and_no_interface(self) -> None:
        event = rtnl.parse_event(RTM["delrule"], 7, KERNEL_RULE_SRC)
        assert event == rtnl.Event("rule", True, rtnl.AF_INET, None, 10001, 7)
        goto = rtnl.parse_event(RTM["newrule"], 7, rulemsg(2, u32(4, 5), action=2))
        assert goto == rtnl.Event("rule", False, rtnl.AF_INET, None, 0, 7)  # FRA_GOTO, not oif

    def test_link_and_address_events_have_the_header_index(self) -> None:
        assert rtnl.parse_event(RTM["dellink"], 0, ifinfomsg(9)) == rtnl.Event(
            "link", True, 0, 9, None, 0
        )
        assert rtnl.parse_event(RTM["newaddr"], 1, KERNEL_ADDR6) == rtnl.Event(
            "address", False, rtnl.AF_INET6, 3, None, 1
        )

    def test_an_event_agrees_with_the_full_parsers(self) -> None:
        for body in (KERNEL_ROUTE4, KERNEL_ROUTE6):
            event, route = rtnl.parse_event(24, 0, body), rtnl.parse_route(body)
            assert event is not None
            assert route is not None
            assert (event.family, event.table, event.ifindex) == (route.family, route.table, 3)

    @pytest.mark.parametrize(
        ("mtype", "body"),
        [
            (2, b"\0" * 20),  # NLMSG_ERROR
            (18, ifinfomsg(1)),  # RTM_GETLINK
            (28, b"\0" * 12),  # RTM_NEWNEIGH
            (16, ifinfomsg(1)[:15]),
            (20, b"\0" * 7),
            (24, KERNEL_ROUTE4[:11]),
            (24, KERNEL_ROUTE4[:-2]),  # the last attribute overruns
            (32, rulemsg(2) + struct.pack("=HH", 2, 15)),  # attribute length below 4
            (32, rulemsg(128, u32(15, 10001))),  # an RTNL_FAMILY_IPMR rule
        ],
    )
    def test_types_we_do_not_follow_and_malformed_bodies_are_none(
        self, mtype: int, body: bytes
    ) -> None:
        assert rtnl.parse_event(mtype, 0, body) is None


class TestGarbage:
    def test_no_truncation_or_corruption_raises(self) -> None:
        rng = random.Random(1)
        parsers: list[Callable[[bytes], object]] = [
            rtnl.parse_address,
            rtnl.parse_rule,
            rtnl.parse_route,
            *(lambda b, t=t: rtnl.parse_event(t, 0, b) for t in RTM.values()),
        ]
        samples = [body[:cut] for body in KERNEL_BODIES for cut in range(len(body) + 1)]
        for _ in range(3000):
            corrupt = bytearray(rng.choice(KERNEL_BODIES))
            for _ in range(rng.randint(1, 4)):
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
            samples.append(bytes(corrupt))
        samples += [rng.randbytes(rng.randrange(64)) for _ in range(1000)]
        for body in samples:
            for parse in parsers:
                parse(body)  # anything but an exception
            list(rtnl.parse_messages(body))
            rule = rtnl.parse_rule(body)
            if rule is not None:
                rule.describe()
                _ = rule.plain_source_rule
            # A KRule whose raw is garbage still describes itself.
            rtnl.KRule(2, 1, 1, 1, None, 0, None, 0, None, None, None, 0, body).describe()


# --- dumps and the monitor against a scripted kernel -----------------------------------------

Answer = list[list[tuple[int, int, bytes]]]  # recv() chunks of (type, flags, body) messages


class FakeKernel:
    """Stands in for the netlink socket: ANSWER(request type, request body, attempt) gives
    the chunks each recv() returns, in the request's sequence."""

    def __init__(self, answer: Callable[[int, bytes, int], Answer]) -> None:
        self.answer = answer
        self.requests: list[tuple[int, int, bytes]] = []
        self.options: list[tuple[int, int, int]] = []
        self.closed = 0

    def socket(self) -> FakeSocket:
        return FakeSocket(self)


class FakeSocket:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.chunks: Iterator[bytes] = iter([])

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kernel.closed += 1

    def settimeout(self, timeout: float) -> None:
        assert timeout > 0

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.kernel.options.append((level, option, value))

    def send(self, data: bytes) -> int:
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        assert length == len(data)
        assert flags == 0x301
        self.kernel.requests.append((mtype, seq, data[16:]))
        attempt = len(self.kernel.requests)
        chunks = self.kernel.answer(mtype, data[16:], attempt)
        self.chunks = iter(
            b"".join(message(t, body, f, seq=seq, pid=0) for t, f, body in chunk)
            for chunk in chunks
        )
        return len(data)

    def recv(self, size: int) -> bytes:
        for chunk in self.chunks:
            return chunk
        raise TimeoutError


DONE = (3, 2, b"\0\0\0\0")


def error(code: int, mtype: int = 2) -> tuple[int, int, bytes]:
    return mtype, 0, struct.pack("=i", -code) + b"\0" * 16


Install = Callable[[Callable[[int, bytes, int], Answer]], FakeKernel]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Install:
    def install(answer: Callable[[int, bytes, int], Answer]) -> FakeKernel:
        fake = FakeKernel(answer)
        monkeypatch.setattr(rtnl, "_netlink_socket", fake.socket)
        return fake

    return install


V4 = ifaddrmsg(2, 24, 3, ip(2, "10.0.11.20"))
V4_OTHER = ifaddrmsg(2, 8, 1, ip(2, "127.0.0.1"))


class TestDump:
    def test_answers_over_several_reads_until_done_other_sequences_ignored(
        self, kernel: Install
    ) -> None:
        def answer(mtype: int, body: bytes, attempt: int) -> Answer:
            return [[(20, 2, V4)], [(20, 2, V4_OTHER), DONE]]

        fake = kernel(answer)
        assert [a.cidr for a in rtnl.dump_addresses()] == ["10.0.11.20/24", "127.0.0.1/8"]
        assert fake.options == []
        assert fake.closed == 1
        ((mtype, _seq, body),) = fake.requests
        assert mtype == 22
        assert body == ifaddrmsg(0, 0, 0)

    def test_an_address_dump_of_one_link_asks_the_kernel_and_filters_again(
        self, kernel: Install
    ) -> None:
        fake = kernel(lambda *_: [[(20, 2, V4), (20, 2, V4_OTHER), DONE]])
        assert [a.cidr for a in rtnl.dump_addresses(3)] == ["10.0.11.20/24"]
        assert fake.requests[0][2] == ifaddrmsg(0, 0, 3)
        assert fake.options == [(270, 12, 1)]  # NETLINK_GET_STRICT_CHK

    def test_a_vanished_link_has_no_addresses(self, kernel: Install) -> None:
        kernel(lambda *_: [[error(errno.ENODEV, mtype=3)]])
        assert rtnl.dump_addresses(3) == []
        with pytest.raises(rtnl.RtnlError) as caught:
            rtnl.dump_addresses()
        assert caught.value.errno == errno.ENODEV

    @pytest.mark.parametrize("mtype", [2, 3])  # refused up front, or failed while dumping
    def test_a_negative_errno_raises_with_it(self, kernel: Install, mtype: int) -> None:
        kernel(lambda *_: [[(32, 2, KERNEL_RULE_SRC), error(errno.EINVAL, mtype)]])
        with pytest.raises(rtnl.RtnlError) as caught:
            rtnl.dump_rules()
        assert caught.value.errno == errno.EINVAL
        assert isinstance(caught.value, OSError)

    def test_an_interrupted_dump_is_retried(self, kernel: Install) -> None:
        def answer(mtype: int, body: bytes, attempt: int) -> Answer:
            flags = 0x12 if attempt == 1 else 2
            return [[(32, flags, KERNEL_RULE_FWMARK)], [(32, 2, KERNEL_RULE_SRC), DONE]]

        fake = kernel(answer)
        assert [r.priority for r in rtnl.dump_rules()] == [100, 10001]
        assert len(fake.requests) == 2
        assert fake.requests[0][1] != fake.requests[1][1]

    def test_a_dump_interrupted_every_time_fails_with_eintr(self, kernel: Install) -> None:
        fake = kernel(lambda *_: [[(3, 0x12, b"\0\0\0\0")]])
        with pytest.raises(rtnl.RtnlError) as caught:
            rtnl.dump_rules()
        assert caught.value.errno == errno.EINTR
        assert len(fake.requests) > 1

    def test_no_answer_is_a_timeout(self, kernel: Install) -> None:
        kernel(lambda *_: [[(32, 2, KERNEL_RULE_SRC)]])
        with pytest.raises(rtnl.RtnlError) as caught:
            rtnl.dump_rules()
        assert caught.value.errno == errno.ETIMEDOUT

    def test_routes_of_one_table_per_family_a_missing_table_is_empty(self, kernel: Install) -> None:
        def answer(mtype: int, body: bytes, attempt: int) -> Answer:
            if body[0] == socket.AF_INET6:
                return [[error(errno.ENOENT, mtype=3)]]
            main = rtmsg(2, 24, 254, ip(1, "10.0.0.0"))
            return [[(24, 2, KERNEL_ROUTE4), (24, 2, main), (24, 2, KERNEL_ROUTE6), DONE]]

        fake = kernel(answer)
        routes = rtnl.dump_routes(10001)
        assert [(r.family, r.table, r.destination) for r in routes] == [(2, 10001, "default")]
        v4, v6 = (body for _t, _s, body in fake.requests)
        assert v4 == struct.pack("=8BI", 2, *[0] * 8) + u32(15, 10001)
        assert v6[0] == socket.AF_INET6
        assert fake.options == [(270, 12, 1), (270, 12, 1)]

    def test_every_route_of_both_families_without_a_filter(self, kernel: Install) -> None:
        def answer(mtype: int, body: bytes, attempt: int) -> Answer:
            own = KERNEL_ROUTE4 if body[0] == socket.AF_INET else KERNEL_ROUTE6
            return [[(24, 2, own), DONE]]

        fake = kernel(answer)
        assert [r.destination for r in rtnl.dump_routes()] == ["default", "2001:db8:11::/64"]
        assert all(len(body) == 12 for _t, _s, body in fake.requests)
        kernel(lambda *_: [[error(errno.ENOENT, mtype=3)]])
        with pytest.raises(rtnl.RtnlError):
            rtnl.dump_routes()  # without a table filter ENOENT is an error


class FakeMonitorSocket:
    """recv_into() hands out QUEUE's datagrams, then raises BlockingIOError; an OSError in
    the queue is raised in its turn."""

    def __init__(self, forced: bool = True) -> None:
        self.forced = forced
        self.queue: list[bytes | OSError] = []
        self.options: list[tuple[int, int, int]] = []
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        assert not flag

    def bind(self, address: tuple[int, int]) -> None:
        assert address == (0, 0)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == 33 and not self.forced:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.options.append((level, option, value))

    def recv_into(self, view: memoryview, size: int = 0, flags: int = 0) -> int:
        if not self.queue:
            raise BlockingIOError
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        view[: min(len(item), len(view))] = item[: len(view)]
        return len(item) if flags & socket.MSG_TRUNC else min(len(item), len(view))

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True


class TestMonitor:
    def open(self, monkeypatch: pytest.MonkeyPatch, forced: bool = True) -> FakeMonitorSocket:
        fake = FakeMonitorSocket(forced)
        monkeypatch.setattr(rtnl, "_netlink_socket", lambda: fake)
        return fake

    def test_subscribes_to_the_seven_groups_with_a_forced_buffer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fake = self.open(monkeypatch)
        with rtnl.Monitor(rcvbuf=1 << 20) as monitor:
            assert monitor.fileno() == 99
        assert fake.closed
        assert fake.options[0] == (socket.SOL_SOCKET, 33, 1 << 20)
        assert sorted(v for _l, o, v in fake.options if o == 1) == [1, 5, 7, 8, 9, 11, 19]

    def test_without_cap_net_admin_the_buffer_is_asked_for_plainly(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fake = self.open(monkeypatch, forced=False)
        rtnl.Monitor(rcvbuf=4096).close()
        assert fake.options[0] == (socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def test_read_returns_every_queued_event_in_order(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fake = self.open(monkeypatch)
        monitor = rtnl.Monitor()
        fake.queue = [
            message(24, KERNEL_ROUTE4, pid=5) + message(18, ifinfomsg(1)),
            message(21, KERNEL_ADDR6),
        ]
        assert [(e.kind, e.deleted, e.sender) for e in monitor.read()] == [
            ("route", False, 5),
            ("address", True, 0),
        ]
        assert monitor.read() == []

    def test_an_overflow_drains_the_queue_then_raises_and_the_socket_goes_on(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fake = self.open(monkeypatch)
        monitor = rtnl.Monitor()
        stale = message(25, KERNEL_ROUTE4)
        fake.queue = [stale, OSError(errno.ENOBUFS, "No buffer space"), stale, stale]
        with pytest.raises(rtnl.EventsLost):
            monitor.read()
        assert fake.queue == []  # drained: the kernel reports the next overflow only then
        fake.queue = [message(20, KERNEL_ADDR6)]
        assert [e.kind for e in monitor.read()] == ["address"]

    def test_a_notification_too_big_for_the_buffer_is_a_loss(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fake = self.open(monkeypatch)
        monitor = rtnl.Monitor()
        fake.queue = [message(16, ifinfomsg(3) + b"\0" * (70 * 1024))]
        with pytest.raises(rtnl.EventsLost):
            monitor.read()

    def test_other_socket_errors_propagate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self.open(monkeypatch)
        monitor = rtnl.Monitor()
        fake.queue = [OSError(errno.EBADF, "Bad file descriptor")]
        with pytest.raises(OSError, match="Bad file"):
            monitor.read()
